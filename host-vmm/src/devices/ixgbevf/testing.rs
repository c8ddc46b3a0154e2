//! A test driver for the VF model: it programs an [`Ixgbevf`] through its BARs and
//! configuration space as a guest driver would, lays rings out in a small guest memory, and
//! reads back what the device did. No KVM, no threads, an in-memory backend.

use super::Ixgbevf;
use crate::devices::pci::PciDevice;
use crate::devices::pci::msix::{CONTROL_ENABLE, MsixVector};
use crate::devices::virtio::net::backend::{MemBackend, MemPeer, mem_pair};
use crate::devices::vm_ops::RecordingVmOps;
use crate::memory::GuestMemoryMmap;
use ixgbevf_regs as r;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM of the test machine.
pub const RAM: u64 = 0x10_0000;
/// The VF's permanent MAC.
pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// RX queue 0's ring.
pub const RX_RING: u64 = 0x1_0000;
/// TX queue `q`'s ring.
pub const fn tx_ring(q: usize) -> u64 {
    0x2_0000 + 0x1_0000 * q as u64
}
/// RX buffers, 16 KiB apart.
pub const fn rx_buf(i: u32) -> u64 {
    0x4_0000 + 0x4000 * i as u64
}
/// Where TX payloads go.
pub const TX_BUFS: u64 = 0xC_0000;
/// Vector numbers the tests map: RX queues to 0, TX queues to 1, "other" to 2.
pub const RX_VECTOR: usize = 0;
/// See [`RX_VECTOR`].
pub const TX_VECTOR: usize = 1;
/// See [`RX_VECTOR`].
pub const OTHER_VECTOR: usize = 2;

/// The device under test and everything around it.
pub struct Vf {
    /// The model.
    pub dev: Ixgbevf<MemBackend>,
    /// The other end of its backend.
    pub peer: MemPeer,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// What the device asked of the VM.
    pub vm: Arc<RecordingVmOps>,
    /// Clones of the MSI-X irqfds.
    pub irq: Vec<EventFd>,
    /// The driver's read-to-clear shadow of VFMAILBOX.
    pub shadow: u32,
}

impl Vf {
    /// A fresh, untrusted VF with MAC [`MAC`].
    pub fn new() -> Self {
        Self::with_trust(false)
    }

