//! The PCI bus's migration state as plain data: CONFIG_ADDRESS, the host bridge's header,
//! the next free firmware address, and per slot its first IDs, presence and firmware's BAR
//! addresses. A function's own header and MSI-X state are its own ([`ConfigSpaceState`],
//! [`MsixState`](super::msix::MsixState)); checking a saved bus needs the live slots, so
//! [`PciRoot`](super::PciRoot)'s `restore` does it.

use super::config::ConfigSpaceState;
use serde::{Deserialize, Serialize};

/// One slot as migration saves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciSlotState {
    /// Vendor ID of the function first attached.
    pub vendor: u16,
    /// Its device ID.
    pub device: u16,
    /// Whether a function is plugged in now.
    pub plugged: bool,
    /// Firmware's BAR addresses: (BAR index, address).
    pub bars: Vec<(u8, u64)>,
}

/// The bus as migration saves it (see [the bus's documentation](super)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciRootState {
    /// CONFIG_ADDRESS.
    pub address: u32,
    /// The host bridge's header.
    pub bridge: ConfigSpaceState,
    /// Next free address for firmware-style BAR assignment.
    pub next_bar: u64,
    /// Slots 1.. (slot 0 is the host bridge).
    pub slots: Vec<PciSlotState>,
}
