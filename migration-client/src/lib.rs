//! migration-client: Roam's guest agent, the guest end of the control channel to host-vmm.
//!
//! [`agent`] holds a poll-driven [`agent::Agent`] that decodes requests from the control
//! channel, carries them out through the kernel's [`agent::NicControl`] and emits replies.
//! The frames and messages themselves, and the NIC types, are defined once in
//! `roam-agent-proto` (`agent_proto`), which host-vmm uses for its end.
//!
//! The crate is `no_std` without allocation; the kernel owns the channel (a virtio-console
//! port, `drivers::virtio_console`) and calls the agent from its idle loop. Requests: SWITCH
//! to the VF or virtio-net, STATUS, and PREPARE / RESUMED around a move (the VF released
//! before, re-probed and announced after).

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod agent;

pub use agent::{Agent, NicControl, OnPrepare, Step};