    /// A fresh VF, trusted or not.
    pub fn with_trust(trusted: bool) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        Self::with_memory(trusted, mem)
    }

    /// A fresh VF over `mem`.
    pub fn with_memory(trusted: bool, mem: GuestMemoryMmap) -> Self {
        let (backend, peer) = mem_pair().unwrap();
        let vm = Arc::new(RecordingVmOps::default());
        let vectors: Vec<MsixVector> = (0..3)
            .map(|i| MsixVector {
                gsi: 40 + i,
                irqfd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            })
            .collect();
        let irq = vectors
            .iter()
            .map(|v| v.irqfd.try_clone().unwrap())
            .collect();
        let dev = Ixgbevf::new(backend, MAC, trusted, mem.clone(), vm.clone(), vectors).unwrap();
        Vf {
            dev,
            peer,
            mem,
            vm,
            irq,
            shadow: 0,
        }
    }

    /// Register read.
    pub fn read(&mut self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.dev.read_bar(0, offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    /// Register write.
    pub fn write(&mut self, offset: usize, value: u32) {
        self.dev.write_bar(0, offset as u64, &value.to_le_bytes());
    }

    /// A configuration dword.
    pub fn config(&mut self, offset: usize) -> u32 {
        self.dev.read_config(offset)
    }

    /// Whether vector `v` fired since the last look.
    pub fn fired(&self, v: usize) -> bool {
        self.irq[v].read().is_ok()
    }

    /// Clears every vector's count.
    pub fn drain_irqs(&self) {
        for v in 0..3 {
            let _ = self.irq[v].read();
        }
    }

    /// Programs and unmasks all three MSI-X entries and enables MSI-X; maps RX queues to
    /// vector 0, TX queues to 1, "other" to 2, and enables all three in VTEIMS.
    pub fn enable_interrupts(&mut self) {
        for v in 0..3u64 {
            self.dev.write_bar(3, v * 16, &0xFEE0_0000u64.to_le_bytes());
            self.dev
                .write_bar(3, v * 16 + 8, &(0x30 + v as u32).to_le_bytes());
            self.dev.write_bar(3, v * 16 + 12, &0u32.to_le_bytes());
        }
        let cap = (self.config(0x34) & 0xFF) as usize;
        self.dev
            .write_config(cap + 2, &CONTROL_ENABLE.to_le_bytes());
        // RX(2n) → 0, TX(2n) → 1, RX(2n+1) → 0, TX(2n+1) → 1.
        self.write(r::vtivar(0), 0x8180_8180);
        self.write(r::VTIVAR_MISC, 0x82);
        self.write(r::VTEIMS, 0x7);
    }

    /// Reads VFMAILBOX into the shadow.
    pub fn mbx(&mut self) -> u32 {
        let v = self.read(r::VFMAILBOX);
        self.shadow |= v & r::MBX_R2C_BITS;
        v
    }

    /// Sends `words` the legacy way and returns the reply (16 words).
    pub fn call(&mut self, words: &[u32]) -> Vec<u32> {
        self.write(r::VFMAILBOX, r::MBX_VFU);
        assert_ne!(self.mbx() & r::MBX_VFU, 0, "VFU taken");
        self.shadow &= !(r::MBX_PFSTS | r::MBX_PFACK);
        for (i, &w) in words.iter().enumerate() {
            self.write(r::VFMBMEM + 4 * i, w);
        }
        self.write(r::VFMAILBOX, r::MBX_REQ);
        self.mbx();
        assert_ne!(self.shadow & r::MBX_PFACK, 0, "PFACK after REQ");
        assert_ne!(self.shadow & r::MBX_PFSTS, 0, "PFSTS after REQ");
        self.shadow &= !(r::MBX_PFACK | r::MBX_PFSTS);
        self.write(r::VFMAILBOX, r::MBX_VFU);
        self.mbx();
        let reply = (0..r::MBX_WORDS)
            .map(|i| self.read(r::VFMBMEM + 4 * i))
            .collect();
        self.write(r::VFMAILBOX, r::MBX_ACK);
        reply
    }

    /// VFCTRL.RST, RESET and API 1.3, as a driver's probe does.
    pub fn bring_up(&mut self) {
        self.write(r::VFCTRL, r::VFCTRL_RST);
        assert_ne!(self.read(r::VFSTATUS), 0xFFFF_FFFF);
        assert_eq!(self.mbx() & r::MBX_RSTI, 0);
        let reply = self.call(&[ixgbevf_regs::mbx::RESET]);
        assert_eq!(reply[0], 0x8000_0001);
        let reply = self.call(&[0x08, 4, 0]);
        assert_eq!(reply[0], 0xA000_0008);
    }

    /// Writes a 16-byte descriptor.
    pub fn put_desc(&self, ring: u64, index: u32, d: [u32; 4]) {
        let mut raw = [0u8; 16];
        for (i, w) in d.iter().enumerate() {
            raw[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        self.mem
            .write_slice(&raw, GuestAddress(ring + 16 * u64::from(index)))
            .unwrap();
    }

    /// Reads a 16-byte descriptor.
    pub fn desc(&self, ring: u64, index: u32) -> [u32; 4] {
        let mut raw = [0u8; 16];
        self.mem
            .read_slice(&mut raw, GuestAddress(ring + 16 * u64::from(index)))
            .unwrap();
        let w = |i: usize| u32::from_le_bytes(raw[4 * i..4 * i + 4].try_into().unwrap());
        [w(0), w(1), w(2), w(3)]
    }

    /// Bytes of guest memory.
    pub fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Programs RX queue 0 with `count` descriptors pointing at [`rx_buf`], stale junk in
    /// every qword 1, SRRCTL `srrctl`, enabled, RDH = RDT = 0.
    pub fn setup_rx(&mut self, count: u32, srrctl: u32) {
        for i in 0..count {
            let a = rx_buf(i);
            self.put_desc(
                RX_RING,
                i,
                [a as u32, (a >> 32) as u32, 0xDEAD_BEEF, 0xFFFF_FFFF],
            );
        }
        let q = r::rx_queue(0);
        self.write(q + r::Q_BAL, RX_RING as u32);
        self.write(q + r::Q_BAH, 0);
        self.write(q + r::Q_LEN, count * 16);
        self.write(q + r::Q_HEAD, 0);
        self.write(q + r::Q_TAIL, 0);
        self.write(q + r::RX_SRRCTL, srrctl);
        self.write(q + r::Q_DCTL, r::DCTL_ENABLE | r::RXDCTL_VME);
    }

    /// Programs TX queue `q` with `count` descriptors, enabled, TDH = TDT = 0.
    pub fn setup_tx(&mut self, q: usize, count: u32) {
        let b = r::tx_queue(q);
        self.write(b + r::Q_DCTL, r::TXDCTL_SWFLSH);
        self.write(b + r::Q_BAL, tx_ring(q) as u32);
        self.write(b + r::Q_BAH, 0);
        self.write(b + r::Q_LEN, count * 16);
        self.write(b + r::TX_WBAL, 0);
        self.write(b + r::Q_HEAD, 0);
        self.write(b + r::Q_TAIL, 0);
        self.write(b + r::Q_DCTL, r::DCTL_ENABLE | 8 << 16 | 1 << 8 | 32);
    }
}

/// An advanced data descriptor for `len` bytes at `addr` with extra command bits and olinfo.
pub fn data_desc(addr: u64, len: usize, cmd: u32, olinfo: u32) -> [u32; 4] {
    [
        addr as u32,
        (addr >> 32) as u32,
        len as u32 | r::TXD_DTYP_DATA | r::TXD_CMD_DEXT | r::TXD_CMD_IFCS | cmd,
        olinfo,
    ]
}

/// An advanced context descriptor.
pub fn ctx_desc(maclen: u32, iplen: u32, tucmd: u32, l4len: u32, mss: u32, idx: u32) -> [u32; 4] {
    [
        iplen | maclen << 9,
        0,
        tucmd | r::TXD_DTYP_CTXT | r::TXD_CMD_DEXT,
        idx << 4 | l4len << 8 | mss << 16,
    ]
}

/// A frame of `len` bytes: broadcast destination, our MAC as source, then a counting pattern.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
    let head = [
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x00,
    ];
    let n = head.len().min(len);
    f[..n].copy_from_slice(&head[..n]);
    f
}
