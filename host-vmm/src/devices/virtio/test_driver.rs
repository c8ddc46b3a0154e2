//! A minimal virtio-net driver for tests: it programs a [`VirtioPci`] through its BARs and
//! config space exactly as a guest would, lays split queues out in a small guest memory, and
//! reads back what the device did. No KVM, no threads (tests call the I/O-thread entry
//! points themselves), no TAP (a [`MemBackend`] pair).

use super::net::backend::{MemBackend, MemPeer, mem_pair};
use super::net::{HEADER_LEN, Net, RX, TX};
use super::pci::{IntxLine, MSIX_BAR, VIRTIO_BAR, VirtioPci};
use super::{STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK};
use crate::devices::Persist;
use crate::devices::pci::PciDevice;
use crate::devices::pci::msix::{CONTROL_ENABLE, MsixVector};
use crate::devices::vm_ops::RecordingVmOps;
use crate::memory::GuestMemoryMmap;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM size of the test machine.
pub const RAM: u64 = 0x10_0000;
/// Queue size the driver picks.
pub const QSIZE: u16 = 16;
/// Where queue `q`'s descriptor table, available ring and used ring go.
pub fn rings(q: usize) -> (u64, u64, u64) {
    let base = 0x1_0000 + 0x1_0000 * q as u64;
    (base, base + 0x1000, base + 0x2000)
}
/// Where buffers go.
pub const BUFFERS: u64 = 0x8_0000;

/// The device under test and everything around it.
pub struct Driver {
    /// The transport with the net device behind it.
    pub dev: VirtioPci<Net<MemBackend>>,
    /// The other end of the device's backend.
    pub peer: MemPeer,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// What the device asked of the VM.
    pub vm: Arc<RecordingVmOps>,
    /// Clones of the MSI-X irqfds (same counters).
    pub msix: Vec<EventFd>,
    /// Next free descriptor per queue.
    next_desc: [u16; 2],
    /// Next available index per queue.
    avail_idx: [u16; 2],
}

fn efd() -> EventFd {
    EventFd::new(libc::EFD_NONBLOCK).unwrap()
}

impl Default for Driver {
    fn default() -> Self {
        Self::new()
    }
}

