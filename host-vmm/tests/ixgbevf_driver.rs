//! Roam's ixgbevf guest driver (`drivers::ixgbevf`) run in-process against host-vmm's VF
//! model, the way the guest reaches it: PCI configuration through the config ports of a
//! [`PciRoot`], registers and the MSI-X table through the root's MMIO window, rings and
//! buffers in memfd guest RAM ([`GuestRam`]) that the model reads and writes, MSI-X vectors
//! as eventfds, frames through an in-memory backend, and link changes and hot-removal
//! through the operator's [`VfOperator`]. No KVM, no threads.

use drivers::hal::{Dma, DmaChunk, RegisterIo};
use drivers::ixgbevf::{self, Config, Error, InterruptRequest, Ixgbevf, MacSource};
use drivers::net::{MacAddress, NetDevice, RxToken, TxToken};
use drivers::pci::{Bdf, ConfigAccess};
use host_vmm::devices::BusDevice;
use host_vmm::devices::ixgbevf::VfOperator;
use host_vmm::devices::ixgbevf::{Ixgbevf as VfModel, VfHandle};
use host_vmm::devices::pci::msix::MsixVector;
use host_vmm::devices::pci::{PciConfigPorts, PciRoot};
use host_vmm::devices::virtio::net::backend::{MemBackend, MemPeer, mem_pair};
use host_vmm::devices::vm_ops::RecordingVmOps;
use host_vmm::memory::GuestMemoryMmap;
use host_vmm::memory::GuestRam;
use ixgbevf_regs as regs;
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

/// The VF's permanent (PF-assigned) MAC.
const PERMANENT: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// The MAC the failover device wants on both NICs (virtio-net's).
const VIRTIO_MAC: MacAddress = MacAddress([0x52, 0x54, 0x00, 0xAB, 0xCD, 0xEF]);
/// The other end of the wire.
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
/// Guest RAM, and where DMA memory is carved from.
const RAM: u64 = 16 << 20;
const DMA_START: u64 = 1 << 20;
/// MSI-X: vector 0 is queue 0, vector 1 "other" (the driver's mapping).
const QUEUE: usize = 0;
const OTHER: usize = 1;
const IRQ: InterruptRequest = InterruptRequest {
    apic_id: 0,
    queue_vector: 33,
    other_vector: 34,
};

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap()
}

/// The guest's configuration mechanism #1 over the root's config ports.
struct PortConfig(RefCell<PciConfigPorts>);

impl PortConfig {
    fn select(&self, bdf: Bdf, offset: u8) {
        let address = bdf.config_address() | u32::from(offset & 0xFC);
        self.0.borrow_mut().write(0, &address.to_le_bytes());
    }
}

impl ConfigAccess for PortConfig {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        self.select(bdf, offset);
        let mut data = [0; 4];
        self.0.borrow_mut().read(4, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        self.select(bdf, offset);
        self.0.borrow_mut().write(4, &value.to_le_bytes());
    }
}

/// Guest MMIO at `base..base + len` through the root (what a vCPU's MMIO exits do), with a
/// count of every access.
struct MmioIo {
    root: Arc<Mutex<PciRoot>>,
    base: u64,
    len: usize,
    accesses: Rc<Cell<u64>>,
}

impl MmioIo {
    fn read<const N: usize>(&self, offset: usize) -> [u8; N] {
        self.accesses.set(self.accesses.get() + 1);
        let mut data = [0xFF; N];
        if offset + N <= self.len {
            lock(&self.root).mmio_read(self.base + offset as u64, &mut data);
        }
        data
    }

    fn write(&mut self, offset: usize, data: &[u8]) {
        self.accesses.set(self.accesses.get() + 1);
        if offset + data.len() <= self.len {
            lock(&self.root).mmio_write(self.base + offset as u64, data);
        }
    }
}

impl RegisterIo for MmioIo {
    fn read8(&self, offset: usize) -> u8 {
        u8::from_le_bytes(self.read(offset))
    }
    fn read16(&self, offset: usize) -> u16 {
        u16::from_le_bytes(self.read(offset))
    }
    fn read32(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.read(offset))
    }
    fn write16(&mut self, offset: usize, value: u16) {
        self.write(offset, &value.to_le_bytes());
    }
    fn write32(&mut self, offset: usize, value: u32) {
        self.write(offset, &value.to_le_bytes());
    }
}

/// DMA memory carved from guest RAM: device address = guest-physical address, CPU address
/// = where host-vmm maps it. A bump allocator that records what is live.
#[derive(Clone)]
struct GuestDma {
    mem: GuestMemoryMmap,
    next: Rc<Cell<u64>>,
    live: Rc<RefCell<Vec<(u64, usize)>>>,
}

