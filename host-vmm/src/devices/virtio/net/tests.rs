//! virtio-net against the in-memory backend: frames both ways, flow control, notification
//! suppression, failures on bad descriptors, reset, the I/O thread, and a property test
//! over arbitrary descriptor tables and ring indices.

use super::super::VirtioDeviceState;
use super::super::pci::VirtioPci;
use super::super::pci::VirtioPciState;
use super::super::test_driver::{BUFFERS, Driver, QSIZE, RAM, rings};
use super::super::{STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use super::*;
use crate::devices::DeviceStateError;
use crate::devices::Persist;
use crate::devices::pci::PciDevice;
use crate::io_thread::IoThread;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{Address, Bytes, GuestAddress};

const FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;

/// The test driver's device MAC.
const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

/// A frame of `len` bytes from the device's MAC (when it is long enough to have one), the
/// rest a counting pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
    if len >= 12 {
        f[6..12].copy_from_slice(&MAC);
    }
    f
}

fn running() -> Driver {
    let mut d = Driver::new();
    d.enable_msix();
    d.init(FEATURES);
    d
}

fn needs_reset(d: &mut Driver) -> bool {
    d.status() & STATUS_NEEDS_RESET != 0
}

#[test]
fn a_frame_from_the_backend_lands_in_the_rx_queue_with_its_header() {
    let mut d = running();
    let buf = d.add_rx_buffer(2048);
    d.kick(RX);
    let f = frame(98, 7);
    d.peer.inject(&f);
    d.backend_ready();
    assert_eq!(d.used_idx(RX), 1);
    assert_eq!(d.used(RX, 0), (0, (HEADER_LEN + f.len()) as u32));
    let mut got = vec![0u8; HEADER_LEN + f.len()];
    d.mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
    let mut header = [0u8; HEADER_LEN];
    header[10] = 1; // num_buffers = 1, everything else zero
    assert_eq!(&got[..HEADER_LEN], &header);
    assert_eq!(&got[HEADER_LEN..], &f[..]);
    assert!(d.fired(0));
    let m = d.dev.device().metrics();
    assert_eq!((m.rx_frames, m.rx_bytes), (1, 98));
}

#[test]
fn a_frame_split_over_several_buffers_is_scattered_in_order() {
    let mut d = running();
    // Header alone in the first 12 bytes, then 10 bytes, then the rest.
    d.write_desc(RX, 0, BUFFERS, 12, 3, 1);
    d.write_desc(RX, 1, BUFFERS + 0x100, 10, 3, 2);
    d.write_desc(RX, 2, BUFFERS + 0x200, 2000, 2, 0);
    d.publish(RX, 0);
    d.kick(RX);
    let f = frame(60, 1);
    d.peer.inject(&f);
    d.backend_ready();
    assert_eq!(d.used(RX, 0), (0, 72));
    let mut a = [0u8; 10];
    d.mem
        .read_slice(&mut a, GuestAddress(BUFFERS + 0x100))
        .unwrap();
    assert_eq!(&a[..], &f[..10]);
    let mut b = [0u8; 50];
    d.mem
        .read_slice(&mut b, GuestAddress(BUFFERS + 0x200))
        .unwrap();
    assert_eq!(&b[..], &f[10..]);
}

#[test]
fn a_tx_chain_reaches_the_backend_without_its_header() {
    let mut d = running();
    let f = frame(1514, 3);
    d.add_tx_frame(&f);
    d.add_tx_frame(&frame(60, 9));
    d.kick(TX);
    assert_eq!(d.peer.take(), Some(f));
    assert_eq!(d.peer.take(), Some(frame(60, 9)));
    assert_eq!(d.peer.take(), None);
    assert_eq!(d.used_idx(TX), 2);
    assert_eq!(d.used(TX, 0), (0, 0));
    assert_eq!(d.used(TX, 1), (2, 0));
    assert!(d.fired(1));
    assert_eq!(d.dev.device().metrics().tx_frames, 2);
}

#[test]
fn frames_from_another_source_mac_are_dropped_and_counted() {
    let mut d = running();
    let mut spoofed = frame(60, 1);
    spoofed[6..12].copy_from_slice(&[0x52, 0x54, 0, 0xBA, 0xD0, 0x01]);
    d.add_tx_frame(&spoofed);
    d.add_tx_frame(&frame(60, 2));
    d.add_tx_frame(&[0x52; 8]); // too short to have a source MAC
    d.kick(TX);
    assert_eq!(d.peer.take(), Some(frame(60, 2)), "only the device's own");
    assert_eq!(d.peer.take(), None);
    assert_eq!(d.used_idx(TX), 3, "every chain is returned");
    let m = d.dev.device().metrics();
    assert_eq!((m.tx_frames, m.tx_spoofed, m.tx_dropped), (1, 2, 2));
    assert!(
        !needs_reset(&mut d),
        "a guest's spoofing is dropped, not a device error"
    );
}

