//! Integration tests: one test binary, one module per area, each running the real `razar`.

mod crown;
mod state;