// SAFETY: every chunk is a fresh range of guest RAM (the bump pointer never hands a range out
// twice, and nothing else in these tests allocates from [DMA_START, RAM)), zeroed, aligned as
// asked, and inside the one memfd mapping `mem` keeps alive (checked with `get_slice`); the
// device model reaches the same bytes at the guest address, and it runs on this thread, so
// CPU and device accesses are ordered by program order.
unsafe impl Dma for GuestDma {
    fn alloc_zeroed(&mut self, len: usize, align: usize) -> Option<DmaChunk> {
        let start = self.next.get().checked_next_multiple_of(align as u64)?;
        let end = start.checked_add(len as u64)?;
        if end > RAM {
            return None;
        }
        let addr = GuestAddress(start);
        self.mem.get_slice(addr, len).ok()?;
        self.mem.write_slice(&vec![0; len], addr).ok()?;
        let cpu = NonNull::new(self.mem.get_host_address(addr).ok()?)?;
        self.next.set(end);
        self.live.borrow_mut().push((start, len));
        Some(DmaChunk { cpu, device: start })
    }

    unsafe fn free(&mut self, chunk: DmaChunk, len: usize, _align: usize) {
        self.live
            .borrow_mut()
            .retain(|&(start, l)| (start, l) != (chunk.device, len));
    }
}

type Driver = Ixgbevf<MmioIo, GuestDma>;

/// A machine with the VF on bus 0 and everything the tests look at.
struct Machine {
    root: Arc<Mutex<PciRoot>>,
    model: Arc<Mutex<VfModel<MemBackend>>>,
    operator: VfHandle<MemBackend>,
    peer: MemPeer,
    irq: Vec<EventFd>,
    dma: GuestDma,
    /// Register and MSI-X table accesses the driver made.
    accesses: Rc<Cell<u64>>,
    _ram: GuestRam,
}

impl Machine {
    /// A VF with permanent MAC [`PERMANENT`]; `trusted` lets it take another MAC.
    fn new(trusted: bool) -> Machine {
        let ram = GuestRam::new(RAM).unwrap();
        let mem = ram.memory().clone();
        let (backend, peer) = mem_pair().unwrap();
        let vm = Arc::new(RecordingVmOps::default());
        let mut irq = Vec::new();
        let vectors = (0..3)
            .map(|i| {
                let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
                irq.push(irqfd.try_clone().unwrap());
                MsixVector { gsi: 24 + i, irqfd }
            })
            .collect();
        let model = VfModel::new(backend, PERMANENT, trusted, mem.clone(), vm, vectors).unwrap();
        let model = Arc::new(Mutex::new(model));
        let root = Arc::new(Mutex::new(PciRoot::new()));
        let slot = lock(&root).add_device(model.clone()).unwrap();
        let operator = VfHandle::new(model.clone(), root.clone(), slot);
        Machine {
            root,
            model,
            operator,
            peer,
            irq,
            dma: GuestDma {
                mem,
                next: Rc::new(Cell::new(DMA_START)),
                live: Rc::new(RefCell::new(Vec::new())),
            },
            accesses: Rc::new(Cell::new(0)),
            _ram: ram,
        }
    }

    fn config(&self) -> PortConfig {
        PortConfig(RefCell::new(PciConfigPorts(self.root.clone())))
    }

    fn mmio(&self, region: drivers::pci::bar::Region) -> MmioIo {
        MmioIo {
            root: self.root.clone(),
            base: region.phys(),
            len: region.len(),
            accesses: self.accesses.clone(),
        }
    }

    /// What the kernel does: find the VF, probe it, set up MSI-X, bring the driver up.
    fn driver(&self, mac: MacAddress) -> Result<Driver, Error> {
        let mut config = self.config();
        let function = drivers::pci::enumerate(&config)
            .into_iter()
            .find(ixgbevf::pci::matches)
            .ok_or(Error::Removed)?;
        let vf = ixgbevf::pci::probe(&mut config, function.bdf, None)?;
        vf.enable_msix(&mut config, self.mmio(vf.msix_table), IRQ)?;
        let mut waited = 0u64;
        let mut delay = |us: u32| waited += u64::from(us);
        let driver = Ixgbevf::new(
            self.mmio(vf.registers),
            self.dma.clone(),
            &mut delay,
            Config { mac: Some(mac) },
        );
        // The model answers at once: no wait beyond a poll or two.
        assert!(waited < 100, "bring-up waited {waited} us");
        driver
    }

