//! Device state for migration: the error every `restore_state` returns and
//! [`DevicesState`], one struct holding the saved state of every device host-vmm has.
//!
//! Every device model has a plain-data state struct (serde, `Clone`, `Debug`, `PartialEq`),
//! a `save_state(&self)` and a `restore_state(&mut self, state)` that applies a saved state
//! to a freshly built device of the same kind: the destination builds its devices from its
//! own command line (TAP names may differ, MACs must match), then applies the states. A
//! restore validates everything before it changes anything that the guest can see; a value a
//! hostile stream made up gives a [`DeviceStateError`] naming the device and the field,
//! never a panic or an out-of-bounds index.
//!
//! Restore order (what the destination does, vCPUs and the I/O thread not running yet):
//! each PCI function ([`crate::devices::virtio::pci::VirtioPci::restore_state`],
//! [`crate::devices::ixgbevf::Ixgbevf::restore_state`]), then the
//! [`crate::devices::pci::PciRoot`] (which rebuilds BAR decoding from the functions' restored
//! headers and unplugs slots that were empty on the source), then the serial port. Only then
//! start (or resume) the I/O thread.
//!
//! What the structs hold: [`crate::devices::serial::SerialState`] (the 16550 registers and
//! receive FIFO), [`crate::devices::pci::PciRootState`] (CONFIG_ADDRESS, the host bridge's
//! header, which device IDs sit in which slot, plugged or not, and firmware's BAR
//! addresses), [`crate::devices::virtio::pci::VirtioPciState`] (the function's header and
//! MSI-X table, the common configuration and each queue's registers and ring positions, plus
//! the device's own part), [`crate::devices::ixgbevf::IxgbevfState`] (header, MSI-X table,
//! presence and every VF register including mailbox and interrupt registers).

use super::ixgbevf::IxgbevfState;
use super::pci::PciRootState;
use super::serial::SerialState;
use super::virtio::pci::VirtioPciState;
use serde::{Deserialize, Serialize};

/// A saved device state that cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceStateError {
    /// A value no device of this kind can be in (out of range, inconsistent).
    #[error("{device}: saved {field} is invalid: {reason}")]
    Invalid {
        /// The device ("virtio-net", "ixgbevf", "pci", "serial").
        device: &'static str,
        /// The field, e.g. "queue 1 size".
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The state is valid but belongs to a different device (IDs, layout, MAC, sizes).
    #[error("{device}: saved {field} does not match this device: {reason}")]
    Mismatch {
        /// The device.
        device: &'static str,
        /// The field.
        field: String,
        /// How it differs.
        reason: String,
    },
}

impl DeviceStateError {
    /// An [`DeviceStateError::Invalid`].
    pub fn invalid(
        device: &'static str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DeviceStateError::Invalid {
            device,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A [`DeviceStateError::Mismatch`].
    pub fn mismatch(
        device: &'static str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        DeviceStateError::Mismatch {
            device,
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error with `prefix` put before the field name (e.g. "queue 1 ").
    pub fn in_field(self, prefix: &str) -> Self {
        match self {
            DeviceStateError::Invalid {
                device,
                field,
                reason,
            } => DeviceStateError::Invalid {
                device,
                field: format!("{prefix}{field}"),
                reason,
            },
            DeviceStateError::Mismatch {
                device,
                field,
                reason,
            } => DeviceStateError::Mismatch {
                device,
                field: format!("{prefix}{field}"),
                reason,
            },
        }
    }
}

/// The saved state of every device of a host-vmm (`None`: the source had no such device).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DevicesState {
    /// COM1.
    pub serial: SerialState,
    /// The PCI host bridge and bus 0.
    pub pci: PciRootState,
    /// virtio-net (`--net`).
    pub net: Option<VirtioPciState>,
    /// The emulated 82599 VF (`--vf`).
    pub vf: Option<IxgbevfState>,
    /// The virtio-console of the control channel.
    pub console: Option<VirtioPciState>,
}
