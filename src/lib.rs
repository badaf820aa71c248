//! razar: a declarative boot planner and executor for local services.
//!
//! Data moves one way through the modules: [`config`] loads every supported format into one
//! validated [`config::Config`]; [`graph`] compiles it into a checked dependency DAG; [`plan`]
//! orders that DAG into a [`plan::Plan`]; `exec` runs a plan and emits events that `state`
//! persists and `report` shows. See `docs/architecture.md`.

pub mod apply;
pub mod bench;
pub mod classify;
pub mod config;
pub mod crown;
pub mod diag;
pub mod duration;
pub mod error;
pub mod exec;
pub mod graph;
pub mod learned;
pub mod plan;
pub mod report;
pub mod state;

pub use error::Error;