    fn model(&self) -> MutexGuard<'_, VfModel<MemBackend>> {
        lock(&self.model)
    }

    /// Moves the frames the peer injected into the VF's receive ring.
    fn deliver(&self) -> usize {
        self.model().poll_backend()
    }

    /// Whether MSI-X vector `v` fired since last asked.
    fn fired(&self, v: usize) -> bool {
        self.irq[v].read().is_ok()
    }

    /// A register write behind the driver's back (a PF-initiated VF reset, say).
    fn poke(&self, offset: usize, value: u32) {
        let mut model = self.model();
        host_vmm::devices::pci::PciDevice::write_bar(
            &mut *model,
            usize::from(regs::REGS_BAR),
            offset as u64,
            &value.to_le_bytes(),
        );
    }
}

/// An Ethernet frame of `len` bytes to `dst`, its payload a pattern of `seed`: from the
/// peer, or to the peer from the VF's permanent MAC (the only source the PF lets out).
fn frame(dst: [u8; 6], seed: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(if dst == PEER_MAC {
        &PERMANENT
    } else {
        &PEER_MAC
    });
    f.extend_from_slice(&[0x88, 0xB5]);
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    while f.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        f.push(x as u8);
    }
    f
}

/// Every frame the driver has waiting, in order.
fn drain(vf: &mut Driver) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for _ in 0..1000 {
        let Some((rx, _tx)) = vf.receive() else {
            return frames;
        };
        frames.push(rx.consume(|f| f.to_vec()));
    }
    panic!("the driver never ran out of frames");
}

/// Sends `data` through a transmit token; whether a token was available.
fn send(vf: &mut Driver, data: &[u8]) -> bool {
    match vf.transmit() {
        Some(tx) => {
            tx.consume(data.len(), |buf| buf.copy_from_slice(data));
            true
        }
        None => false,
    }
}

/// Everything the peer has received, in order.
fn sent(peer: &MemPeer) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| peer.take()).collect()
}

#[test]
fn reset_and_bring_up_program_the_vf_as_linux_does() {
    let m = Machine::new(false);
    let vf = m.driver(MacAddress(PERMANENT)).unwrap();
    assert!(vf.link_up());
    assert!(!vf.is_removed());
    assert_eq!(vf.api_version(), regs::mbx::API_13);
    assert_eq!(vf.permanent_mac(), Some(MacAddress(PERMANENT)));
    assert_eq!(vf.capabilities().max_frame_len, 1514);

    let model = m.model();
    let s = model.state();
    assert_eq!(s.mailbox.api, regs::mbx::API_13);
    assert_eq!(s.mailbox.max_frame, 1518, "SET_LPE");
    assert!(s.mailbox.cts, "RESET made the VF clear to send");
    let (rx, tx) = (&s.rx[0], &s.tx[0]);
    assert!(rx.active() && tx.active());
    assert_eq!((rx.len, tx.len), (512, 512));
    assert_eq!(rx.base() % 4096, 0);
    assert_eq!(
        rx.srrctl & regs::SRRCTL_DESCTYPE_MASK,
        regs::SRRCTL_DESCTYPE_ADV_ONEBUF
    );
    assert_eq!(rx.srrctl & regs::SRRCTL_BSIZEPKT_MASK, 2, "2 KiB buffers");
    assert_eq!(rx.dctl & regs::RXDCTL_VME, 0, "VLAN tags are left alone");
    // All receive descriptors but one handed over; nothing to send.
    assert_eq!((rx.head, rx.tail), (0, 31));
    assert_eq!((tx.head, tx.tail), (0, 0));
    assert!(!s.rx[1].active() && !s.tx[1].active());
    // Queue 0 on vector 0, "other" on vector 1, both auto-clearing, auto-masking, enabled.
    let i = &s.interrupts;
    assert_eq!(i.ivar[0] & 0xFFFF, 0x8080);
    assert_eq!(i.ivar_misc, 0x81);
    assert_eq!((i.eims, i.eiac, i.eiam), (0b11, 0b11, 0b11));
    drop(model);
    // The mailbox traffic of bring-up left no interrupt behind.
    assert!(!m.fired(QUEUE) && !m.fired(OTHER));
}

#[test]
fn the_requested_mac_is_used_when_the_pf_allows_it() {
    let m = Machine::new(true);
    let vf = m.driver(VIRTIO_MAC).unwrap();
    assert_eq!(vf.mac_address(), VIRTIO_MAC);
    assert_eq!(vf.mac_source(), MacSource::Requested);
    assert_eq!(m.model().state().mailbox.mac, VIRTIO_MAC.0);
}

