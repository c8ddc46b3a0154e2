//! The operator's handle on a VF plugged into the PCI bus: link down/up, hot-remove and
//! re-add ([`VfOperator`], driven by `host-vmm ctl`).
//!
//! Lock order is the bus's: the [`PciRoot`] first, then the device (the vCPU's MMIO and
//! configuration accesses take them in that order too; the I/O thread takes the device
//! only).

use super::Ixgbevf;
use crate::devices::pci::PciRoot;
use crate::devices::virtio::net::backend::NetBackend;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The VF's state as the operator sees it (and the API shows it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VfState {
    /// The VF is plugged into the PCI bus.
    pub present: bool,
    /// Its link is up (as reported in VFLINKS).
    pub link_up: bool,
}

/// Why an operator command on the VF failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VfOpError {
    /// The VF is not plugged in (link changes need it present).
    #[error("the VF is removed; add it first (`vf add`)")]
    NotPresent,
    /// The VF is already plugged in.
    #[error("the VF is already present")]
    AlreadyPresent,
    /// Anything else, said in words.
    #[error("{0}")]
    Failed(String),
}

/// What the control server may do to the emulated VF (implemented by [`VfHandle`]).
pub trait VfOperator: Send + Sync + fmt::Debug {
    /// Current state.
    fn state(&self) -> VfState;
    /// Takes the VF's link down or up (the guest sees VFLINKS and a PF control message).
    fn set_link(&self, up: bool) -> Result<(), VfOpError>;
    /// Hot-removes the VF: config space and BARs read all ones, the TAP is no longer served.
    fn remove(&self) -> Result<(), VfOpError>;
    /// Plugs the VF back in at the same slot, reset, with its link up.
    fn add(&self) -> Result<(), VfOpError>;
}

/// A cloneable handle on the VF at `slot` of `root`.
pub struct VfHandle<B: NetBackend> {
    dev: Arc<Mutex<Ixgbevf<B>>>,
    root: Arc<Mutex<PciRoot>>,
    slot: u8,
}

impl<B: NetBackend> Clone for VfHandle<B> {
    fn clone(&self) -> Self {
        VfHandle {
            dev: self.dev.clone(),
            root: self.root.clone(),
            slot: self.slot,
        }
    }
}

impl<B: NetBackend> std::fmt::Debug for VfHandle<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfHandle")
            .field("slot", &self.slot)
            .finish()
    }
}

impl<B: NetBackend> VfHandle<B> {
    /// The handle for `dev`, which sits at `slot` of `root`.
    pub fn new(dev: Arc<Mutex<Ixgbevf<B>>>, root: Arc<Mutex<PciRoot>>, slot: u8) -> Self {
        VfHandle { dev, root, slot }
    }

    /// The device (for tests and harnesses).
    pub fn device(&self) -> &Arc<Mutex<Ixgbevf<B>>> {
        &self.dev
    }
}

impl<B: NetBackend + 'static> VfOperator for VfHandle<B> {
    fn state(&self) -> VfState {
        let dev = lock(&self.dev);
        VfState {
            present: dev.present,
            link_up: dev.state.link_up,
        }
    }

    fn set_link(&self, up: bool) -> Result<(), VfOpError> {
        let mut dev = lock(&self.dev);
        if !dev.present {
            return Err(VfOpError::NotPresent);
        }
        dev.set_link(up);
        log::info!("ixgbevf: link {}", if up { "up" } else { "down" });
        Ok(())
    }

    fn remove(&self) -> Result<(), VfOpError> {
        let mut root = lock(&self.root);
        if root.unplug(self.slot).is_none() {
            return Err(VfOpError::NotPresent);
        }
        lock(&self.dev).present = false;
        log::info!("ixgbevf: removed from PCI slot {}", self.slot);
        Ok(())
    }

    fn add(&self) -> Result<(), VfOpError> {
        let mut root = lock(&self.root);
        if root.is_plugged(self.slot) {
            return Err(VfOpError::AlreadyPresent);
        }
        {
            let mut dev = lock(&self.dev);
            dev.hot_reset()
                .map_err(|e| VfOpError::Failed(format!("cannot reset the VF: {e}")))?;
            dev.present = true;
        }
        if let Err(e) = root.replug(self.slot, self.dev.clone()) {
            lock(&self.dev).present = false;
            return Err(VfOpError::Failed(format!(
                "cannot plug the VF back in: {e}"
            )));
        }
        log::info!("ixgbevf: added back at PCI slot {}", self.slot);
        Ok(())
    }
}
