//! A guest away from home (wide-area moves): the destination host-vmm keeps the guest's
//! address, either by tunnelling its traffic to and from its home agent (Mobile IPv4) or by
//! routing it into a TAP while the edges translate its address to its location address
//! here (network paging), in its own device path.
//!
//! - [`frames`]: what happens to the guest's frames and the tunnel's packets (pure);
//! - [`tunnel`]: the NIC backend over a raw IP-in-IP socket (`--net mip`);
//! - [`routed`]: the NIC backend over a TAP the host routes the guest's address into
//!   (`--net nat`);
//! - [`registration`]: registration with the home agent or the edges (the same Mobile IPv4
//!   Requests), and its refreshes.

pub mod frames;
pub mod registration;
pub mod routed;
pub mod tunnel;

pub use routed::{RoutedConfig, RoutedError, RoutedPort};
pub use tunnel::{MipTunnel, TunnelConfig};