#[test]
fn a_nacked_set_mac_addr_falls_back_to_the_permanent_mac() {
    // An untrusted VF may not change its MAC: the PF NACKs SET_MAC_ADDR.
    let m = Machine::new(false);
    let mut vf = m.driver(VIRTIO_MAC).unwrap();
    assert_eq!(vf.mac_address(), MacAddress(PERMANENT));
    assert_eq!(vf.mac_source(), MacSource::Permanent);
    assert_eq!(m.model().state().mailbox.mac, PERMANENT);
    // The NACK is not an error: the VF carries frames with its own MAC.
    assert!(vf.link_up());
    m.peer.inject(&frame(PERMANENT, 1, 60));
    assert_eq!(m.deliver(), 1);
    assert_eq!(drain(&mut vf), [frame(PERMANENT, 1, 60)]);
    // Asking for the permanent MAC itself is accepted.
    let m = Machine::new(false);
    let vf = m.driver(MacAddress(PERMANENT)).unwrap();
    assert_eq!(vf.mac_source(), MacSource::Requested);
}

#[test]
fn frames_arrive_and_leave_byte_identical() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    let lens = [
        14, 60, 61, 64, 127, 128, 600, 1023, 1024, 1025, 1500, 1514, 1518,
    ];
    let incoming: Vec<_> = (0..)
        .zip(lens)
        .map(|(i, len)| frame(PERMANENT, i, len))
        .collect();
    for f in &incoming {
        m.peer.inject(f);
    }
    assert_eq!(m.deliver(), incoming.len());
    assert_eq!(drain(&mut vf), incoming);

    let outgoing: Vec<_> = (100..)
        .zip(lens.iter().filter(|l| **l <= 1514))
        .map(|(i, len)| frame(PEER_MAC, i, *len))
        .collect();
    for f in &outgoing {
        assert!(send(&mut vf, f));
    }
    assert_eq!(sent(&m.peer), outgoing);

    // Answering a received frame with the transmit token that comes with it.
    m.peer.inject(&frame(PERMANENT, 7, 98));
    m.deliver();
    let (rx, tx) = vf.receive().unwrap();
    let reply = rx.consume(|f| {
        // Back to the sender (the addresses swapped), the payload reversed.
        let mut r = f.to_vec();
        r[..12].rotate_left(6);
        r[14..].reverse();
        r
    });
    tx.consume(reply.len(), |buf| buf.copy_from_slice(&reply));
    assert_eq!(sent(&m.peer), [reply]);

    let stats = vf.stats();
    assert_eq!(stats.rx_frames, incoming.len() as u64 + 1);
    assert_eq!(stats.tx_frames, outgoing.len() as u64 + 1);
    assert_eq!((stats.rx_errors, stats.tx_dropped), (0, 0));
    let metrics = m.model().metrics();
    assert_eq!(
        (metrics.rx_dropped, metrics.tx_dropped, metrics.queue_errors),
        (0, 0, 0)
    );
}

#[test]
fn rings_wrap_around_many_times() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    // Receive: 7 rounds of 20 frames (140 frames through a 32-entry ring).
    let mut seed = 0;
    for round in 0..7 {
        let batch: Vec<_> = (0..20)
            .map(|_| {
                seed += 1;
                frame(PERMANENT, seed, 60 + (seed as usize * 37) % 1400)
            })
            .collect();
        for f in &batch {
            m.peer.inject(f);
        }
        assert_eq!(m.deliver(), 20, "round {round}");
        assert_eq!(drain(&mut vf), batch, "round {round}");
    }
    // The ring was given back whole: RDT one behind RDH again.
    let rx = m.model().state().rx[0];
    assert_eq!((rx.tail + 1) % 32, rx.head);

    // A burst larger than the ring: what does not fit waits in the backend and arrives, in
    // order, as the driver gives descriptors back; nothing is dropped, and afterwards the
    // ring is whole again.
    let burst: Vec<_> = (0..40).map(|i| frame(PERMANENT, 1000 + i, 100)).collect();
    for f in &burst {
        m.peer.inject(f);
    }
    assert_eq!(m.deliver(), 31);
    assert_eq!(drain(&mut vf), burst);
    assert_eq!(m.model().metrics().rx_dropped, 0);
    let after: Vec<_> = (0..31).map(|i| frame(PERMANENT, 2000 + i, 200)).collect();
    for f in &after {
        m.peer.inject(f);
    }
    assert_eq!(m.deliver(), 31, "all 31 descriptors were re-armed");
    assert_eq!(drain(&mut vf), after);

    // Transmit: 150 frames one by one; finished descriptors are reclaimed on the way.
    let outgoing: Vec<_> = (0..150)
        .map(|i| frame(PEER_MAC, 5000 + i, 64 + i as usize))
        .collect();
    for f in &outgoing {
        assert!(send(&mut vf, f));
    }
    assert_eq!(sent(&m.peer), outgoing);
    // The checksum context took the first descriptor.
    let tx = m.model().state().tx[0];
    assert_eq!((tx.head, tx.tail), (151 % 32, 151 % 32));
    assert_eq!(vf.stats().tx_frames, 150);
}

