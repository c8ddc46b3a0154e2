//! The control plane: one host-vmm's VM and everything an operator or orchestrator does
//! with it, whichever way they ask (the HTTP API, `host-vmm run`/`receive`, `host-vmm ctl`).
//!
//! - [`controller`]: the VM's lifecycle (create, boot, pause, resume, shutdown, delete),
//!   migrations in both directions with progress and cancel, the guest agent's NIC
//!   operations, the VF's host-side operations, and the one post-arrival path;
//! - [`job`]: an outgoing migration as the controller follows it;
//! - [`agent`]: the host side of the guest-agent protocol (over the virtio-console port):
//!   sequence numbers, timeout, late replies;
//! - [`api_backend`]: the API's requests carried out by the controller;
//! - [`command`] and [`ctl`]: `host-vmm ctl`'s words, its calls to the API, and how its
//!   answers print.
//!
//! ```text
//! curl / ch-remote / host-vmm ctl ──HTTP──▶ api ──▶ Controller ──console port──▶ guest agent
//!                                                    ├──VfOperator──▶ the 82599 VF model
//!                                                    └──migration::{source,destination}
//! ```

pub mod agent;
pub mod api_backend;
pub mod command;
pub mod controller;
pub mod ctl;
pub mod job;
#[cfg(test)]
mod test_guest;

pub use agent::{AGENT_TIMEOUT, AgentError, AgentLink};
pub use api_backend::ApiBackend;
pub use command::{Command, UsageError};
pub use controller::{Controller, Info, Mode, NicAnswer, NicOp, OpError, VfOp};
pub use job::{JobState, JobView};
