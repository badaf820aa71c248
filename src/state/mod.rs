//! State: the only code that touches sled or writes state files.

pub mod crown;