#[test]
fn a_full_transmit_ring_refuses_tokens_until_the_device_catches_up() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    // Stop the device's transmit side behind the driver's back: descriptors pile up.
    let txdctl = regs::tx_queue(0) + regs::Q_DCTL;
    let enabled = m.model().state().tx[0].dctl;
    m.poke(txdctl, 0);
    // 30, behind the checksum context the driver put first.
    let frames: Vec<_> = (0..30).map(|i| frame(PEER_MAC, i, 80)).collect();
    for f in &frames {
        assert!(send(&mut vf, f));
    }
    assert!(vf.transmit().is_none(), "31 in flight: the ring is full");
    assert!(sent(&m.peer).is_empty());
    // A token that comes with a received frame drops its frame (and still runs the closure).
    m.peer.inject(&frame(PERMANENT, 1, 60));
    m.deliver();
    let (rx, tx) = vf.receive().unwrap();
    rx.consume(|_| ());
    let ran = tx.consume(60, |buf| buf.len());
    assert_eq!(ran, 60);
    assert_eq!(vf.stats().tx_dropped, 1);
    // The device resumes and sends what was queued; the driver reclaims lazily.
    m.poke(txdctl, enabled);
    assert_eq!(sent(&m.peer), frames);
    assert!(send(&mut vf, &frame(PEER_MAC, 99, 70)));
    assert_eq!(sent(&m.peer), [frame(PEER_MAC, 99, 70)]);
}

#[test]
fn frames_the_driver_cannot_send_are_dropped_and_counted() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    for len in [0, 1515, 2048, 9000] {
        let tx = vf.transmit().unwrap();
        assert_eq!(tx.consume(len, |buf| buf.len()), len);
    }
    assert_eq!(vf.stats().tx_dropped, 4);
    assert!(sent(&m.peer).is_empty());
    assert!(send(&mut vf, &frame(PEER_MAC, 1, 1514)));
    assert_eq!(sent(&m.peer).len(), 1);
}

#[test]
fn msix_vectors_fire_and_rearm() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    m.peer.inject(&frame(PERMANENT, 1, 60));
    m.deliver();
    assert!(m.fired(QUEUE));
    // The vector masked itself: more frames, no interrupt...
    m.peer.inject(&frame(PERMANENT, 2, 60));
    m.deliver();
    assert!(!m.fired(QUEUE));
    assert_eq!(drain(&mut vf).len(), 2);
    // ...until the driver re-enables it. The cause the second frame raised is dropped (that
    // frame was polled): no interrupt for work already done.
    assert!(!vf.rearm_interrupts(), "nothing waits");
    assert!(!m.fired(QUEUE));
    m.peer.inject(&frame(PERMANENT, 3, 60));
    m.deliver();
    assert!(m.fired(QUEUE));
    // A frame that arrives after the last poll but before the re-arm is reported by it.
    m.peer.inject(&frame(PERMANENT, 4, 60));
    m.deliver();
    assert!(vf.rearm_interrupts(), "a frame is waiting");
    assert_eq!(drain(&mut vf).len(), 2);
    assert!(!vf.rearm_interrupts());
    // Transmit completions use the queue vector too; sending raises nothing we must handle.
    vf.rearm_interrupts();
    assert!(send(&mut vf, &frame(PEER_MAC, 5, 60)));
    assert!(!m.fired(OTHER));
}

