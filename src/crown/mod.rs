//! The Crown link: razar's only WebSocket. [`protocol`] defines the messages (version 1);
//! [`link`] connects, performs the handshake and keeps the status stream, with timeouts,
//! retries and backoff. Nothing here writes files or decides plans: what Crown says is
//! returned to the caller, which hands suggestions to `plan` and records exchanges in `state`.

pub mod link;
pub mod protocol;
pub mod session;
