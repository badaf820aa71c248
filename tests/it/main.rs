//! Integration tests: one test binary, one module per area, each running the real `razar`.

mod apply;
mod history;
mod resume;
mod stack;
mod state;
