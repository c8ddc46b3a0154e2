//! Roam's network layer: one smoltcp `Interface` over one [`drivers::net::NetDevice`].
//!
//! - [`config`] parses the static IPv4 setup from the kernel command line
//!   (`ip=198.18.0.10/24 gw=198.18.0.1`).
//! - [`phy`] adapts a `NetDevice` to smoltcp's `phy::Device` without copying frames.
//! - [`stack`] runs the interface: ARP and ICMP echo (smoltcp), gratuitous ARP on link up
//!   and on every NIC switch.
//! - [`demux`] keeps each TCP socket in a set of its own and picks a frame's socket from
//!   its headers, so per-frame work does not grow with the number of connections.
//! - [`failover`] is a `NetDevice` over two NICs under one MAC (an SR-IOV VF and
//!   virtio-net): transmit on the active one, receive from both, explicit and automatic
//!   switching, per-NIC counters.
//! - [`synguard`] lets a listener whose handshake queue is full take only resent SYNs.
//! - [`socket`] gives TCP and UDP sockets POSIX semantics (descriptors, bind, listen
//!   backlog, accept, connect, half-close, readiness) for the kernel's socket calls.
//!
//! The crate has no globals, no `unsafe`, and never reads a clock: the kernel passes the
//! time to [`Stack::poll`] and sleeps until [`Stack::poll_at`] or the next device interrupt.
//! It never touches registers or DMA; everything below the `NetDevice` trait is the
//! drivers' business.
//!
//! ```text
//! let config = netstack::config::parse(cmdline_words)?.expect("ip= given");
//! let mut stack = netstack::Stack::new(device, config, seed, now);
//! stack.check_link(); // announces the address once the link is up
//! loop {
//!     stack.poll(now());
//!     sleep_until_interrupt_or(stack.poll_at(now()));
//! }
//! ```

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod config;
pub mod demux;
pub mod failover;
pub mod phy;
pub mod socket;
pub mod stack;
pub mod synguard;

pub use config::NetConfig;
pub use failover::Failover;
pub use smoltcp::time::{Duration, Instant};
pub use socket::SocketTable;
pub use stack::Stack;

#[cfg(test)]
mod tests;
