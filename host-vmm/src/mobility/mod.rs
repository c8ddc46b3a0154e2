//! Mobile IPv4 (RFC 5944) on the host: `host-vmm home-agent`, the home agent that keeps a
//! moved VM reachable at its home address by tunnelling its packets to wherever it runs now.
//!
//! (Work in progress: the registration handling joins once the `mip` crate is in.)

pub mod arp;
pub mod binding;
pub mod datapath;
pub mod netlink;
pub mod state;
#[allow(unsafe_code)]
mod sys;
pub mod tunnel;
