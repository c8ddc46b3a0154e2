//! The one save/restore trait every device model implements ([`Persist`]), and the error
//! a restore returns ([`DeviceStateError`]).
//!
//! A device's state is plain data (serde, `Clone`, `Debug`, `PartialEq`). `save` reads it
//! (vCPU stopped, I/O thread paused); `restore` applies a saved state to a freshly built
//! device of the same kind: the destination builds its devices from its own configuration
//! (TAP names may differ, MACs must match), then restores them. In the spirit of rust-vmm's
//! `TryFrom<State>`, a restore checks the whole state before it changes anything the guest
//! can see; a value a hostile stream made up gives a [`DeviceStateError`] naming the device
//! and the field, never a panic or an out-of-bounds index. The order in which devices are
//! restored is the device manager's business, not the device's.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Save to plain data, restore from it after validating it.
pub trait Persist {
    /// The device's saved state.
    type State: Clone + std::fmt::Debug + Serialize + DeserializeOwned;

    /// The state as it is now.
    fn save(&self) -> Self::State;

    /// Checks `state`, then applies it; an invalid state changes nothing.
    fn restore(&mut self, state: Self::State) -> Result<(), DeviceStateError>;

    /// Whether a saved `state` needs this kind of device on the other side at all (a
    /// hot-unplugged device does not).
    fn needed(_state: &Self::State) -> bool {
        true
    }

    /// The source had no such device: returns whether this one can start absent (and
    /// makes it so).
    fn absent_at_source(&mut self) -> bool {
        false
    }
}

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
