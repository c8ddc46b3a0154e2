//! MSI-X (PCI 3.0, 6.8.2): the capability's control bits, the vector table and the pending
//! bit array, and delivery through irqfds.
//!
//! Each vector owns an interrupt line (a GSI with an irqfd bound to it by the VMM). Sending
//! vector `n` is one eventfd write; what that write means (address and data) lives in the
//! VM's GSI routing table, which this model keeps in step with the guest's table through
//! [`VmOps::set_msi_route`] whenever an unmasked entry's message changes. A masked vector (or
//! a masked function) is not sent: its pending bit is set and it goes out on unmask, as the
//! specification requires.

use crate::devices::DeviceStateError;
use crate::devices::vm_ops::{MsiMessage, VmOps};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// MSI-X capability ID.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: all vectors masked.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: this vector masked.
const VECTOR_MASKED: u32 = 1;
/// Largest table the capability can describe.
pub const MAX_VECTORS: usize = 2048;

/// One vector's interrupt line: the GSI and the irqfd bound to it.
#[derive(Debug)]
pub struct MsixVector {
    /// The GSI whose route this vector's message is written to.
    pub gsi: u32,
    /// Writing 1 raises `gsi`.
    pub irqfd: EventFd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    /// The state after reset: everything zero, masked.
    const RESET: Entry = Entry {
        address_lo: 0,
        address_hi: 0,
        data: 0,
        control: VECTOR_MASKED,
    };

    fn masked(&self) -> bool {
        self.control & VECTOR_MASKED != 0
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.address_lo) | (u64::from(self.address_hi) << 32),
            data: self.data,
        }
    }
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    vectors: Vec<MsixVector>,
    /// The message each vector's GSI currently routes to, as last told to the VM.
    routed: Vec<Option<MsiMessage>>,
    enabled: bool,
    function_masked: bool,
    vm: Arc<dyn VmOps>,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish()
    }
}

impl Msix {
    /// A table with one entry per line in `vectors` (at least 1, at most [`MAX_VECTORS`]),
    /// everything masked and disabled.
    pub fn new(vectors: Vec<MsixVector>, vm: Arc<dyn VmOps>) -> Self {
        let n = vectors.len().clamp(1, MAX_VECTORS);
        Msix {
            entries: vec![Entry::RESET; n],
            pending: vec![false; n],
            routed: vec![None; n],
            vectors,
            enabled: false,
            function_masked: false,
            vm,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty (never: it has at least one entry).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size of the table in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Size of the pending bit array in bytes (whole qwords).
    pub fn pba_size(&self) -> u64 {
        (self.entries.len() as u64).div_ceil(64) * 8
    }

    /// The capability body after its ID and next bytes: message control, then table and PBA
    /// offset/BIR. The second value is the write mask (enable and function mask only).
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> ([u8; 10], [u8; 10]) {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&((self.entries.len() - 1) as u16).to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(table_bar & 7)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(pba_bar & 7)).to_le_bytes());
        let mut wmask = [0u8; 10];
        wmask[0..2].copy_from_slice(&(CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes());
        (body, wmask)
    }

    /// Whether the guest enabled MSI-X (INTx is then off).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The guest wrote message control.
    pub fn set_control(&mut self, control: u16) {
        let was_enabled = self.enabled;
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if self.enabled && !was_enabled {
            for v in 0..self.entries.len() {
                self.sync_route(v);
            }
        }
        self.deliver_unmasked_pending();
    }

    /// Reads from the vector table.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((index, field)) = self.locate(offset, data.len()) else {
            return;
        };
        let e = &self.entries[index];
        let words = [e.address_lo, e.address_hi, e.data, e.control];
        match data.len() {
            4 => data.copy_from_slice(&words[field].to_le_bytes()),
            8 => {
                data[..4].copy_from_slice(&words[field].to_le_bytes());
                data[4..].copy_from_slice(&words[field + 1].to_le_bytes());
            }
            _ => {}
        }
    }

    /// Writes to the vector table; routes and pending vectors follow.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some((index, field)) = self.locate(offset, data.len()) else {
            return;
        };
        let mut words = [0u32; 2];
        for (w, chunk) in words.iter_mut().zip(data.chunks_exact(4)) {
            *w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        for (i, &word) in words.iter().take(data.len() / 4).enumerate() {
            let e = &mut self.entries[index];
            match field + i {
                0 => e.address_lo = word,
                1 => e.address_hi = word,
                2 => e.data = word,
                _ => e.control = word & VECTOR_MASKED,
            }
        }
        self.sync_route(index);
        self.deliver_unmasked_pending();
    }

    /// Reads from the pending bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let first = (offset + i as u64).saturating_mul(8);
            *byte = (0..8u64)
                .filter(|bit| {
                    usize::try_from(first + bit)
                        .ok()
                        .and_then(|v| self.pending.get(v))
                        .copied()
                        .unwrap_or(false)
                })
                .fold(0, |acc, bit| acc | (1 << bit));
        }
    }

    /// Sends `vector`; a masked one is left pending. Returns `false` when MSI-X is off or
    /// the vector does not exist (the caller then falls back to INTx or drops it).
    pub fn notify(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        if !self.enabled || v >= self.entries.len() {
            return false;
        }
        if self.function_masked || self.entries[v].masked() {
            self.pending[v] = true;
        } else {
            self.fire(v);
        }
        true
    }

    /// Table entry and dword within it for an aligned 4- or 8-byte access.
    fn locate(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        if !(len == 4 || len == 8) || !offset.is_multiple_of(len as u64) {
            return None;
        }
        let index = usize::try_from(offset / ENTRY_SIZE).ok()?;
        let field = usize::try_from((offset % ENTRY_SIZE) / 4).ok()?;
        (index < self.entries.len()).then_some((index, field))
    }

    /// Points vector `v`'s GSI at its message when the vector can fire and the message
    /// changed; masked vectors keep their old route (they cannot fire).
    fn sync_route(&mut self, v: usize) {
        let entry = self.entries[v];
        if !self.enabled || entry.masked() || self.routed[v] == Some(entry.message()) {
            return;
        }
        let Some(line) = self.vectors.get(v) else {
            return;
        };
        match self.vm.set_msi_route(line.gsi, Some(entry.message())) {
            Ok(()) => self.routed[v] = Some(entry.message()),
            Err(e) => log::warn!("msix: cannot route vector {v} (gsi {}): {e}", line.gsi),
        }
    }

    fn deliver_unmasked_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for v in 0..self.entries.len() {
            if self.pending[v] && !self.entries[v].masked() {
                self.pending[v] = false;
                self.fire(v);
            }
        }
    }

    fn fire(&self, v: usize) {
        if let Some(line) = self.vectors.get(v)
            && let Err(e) = line.irqfd.write(1)
        {
            log::warn!("msix: cannot signal vector {v}: {e}");
        }
    }
}