impl Driver {
    /// A device with MAC 52:54:00:12:34:56 and three MSI-X vectors, nothing programmed.
    pub fn new() -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        Self::with_memory(mem)
    }

    /// The same, over `mem`.
    pub fn with_memory(mem: GuestMemoryMmap) -> Self {
        let (backend, peer) = mem_pair().unwrap();
        let vm = Arc::new(RecordingVmOps::default());
        let vectors: Vec<MsixVector> = (0..3)
            .map(|i| MsixVector {
                gsi: 24 + i,
                irqfd: efd(),
            })
            .collect();
        let msix = vectors
            .iter()
            .map(|v| v.irqfd.try_clone().unwrap())
            .collect();
        let intx = IntxLine { gsi: 16 };
        let dev = VirtioPci::new(
            Net::new(backend, [0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            mem.clone(),
            vm.clone(),
            vectors,
            Some(intx),
        )
        .unwrap();
        Driver {
            dev,
            peer,
            mem,
            vm,
            msix,
            next_desc: [0; 2],
            avail_idx: [0; 2],
        }
    }

    /// What a migration's destination has: a freshly built device on the same guest memory
    /// (a new backend, VM and irqfds), with this device's saved state restored, and the
    /// guest driver's own bookkeeping (which lives in guest RAM and vCPU state) carried over.
    pub fn migrated(&self) -> Driver {
        let mut to = Driver::with_memory(self.mem.clone());
        to.dev.restore(self.dev.save()).expect("restore");
        to.next_desc = self.next_desc;
        to.avail_idx = self.avail_idx;
        to
    }

    /// Writes `value` (`len` bytes) to the common configuration at `offset`.
    pub fn common_write(&mut self, offset: u64, value: u64, len: usize) {
        self.dev
            .write_bar(VIRTIO_BAR, offset, &value.to_le_bytes()[..len]);
    }

    /// Reads `len` bytes of the common configuration at `offset`.
    pub fn common_read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(VIRTIO_BAR, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    /// The device status byte.
    pub fn status(&mut self) -> u8 {
        self.common_read(0x14, 1) as u8
    }

    /// Device features, both halves.
    pub fn device_features(&mut self) -> u64 {
        self.common_write(0x00, 0, 4);
        let lo = self.common_read(0x04, 4);
        self.common_write(0x00, 1, 4);
        lo | self.common_read(0x04, 4) << 32
    }

    /// Acknowledges, offers `features`, sets FEATURES_OK; returns the status read back.
    pub fn negotiate(&mut self, features: u64) -> u8 {
        self.common_write(0x14, 0, 1);
        self.common_write(0x14, u64::from(STATUS_ACKNOWLEDGE), 1);
        self.common_write(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        self.common_write(0x08, 0, 4);
        self.common_write(0x0C, features & 0xFFFF_FFFF, 4);
        self.common_write(0x08, 1, 4);
        self.common_write(0x0C, features >> 32, 4);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.common_write(0x14, u64::from(s), 1);
        self.status()
    }

    /// Programs queue `q` at [`rings`] with `size` and MSI-X vector `vector`, and enables it.
    pub fn setup_queue(&mut self, q: usize, size: u16, vector: u16) {
        let (desc, avail, used) = rings(q);
        self.common_write(0x16, q as u64, 2);
        self.common_write(0x18, u64::from(size), 2);
        self.common_write(0x1A, u64::from(vector), 2);
        self.common_write(0x20, desc, 8);
        self.common_write(0x28, avail, 8);
        self.common_write(0x30, used, 8);
        self.common_write(0x1C, 1, 2);
    }

    /// The whole bring-up: features, both queues (vectors 0 and 1), DRIVER_OK.
    pub fn init(&mut self, features: u64) {
        let s = self.negotiate(features);
        assert_ne!(s & STATUS_FEATURES_OK, 0, "features refused");
        self.setup_queue(RX, QSIZE, 0);
        self.setup_queue(TX, QSIZE, 1);
        self.common_write(0x10, 2, 2);
        self.driver_ok();
    }

    /// Sets DRIVER_OK.
    pub fn driver_ok(&mut self) {
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        self.common_write(0x14, u64::from(s), 1);
    }

    /// Enables MSI-X and unmasks every vector with distinct messages.
    pub fn enable_msix(&mut self) {
        let cap = self.find_capability(0x11).unwrap();
        let control = self.dev.read_config(cap) >> 16;
        self.dev
            .write_config(cap + 2, &((control as u16) | CONTROL_ENABLE).to_le_bytes());
        for v in 0..3u64 {
            self.dev
                .write_bar(MSIX_BAR, v * 16, &0xFEE0_0000u64.to_le_bytes());
            self.dev
                .write_bar(MSIX_BAR, v * 16 + 8, &(0x40 + v as u32).to_le_bytes());
            self.dev
                .write_bar(MSIX_BAR, v * 16 + 12, &0u32.to_le_bytes());
        }
    }

    /// Offset of the first capability with `id`.
    pub fn find_capability(&mut self, id: u8) -> Option<usize> {
        let mut at = (self.dev.read_config(0x34) & 0xFF) as usize;
        for _ in 0..48 {
            if at == 0 {
                return None;
            }
            let head = self.dev.read_config(at);
            if head as u8 == id {
                return Some(at);
            }
            at = ((head >> 8) & 0xFF) as usize;
        }
        None
    }

    /// Writes descriptor `index` of queue `q`.
    pub fn write_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = rings(q).0 + 16 * u64::from(index);
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, GuestAddress(at)).unwrap();
    }

    /// Puts `head` in queue `q`'s available ring and publishes it.
    pub fn publish(&mut self, q: usize, head: u16) {
        let avail = rings(q).1;
        let slot = u64::from(self.avail_idx[q] % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx[q] = self.avail_idx[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[q], GuestAddress(avail + 2))
            .unwrap();
    }

    /// Makes a `len`-byte device-writable buffer available on the receive queue; returns
    /// its address.
    pub fn add_rx_buffer(&mut self, len: u32) -> u64 {
        let d = self.take_desc(RX);
        let addr = BUFFERS + 0x1_0000 * u64::from(d);
        self.write_desc(RX, d, addr, len, 2, 0);
        self.publish(RX, d);
        addr
    }

    /// Makes `frame` available on the transmit queue as two descriptors (header, frame).
    pub fn add_tx_frame(&mut self, frame: &[u8]) {
        self.add_tx_frame_with_header(&[0u8; HEADER_LEN], frame);
    }

    /// [`Driver::add_tx_frame`] with a header of the test's choosing.
    pub fn add_tx_frame_with_header(&mut self, header: &[u8; HEADER_LEN], frame: &[u8]) {
        let d0 = self.take_desc(TX);
        let d1 = self.take_desc(TX);
        let hdr = BUFFERS + 0x4_0000 + 0x2000 * u64::from(d0);
        let body = hdr + 0x100;
        self.mem.write_slice(header, GuestAddress(hdr)).unwrap();
        self.mem.write_slice(frame, GuestAddress(body)).unwrap();
        self.write_desc(TX, d0, hdr, HEADER_LEN as u32, 1, d1);
        self.write_desc(TX, d1, body, frame.len() as u32, 0, 0);
        self.publish(TX, d0);
    }

    fn take_desc(&mut self, q: usize) -> u16 {
        let d = self.next_desc[q];
        self.next_desc[q] = (d + 1) % QSIZE;
        d
    }

    /// The used ring's index for queue `q`.
    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem.read_obj(GuestAddress(rings(q).2 + 2)).unwrap()
    }

    /// Used element `i` of queue `q`: (id, len).
    pub fn used(&self, q: usize, i: u16) -> (u32, u32) {
        let at = rings(q).2 + 4 + 8 * u64::from(i % QSIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    /// What the I/O thread does when queue `q`'s kick eventfd fires.
    pub fn kick(&mut self, q: usize) {
        self.dev.queue_notified(q);
    }

    /// What the I/O thread does when the backend becomes readable.
    pub fn backend_ready(&mut self) {
        self.dev.device_event(0);
    }

    /// Whether the INTx line (GSI 16) is high.
    pub fn intx_high(&self) -> bool {
        self.vm.recorded().lines_high.contains(&16)
    }

    /// Whether MSI-X vector `v` fired since the last look.
    pub fn fired(&self, v: usize) -> bool {
        self.msix[v].read().is_ok()
    }
}
