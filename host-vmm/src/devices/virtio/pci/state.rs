//! The virtio PCI transport's migration state as plain data: the function's header and
//! MSI-X, the common configuration, the ISR and every queue's registers and ring positions
//! ([`VirtioPciState`], [`VirtqueueState`]), with the device's own part. Checking a saved one
//! needs the live function, so the transport's `restore` does it.

use crate::devices::pci::config::ConfigSpaceState;
use crate::devices::pci::msix::MsixState;
use crate::devices::virtio::VirtioDeviceState;
use serde::{Deserialize, Serialize};

/// One queue's registers and ring positions for migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtqueueState {
    /// Size the driver chose.
    pub size: u16,
    /// MSI-X vector for used buffers.
    pub msix_vector: u16,
    /// queue_enable.
    pub enabled: bool,
    /// Descriptor table address.
    pub desc: u64,
    /// Driver area (available ring) address.
    pub driver: u64,
    /// Device area (used ring) address.
    pub device: u64,
    /// Next available-ring entry the device takes (0 while the device does not run).
    pub next_avail: u16,
    /// Next used-ring entry the device fills (0 while the device does not run).
    pub next_used: u16,
}

/// A virtio PCI function's migration state (see [the transport's documentation](super)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioPciState {
    /// The configuration header.
    pub config: ConfigSpaceState,
    /// MSI-X table and pending bits.
    pub msix: MsixState,
    /// device_feature_select.
    pub device_feature_select: u32,
    /// driver_feature_select.
    pub driver_feature_select: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// device_status.
    pub status: u8,
    /// config_generation.
    pub config_generation: u8,
    /// config_msix_vector.
    pub config_vector: u16,
    /// queue_select.
    pub queue_select: u16,
    /// The ISR.
    pub isr: u8,
    /// Per queue.
    pub queues: Vec<VirtqueueState>,
    /// The device's own part.
    pub device: VirtioDeviceState,
}
