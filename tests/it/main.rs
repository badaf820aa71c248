//! razar's integration tests: the real binary on fixture configs, in temp dirs. One test
//! binary (this one) so the suite links once; one module per area.

mod bad_input;
mod crown;
mod plan;
mod schemas;
mod state;
mod support;
mod validate;
