//! The console behind its PCI transport, driven as a guest driver would: bytes both ways
//! (directly and through the I/O thread), chains as a stream, bounds, bad descriptors and
//! reset, the saved state, and arbitrary rings (proptest).

use super::*;
use crate::devices::Persist;
use crate::devices::pci::PciDevice;
use crate::devices::pci::msix::{CONTROL_ENABLE, MsixVector};
use crate::devices::virtio::pci::{IntxLine, MSIX_BAR, VIRTIO_BAR, VirtioPci};
use crate::devices::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use crate::devices::vm_ops::RecordingVmOps;
use crate::io_thread::IoThread;
use std::time::Duration;
use vm_memory::{Address, Bytes, GuestAddress};

const RAM: u64 = 0x10_0000;
const QSIZE: u16 = 8;
const BUFFERS: u64 = 0x8_0000;
const FEATURES: u64 = VIRTIO_F_VERSION_1;

fn rings(q: usize) -> (u64, u64, u64) {
    let base = 0x1_0000 + 0x1_0000 * q as u64;
    (base, base + 0x1000, base + 0x2000)
}

/// A guest driver for the console, programming the transport as a guest would.
struct Guest {
    dev: VirtioPci<Console>,
    host: HostPort,
    mem: GuestMemoryMmap,
    msix: Vec<EventFd>,
    next_desc: [u16; 2],
    avail_idx: [u16; 2],
}