#[test]
fn a_gso_request_is_refused_whatever_its_size() {
    let mut d = running();
    let f = frame(3000, 4);
    // gso_type TCPV4 (1) with MSS 0, 1 and 65535: never negotiated, never carried out.
    for gso_size in [0u16, 1, u16::MAX] {
        let mut header = [0u8; HEADER_LEN];
        header[1] = 1;
        header[4..6].copy_from_slice(&gso_size.to_le_bytes());
        d.add_tx_frame_with_header(&header, &f);
    }
    d.add_tx_frame(&frame(100, 5));
    d.kick(TX);
    assert_eq!(d.peer.take(), Some(frame(100, 5)));
    assert_eq!(d.peer.take(), None);
    let m = d.dev.device().metrics();
    assert_eq!((m.tx_frames, m.tx_bad_gso, m.tx_dropped), (1, 3, 3));
    assert!(!needs_reset(&mut d));
}

#[test]
fn without_rx_buffers_the_frame_waits_for_the_drivers_kick() {
    let mut d = running();
    d.peer.inject(&frame(60, 1));
    d.peer.inject(&frame(60, 2));
    d.backend_ready();
    assert_eq!(d.used_idx(RX), 0);
    let used_flags: u16 = d.mem.read_obj(GuestAddress(rings(RX).2)).unwrap();
    assert_eq!(
        used_flags, 0,
        "notifications on: the device waits for a kick"
    );
    d.add_rx_buffer(2048);
    d.kick(RX);
    assert_eq!(d.used_idx(RX), 1, "first frame delivered");
    d.add_rx_buffer(2048);
    d.kick(RX);
    assert_eq!(d.used_idx(RX), 2, "second frame delivered");
    let mut b = [0u8; 1];
    d.mem
        .read_slice(&mut b, GuestAddress(BUFFERS + 0x1_0000 + 12))
        .unwrap();
    assert_eq!(b[0], 2, "in order");
    assert_eq!(d.peer.waiting(), 0);
}

#[test]
fn while_buffers_last_the_driver_is_asked_not_to_kick_rx() {
    let mut d = running();
    d.add_rx_buffer(2048);
    d.add_rx_buffer(2048);
    d.kick(RX);
    let used_flags: u16 = d.mem.read_obj(GuestAddress(rings(RX).2)).unwrap();
    assert_eq!(used_flags, 1, "VIRTQ_USED_F_NO_NOTIFY");
    d.peer.inject(&frame(60, 1));
    d.peer.inject(&frame(60, 2));
    d.peer.inject(&frame(60, 3));
    d.backend_ready();
    assert_eq!(d.used_idx(RX), 2);
    let used_flags: u16 = d.mem.read_obj(GuestAddress(rings(RX).2)).unwrap();
    assert_eq!(used_flags, 0, "out of buffers: kicks wanted again");
}

#[test]
fn a_frame_too_big_for_the_chain_is_dropped_and_the_chain_kept() {
    let mut d = running();
    d.add_rx_buffer(100);
    d.kick(RX);
    d.peer.inject(&frame(200, 0));
    d.peer.inject(&frame(80, 0));
    d.backend_ready();
    assert_eq!(d.used_idx(RX), 1);
    assert_eq!(d.used(RX, 0), (0, 92));
    assert_eq!(d.dev.device().metrics().rx_dropped, 1);
    assert!(!needs_reset(&mut d));
}

#[test]
fn frames_arriving_before_driver_ok_are_dropped() {
    let mut d = Driver::new();
    d.peer.inject(&frame(60, 0));
    d.backend_ready();
    assert_eq!(d.peer.waiting(), 0);
    assert_eq!(d.dev.device().metrics().rx_dropped, 1);
    d.enable_msix();
    d.init(FEATURES);
    d.add_rx_buffer(2048);
    d.kick(RX);
    assert_eq!(d.used_idx(RX), 0, "nothing stale delivered");
}

#[test]
fn no_interrupt_flag_is_honoured_without_event_idx() {
    let mut d = running();
    d.mem.write_obj(1u16, GuestAddress(rings(TX).1)).unwrap();
    d.add_tx_frame(&frame(60, 0));
    d.kick(TX);
    assert_eq!(d.used_idx(TX), 1);
    assert!(!d.fired(1), "VIRTQ_AVAIL_F_NO_INTERRUPT");
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut d = Driver::new();
    d.enable_msix();
    d.init(FEATURES | VIRTIO_RING_F_EVENT_IDX);
    // used_event (after the available ring) = 1: interrupt when the used index passes 1.
    let used_event = rings(TX).1 + 4 + 2 * u64::from(QSIZE);
    d.mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    d.add_tx_frame(&frame(60, 0));
    d.kick(TX);
    assert!(!d.fired(1), "used index 1: not past used_event");
    d.add_tx_frame(&frame(60, 1));
    d.kick(TX);
    assert!(d.fired(1), "used index 2");
    // avail_event is set to where the device stopped: kick on the next new buffer.
    let avail_event = rings(TX).2 + 4 + 8 * u64::from(QSIZE);
    let e: u16 = d.mem.read_obj(GuestAddress(avail_event)).unwrap();
    assert_eq!(e, 2);
}

fn fails_on(corrupt: impl FnOnce(&mut Driver), q: usize) {
    let mut d = running();
    corrupt(&mut d);
    d.kick(q);
    assert!(needs_reset(&mut d), "status {:#x}", d.status());
    assert!(d.fired(2), "configuration interrupt");
    // A failed device does nothing more until reset.
    let before = (d.used_idx(RX), d.used_idx(TX));
    d.add_tx_frame(&frame(60, 0));
    d.kick(TX);
    d.peer.inject(&frame(60, 0));
    d.backend_ready();
    assert_eq!((d.used_idx(RX), d.used_idx(TX)), before);
    // Reset and bring-up work again.
    d.common_write(0x14, 0, 1);
    assert_eq!(d.status(), 0);
}