#[test]
fn link_goes_down_and_up_again() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    assert!(vf.link_up());
    // Nothing happened: a periodic check changes nothing.
    assert_eq!(vf.service(), ixgbevf::VfEvents::default());

    m.operator.set_link(false).unwrap();
    assert!(m.fired(OTHER), "a PF message raised the other vector");
    let events = vf.service();
    assert!(events.link_changed && !events.removed && !events.reset_needed);
    assert!(!vf.link_up());
    // While down, the device drops what arrives.
    m.peer.inject(&frame(PERMANENT, 1, 60));
    assert_eq!(m.deliver(), 0);
    assert!(vf.receive().is_none());
    assert!(!vf.service().link_changed);

    vf.rearm_interrupts();
    m.operator.set_link(true).unwrap();
    assert!(m.fired(OTHER));
    let events = vf.service();
    assert!(events.link_changed);
    assert!(vf.link_up());
    m.peer.inject(&frame(PERMANENT, 2, 60));
    assert_eq!(m.deliver(), 1);
    assert_eq!(drain(&mut vf), [frame(PERMANENT, 2, 60)]);
    assert!(send(&mut vf, &frame(PEER_MAC, 3, 60)));
    assert_eq!(sent(&m.peer), [frame(PEER_MAC, 3, 60)]);

    // A link change seen only by the periodic check (the interrupt was missed) counts too.
    m.operator.set_link(false).unwrap();
    assert!(vf.service().link_changed);
    m.operator.set_link(true).unwrap();
    assert!(vf.service().link_changed);
    assert!(vf.link_up());
}

#[test]
fn a_pf_side_reset_is_reported_and_reinit_recovers() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    // The VF is reset under the driver (as by an FLR or the PF): RSTD, queues off, and the
    // PF no longer considers it clear to send.
    m.poke(regs::VFCTRL, regs::VFCTRL_RST);
    let events = vf.service();
    assert!(events.reset_needed && events.link_changed);
    assert!(!vf.link_up());
    // A link message without CTS keeps it down; requests made now would be NACKed.
    m.operator.set_link(true).unwrap();
    let events = vf.service();
    assert!(events.reset_needed && !vf.link_up());
    assert_eq!(
        m.model().state().mailbox.control_word() & regs::mbx::CTS,
        0,
        "the PF does not consider the VF clear to send"
    );

    // In steps, as the kernel's watchdog does it: frames wait until it is done.
    vf.begin_reinit().unwrap();
    let mut steps = 0;
    loop {
        assert!(
            vf.receive().is_none(),
            "a VF being brought up carries nothing"
        );
        steps += 1;
        assert!(steps < 100, "the bring-up never ended");
        if let ixgbevf::Progress::Done(result) = vf.step(0) {
            result.unwrap();
            break;
        }
    }
    assert!(vf.link_up());
    assert!(!vf.service().reset_needed);
    m.peer.inject(&frame(PERMANENT, 1, 300));
    assert_eq!(m.deliver(), 1);
    assert_eq!(drain(&mut vf), [frame(PERMANENT, 1, 300)]);
    assert!(send(&mut vf, &frame(PEER_MAC, 2, 300)));
    assert_eq!(sent(&m.peer), [frame(PEER_MAC, 2, 300)]);
}

#[test]
fn removal_is_detected_and_the_driver_stops_touching_the_device() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    m.peer.inject(&frame(PERMANENT, 1, 60));
    m.deliver();
    m.operator.remove().unwrap();
    assert!(!m.operator.state().present);

    let events = vf.service();
    assert!(events.removed && events.link_changed && !events.reset_needed);
    assert!(vf.is_removed());
    assert!(!vf.link_up());
    // Reported once.
    assert_eq!(vf.service(), ixgbevf::VfEvents::default());

    let touched = m.accesses.get();
    assert!(
        vf.receive().is_none(),
        "not even the frame already in memory"
    );
    assert!(vf.transmit().is_none());
    assert!(!vf.rearm_interrupts());
    assert_eq!(vf.service(), ixgbevf::VfEvents::default());
    assert_eq!(vf.reinit(&mut |_| {}), Err(Error::Removed));
    drop(vf);
    assert_eq!(
        m.accesses.get(),
        touched,
        "no register access after removal"
    );
    assert!(m.dma.live.borrow().is_empty(), "the rings were freed");

    // Plugged back in: the kernel probes again and a new driver works.
    m.operator.add().unwrap();
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    assert!(vf.link_up());
    m.peer.inject(&frame(PERMANENT, 2, 60));
    assert_eq!(m.deliver(), 1);
    assert_eq!(drain(&mut vf), [frame(PERMANENT, 2, 60)]);
}

/// Around a move: detach stops the VF (reset, nothing delivered into the rings), and attach
/// brings it up again through a fresh probe on the same rings and buffers: no DMA memory is
/// allocated or freed, and frames flow both ways. The same after a removal and re-add.
/// The VF found again on the bus as a kernel does after a move: probed, MSI-X set up; its
/// register BAR.
fn found_again(m: &Machine) -> MmioIo {
    let mut config = m.config();
    let function = drivers::pci::enumerate(&config)
        .into_iter()
        .find(ixgbevf::pci::matches)
        .unwrap();
    let found = ixgbevf::pci::probe(&mut config, function.bdf, None).unwrap();
    found
        .enable_msix(&mut config, m.mmio(found.msix_table), IRQ)
        .unwrap();
    m.mmio(found.registers)
}

