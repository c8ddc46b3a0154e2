//! Live migration: moving a running guest to another host-vmm.
//!
//! - [`wire`]: the stream format (versioned, checksummed messages) both ends speak.

pub mod wire;
