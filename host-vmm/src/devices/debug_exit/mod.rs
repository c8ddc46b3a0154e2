//! The debug-exit device at port 0xF4 (QEMU's `isa-debug-exit` interface): the guest writes
//! its exit status there and host-vmm stops the VM and exits with it.
//!
//! The device only records the request in an [`ExitRequest`]; the run loop checks it after
//! each port write, so the device needs no handle on the VM.
//!
//! It has no migration state (hence no `state.rs`): the one request it records ends the VM.

#[cfg(test)]
mod tests;

use super::BusDevice;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The device's port.
pub const DEBUG_EXIT_BASE: u64 = 0xF4;
/// Its size: one 32-bit register.
pub const DEBUG_EXIT_LEN: u64 = 4;

/// Set in the shared word once a status was written.
const REQUESTED: u32 = 1 << 8;

/// A shared "the guest asked to exit with this status" flag.
#[derive(Clone, Debug, Default)]
pub struct ExitRequest(Arc<AtomicU32>);

impl ExitRequest {
    /// Records `status` (the first request wins).
    pub fn request(&self, status: u8) {
        let _ = self.0.compare_exchange(
            0,
            REQUESTED | u32::from(status),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The requested status, if any.
    pub fn status(&self) -> Option<u8> {
        let word = self.0.load(Ordering::Acquire);
        (word & REQUESTED != 0).then_some((word & 0xFF) as u8)
    }
}

/// The device.
#[derive(Debug)]
pub struct DebugExit {
    request: ExitRequest,
}

impl DebugExit {
    /// A device that records writes in `request`.
    pub fn new(request: ExitRequest) -> Self {
        DebugExit { request }
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    /// A write of 1, 2 or 4 bytes at offset 0 is the status, zero-extended; the process exit
    /// status holds 8 bits, so only the low byte is kept.
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || !matches!(data.len(), 1 | 2 | 4) {
            log::debug!(
                "debug-exit: ignoring a {}-byte write at offset {offset}",
                data.len()
            );
            return;
        }
        let mut word = [0u8; 4];
        word[..data.len()].copy_from_slice(data);
        let status = u32::from_le_bytes(word);
        log::debug!("debug-exit: the guest exits with status {status}");
        self.request.request((status & 0xFF) as u8);
    }
}
