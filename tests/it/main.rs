//! razar's integration tests: the real binary on fixture configs, in temp dirs. One test
//! binary (this one) so the suite links once; one module per area.

mod apply;
mod bad_input;
mod crown;
mod history;
mod plan;
mod resume;
mod schemas;
mod stack;
mod state;
mod support;
mod validate;