#[test]
fn detach_and_attach_keep_the_rings() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    let rings = m.dma.live.borrow().clone();
    let bump = m.dma.next.get();
    assert_eq!(rings.len(), 2, "two DMA areas: {rings:?}");

    vf.detach();
    assert!(!vf.link_up());
    assert!(vf.receive().is_none() && vf.transmit().is_none());
    m.peer.inject(&frame(PERMANENT, 1, 60));
    assert_eq!(m.deliver(), 0, "a detached VF receives nothing");

    for round in 0..2u32 {
        vf.attach(found_again(&m), &mut |_| {}).unwrap();
        assert!(vf.link_up(), "round {round}");
        assert_eq!(*m.dma.live.borrow(), rings, "round {round}: same DMA areas");
        assert_eq!(m.dma.next.get(), bump, "round {round}: nothing allocated");

        let incoming = frame(PERMANENT, 10 + round, 200);
        m.peer.inject(&incoming);
        assert_eq!(m.deliver(), 1);
        assert_eq!(drain(&mut vf), [incoming], "round {round}");
        let outgoing = frame(PEER_MAC, 20 + round, 300);
        assert!(send(&mut vf, &outgoing));
        assert_eq!(sent(&m.peer), [outgoing], "round {round}");

        // Second round: the VF was hot-removed and plugged back in meanwhile.
        m.operator.remove().unwrap();
        assert!(vf.service().removed);
        m.operator.add().unwrap();
    }
    drop(vf);
    assert!(m.dma.live.borrow().is_empty(), "the rings were freed");
}

#[test]
fn a_stepped_attach_never_waits_and_each_step_is_a_few_accesses() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    vf.detach();
    vf.begin_attach(found_again(&m));
    assert!(vf.bringing_up() && !vf.link_up());
    // The clock stands still: this PF answers in place, so no step may need to wait.
    let (mut steps, mut most, mut waits) = (0, 0, 0);
    let result = loop {
        let before = m.accesses.get();
        let progress = vf.step(0);
        most = most.max(m.accesses.get() - before);
        steps += 1;
        assert!(steps < 100, "the bring-up never ended");
        match progress {
            ixgbevf::Progress::Ready => {}
            ixgbevf::Progress::Waiting { .. } => waits += 1,
            ixgbevf::Progress::Done(result) => break result,
        }
    };
    result.unwrap();
    assert!(vf.link_up() && !vf.bringing_up());
    assert!(steps >= 10, "one stage per step: {steps} steps");
    // The largest: a mailbox exchange's last look and the transmit queue's programming
    // (~24 accesses, a fraction of a millisecond of exits; the whole attach makes ~130 in
    // 12 steps).
    assert!(most <= 32, "a step made {most} register accesses");
    // Only the reset waits (the model clears RSTD on the first read after it).
    assert!(waits <= 1, "{waits} waits");
    let incoming = frame(PERMANENT, 7, 100);
    m.peer.inject(&incoming);
    assert_eq!(m.deliver(), 1);
    assert_eq!(drain(&mut vf), [incoming]);

    // A VF that goes away in the middle ends the bring-up with an error, not a hang.
    vf.detach();
    vf.begin_attach(found_again(&m));
    assert_eq!(vf.step(0), ixgbevf::Progress::Ready);
    m.operator.remove().unwrap();
    let mut steps = 0;
    let end = loop {
        steps += 1;
        assert!(steps < 100, "the bring-up never ended");
        if let ixgbevf::Progress::Done(result) = vf.step(1_000 * steps) {
            break result;
        }
    };
    assert_eq!(end, Err(Error::Removed));
    assert!(vf.is_removed() && !vf.bringing_up());
}

#[test]
fn bring_up_fails_cleanly_when_the_vf_is_gone() {
    let m = Machine::new(false);
    let mut config = m.config();
    let function = drivers::pci::enumerate(&config)
        .into_iter()
        .find(ixgbevf::pci::matches)
        .unwrap();
    let vf = ixgbevf::pci::probe(&mut config, function.bdf, None).unwrap();
    m.operator.remove().unwrap();
    let driver = Ixgbevf::new(
        m.mmio(vf.registers),
        m.dma.clone(),
        &mut |_| {},
        Config {
            mac: Some(VIRTIO_MAC),
        },
    );
    assert_eq!(driver.err(), Some(Error::Removed));
    assert!(m.dma.live.borrow().is_empty());
    // And the probe no longer finds it.
    assert!(
        !drivers::pci::enumerate(&config)
            .iter()
            .any(ixgbevf::pci::matches)
    );
}