#[test]
fn bad_descriptors_fail_the_device_cleanly() {
    // Buffer outside RAM.
    fails_on(
        |d| {
            d.write_desc(TX, 0, RAM - 8, 64, 0, 0);
            d.publish(TX, 0);
        },
        TX,
    );
    // Address + length wraps.
    fails_on(
        |d| {
            d.write_desc(TX, 0, u64::MAX - 4, 64, 0, 0);
            d.publish(TX, 0);
        },
        TX,
    );
    // Device-writable buffer in a transmit chain.
    fails_on(
        |d| {
            d.write_desc(TX, 0, BUFFERS, 64, 2, 0);
            d.publish(TX, 0);
        },
        TX,
    );
    // Read-only buffer in a receive chain (receive chains are checked when a frame needs
    // one).
    fails_on(
        |d| {
            d.write_desc(RX, 0, BUFFERS, 2048, 0, 0);
            d.publish(RX, 0);
            d.peer.inject(&frame(60, 0));
        },
        RX,
    );
    // Indirect descriptor (not negotiated).
    fails_on(
        |d| {
            d.write_desc(TX, 0, BUFFERS, 64, 4, 0);
            d.publish(TX, 0);
        },
        TX,
    );
    // A loop.
    fails_on(
        |d| {
            d.write_desc(TX, 0, BUFFERS, 64, 1, 1);
            d.write_desc(TX, 1, BUFFERS, 64, 1, 0);
            d.publish(TX, 0);
        },
        TX,
    );
    // `next` past the queue size.
    fails_on(
        |d| {
            d.write_desc(TX, 0, BUFFERS, 64, 1, QSIZE);
            d.publish(TX, 0);
        },
        TX,
    );
    // Head past the queue size.
    fails_on(|d| d.publish(TX, QSIZE + 3), TX);
    // Available index jumping more than the queue size.
    fails_on(
        |d| {
            d.mem
                .write_obj(QSIZE + 1, GuestAddress(rings(TX).1 + 2))
                .unwrap();
        },
        TX,
    );
    // A transmit chain shorter than the header.
    fails_on(
        |d| {
            d.write_desc(TX, 0, BUFFERS, 11, 0, 0);
            d.publish(TX, 0);
        },
        TX,
    );
    // A transmit chain longer than any frame.
    fails_on(
        |d| {
            d.write_desc(TX, 0, BUFFERS, 0x1_0000, 1, 1);
            d.write_desc(TX, 1, BUFFERS, 0x1_0000, 0, 0);
            d.publish(TX, 0);
        },
        TX,
    );
    // A receive chain shorter than the header, found when a frame arrives.
    fails_on(
        |d| {
            d.write_desc(RX, 0, BUFFERS, 8, 2, 0);
            d.publish(RX, 0);
            d.peer.inject(&frame(60, 0));
        },
        RX,
    );
}

#[test]
fn reset_clears_the_queues_and_a_second_bring_up_starts_from_index_zero() {
    let mut d = running();
    d.add_tx_frame(&frame(60, 0));
    d.kick(TX);
    assert_eq!(d.used_idx(TX), 1);
    assert!(d.dev.device().queue_states().is_some());
    d.common_write(0x14, 0, 1);
    assert!(d.dev.device().queue_states().is_none(), "queues forgotten");
    // The driver zeroes its rings and starts over.
    for q in [RX, TX] {
        let (desc, ..) = rings(q);
        d.mem
            .write_slice(&[0u8; 0x3000], GuestAddress(desc))
            .unwrap();
    }
    d.init(FEATURES);
    let states = d.dev.device().queue_states().unwrap();
    assert_eq!((states[1].next_avail, states[1].next_used), (0, 0));
}

