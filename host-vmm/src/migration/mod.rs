//! Live migration: moving a running guest to another host-vmm.
//!
//! - [`wire`]: the stream format (versioned, checksummed messages) both ends speak.
//! - [`fd`]: passing the guest-RAM memfd to a co-located destination (SCM_RIGHTS).

pub mod fd;
pub mod wire;