#[test]
fn impossible_write_backs_are_dropped_and_counted() {
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    let ring = m.model().state().rx[0].base();
    let mem = m.dma.mem.clone();
    // What a broken device might write back into descriptors 0..4: DD with length 0, with
    // a length beyond the buffer, with a frame error, and without EOP (a frame spanning
    // descriptors, whose rest in descriptor 4 must go too).
    let status = |desc: u64, status: u32, len: u16| {
        let at = GuestAddress(ring + 16 * desc + 8);
        let mut wb = [0u8; 8];
        wb[..4].copy_from_slice(&status.to_le_bytes());
        wb[4..6].copy_from_slice(&len.to_le_bytes());
        mem.write_slice(&wb, at).unwrap();
    };
    let dd_eop = regs::RXD_STAT_DD | regs::RXD_STAT_EOP;
    status(0, dd_eop, 0);
    status(1, dd_eop, 4000);
    status(2, dd_eop | (1 << 24), 60);
    status(3, regs::RXD_STAT_DD, 1000);
    status(4, dd_eop, 500);
    // The device "wrote" those five: its head moves on.
    m.poke(regs::rx_queue(0) + regs::Q_HEAD, 5);
    assert!(vf.receive().is_none());
    assert_eq!(vf.stats().rx_errors, 4, "one per bad frame");
    assert_eq!(vf.stats().rx_frames, 0);
    // Their buffers were re-armed; the ring goes on working.
    let rx = m.model().state().rx[0];
    assert_eq!((rx.head, rx.tail), (5, 4));
    for round in 0..4 {
        let frames: Vec<_> = (0..10)
            .map(|i| frame(PERMANENT, round * 10 + i, 1000))
            .collect();
        for f in &frames {
            m.peer.inject(f);
        }
        assert_eq!(m.deliver(), 10);
        assert_eq!(drain(&mut vf), frames);
    }
    assert_eq!(vf.stats().rx_errors, 4);
}

/// An IPv4 TCP segment from `src` to `dst` with `payload`, its checksum zero (as the stack
/// leaves it for a NIC with offload).
fn tcp_frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 54 + payload.len()];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[198, 18, 0, 1]);
    f[30..34].copy_from_slice(&[198, 18, 0, 2]);
    f[34..36].copy_from_slice(&7u16.to_be_bytes());
    f[36..38].copy_from_slice(&40000u16.to_be_bytes());
    f[46] = 5 << 4;
    f[54..].copy_from_slice(payload);
    let mut sum = 0u32;
    for w in f[14..34].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f
}

#[test]
fn tcp_checksums_are_left_to_the_vf_and_its_verdict_reaches_the_stack() {
    use drivers::net::checksum::{fill_tcp, tcp_segment, verify_tcp};
    let m = Machine::new(false);
    let mut vf = m.driver(MacAddress(PERMANENT)).unwrap();
    assert!(vf.capabilities().tx_checksum);
    // Transmit: the driver leaves the pseudo-header sum, the VF completes it.
    let out = tcp_frame(PEER_MAC, PERMANENT, b"offloaded to the VF");
    let tx = vf.transmit().unwrap();
    assert!(tx.checksum_offload());
    tx.consume(out.len(), |buf| buf.copy_from_slice(&out));
    let wire = sent(&m.peer);
    assert_eq!(wire.len(), 1);
    let seg = tcp_segment(&wire[0]).unwrap();
    assert!(verify_tcp(&wire[0], &seg), "the VF's checksum is right");
    assert_eq!(m.model().metrics().tx_csum, 1);
    // Receive: a right checksum is vouched for, a wrong one or a non-TCP frame is not.
    let mut good = tcp_frame(PERMANENT, PEER_MAC, b"checked by the VF");
    let good_seg = tcp_segment(&good).unwrap();
    fill_tcp(&mut good, &good_seg);
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    for f in [&good, &bad, &frame(PERMANENT, 5, 80)] {
        m.peer.inject(f);
    }
    m.deliver();
    let mut verdicts = Vec::new();
    while let Some((rx, _)) = vf.receive() {
        verdicts.push(rx.checksum_valid());
        rx.consume(|_| ());
    }
    assert_eq!(verdicts, [true, false, false]);
    assert_eq!(m.model().metrics().rx_csum, 1);
}
