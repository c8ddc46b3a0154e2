//! host-vmm: the KVM VMM that boots and moves a Roam unikernel.
//!
//! Layers, bottom up (ARCHITECTURE.md; `tests/layers.rs` checks the imports):
//! - [`config`], [`pause`], [`events`], [`memory`], then [`arch`], [`loader`]: plain pieces
//!   with no knowledge of the rest; [`io_thread`] (on [`pause`]);
//! - [`devices`]: device models, tested without KVM (they reach the VM through
//!   [`devices::VmOps`]); [`tap`], their TAP backend;
//! - [`kvm`]: the VM, the vCPU and their saved state (ioctls);
//! - [`roaming`]: a guest away from home, its frames tunnelled to its home agent;
//! - [`device_manager`]: builds, owns, saves and restores a VM's devices;
//! - [`vcpu_gate`] and [`vmm`]: VM assembly and the vCPU run loop;
//! - [`migration`]: moving a running guest between two host-vmm;
//! - [`api`]: the HTTP+JSON API on a Unix socket (parsing, routing, its client);
//! - [`control`]: the VM's lifecycle and operations behind the API (guest agent, VF,
//!   pause, migrations with progress and cancel, the one post-arrival path).
//! - [`mobility`]: the Mobile IPv4 home agent (`host-vmm home-agent`), beside the VMM: it
//!   uses only [`events`].
//!
//! `unsafe` lives only in `kvm` (ioctls), `memory` (memfd), `tap` (two interface ioctls),
//! `peer` (a socket's peer credentials) and `mobility::sys` (netlink, raw and packet
//! sockets, TUN, signalfd).

#![deny(unsafe_code)]

pub mod api;
pub mod arch;
pub mod config;
pub mod control;
pub mod device_manager;
pub mod devices;
pub mod events;
pub mod io_thread;
#[allow(unsafe_code)]
pub mod kvm;
pub mod loader;
#[allow(unsafe_code)]
pub mod memory;
pub mod migration;
/// The Mobile IPv4 home agent: registrations, binding list, its IP-in-IP data path.
pub mod mobility;
pub mod pause;
#[allow(unsafe_code)]
pub mod peer;
pub mod roaming;
#[allow(unsafe_code)]
pub mod tap;
pub mod vcpu_gate;
pub mod vmm;

#[cfg(test)]
mod test_utils;

pub use config::{Cmdline, DeviceConfig, MemSize, RunConfig};
pub use vmm::{EXIT_NO_GUEST_STATUS, EXIT_VMM_FAILED, Error, Outcome, run};
