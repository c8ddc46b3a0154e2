//! The devices' saved states as they cross in a migration: one section per device, named by
//! the device's id, in the manager's registration order. Each section is the device's own
//! [`Persist::State`] encoded with postcard, so the manager saves and restores devices it
//! knows nothing about beyond their registration.

use crate::devices::{DeviceStateError, Persist};
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, PoisonError};

/// Every device's saved state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// One per device, in the source's registration order.
    pub sections: Vec<DeviceSection>,
}

/// One device's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSection {
    /// The device's id ("serial", "pci", "virtio-net", "virtio-console", "ixgbevf").
    pub id: String,
    /// Whether the other side must have this device (a hot-unplugged one need not).
    pub needed: bool,
    /// The device's state, postcard-encoded.
    pub bytes: Vec<u8>,
}

/// A registered device as the manager saves and restores it.
pub trait Persisted: Send + Sync {
    /// Its section.
    fn save(&self, id: &str) -> Result<DeviceSection, DeviceStateError>;
    /// Decodes and applies a section.
    fn restore(&self, id: &'static str, bytes: &[u8]) -> Result<(), DeviceStateError>;
    /// The source had no such device: whether this one can start absent.
    fn absent_at_source(&self) -> bool;
}

impl<T: Persist + Send> Persisted for Mutex<T> {
    fn save(&self, id: &str) -> Result<DeviceSection, DeviceStateError> {
        let state = self.lock().unwrap_or_else(PoisonError::into_inner).save();
        let bytes = postcard::to_allocvec(&state)
            .map_err(|e| DeviceStateError::invalid("device manager", id, e.to_string()))?;
        Ok(DeviceSection {
            id: id.to_owned(),
            needed: T::needed(&state),
            bytes,
        })
    }

    fn restore(&self, id: &'static str, bytes: &[u8]) -> Result<(), DeviceStateError> {
        let state: T::State = postcard::from_bytes(bytes).map_err(|e| {
            DeviceStateError::invalid(id, "state", format!("cannot be decoded: {e}"))
        })?;
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .restore(state)
    }

    fn absent_at_source(&self) -> bool {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .absent_at_source()
    }
}
