//! The operator's control interface: a Unix socket host-vmm listens on (`--control PATH`),
//! and the seams devices plug into it.
//!
//! - [`command`]: the operator's commands (`switch vf|virtio`, `status`, `vf link up|down`,
//!   `vf remove|add`) and how their results print;
//! - [`server`]: the thread serving the socket, one request per connection: guest commands
//!   go to the guest agent, VF commands to the VF model through [`VfOperator`];
//! - [`agent`]: the host side of the guest-agent protocol (`agent_proto`, over the
//!   virtio-console port): sequence numbers, timeout, late replies;
//! - [`client`]: `host-vmm ctl PATH COMMAND...`.
//!
//! ```text
//! host-vmm ctl ──unix socket──▶ server ──console port──▶ guest agent (migration-client)
//!                                 └─────VfOperator─────▶ the 82599 VF model
//! ```

pub mod agent;
pub mod client;
pub mod command;
pub mod server;
#[cfg(test)]
mod test_guest;

pub use agent::{AGENT_TIMEOUT, AgentError, AgentLink};
pub use client::{ClientError, request};
pub use command::{Command, UsageError};
pub use server::{ControlServer, Listener, ServerError, Services};

use std::fmt;

/// The VF's state as the operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VfState {
    /// The VF is plugged into the PCI bus.
    pub present: bool,
    /// Its link is up (as reported in VFLINKS).
    pub link_up: bool,
}

/// Why an operator command on the VF failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VfOpError {
    /// The VF is not plugged in (link changes need it present).
    #[error("the VF is removed; add it first (`vf add`)")]
    NotPresent,
    /// The VF is already plugged in.
    #[error("the VF is already present")]
    AlreadyPresent,
    /// Anything else, said in words.
    #[error("{0}")]
    Failed(String),
}

/// What the control server may do to the emulated VF (implemented next to the VF model).
pub trait VfOperator: Send + Sync + fmt::Debug {
    /// Current state.
    fn state(&self) -> VfState;
    /// Takes the VF's link down or up (the guest sees VFLINKS and a PF control message).
    fn set_link(&self, up: bool) -> Result<(), VfOpError>;
    /// Hot-removes the VF: config space and BARs read all ones, the TAP is no longer served.
    fn remove(&self) -> Result<(), VfOpError>;
    /// Plugs the VF back in at the same slot, reset, with its link up.
    fn add(&self) -> Result<(), VfOpError>;
}
