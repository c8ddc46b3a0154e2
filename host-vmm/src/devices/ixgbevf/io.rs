//! The VF's work on the I/O thread: when its backend becomes readable, move the waiting
//! frames into RX (or drop them while the VF is removed or cannot take them). Transmit needs
//! no thread: it runs inside the guest's TDT write.

use super::Ixgbevf;
use crate::devices::virtio::net::backend::NetBackend;
use crate::io_thread::{Interest, IoHandler};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, PoisonError};

/// Serves one VF's backend on the I/O thread.
pub struct IxgbevfHandler<B: NetBackend> {
    dev: Arc<Mutex<Ixgbevf<B>>>,
    fd: RawFd,
}

impl<B: NetBackend> IxgbevfHandler<B> {
    /// A handler for the VF behind `dev` (it watches the backend's ready fd, edge-triggered).
    pub fn new(dev: &Arc<Mutex<Ixgbevf<B>>>) -> Self {
        let fd = dev
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .backend()
            .ready_fd();
        IxgbevfHandler {
            dev: dev.clone(),
            fd,
        }
    }
}

impl<B: NetBackend> IoHandler for IxgbevfHandler<B> {
    fn interests(&self) -> Vec<Interest> {
        vec![Interest::edge(self.fd)]
    }

    fn handle(&mut self, _index: usize) {
        // Drains the backend: edge-triggered readiness comes back only for new frames.
        self.dev
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .poll_backend();
    }
}
