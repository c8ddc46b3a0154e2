//! Live migration: moving a running guest to another host-vmm.
//!
//! The stream format both ends speak (versioned, checksummed messages) is the
//! `roam-migration-wire` crate (`migration_wire`, under `proto/migration`).
//!
//! - [`fd`]: passing the guest-RAM memfd to a co-located destination (SCM_RIGHTS).
//! - [`target`]: `tcp:ADDR:PORT` / `unix:PATH` endpoints and the stream over them.
//! - [`state`]: the machine state that crosses during the pause.
//! - [`source`]: `host-vmm ctl PATH migrate ...`: pre-copy or zero-copy, with rollback.
//! - [`destination`]: `host-vmm receive`.
//! - [`announce`]: the RARP the destination sends for the guest's MAC.

pub mod announce;
pub mod destination;
pub mod fd;
pub mod source;
pub mod state;
pub mod target;
