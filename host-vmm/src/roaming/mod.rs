//! A guest away from home (wide-area moves): the destination host-vmm keeps the guest's
//! address by tunnelling its traffic to and from its home agent, in its own device path.
//!
//! - [`frames`]: what happens to the guest's frames and the tunnel's packets (pure);
//! - [`tunnel`]: the NIC backend over a raw IP-in-IP socket;
//! - [`registration`]: Mobile IPv4 registration with the home agent, and its refreshes.

pub mod frames;
pub mod registration;
pub mod tunnel;

pub use tunnel::{MipTunnel, TunnelConfig};
