//! Execution: a [`Plan`](crate::plan::Plan) becomes running processes (in progress).

pub mod event;

pub use event::{Event, EventKind, ExitInfo, Outcome, Sink};
