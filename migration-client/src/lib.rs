//! migration-client: Roam's guest agent and the protocol host-vmm uses to reach it.
//!
//! - [`protocol`] is the one definition of the control protocol (frames, messages, checks),
//!   used by the guest and by host-vmm alike: pure encode and decode functions.
//! - [`agent`] is the guest side: a poll-driven [`agent::Agent`] that decodes requests from
//!   the control channel, carries them out through the kernel's [`agent::NicControl`] and
//!   emits replies.
//!
//! The crate is `no_std` without allocation and depends on nothing; the kernel owns the
//! channel (a virtio-console port, `drivers::virtio_console`) and calls the agent from its
//! idle loop. Requests: SWITCH to the VF or virtio-net, STATUS, and PREPARE / RESUMED around a
//! move (the VF released before, re-probed and announced after).

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod agent;
pub mod protocol;

pub use agent::{Agent, NicControl, SwitchError};
pub use protocol::{Nic, NicStatus, Prepared, Reply, Request, Resumed, Status};