/// One vector table entry as the guest programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixEntryState {
    /// Message address, low dword.
    pub address_lo: u32,
    /// Message address, high dword.
    pub address_hi: u32,
    /// Message data.
    pub data: u32,
    /// Vector control (bit 0: masked).
    pub control: u32,
}

/// A function's MSI-X state for migration: enable and function mask (also in the
/// capability's message control), the vector table and the pending bits. Which GSI each
/// vector uses is the destination's own wiring; restore re-points those GSIs at the saved
/// messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    /// MSI-X enable.
    pub enabled: bool,
    /// Function mask.
    pub function_masked: bool,
    /// The vector table.
    pub entries: Vec<MsixEntryState>,
    /// Pending bits, one per entry.
    pub pending: Vec<bool>,
}

impl MsixState {
    /// The message control bits (enable, function mask) this state stands for.
    pub fn control_bits(&self) -> u16 {
        let mut c = 0;
        if self.enabled {
            c |= CONTROL_ENABLE;
        }
        if self.function_masked {
            c |= CONTROL_FUNCTION_MASK;
        }
        c
    }
}

impl Msix {
    /// The table as migration saves it.
    pub fn save_state(&self) -> MsixState {
        MsixState {
            enabled: self.enabled,
            function_masked: self.function_masked,
            entries: self
                .entries
                .iter()
                .map(|e| MsixEntryState {
                    address_lo: e.address_lo,
                    address_hi: e.address_hi,
                    data: e.data,
                    control: e.control,
                })
                .collect(),
            pending: self.pending.clone(),
        }
    }

    /// Checks `state` against this table's size (nothing changes).
    pub fn check_state(
        &self,
        state: &MsixState,
        device: &'static str,
    ) -> Result<(), DeviceStateError> {
        let n = self.entries.len();
        if state.entries.len() != n {
            return Err(DeviceStateError::mismatch(
                device,
                "MSI-X table",
                format!("{} entries, this device has {n}", state.entries.len()),
            ));
        }
        if state.pending.len() != n {
            return Err(DeviceStateError::invalid(
                device,
                "MSI-X pending bits",
                format!("{} bits for {n} entries", state.pending.len()),
            ));
        }
        if let Some(v) = state
            .entries
            .iter()
            .position(|e| e.control & !VECTOR_MASKED != 0)
        {
            return Err(DeviceStateError::invalid(
                device,
                format!("MSI-X entry {v} vector control"),
                "reserved bits set",
            ));
        }
        Ok(())
    }