#[test]
fn frames_flow_through_the_io_thread() {
    let d = {
        let mut d = running();
        for _ in 0..4 {
            d.add_rx_buffer(2048);
        }
        d
    };
    let Driver {
        dev,
        peer,
        mem,
        msix,
        ..
    } = d;
    let dev = Arc::new(Mutex::new(dev));
    let handler = VirtioPci::io_handler(&dev);
    let thread = IoThread::spawn(vec![Box::new(handler)]).unwrap();
    // DRIVER_OK kicked every queue, so the thread takes the RX buffers on its first round.
    peer.inject(&frame(60, 5));
    let deadline = Instant::now() + Duration::from_secs(5);
    let used_idx = || -> u16 { mem.read_obj(GuestAddress(rings(RX).2 + 2)).unwrap() };
    while used_idx() < 1 {
        assert!(Instant::now() < deadline, "frame not delivered");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(msix[0].read().is_ok(), "RX vector raised");
    // One transmit chain (header, frame), then a kick the way an MMIO exit delivers it.
    let (desc, avail, _) = rings(TX);
    let f = frame(70, 1);
    mem.write_slice(&f, GuestAddress(BUFFERS + 0x100)).unwrap();
    for (i, (addr, len, flags)) in [(BUFFERS, 12u32, 1u16), (BUFFERS + 0x100, 70, 0)]
        .into_iter()
        .enumerate()
    {
        let at = GuestAddress(desc + 16 * i as u64);
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        mem.write_obj(1u16, at.unchecked_add(14)).unwrap();
    }
    mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
    dev.lock()
        .unwrap()
        .write_bar(4, 0x3004, &1u16.to_le_bytes());
    let sent = loop {
        if let Some(sent) = peer.take() {
            break sent;
        }
        assert!(Instant::now() < deadline, "frame not sent");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(sent, f);
    drop(thread);
}

mod property {
    //! Arbitrary descriptor tables, ring contents, indexes and queue layouts: the device must
    //! never panic, never touch memory outside guest RAM (vm-memory checks every access),
    //! and either process chains correctly or end in DEVICE_NEEDS_RESET.

    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    struct Desc {
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    }

    /// Mostly well-formed descriptors for queue `q` (direction, in RAM, rarely chained),
    /// sometimes anything at all.
    fn desc(size: u16, q: usize) -> impl Strategy<Value = Desc> {
        let addr = prop_oneof![
            12 => BUFFERS..RAM - 0x1000,
            1 => 0..RAM,
            1 => RAM - 64..RAM + 64,
            1 => any::<u64>(),
        ];
        let len = prop_oneof![
            12 => 0u32..2048,
            1 => 2048u32..0x2_0000,
            1 => any::<u32>(),
        ];
        let write = if q == RX { 2u16 } else { 0 };
        let flags = prop_oneof![
            12 => Just(write),
            3 => Just(write | 1),
            1 => 0u16..8,
            1 => any::<u16>(),
        ];
        let next = prop_oneof![12 => 0..size.max(1), 1 => any::<u16>()];
        (addr, len, flags, next).prop_map(|(addr, len, flags, next)| Desc {
            addr,
            len,
            flags,
            next,
        })
    }

    #[derive(Clone, Debug)]
    struct Case {
        size: u16,
        event_idx: bool,
        ring_shift: [u64; 3],
        descs: [Vec<Desc>; 2],
        heads: [Vec<u16>; 2],
        avail_idx: [u16; 2],
        frames: Vec<usize>,
        kicks: Vec<u8>,
    }

    fn case() -> impl Strategy<Value = Case> {
        let size = prop_oneof![
            16 => prop::sample::select(vec![1u16, 2, 4, 8, 16]),
            1 => any::<u16>(),
        ];
        size.prop_flat_map(|size| {
            let n = usize::from(size.clamp(1, 16));
            let ring_shift = prop_oneof![
                40 => Just(0u64),
                1 => 1u64..64,
                1 => 0u64..RAM * 2,
            ];
            let idx = prop_oneof![12 => 0u16..=size.min(16), 1 => any::<u16>()];
            let head = || prop_oneof![12 => 0..size.max(1), 1 => any::<u16>()];
            (
                Just(size),
                any::<bool>(),
                [ring_shift.clone(), ring_shift.clone(), ring_shift],
                [
                    prop::collection::vec(desc(size, RX), n),
                    prop::collection::vec(desc(size, TX), n),
                ],
                [
                    prop::collection::vec(head(), n),
                    prop::collection::vec(head(), n),
                ],
                [idx.clone(), idx],
                prop::collection::vec(0usize..1600, 0..6),
                prop::collection::vec(0u8..3, 1..12),
            )
                .prop_map(
                    |(size, event_idx, ring_shift, descs, heads, avail_idx, frames, kicks)| Case {
                        size,
                        event_idx,
                        ring_shift,
                        descs,
                        heads,
                        avail_idx,
                        frames,
                        kicks,
                    },
                )
        })
    }

    fn run(c: &Case) {
        let mut d = Driver::new();
        d.enable_msix();
        let features = FEATURES
            | if c.event_idx {
                VIRTIO_RING_F_EVENT_IDX
            } else {
                0
            };
        d.negotiate(features);
        for q in [RX, TX] {
            let (desc, avail, used) = rings(q);
            let shift = |i: usize| c.ring_shift[i];
            d.common_write(0x16, q as u64, 2);
            d.common_write(0x18, u64::from(c.size), 2);
            d.common_write(0x1A, q as u64, 2);
            d.common_write(0x20, desc.wrapping_add(shift(0)), 8);
            d.common_write(0x28, avail.wrapping_add(shift(1)), 8);
            d.common_write(0x30, used.wrapping_add(shift(2)), 8);
            d.common_write(0x1C, 1, 2);
            // Fill the table and ring where they would be with the unshifted layout (the
            // shifted cases then read whatever lies there).
            for (i, x) in c.descs[q].iter().enumerate() {
                d.write_desc(q, i as u16, x.addr, x.len, x.flags, x.next);
            }
            for (i, &h) in c.heads[q].iter().enumerate() {
                d.mem
                    .write_obj(h, GuestAddress(avail + 4 + 2 * i as u64))
                    .unwrap();
            }
            d.mem
                .write_obj(c.avail_idx[q], GuestAddress(avail + 2))
                .unwrap();
        }
        d.common_write(0x10, 2, 2);
        d.driver_ok();
        let failed_at_start = needs_reset(&mut d);
        let mut used_before = [0u16; 2];
        if !failed_at_start {
            used_before = [d.used_idx(RX), d.used_idx(TX)];
        }
        for &len in &c.frames {
            d.peer.inject(&vec![0x5A; len]);
        }
        for &k in &c.kicks {
            match k {
                0 => d.kick(RX),
                1 => d.kick(TX),
                _ => d.backend_ready(),
            }
        }
        let failed = needs_reset(&mut d);
        if failed_at_start {
            assert!(failed);
            assert_eq!(d.dev.device().metrics().tx_frames, 0);
            assert_eq!(d.dev.device().metrics().rx_frames, 0);
            return;
        }
        // Buffers below BUFFERS may overlap the rings, and the guest may then scribble over
        // its own indexes through the device: legal, but the counts below no longer hold.
        let no_aliasing =
            c.ring_shift == [0; 3] && c.descs.iter().flatten().all(|x| x.addr >= BUFFERS);
        if !failed && no_aliasing {
            // Processed: the used rings moved by no more than what was made available, and
            // every frame sent went out whole.
            let m = d.dev.device().metrics();
            let (rx, tx) = (
                d.used_idx(RX).wrapping_sub(used_before[0]),
                d.used_idx(TX).wrapping_sub(used_before[1]),
            );
            assert!(rx <= c.size && tx <= c.size, "used {rx}/{tx}");
            assert_eq!(u64::from(tx), m.tx_frames + m.tx_dropped);
            assert_eq!(u64::from(rx), m.rx_frames);
            for i in 0..tx {
                assert!(d.used(TX, i).0 < u32::from(c.size));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_rings_never_panic_and_either_work_or_fail_cleanly(c in case()) {
            run(&c);
        }
    }
}

/// Puts BAR 1 at 0xD000_8000 and BAR 4 at 0xD000_0000 with memory decoding on, as a guest
/// that reassigns BARs does.
fn move_bar4(d: &mut Driver) {
    d.dev.write_config(0x14, &0xD000_8000u32.to_le_bytes());
    d.dev.write_config(0x20, &0xD000_0000u32.to_le_bytes());
    d.dev.write_config(0x24, &0u32.to_le_bytes());
    d.dev.write_config(0x04, &2u16.to_le_bytes());
}

fn migration_round(features: u64) {
    let mut d = Driver::new();
    move_bar4(&mut d);
    d.enable_msix();
    d.init(features);
    // Before the save: two frames in, two out, then a frame held for want of a buffer.
    for _ in 0..3 {
        d.add_rx_buffer(2048);
    }
    d.kick(RX);
    for seed in 0..2 {
        d.peer.inject(&frame(60, seed));
    }
    d.backend_ready();
    for seed in 10..12 {
        d.add_tx_frame(&frame(70, seed));
    }
    d.kick(TX);
    assert_eq!((d.used_idx(RX), d.used_idx(TX)), (2, 2));
    d.peer.inject(&frame(61, 2));
    d.peer.inject(&frame(62, 3));
    d.backend_ready();
    assert_eq!(d.used_idx(RX), 3);
    let saved = d.dev.save();
    let VirtioDeviceState::Net(net) = &saved.device else {
        panic!("not a net state");
    };
    assert_eq!(net.rx_pending.as_deref(), Some(&frame(62, 3)[..]));
    assert_eq!(
        (saved.queues[RX].next_avail, saved.queues[RX].next_used),
        (3, 3)
    );
    let bytes = postcard::to_allocvec(&saved).unwrap();
    assert_eq!(
        postcard::from_bytes::<VirtioPciState>(&bytes).unwrap(),
        saved
    );

    let mut m = d.migrated();
    assert_eq!(m.dev.save(), saved, "save, restore, save: the same state");
    assert_eq!(m.status(), d.status());
    // Host wiring from the restored registers: ioeventfds at the moved BAR, MSI-X routes.
    assert_eq!(m.vm.recorded().ioevents, vec![0xD000_3000, 0xD000_3004]);
    assert_eq!(m.vm.recorded().routes, d.vm.recorded().routes);
    // After: the held frame takes the next buffer, new frames follow, indexes continue.
    for _ in 0..3 {
        m.add_rx_buffer(2048);
    }
    m.kick(RX);
    assert_eq!(m.used_idx(RX), 4, "the held frame was not lost");
    m.peer.inject(&frame(63, 4));
    m.peer.inject(&frame(64, 5));
    m.backend_ready();
    assert_eq!(m.used_idx(RX), 6);
    if features & VIRTIO_RING_F_EVENT_IDX == 0 {
        // (With EVENT_IDX the driver here never moves used_event, so it asks for no more.)
        assert!(m.fired(0), "the restored vector reaches the guest");
    }
    let ids: Vec<u32> = (0..6).map(|i| m.used(RX, i).0).collect();
    assert_eq!(
        ids,
        vec![0, 1, 2, 3, 4, 5],
        "every buffer used once, in order"
    );
    let lens: Vec<u32> = (0..6).map(|i| m.used(RX, i).1).collect();
    let want: Vec<u32> = [60, 60, 61, 62, 63, 64]
        .iter()
        .map(|l| (HEADER_LEN + l) as u32)
        .collect();
    assert_eq!(lens, want);
    m.add_tx_frame(&frame(71, 12));
    m.kick(TX);
    assert_eq!(m.used_idx(TX), 3);
    assert_eq!(m.used(TX, 2).0, 4, "TX continues after descriptors 0..3");
    assert_eq!(d.peer.take(), Some(frame(70, 10)));
    assert_eq!(d.peer.take(), Some(frame(70, 11)));
    assert_eq!(d.peer.take(), None);
    assert_eq!(
        m.peer.take(),
        Some(frame(71, 12)),
        "sent on the destination's backend"
    );
    assert!(!needs_reset(&mut m));
}

/// Frames that reach the backend while a move has the guest paused are held by the device,
/// travel in its state and reach the guest at the destination, in order; none is left for
/// the source's backend to drop.
#[test]
fn frames_waiting_in_the_backend_during_a_move_travel_with_the_state() {
    let mut d = running();
    for seed in 0..3 {
        d.peer.inject(&frame(60 + usize::from(seed), seed));
    }
    assert_eq!(d.dev.device_mut().hold_backend_frames(), 3);
    let saved = d.dev.save();
    let VirtioDeviceState::Net(net) = &saved.device else {
        panic!("not a net state");
    };
    assert_eq!(net.rx_backlog.len(), 3);
    let mut m = d.migrated();
    for _ in 0..3 {
        m.add_rx_buffer(2048);
    }
    m.kick(RX);
    assert_eq!(m.used_idx(RX), 3, "every carried frame arrived");
    let lens: Vec<u32> = (0..3).map(|i| m.used(RX, i).1).collect();
    assert_eq!(
        lens,
        [60, 61, 62].map(|l| (HEADER_LEN + l) as u32).to_vec(),
        "in order"
    );
    // Nothing was left on the source's backend to be dropped with it.
    assert_eq!(d.peer.waiting(), 0);
}

#[test]
fn frames_before_the_save_and_after_the_restore_all_arrive() {
    migration_round(FEATURES);
}

#[test]
fn frames_cross_a_restore_with_event_idx_too() {
    migration_round(FEATURES | VIRTIO_RING_F_EVENT_IDX);
}

#[test]
fn a_device_never_started_restores_as_it_was() {
    let mut d = Driver::new();
    d.negotiate(FEATURES);
    d.setup_queue(RX, 8, 0);
    let saved = d.dev.save();
    let m = d.migrated();
    assert_eq!(m.dev.save(), saved);
    assert!(m.dev.device().queue_states().is_none());
}

fn restore_fails(mutate: impl FnOnce(&mut VirtioPciState), field: &str) {
    let mut d = running();
    d.add_rx_buffer(2048);
    d.kick(RX);
    let mut state = d.dev.save();
    mutate(&mut state);
    let mut fresh = Driver::with_memory(d.mem.clone());
    let before = fresh.dev.save();
    let err = fresh.dev.restore(state).unwrap_err();
    let named = match &err {
        DeviceStateError::Invalid { field, .. } | DeviceStateError::Mismatch { field, .. } => {
            field.clone()
        }
    };
    assert!(named.contains(field), "{err} should name {field}");
    assert_eq!(fresh.dev.save(), before, "{err}: the device is unchanged");
}

/// A guest may put its 64-bit BAR 4 at the top of the address space with decoding on (the
/// bus then decodes nothing there). Such a state moves (the destination used to refuse it),
/// and following the BAR neither overflows nor registers a notify ioeventfd outside the
/// MMIO window, on the source as on the destination.
#[test]
fn a_bar_at_the_top_of_the_address_space_moves_and_decodes_nothing() {
    let mut d = running();
    let bar4 = 0x20;
    d.dev.write_config(bar4, &0xFFFF_C00Cu32.to_le_bytes());
    d.dev.write_config(bar4 + 4, &0xFFFF_FFFFu32.to_le_bytes());
    assert_eq!(
        d.dev.notify_address(0),
        None,
        "no notify address outside the window"
    );
    let mut fresh = Driver::with_memory(d.mem.clone());
    fresh.dev.restore(d.dev.save()).unwrap();
    assert_eq!(fresh.dev.notify_address(0), None);
    assert!(fresh.vm.recorded().ioevents.is_empty());
}

#[test]
fn out_of_range_states_are_refused_and_change_nothing() {
    restore_fails(|s| s.queues[RX].size = 12, "queue 0 rings");
    restore_fails(|s| s.queues[TX].size = 512, "queue 1 rings");
    restore_fails(|s| s.queues[RX].desc = RAM - 16, "queue 0 rings");
    restore_fails(|s| s.queues[RX].device = u64::MAX - 3, "queue 0 rings");
    restore_fails(|s| s.queues[RX].next_avail = 100, "queue 0 ring positions");
    restore_fails(|s| s.queues[TX].msix_vector = 3, "queue 1 MSI-X vector");
    restore_fails(|s| s.config_vector = 7, "config MSI-X vector");
    restore_fails(|s| s.queues.push(s.queues[0]), "queues");
    restore_fails(|s| s.msix.entries.pop().map(|_| ()).unwrap(), "MSI-X table");
    restore_fails(|s| s.msix.pending.clear(), "MSI-X pending");
    restore_fails(|s| s.driver_features |= 1 << 40, "driver features");
    restore_fails(|s| s.status |= 0x20, "device status");
    restore_fails(|s| s.isr = 0x80, "ISR");
    restore_fails(|s| s.config.bytes[0] ^= 1, "configuration byte 0x00");
    restore_fails(|s| s.config.bytes.truncate(64), "configuration space");
    restore_fails(
        |s| {
            if let VirtioDeviceState::Net(n) = &mut s.device {
                n.mac[5] ^= 1;
            }
        },
        "MAC",
    );
    restore_fails(
        |s| {
            if let VirtioDeviceState::Net(n) = &mut s.device {
                n.rx_backlog = vec![vec![0; 60]; super::MAX_BACKLOG + 1];
            }
        },
        "receive backlog",
    );
    restore_fails(
        |s| {
            if let VirtioDeviceState::Net(n) = &mut s.device {
                n.rx_backlog = vec![Vec::new()];
            }
        },
        "receive backlog",
    );
    restore_fails(
        |s| {
            s.device = VirtioDeviceState::Console(super::super::console::ConsoleState {
                to_guest: Vec::new(),
                from_guest: Vec::new(),
            })
        },
        "device kind",
    );
}

mod state_props {
    use super::*;
    use proptest::prelude::*;

    fn saved() -> (VirtioPciState, GuestMemoryMmap) {
        let mut d = running();
        d.add_rx_buffer(2048);
        d.kick(RX);
        (d.dev.save(), d.mem.clone())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Arbitrary field values never panic a restore; what it accepts is within range.
        #[test]
        fn mutated_states_never_panic(
            status in any::<u8>(),
            sizes in proptest::array::uniform2(any::<u16>()),
            addrs in proptest::array::uniform3(prop_oneof![any::<u64>(), 0..RAM + 0x100]),
            positions in proptest::array::uniform2(any::<u16>()),
            vectors in proptest::array::uniform3(any::<u16>()),
            features in any::<u64>(),
            byte in (0usize..300, any::<u8>()),
        ) {
            let (mut s, mem) = saved();
            s.status = status;
            s.driver_features = features;
            s.config_vector = vectors[2];
            for q in 0..2 {
                s.queues[q].size = sizes[q];
                s.queues[q].msix_vector = vectors[q];
            }
            s.queues[RX].desc = addrs[0];
            s.queues[RX].driver = addrs[1];
            s.queues[TX].device = addrs[2];
            s.queues[TX].next_avail = positions[0];
            s.queues[TX].next_used = positions[1];
            if let Some(b) = s.config.bytes.get_mut(byte.0) {
                *b = byte.1;
            }
            let mut fresh = Driver::with_memory(mem);
            if fresh.dev.restore(s.clone()).is_ok() {
                let got = fresh.dev.save();
                for q in 0..2 {
                    prop_assert!(vectors[q] == NO_VECTOR_U16 || vectors[q] < 3);
                    prop_assert_eq!(got.queues[q].size, sizes[q]);
                }
                prop_assert_eq!(got.status, status);
                // The restored device serves its queues without panicking.
                fresh.kick(RX);
                fresh.kick(TX);
                fresh.peer.inject(&frame(60, 1));
                fresh.backend_ready();
            }
        }
    }

    const NO_VECTOR_U16: u16 = 0xFFFF;
}

/// Checksum offload: CSUM on transmit, GUEST_CSUM on receive, and the checks on the
/// offsets either side writes.
mod checksums {
    use super::*;
    use crate::devices::virtio::net::checksum::{Partial, RxChecksum};
    use proptest::prelude::*;

    const OFFLOADS: u64 = FEATURES | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM;

    fn driver(features: u64) -> Driver {
        let mut d = Driver::new();
        d.enable_msix();
        d.init(features);
        d
    }

    /// What a host stack says of [`segment`]'s checksum: partial, from 34, field at 34 + 16.
    const TCP_PARTIAL: Partial = Partial {
        start: 34,
        offset: 16,
    };

    /// A TCP-looking frame from the device's MAC: the checksum at 50 covers 34.. .
    fn segment() -> Vec<u8> {
        let mut f = frame(120, 3);
        f[50..52].copy_from_slice(&0x1234u16.to_be_bytes());
        f
    }

    fn header(flags: u8, start: u16, offset: u16) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = flags;
        h[6..8].copy_from_slice(&start.to_le_bytes());
        h[8..10].copy_from_slice(&offset.to_le_bytes());
        h
    }

    /// The ones' complement sum of `data` and the pseudo-header sum [`segment`] left in its
    /// field (0xffff when the checksum is right).
    fn sum(data: &[u8]) -> u16 {
        let mut s: u32 = 0x1234
            + data
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
                .sum::<u32>();
        while s > 0xFFFF {
            s = (s & 0xFFFF) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn a_partial_checksum_the_guest_leaves_is_completed_on_the_way_out() {
        let mut d = driver(OFFLOADS);
        let f = segment();
        d.add_tx_frame_with_header(&header(1, 34, 16), &f);
        d.kick(TX);
        let out = d.peer.take().expect("sent");
        assert_eq!(sum(&out[34..]), 0xFFFF, "the checksum at 50 is right");
        assert_eq!((&out[..50], &out[52..]), (&f[..50], &f[52..]));
        let m = d.dev.device().metrics();
        assert_eq!((m.tx_frames, m.tx_csum, m.tx_bad_csum), (1, 1, 0));
    }

    #[test]
    fn partial_checksums_not_negotiated_or_outside_the_frame_are_dropped_and_counted() {
        let f = segment();
        let mut d = driver(FEATURES);
        d.add_tx_frame_with_header(&header(1, 34, 16), &f);
        d.kick(TX);
        assert_eq!(d.peer.take(), None, "CSUM was not negotiated");
        let mut d = driver(OFFLOADS);
        let len = f.len() as u16;
        for (start, offset) in [(len - 1, 0), (34, len), (u16::MAX, u16::MAX), (len, 0)] {
            d.add_tx_frame_with_header(&header(1, start, offset), &f);
        }
        d.add_tx_frame_with_header(&header(1, len - 2, 0), &f);
        d.kick(TX);
        assert!(d.peer.take().is_some(), "the last field fits exactly");
        assert_eq!(d.peer.take(), None);
        let m = d.dev.device().metrics();
        assert_eq!((m.tx_frames, m.tx_bad_csum, m.tx_dropped), (1, 4, 4));
        assert!(
            !needs_reset(&mut d),
            "a guest's bad offsets are not a device error"
        );
    }

    #[test]
    fn with_guest_csum_the_hosts_checksum_status_reaches_the_guest() {
        let mut d = driver(OFFLOADS);
        assert!(
            d.peer.offload(),
            "the backend was told to hand over checked frames"
        );
        let bufs: Vec<u64> = (0..4).map(|_| d.add_rx_buffer(2048)).collect();
        d.kick(RX);
        let f = segment();
        d.peer.inject_checksum(&f, RxChecksum::Valid);
        d.peer.inject_checksum(&f, RxChecksum::Partial(TCP_PARTIAL));
        d.peer.inject_checksum(
            &f,
            RxChecksum::Partial(Partial {
                start: 34,
                offset: 200,
            }),
        );
        d.peer.inject(&f);
        d.backend_ready();
        assert_eq!(
            d.used_idx(RX),
            3,
            "the partial checksum outside the frame is dropped"
        );
        let read = |d: &Driver, at: u64| {
            let mut h = [0u8; HEADER_LEN];
            d.mem.read_slice(&mut h, GuestAddress(at)).unwrap();
            h
        };
        let mut expect = header(2, 0, 0);
        expect[10] = 1;
        assert_eq!(read(&d, bufs[0]), expect, "DATA_VALID");
        let mut expect = header(1, 34, 16);
        expect[10] = 1;
        assert_eq!(read(&d, bufs[1]), expect, "NEEDS_CSUM and its offsets");
        assert_eq!(read(&d, bufs[2])[0], 0, "nothing known");
        let m = d.dev.device().metrics();
        assert_eq!((m.rx_frames, m.rx_csum, m.rx_dropped), (3, 2, 1));
    }

    #[test]
    fn without_guest_csum_every_checksum_the_guest_gets_is_complete() {
        let mut d = driver(FEATURES | VIRTIO_NET_F_CSUM);
        assert!(!d.peer.offload());
        let buf = d.add_rx_buffer(2048);
        d.kick(RX);
        let f = segment();
        d.peer.inject_checksum(&f, RxChecksum::Partial(TCP_PARTIAL));
        d.backend_ready();
        let mut got = vec![0u8; HEADER_LEN + f.len()];
        d.mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
        assert_eq!(got[0], 0, "no flags");
        assert_eq!(sum(&got[HEADER_LEN + 34..]), 0xFFFF, "completed");
        assert_eq!(d.dev.device().metrics().rx_csum, 0);
    }

    /// A frame held for want of a buffer travels complete (the saved state has no checksum
    /// fields), and the destination's backend hands over checked frames again.
    #[test]
    fn a_move_carries_partial_frames_complete_and_restores_the_offload() {
        let mut d = driver(OFFLOADS);
        let f = segment();
        d.peer.inject_checksum(&f, RxChecksum::Partial(TCP_PARTIAL));
        d.backend_ready();
        let saved = d.dev.save();
        let VirtioDeviceState::Net(net) = &saved.device else {
            panic!("not a net state");
        };
        let held = net.rx_pending.as_ref().expect("held for want of a buffer");
        assert_eq!(sum(&held[34..]), 0xFFFF, "completed before it was saved");
        let mut m = d.migrated();
        assert!(m.peer.offload(), "GUEST_CSUM restored, the backend told");
        let buf = m.add_rx_buffer(2048);
        m.kick(RX);
        let mut got = vec![0u8; HEADER_LEN + f.len()];
        m.mem.read_slice(&mut got, GuestAddress(buf)).unwrap();
        assert_eq!(got[0], 0, "delivered as a complete frame");
        assert_eq!(&got[HEADER_LEN..], &held[..]);
    }

    #[test]
    fn a_reset_turns_the_backends_offload_off() {
        let mut d = driver(OFFLOADS);
        assert!(d.peer.offload());
        d.dev.device_mut().reset();
        assert!(!d.peer.offload());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any header a guest writes: the frame goes out with its checksum field inside it,
        /// or is dropped and counted; never a panic or a device error.
        #[test]
        fn any_transmit_header_is_checked(
            flags: u8,
            gso: u8,
            start: u16,
            offset: u16,
            len in 12usize..300,
            csum: bool,
        ) {
            let mut d = driver(if csum { OFFLOADS } else { FEATURES });
            let f = frame(len, 1);
            let mut h = header(flags, start, offset);
            h[1] = gso;
            d.add_tx_frame_with_header(&h, &f);
            d.kick(TX);
            let m = d.dev.device().metrics();
            let partial = flags & 1 != 0;
            let fits = usize::from(start) + usize::from(offset) + 2 <= len;
            let ok = gso == 0 && (!partial || (csum && fits));
            prop_assert_eq!(d.peer.take().is_some(), ok);
            prop_assert_eq!(m.tx_frames + m.tx_dropped, 1);
            prop_assert!(!needs_reset(&mut d));
        }
    }
}
