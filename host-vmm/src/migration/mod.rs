//! Live migration: moving a running guest to another host-vmm.
//!
//! The stream format both ends speak (versioned, checksummed messages) is the
//! `roam-migration-wire` crate (`migration_wire`, under `proto/migration`).
//!
//! - [`fd`]: passing the guest-RAM memfd to a co-located destination (SCM_RIGHTS).
//! - [`target`]: `tcp:ADDR:PORT` / `unix:PATH` endpoints, their protection (mutual TLS,
//!   plain TCP asked for by name, the peer's user on `unix:`) and the stream over them.
//! - [`admission`]: the destination's wait for the real source: each peer authenticated
//!   and its Hello read within a deadline, the others dropped.
//! - [`source`]: sending a running guest: pre-copy or zero-copy, progress, cancel, rollback.
//! - [`converge`]: auto-converge, when to throttle the vCPU of a guest pre-copy cannot
//!   catch up with.
//! - [`destination`]: taking one guest in and handing back a VM ready to run.
//! - [`handover`]: the hand-over window: the guest's frames forwarded from the source's
//!   port to the destination until it announces the guest (and back after a rollback).
//!
//! The state that crosses is [`crate::vmm::MachineState`]; what happens after the guest
//! arrives (announce, VF, guest agent) is the caller's, so both ends stay below the control
//! plane.

pub mod admission;
pub mod converge;
pub mod destination;
pub mod fd;
pub mod handover;
pub mod source;
pub mod target;