impl Guest {
    fn new() -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        Guest::with_memory(mem)
    }

    fn with_memory(mem: GuestMemoryMmap) -> Guest {
        let (console, host) = Console::new().unwrap();
        let vectors: Vec<MsixVector> = (0..2)
            .map(|i| MsixVector {
                gsi: 24 + i,
                irqfd: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            })
            .collect();
        let msix = vectors
            .iter()
            .map(|v| v.irqfd.try_clone().unwrap())
            .collect();
        let dev = VirtioPci::new(
            console,
            mem.clone(),
            Arc::new(RecordingVmOps::default()),
            vectors,
            Some(IntxLine { gsi: 17 }),
        )
        .unwrap();
        Guest {
            dev,
            host,
            mem,
            msix,
            next_desc: [0; 2],
            avail_idx: [0; 2],
        }
    }

    fn write(&mut self, offset: u64, value: u64, len: usize) {
        self.dev
            .write_bar(VIRTIO_BAR, offset, &value.to_le_bytes()[..len]);
    }

    fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        self.dev.read_bar(VIRTIO_BAR, offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn status(&mut self) -> u8 {
        self.read(0x14, 1) as u8
    }

    fn needs_reset(&mut self) -> bool {
        self.status() & STATUS_NEEDS_RESET != 0
    }

    fn enable_msix(&mut self) {
        // The MSI-X capability is the first one (VirtioPci adds it first).
        let cap = (self.dev.read_config(0x34) & 0xFF) as usize;
        assert_eq!(self.dev.read_config(cap) as u8, 0x11);
        let control = (self.dev.read_config(cap) >> 16) as u16;
        self.dev
            .write_config(cap + 2, &(control | CONTROL_ENABLE).to_le_bytes());
        for v in 0..2u64 {
            self.dev
                .write_bar(MSIX_BAR, v * 16, &0xFEE0_0000u64.to_le_bytes());
            self.dev
                .write_bar(MSIX_BAR, v * 16 + 8, &(0x40 + v as u32).to_le_bytes());
            self.dev
                .write_bar(MSIX_BAR, v * 16 + 12, &0u32.to_le_bytes());
        }
    }

    /// Features, both queues at [`rings`] (RX on vector 0, TX none), DRIVER_OK.
    fn init(&mut self, features: u64) {
        self.write(0x14, 0, 1);
        self.write(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
        self.write(0x08, 0, 4);
        self.write(0x0C, features & 0xFFFF_FFFF, 4);
        self.write(0x08, 1, 4);
        self.write(0x0C, features >> 32, 4);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(0x14, u64::from(s), 1);
        assert_ne!(self.status() & STATUS_FEATURES_OK, 0, "features refused");
        for (q, vector) in [(RX, 0u64), (TX, 0xFFFF)] {
            let (desc, avail, used) = rings(q);
            self.write(0x16, q as u64, 2);
            self.write(0x18, u64::from(QSIZE), 2);
            self.write(0x1A, vector, 2);
            self.write(0x20, desc, 8);
            self.write(0x28, avail, 8);
            self.write(0x30, used, 8);
            self.write(0x1C, 1, 2);
        }
        self.write(0x10, 1, 2);
        self.write(0x14, u64::from(s | STATUS_DRIVER_OK), 1);
    }

    fn write_desc(&self, q: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = rings(q).0 + 16 * u64::from(index);
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, GuestAddress(at)).unwrap();
    }

    fn publish(&mut self, q: usize, head: u16) {
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

    fn take_desc(&mut self, q: usize) -> u16 {
        let d = self.next_desc[q];
        self.next_desc[q] = (d + 1) % QSIZE;
        d
    }

    /// Posts a `len`-byte receive buffer; returns its address.
    fn add_rx_buffer(&mut self, len: u32) -> u64 {
        let d = self.take_desc(RX);
        let addr = BUFFERS + 0x1000 * u64::from(d);
        self.write_desc(RX, d, addr, len, 2, 0);
        self.publish(RX, d);
        addr
    }

    /// Sends `bytes` as a chain of buffers of at most `piece` bytes each.
    fn add_tx(&mut self, bytes: &[u8], piece: usize) {
        let pieces: Vec<&[u8]> = bytes.chunks(piece.max(1)).collect();
        let descs: Vec<u16> = pieces.iter().map(|_| self.take_desc(TX)).collect();
        for (i, p) in pieces.iter().enumerate() {
            let addr = BUFFERS + 0x4_0000 + 0x1000 * u64::from(descs[i]);
            self.mem.write_slice(p, GuestAddress(addr)).unwrap();
            let (flags, next) = match descs.get(i + 1) {
                Some(&n) => (1, n),
                None => (0, 0),
            };
            self.write_desc(TX, descs[i], addr, p.len() as u32, flags, next);
        }
        self.publish(TX, descs[0]);
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.mem.read_obj(GuestAddress(rings(q).2 + 2)).unwrap()
    }

    fn used(&self, q: usize, i: u16) -> (u32, u32) {
        let at = rings(q).2 + 4 + 8 * u64::from(i % QSIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    fn bytes_at(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    /// What the I/O thread does when the host queued bytes.
    fn host_ready(&mut self) {
        self.dev.device_event(0);
    }

    fn kick(&mut self, q: usize) {
        self.dev.queue_notified(q);
    }

    fn recv_now(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.host.recv_until(&mut out, Instant::now());
        out
    }
}

fn running() -> Guest {
    let mut g = Guest::new();
    g.enable_msix();
    g.init(FEATURES);
    g
}

#[test]
fn bytes_in_flight_and_queue_positions_cross_a_save_and_restore() {
    let mut g = running();
    g.add_rx_buffer(4);
    g.kick(RX);
    g.host.send(b"abcdef").unwrap();
    g.host_ready(); // "abcd" delivered, "ef" waits for a buffer
    g.add_tx(b"reply", 2);
    g.kick(TX);
    let saved = g.dev.save();
    assert_eq!(
        saved.device,
        VirtioDeviceState::Console(ConsoleState {
            to_guest: b"ef".to_vec(),
            from_guest: b"reply".to_vec(),
        })
    );
    let mut m = Guest::with_memory(g.mem.clone());
    m.dev.restore(saved.clone()).unwrap();
    assert_eq!(m.dev.save(), saved);
    (m.next_desc, m.avail_idx) = (g.next_desc, g.avail_idx);
    let b = m.add_rx_buffer(64);
    m.kick(RX);
    assert_eq!(m.used_idx(RX), 2);
    assert_eq!(m.used(RX, 1), (1, 2));
    assert_eq!(m.bytes_at(b, 2), b"ef", "the stream continues");
    assert_eq!(m.recv_now(), b"reply");
    m.add_tx(b"!", 1);
    m.kick(TX);
    assert_eq!(m.recv_now(), b"!");
    assert_eq!(m.used_idx(TX), 2, "one used entry per chain, continuing");
    // Over-long byte queues and another kind's state are refused.
    let mut bad = saved.clone();
    bad.device = VirtioDeviceState::Console(ConsoleState {
        to_guest: vec![0; TO_GUEST_CAPACITY + 1],
        from_guest: Vec::new(),
    });
    let mut fresh = Guest::with_memory(g.mem.clone());
    assert!(fresh.dev.restore(bad).is_err());
    assert_eq!(fresh.status(), 0);
}

#[test]
fn the_device_is_a_modern_virtio_console() {
    let mut g = Guest::new();
    let ids = g.dev.read_config(0);
    assert_eq!(ids, 0x1043_1AF4, "1AF4:1043");
    assert_eq!(g.dev.read_config(0x2C) >> 16, 3, "subsystem: console");
    g.write(0x00, 0, 4);
    assert_eq!(g.read(0x04, 4), VIRTIO_RING_F_EVENT_IDX);
    g.write(0x00, 1, 4);
    assert_eq!(g.read(0x04, 4), 1, "VERSION_1");
    assert_eq!(g.read(0x12, 2), 2, "two queues: no multiport");
    assert_eq!(g.read(0x2000, 4), 0, "no size, no ports");
}

#[test]
fn host_bytes_fill_receive_chains_as_a_stream() {
    let mut g = running();
    let a = g.add_rx_buffer(4);
    let b = g.add_rx_buffer(100);
    g.kick(RX);
    g.host.send(b"hello, guest").unwrap();
    g.host_ready();
    assert_eq!(g.used_idx(RX), 2);
    assert_eq!(g.used(RX, 0), (0, 4));
    assert_eq!(g.used(RX, 1), (1, 8));
    assert_eq!(g.bytes_at(a, 4), b"hell");
    assert_eq!(g.bytes_at(b, 8), b"o, guest");
    assert!(g.msix[0].read().is_ok(), "receive vector");
    assert_eq!(g.dev.device().metrics().rx_bytes, 12);
}

#[test]
fn without_buffers_host_bytes_wait_for_the_drivers_kick() {
    let mut g = running();
    g.host.send(b"abc").unwrap();
    g.host_ready();
    assert_eq!(g.used_idx(RX), 0);
    g.host.send(b"def").unwrap();
    g.host_ready();
    let a = g.add_rx_buffer(64);
    g.kick(RX);
    assert_eq!(g.used(RX, 0), (0, 6));
    assert_eq!(g.bytes_at(a, 6), b"abcdef", "in order, nothing lost");
}

#[test]
fn bytes_sent_before_the_driver_runs_are_dropped() {
    let mut g = Guest::new();
    g.host.send(b"stale request").unwrap();
    g.host_ready();
    assert_eq!(g.dev.device().metrics().rx_dropped, 13);
    g.enable_msix();
    g.init(FEATURES);
    g.add_rx_buffer(64);
    g.kick(RX);
    assert_eq!(g.used_idx(RX), 0, "nothing stale delivered");
}

#[test]
fn guest_chains_reach_the_host_in_order() {
    let mut g = running();
    g.add_tx(b"first ", 100);
    g.add_tx(b"second, in three pieces", 8);
    g.kick(TX);
    assert_eq!(g.recv_now(), b"first second, in three pieces");
    assert_eq!(g.used_idx(TX), 2);
    assert_eq!(g.used(TX, 0), (0, 0));
    assert_eq!(g.dev.device().metrics().tx_bytes, 29);
    assert!(g.msix[1].read().is_err(), "transmitq has no vector");
}

#[test]
fn a_full_transmit_queue_is_served_in_bounded_wakes() {
    let mut g = running();
    g.dev.device_mut().set_tx_budget(2);
    for word in [&b"one "[..], b"two ", b"three ", b"four ", b"five"] {
        g.add_tx(word, 100);
    }
    g.kick(TX);
    assert_eq!(g.recv_now(), b"one two ", "two chains in the first wake");
    assert_eq!(g.used_idx(TX), 2);
    // The rest comes on the device's second event, one budget at a time.
    g.dev.device_event(1);
    assert_eq!(g.recv_now(), b"three four ");
    g.dev.device_event(1);
    assert_eq!(g.recv_now(), b"five");
    assert_eq!(g.used_idx(TX), 5);
    assert_eq!(g.dev.device().metrics().tx_bytes, 23);
}

#[test]
fn the_host_waits_for_guest_bytes_until_its_deadline() {
    let g = running();
    let start = Instant::now();
    let mut out = Vec::new();
    let n = g
        .host
        .recv_until(&mut out, start + Duration::from_millis(30));
    assert_eq!(n, 0);
    assert!(start.elapsed() >= Duration::from_millis(30));
    let host = g.host.clone();
    let dev = Arc::new(Mutex::new(g));
    let writer = {
        let dev = dev.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let mut g = dev.lock().unwrap();
            g.add_tx(b"late", 16);
            g.kick(TX);
        })
    };
    let n = host.recv_until(&mut out, Instant::now() + Duration::from_secs(5));
    writer.join().unwrap();
    assert_eq!((n, &out[..]), (4, &b"late"[..]));
}

#[test]
fn both_directions_are_bounded() {
    let mut g = running();
    assert_eq!(g.host.send(&vec![0; TO_GUEST_CAPACITY]), Ok(()));
    assert_eq!(g.host.send(b"x"), Err(PortFull(TO_GUEST_CAPACITY)));
    assert_eq!(g.host.discard_unsent(), TO_GUEST_CAPACITY);
    assert_eq!(g.host.send(b"x"), Ok(()));
    // The guest outruns the host: the oldest bytes go.
    for i in 0..20u8 {
        g.add_tx(&vec![i; 4096], 4096);
        g.kick(TX);
    }
    let got = g.recv_now();
    assert_eq!(got.len(), FROM_GUEST_CAPACITY);
    assert_eq!(got[0], 4, "the first 4 chunks were dropped");
    assert_eq!(*got.last().unwrap(), 19);
    assert_eq!(g.dev.device().metrics().tx_dropped, 4 * 4096);
    let mut b = Buffers::default();
    push_bounded(&mut b, &vec![7; FROM_GUEST_CAPACITY + 10]);
    assert_eq!(b.from_guest.len(), FROM_GUEST_CAPACITY);
    assert_eq!(b.metrics.tx_dropped, 10);
}

fn fails_on(corrupt: impl FnOnce(&mut Guest), q: usize) {
    let mut g = running();
    corrupt(&mut g);
    match q {
        RX => {
            g.host.send(b"data").unwrap();
            g.host_ready();
        }
        _ => g.kick(TX),
    }
    assert!(g.needs_reset(), "status {:#x}", g.status());
    assert!(g.msix[1].read().is_ok(), "configuration interrupt");
    // A failed device does nothing more until reset.
    let before = (g.used_idx(RX), g.used_idx(TX));
    g.add_tx(b"more", 4);
    g.kick(TX);
    assert_eq!((g.used_idx(RX), g.used_idx(TX)), before);
    g.write(0x14, 0, 1);
    assert_eq!(g.status(), 0);
}

#[test]
fn bad_descriptors_fail_the_device_cleanly() {
    // Transmit buffer outside RAM, or wrapping.
    fails_on(
        |g| {
            g.write_desc(TX, 0, RAM - 8, 64, 0, 0);
            g.publish(TX, 0);
        },
        TX,
    );
    fails_on(
        |g| {
            g.write_desc(TX, 0, u64::MAX - 4, 64, 0, 0);
            g.publish(TX, 0);
        },
        TX,
    );
    // Device-writable buffer in a transmit chain; read-only one in a receive chain.
    fails_on(
        |g| {
            g.write_desc(TX, 0, BUFFERS, 64, 2, 0);
            g.publish(TX, 0);
        },
        TX,
    );
    fails_on(
        |g| {
            g.write_desc(RX, 0, BUFFERS, 64, 0, 0);
            g.publish(RX, 0);
        },
        RX,
    );
    // A zero-length receive chain (it would have to come back with length 0).
    fails_on(
        |g| {
            g.write_desc(RX, 0, BUFFERS, 0, 2, 0);
            g.publish(RX, 0);
        },
        RX,
    );
    // Indirect (not offered), a loop, `next` and head past the queue size.
    fails_on(
        |g| {
            g.write_desc(TX, 0, BUFFERS, 64, 4, 0);
            g.publish(TX, 0);
        },
        TX,
    );
    fails_on(
        |g| {
            g.write_desc(TX, 0, BUFFERS, 64, 1, 1);
            g.write_desc(TX, 1, BUFFERS, 64, 1, 0);
            g.publish(TX, 0);
        },
        TX,
    );
    fails_on(
        |g| {
            g.write_desc(TX, 0, BUFFERS, 64, 1, QSIZE);
            g.publish(TX, 0);
        },
        TX,
    );
    fails_on(|g| g.publish(TX, QSIZE + 1), TX);
    // Available index more than the queue size ahead.
    fails_on(
        |g| {
            g.mem
                .write_obj(QSIZE + 1, GuestAddress(rings(TX).1 + 2))
                .unwrap();
        },
        TX,
    );
    // A transmit chain longer than the device takes.
    fails_on(
        |g| {
            g.write_desc(TX, 0, BUFFERS, 0x8000, 1, 1);
            g.write_desc(TX, 1, BUFFERS, 0x8001, 0, 0);
            g.publish(TX, 0);
        },
        TX,
    );
}

#[test]
fn a_queue_left_disabled_fails_at_driver_ok() {
    let mut g = Guest::new();
    g.write(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
    g.write(0x08, 1, 4);
    g.write(0x0C, 1, 4);
    let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    g.write(0x14, u64::from(s), 1);
    g.write(0x14, u64::from(s | STATUS_DRIVER_OK), 1);
    assert!(g.needs_reset());
    assert!(g.dev.device().queue_states().is_none());
}

#[test]
fn reset_forgets_the_queues_and_drops_pending_bytes() {
    let mut g = running();
    g.host.send(b"pending").unwrap();
    g.host_ready();
    assert!(g.dev.device().queue_states().is_some());
    g.write(0x14, 0, 1);
    assert!(g.dev.device().queue_states().is_none());
    g.host_ready();
    assert_eq!(g.dev.device().metrics().rx_dropped, 7);
}

#[test]
fn bytes_flow_both_ways_through_the_io_thread() {
    let mut g = running();
    let buf = g.add_rx_buffer(64);
    let Guest { dev, host, mem, .. } = g;
    let dev = Arc::new(Mutex::new(dev));
    let thread = IoThread::spawn(vec![Box::new(VirtioPci::io_handler(&dev))]).unwrap();
    host.send(b"ping").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let used_idx = || -> u16 { mem.read_obj(GuestAddress(rings(RX).2 + 2)).unwrap() };
    while used_idx() < 1 {
        assert!(Instant::now() < deadline, "bytes not delivered");
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut got = [0u8; 4];
    mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    assert_eq!(&got, b"ping");
    // The guest answers through the transmit queue and a notify write.
    let (desc, avail, _) = rings(TX);
    mem.write_slice(b"pong", GuestAddress(BUFFERS + 0x4_0000))
        .unwrap();
    let d = GuestAddress(desc);
    mem.write_obj(BUFFERS + 0x4_0000, d).unwrap();
    mem.write_obj(4u32, d.unchecked_add(8)).unwrap();
    mem.write_obj(0u16, d.unchecked_add(12)).unwrap();
    mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    dev.lock()
        .unwrap()
        .write_bar(VIRTIO_BAR, 0x3004, &1u16.to_le_bytes());
    let mut out = Vec::new();
    host.recv_until(&mut out, deadline);
    assert_eq!(out, b"pong");
    drop(thread);
}

#[test]
fn an_agent_request_and_its_reply_cross_the_queues() {
    use agent_proto::{Decoded, MAX_FRAME, Nic, Reply, Request, Status, SwitchError};
    use migration_client::{Agent, NicControl};
    struct Nics(Status);
    impl NicControl for Nics {
        fn switch(&mut self, nic: Nic) -> Result<(), SwitchError> {
            self.0.active = Some(nic);
            Ok(())
        }
        fn status(&self) -> Status {
            self.0
        }
    }
    let mut g = running();
    let buf = g.add_rx_buffer(4096);
    g.kick(RX);
    let mut frame = [0u8; MAX_FRAME];
    let n = agent_proto::encode(77, &Request::Switch(Nic::Vf), &mut frame);
    g.host.send(&frame[..n]).unwrap();
    g.host_ready();
    // The guest side: what landed in its buffer goes to the real agent.
    let (_, len) = g.used(RX, 0);
    let input = g.bytes_at(buf, len as usize);
    let mut replies = Vec::new();
    Agent::new().on_input(&input, &mut Nics(Status::default()), &mut |r: &[u8]| {
        replies.push(r.to_vec())
    });
    assert_eq!(replies.len(), 1);
    g.add_tx(&replies[0], 4096);
    g.kick(TX);
    let got = g.recv_now();
    let Decoded::Frame { seq, message, .. } = agent_proto::decode::<Reply>(&got) else {
        panic!("{got:x?}")
    };
    assert_eq!(seq, 77);
    assert!(matches!(message, Reply::Status(s) if s.active == Some(Nic::Vf)));
}

mod property {
    //! Arbitrary descriptors and indexes: never a panic; either the bytes move intact
    //! and in order, or the device ends in DEVICE_NEEDS_RESET.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    struct Desc {
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    }

    fn desc(q: usize) -> impl Strategy<Value = Desc> {
        let addr = prop_oneof![
            12 => BUFFERS..RAM - 0x2000,
            1 => 0..RAM,
            1 => any::<u64>(),
        ];
        let len = prop_oneof![12 => 0u32..512, 1 => any::<u32>()];
        let write = if q == RX { 2u16 } else { 0 };
        let flags = prop_oneof![12 => Just(write), 2 => Just(write | 1), 1 => any::<u16>()];
        let next = prop_oneof![12 => 0..QSIZE, 1 => any::<u16>()];
        (addr, len, flags, next).prop_map(|(addr, len, flags, next)| Desc {
            addr,
            len,
            flags,
            next,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_rings_never_panic(
            rx in proptest::collection::vec(desc(RX), QSIZE as usize),
            tx in proptest::collection::vec(desc(TX), QSIZE as usize),
            heads in proptest::collection::vec(0u16..QSIZE + 2, 2 * QSIZE as usize),
            avail in (0u16..QSIZE + 2, 0u16..QSIZE + 2),
            sends in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..5),
            kicks in proptest::collection::vec(0u8..3, 1..10),
        ) {
            let mut g = running();
            for (q, descs) in [(RX, &rx), (TX, &tx)] {
                for (i, d) in descs.iter().enumerate() {
                    g.write_desc(q, i as u16, d.addr, d.len, d.flags, d.next);
                }
                let a = rings(q).1;
                for i in 0..QSIZE {
                    let h = heads[q * QSIZE as usize + usize::from(i)];
                    g.mem.write_obj(h, GuestAddress(a + 4 + 2 * u64::from(i))).unwrap();
                }
            }
            g.mem.write_obj(avail.0, GuestAddress(rings(RX).1 + 2)).unwrap();
            g.mem.write_obj(avail.1, GuestAddress(rings(TX).1 + 2)).unwrap();
            let mut sent = Vec::new();
            for s in &sends {
                if g.host.send(s).is_ok() {
                    sent.extend_from_slice(s);
                }
            }
            for k in &kicks {
                match k {
                    0 => g.kick(RX),
                    1 => g.kick(TX),
                    _ => g.host_ready(),
                }
            }
            let m = g.dev.device().metrics();
            prop_assert!(m.rx_bytes <= sent.len() as u64);
            // Receive buffers over the rings let the device overwrite its own used
            // entries (legal, but then the lengths below mean nothing).
            let no_aliasing = rx.iter().all(|d| d.addr >= BUFFERS);
            if !g.needs_reset() && no_aliasing {
                // Every used receive element has a length of at least 1.
                for i in 0..g.used_idx(RX) {
                    prop_assert!(g.used(RX, i).1 >= 1);
                }
            }
        }
    }
}