    /// Applies a state [`Msix::check_state`] accepted: the table, pending bits, enable and
    /// mask, then routes every unmasked vector's GSI to its message through the VM (as the
    /// guest's own writes did on the source). Pending vectors stay pending until unmasked.
    pub fn restore_state(&mut self, state: &MsixState) {
        for (e, s) in self.entries.iter_mut().zip(&state.entries) {
            *e = Entry {
                address_lo: s.address_lo,
                address_hi: s.address_hi,
                data: s.data,
                control: s.control & VECTOR_MASKED,
            };
        }
        for (p, &s) in self.pending.iter_mut().zip(&state.pending) {
            *p = s;
        }
        self.routed.fill(None);
        self.enabled = state.enabled;
        self.function_masked = state.function_masked;
        for v in 0..self.entries.len() {
            self.sync_route(v);
        }
        self.deliver_unmasked_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::vm_ops::RecordingVmOps;

    fn msix(n: u32) -> (Msix, Arc<RecordingVmOps>) {
        let vm = Arc::new(RecordingVmOps::default());
        let vectors = (0..n)
            .map(|i| MsixVector {
                gsi: 24 + i,
                irqfd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            })
            .collect();
        (Msix::new(vectors, vm.clone()), vm)
    }

    fn fired(m: &Msix, v: usize) -> bool {
        m.vectors[v].irqfd.read().is_ok()
    }

    fn program(m: &mut Msix, v: u64, address: u64, data: u32) {
        m.write_table(v * 16, &address.to_le_bytes());
        m.write_table(v * 16 + 8, &data.to_le_bytes());
    }

    #[test]
    fn entries_start_masked_and_read_back() {
        let (mut m, _) = msix(3);
        let mut b = [0u8; 4];
        m.read_table(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "masked after reset");
        program(&mut m, 1, 0xFEE0_0000, 0x4041);
        let mut q = [0u8; 8];
        m.read_table(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xFEE0_0000);
        m.read_table(24, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x4041);
        // Misaligned, odd-sized and out-of-table accesses do nothing and read zero.
        m.write_table(17, &[1, 2, 3, 4]);
        m.write_table(16, &[1, 2]);
        m.write_table(48, &[0; 4]);
        m.read_table(48, &mut b);
        assert_eq!(b, [0; 4]);
        m.read_table(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xFEE0_0000);
    }

    #[test]
    fn vectors_fire_only_when_enabled_and_unmasked() {
        let (mut m, vm) = msix(2);
        program(&mut m, 0, 0xFEE0_0000, 0x30);
        assert!(!m.notify(0), "disabled: the caller falls back to INTx");
        m.set_control(CONTROL_ENABLE);
        assert!(m.notify(0));
        assert!(!fired(&m, 0), "still masked");
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        assert!(vm.recorded().routes.is_empty(), "no route while masked");
        m.write_table(12, &0u32.to_le_bytes()); // unmask
        assert!(fired(&m, 0), "pending vector sent on unmask");
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        assert_eq!(
            vm.recorded().routes.get(&24),
            Some(&MsiMessage {
                address: 0xFEE0_0000,
                data: 0x30
            })
        );
        assert!(m.notify(0));
        assert!(fired(&m, 0));
        assert!(!m.notify(7), "no such vector");
        assert!(!m.notify(0xFFFF), "VIRTIO_MSI_NO_VECTOR");
    }

    #[test]
    fn function_mask_holds_every_vector() {
        let (mut m, _) = msix(2);
        program(&mut m, 1, 0xFEE0_0000, 0x31);
        m.write_table(16 + 12, &0u32.to_le_bytes());
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert!(m.notify(1));
        assert!(!fired(&m, 1));
        m.set_control(CONTROL_ENABLE);
        assert!(fired(&m, 1));
    }

    #[test]
    fn routes_change_only_when_an_unmasked_message_changes() {
        let (mut m, vm) = msix(1);
        m.set_control(CONTROL_ENABLE);
        program(&mut m, 0, 0xFEE0_0000, 0x30);
        m.write_table(12, &0u32.to_le_bytes());
        assert_eq!(vm.recorded().route_updates, 1);
        m.write_table(12, &0u32.to_le_bytes());
        assert_eq!(vm.recorded().route_updates, 1, "same message: no VM call");
        m.write_table(12, &1u32.to_le_bytes());
        program(&mut m, 0, 0xFEE0_1000, 0x31);
        assert_eq!(vm.recorded().route_updates, 1, "masked: no VM call");
        m.write_table(12, &0u32.to_le_bytes());
        assert_eq!(vm.recorded().route_updates, 2);
        assert_eq!(vm.recorded().routes[&24].address, 0xFEE0_1000);
    }

    #[test]
    fn capability_describes_the_table() {
        let (m, _) = msix(3);
        let (body, wmask) = m.capability(1, 0, 1, 0x800);
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 2, "table size - 1");
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x801);
        assert_eq!(u16::from_le_bytes([wmask[0], wmask[1]]), 0xC000);
        assert_eq!(m.table_size(), 48);
        assert_eq!(m.pba_size(), 8);
    }
}
