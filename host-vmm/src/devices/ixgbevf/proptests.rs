//! Property test: arbitrary register writes, descriptor contents, frames and link changes
//! thrown at a VF that starts out set up the way a driver would leave it. Guest RAM has a
//! hole in the middle, so addresses "outside RAM" lie both beyond its end and inside it.
//! The model must never panic, VFSTATUS must never read all ones, and every frame must be
//! accounted for: each injected frame is delivered or dropped, each frame the backend got
//! is counted, and the guest-visible counters agree with the host-side ones.

use super::state::SRRCTL_DEFAULT;
use super::testing::*;
use crate::devices::Persist;
use crate::memory::GuestMemoryMmap;
use ixgbevf_regs as r;
use proptest::prelude::*;
use vm_memory::GuestAddress;

/// RAM: [0, 640 KiB) and [768 KiB, 1 MiB); the hole covers no ring and no default buffer
/// but is reachable through any address the test makes up.
const HOLE: std::ops::Range<u64> = 0xA_0000..0xC_0000;

#[derive(Clone, Debug)]
enum Op {
    /// A register write.
    Write(usize, u32),
    /// A register read (reads have side effects too).
    Read(usize),
    /// A new tail for RX queue 0 (`0`) or TX queue 0/1 (`1`/`2`).
    Tail(usize, u32),
    /// Descriptor contents in one of the three rings.
    Desc(usize, u32, [u32; 4]),
    /// A frame from the network, then a poll.
    Frame(usize),
    /// A mailbox request: words, then REQ (or another strobe).
    Mailbox(Vec<u32>, u32),
    /// An MSI-X table write.
    Msix(u64, u32),
    /// The operator's link switch.
    Link(bool),
    /// What a driver does to send: on TX queue `q`, maybe a context descriptor, then data
    /// descriptors of these lengths (EOP|RS on the last) with these command and olinfo
    /// bits, at the current tail; then the tail moves past them.
    Send(usize, Option<[u32; 4]>, Vec<u32>, u32, u32),
}

fn offset() -> impl Strategy<Value = usize> {
    let q = prop_oneof![Just(0usize), Just(1), Just(7)];
    let within = prop::sample::select(vec![
        r::Q_BAL,
        r::Q_BAH,
        r::Q_LEN,
        r::Q_DCA,
        r::Q_HEAD,
        r::RX_SRRCTL,
        r::Q_TAIL,
        r::Q_DCTL,
        r::RX_RSCCTL,
        r::TX_WBAL,
        r::TX_WBAH,
        0x1C,
        0x20,
        0x34,
    ]);
    let fixed = prop::sample::select(vec![
        r::VFCTRL,
        r::VFSTATUS,
        r::VFLINKS,
        r::VTEICR,
        r::VTEICS,
        r::VTEIMS,
        r::VTEIMC,
        r::VTEIAC,
        r::VTEIAM,
        r::vtivar(0),
        r::vtivar(1),
        r::VTIVAR_MISC,
        r::VFMBMEM,
        r::VFMBMEM + 4,
        r::VFMAILBOX,
        r::VFPSRTYPE,
        r::vteitr(0),
    ]);
    prop_oneof![
        6 => fixed,
        6 => (q.clone(), within.clone()).prop_map(|(q, o)| r::rx_queue(q) + o),
        6 => (q, within).prop_map(|(q, o)| r::tx_queue(q) + o),
        1 => (0usize..0x1000).prop_map(|o| o * 4),
    ]
}

fn value() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 0u32..64,
        2 => Just(r::DCTL_ENABLE),
        2 => prop::sample::select(vec![0x1_0000u32, 0x2_0000, 0x3_0000, 0xA_0000, 0xF_FF80]),
        2 => (1u32..16).prop_map(|n| n * 128),
        1 => Just(r::VFCTRL_RST),
        3 => any::<u32>(),
    ]
}

fn address() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (0u32..32).prop_map(rx_buf),
        4 => TX_BUFS..TX_BUFS + 0x1_0000,
        1 => HOLE.start - 64..HOLE.end + 64,
        1 => RAM - 64..RAM + 64,
        1 => any::<u64>(),
    ]
}

fn descriptor() -> impl Strategy<Value = [u32; 4]> {
    let kind = prop_oneof![
        4 => Just(r::TXD_DTYP_DATA | r::TXD_CMD_DEXT),
        2 => Just(r::TXD_DTYP_CTXT | r::TXD_CMD_DEXT),
        1 => Just(0u32),
        1 => any::<u32>().prop_map(|v| v & 0x00F0_0000 | r::TXD_CMD_DEXT),
    ];
    let flags = prop::sample::subsequence(
        vec![
            r::TXD_CMD_EOP,
            r::TXD_CMD_RS,
            r::TXD_CMD_TSE,
            r::TXD_CMD_VLE,
        ],
        0..=4,
    )
    .prop_map(|f| f.into_iter().fold(0, |a, b| a | b));
    let len = prop_oneof![8 => 0u32..2048, 1 => 0u32..0x1_0000];
    let olinfo = prop_oneof![
        2 => Just(0u32),
        2 => (0u32..4).prop_map(|p| p << 8 | r::TXD_OLINFO_CC),
        1 => any::<u32>(),
    ];
    let low = prop_oneof![4 => 0u32..0x8000, 1 => any::<u32>()];
    prop_oneof![
        3 => (address(), kind, flags, len, olinfo)
            .prop_map(|(a, k, f, l, o)| [a as u32, (a >> 32) as u32, k | f | l, o]),
        1 => (low.clone(), low, any::<u32>(), any::<u32>())
            .prop_map(|(a, b, c, d)| [a, b, c | r::TXD_DTYP_CTXT | r::TXD_CMD_DEXT, d]),
        1 => any::<[u32; 4]>(),
    ]
}

fn send() -> impl Strategy<Value = Op> {
    let context = prop::option::of(
        (0u32..40, 0u32..80, 0u32..3, 0u32..60, 0u32..2000, 0u32..2).prop_map(
            |(mac, ip, l4t, l4len, mss, idx)| {
                ctx_desc(mac, ip, ((idx & 1) * 0x400) | (l4t << 11), l4len, mss, idx)
            },
        ),
    );
    let lens = prop::collection::vec(prop_oneof![8 => 1u32..1600, 1 => 0u32..9000], 1..4);
    let cmd = prop::sample::subsequence(vec![r::TXD_CMD_TSE, r::TXD_CMD_VLE], 0..=2)
        .prop_map(|f| f.into_iter().fold(0, |a, b| a | b));
    let olinfo = (0u32..4, 0u32..2).prop_map(|(p, idx)| p << 8 | idx << 4 | r::TXD_OLINFO_CC);
    (0usize..2, context, lens, cmd, olinfo).prop_map(|(q, c, l, cmd, o)| Op::Send(q, c, l, cmd, o))
}

fn op() -> impl Strategy<Value = Op> {
    let words = prop::collection::vec(prop_oneof![3 => 0u32..0x20, 1 => any::<u32>()], 1..4);
    let strobe = prop_oneof![
        6 => Just(r::MBX_REQ),
        1 => Just(r::MBX_ACK),
        1 => Just(r::MBX_VFU),
        1 => any::<u32>(),
    ];
    prop_oneof![
        6 => (offset(), value()).prop_map(|(o, v)| Op::Write(o, v)),
        2 => offset().prop_map(Op::Read),
        6 => (0usize..3, prop_oneof![8 => 0u32..16, 1 => any::<u32>()])
            .prop_map(|(q, t)| Op::Tail(q, t)),
        8 => (0usize..3, 0u32..16, descriptor()).prop_map(|(q, i, d)| Op::Desc(q, i, d)),
        5 => prop_oneof![6 => 0usize..1600, 1 => 1600usize..20_000].prop_map(Op::Frame),
        2 => (words, strobe).prop_map(|(w, s)| Op::Mailbox(w, s)),
        1 => (0u64..64, any::<u32>()).prop_map(|(o, v)| Op::Msix(o * 4, v)),
        1 => any::<bool>().prop_map(Op::Link),
        6 => send(),
    ]
}

/// Runs `ops` and checks the invariants after each.
fn run(ops: &[Op]) {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), HOLE.start as usize),
        (GuestAddress(HOLE.end), (RAM - HOLE.end) as usize),
    ])
    .unwrap();
    let mut vf = Vf::with_memory(false, mem);
    vf.bring_up();
    vf.enable_interrupts();
    vf.setup_rx(16, SRRCTL_DEFAULT | r::SRRCTL_DESCTYPE_ADV_ONEBUF);
    vf.setup_tx(0, 16);
    vf.setup_tx(1, 16);
    let mut injected = 0u64;
    let mut sent = 0u64;
    for op in ops {
        match op {
            Op::Write(o, v) => vf.write(*o, *v),
            Op::Read(o) => {
                vf.read(*o);
            }
            Op::Tail(q, t) => {
                let reg = match q {
                    0 => r::rx_queue(0),
                    q => r::tx_queue(q - 1),
                };
                vf.write(reg + r::Q_TAIL, *t);
            }
            Op::Desc(q, i, d) => {
                let ring = if *q == 0 { RX_RING } else { tx_ring(q - 1) };
                vf.put_desc(ring, *i, *d);
            }
            Op::Frame(len) => {
                vf.peer.inject(&frame(*len, *len as u8));
                injected += 1;
                vf.dev.poll_backend();
                let m = vf.dev.metrics();
                // Delivered, dropped, or waiting for descriptors (one held, the rest
                // still in the backend behind it).
                let held = u64::from(vf.dev.rx_held.is_some());
                let waiting = vf.peer.waiting() as u64;
                assert_eq!(
                    m.rx_frames + m.rx_dropped + held + waiting,
                    injected,
                    "every frame accounted for"
                );
                assert!(
                    held == 1 || waiting == 0,
                    "the backend is read until a frame waits"
                );
            }
            Op::Mailbox(words, strobe) => {
                for (i, w) in words.iter().enumerate() {
                    vf.write(r::VFMBMEM + 4 * i, *w);
                }
                vf.write(r::VFMAILBOX, *strobe);
            }
            Op::Msix(o, v) => {
                use crate::devices::pci::PciDevice;
                vf.dev.write_bar(3, *o, &v.to_le_bytes());
            }
            Op::Link(up) => vf.dev.set_link(*up),
            Op::Send(q, context, lens, cmd, olinfo) => {
                let tail_reg = r::tx_queue(*q) + r::Q_TAIL;
                let mut tail = vf.read(tail_reg) % 16;
                let mut put = |vf: &mut Vf, d| {
                    vf.put_desc(tx_ring(*q), tail, d);
                    tail = (tail + 1) % 16;
                };
                if let Some(c) = context {
                    put(&mut vf, *c);
                }
                let mut at = TX_BUFS;
                for (i, &len) in lens.iter().enumerate() {
                    let last = if i + 1 == lens.len() {
                        r::TXD_CMD_EOP | r::TXD_CMD_RS
                    } else {
                        0
                    };
                    put(&mut vf, data_desc(at, len as usize, cmd | last, *olinfo));
                    at += u64::from(len);
                }
                vf.write(tail_reg, tail);
            }
        }
        while vf.peer.take().is_some() {
            sent += 1;
        }
        let m = vf.dev.metrics();
        assert_eq!(m.tx_frames, sent, "every frame sent is counted");
        assert_ne!(vf.read(r::VFSTATUS), 0xFFFF_FFFF);
        assert_eq!(vf.read(r::VFGPRC), m.rx_frames as u32);
        assert_eq!(vf.read(r::VFGPTC), m.tx_frames as u32);
        assert_eq!(vf.read(r::VFMAILBOX) & r::MBX_RSTI, 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_registers_and_descriptors_never_panic_and_account_for_every_frame(
        ops in prop::collection::vec(op(), 1..60)
    ) {
        run(&ops);
    }
}

#[test]
fn descriptors_pointing_into_the_hole_stop_the_queue() {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), HOLE.start as usize),
        (GuestAddress(HOLE.end), (RAM - HOLE.end) as usize),
    ])
    .unwrap();
    let mut vf = Vf::with_memory(false, mem);
    vf.bring_up();
    vf.setup_tx(0, 16);
    // Starts in RAM, ends in the hole.
    let d = data_desc(HOLE.start - 32, 64, r::TXD_CMD_EOP | r::TXD_CMD_RS, 0);
    vf.put_desc(tx_ring(0), 0, d);
    vf.write(r::tx_queue(0) + r::Q_TAIL, 1);
    assert!(vf.dev.state().tx[0].stopped);
    assert_eq!(vf.peer.take(), None);
    assert_eq!(vf.desc(tx_ring(0), 0)[3], 0, "no DD");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary register values in a saved state never panic a restore, and a VF that
    /// accepted one keeps serving registers and frames without panicking.
    #[test]
    fn arbitrary_vf_states_never_panic(
        words in proptest::collection::vec(any::<u32>(), 24),
        queue in 0usize..8,
        bits in any::<u8>(),
    ) {
        let mut vf = Vf::new();
        vf.bring_up();
        vf.enable_interrupts();
        vf.setup_rx(8, super::state::SRRCTL_DEFAULT);
        let mut s = vf.dev.save();
        let g = &mut s.regs;
        g.interrupts.eicr = words[0];
        g.interrupts.eims = words[1];
        g.interrupts.ivar_misc = words[2];
        g.interrupts.ivar[queue % 4] = words[3];
        g.mailbox.api = words[4] & 7;
        g.mailbox.max_frame = words[5] & 0x3FFF;
        g.mailbox.xcast_mode = words[6] & 3;
        g.mailbox.pending = Some(words[7]);
        g.mailbox.mem[queue] = words[8];
        g.rx[queue].bal = words[9] & !0x7F;
        g.rx[queue].len = words[10] & 0x1F_FFFF;
        g.rx[queue].head = words[11] & 0x1_FFFF;
        g.rx[queue].tail = words[12] & 0x1_FFFF;
        g.rx[queue].dctl = words[13];
        g.tx[queue % 2].bal = words[14];
        g.tx[queue % 2].len = words[15] & 0xFFF;
        g.tx[queue % 2].dctl = words[16];
        g.tx[queue % 2].wbal = words[17];
        g.counters.gorc = u64::from(words[18]) << (bits % 8);
        s.present = bits & 1 != 0;
        s.regs.link_up = bits & 2 != 0;
        s.msix.entries[queue % 3].control = words[19] & 3;
        let mut fresh = Vf::with_memory(false, vf.mem.clone());
        if fresh.dev.restore(s).is_ok() {
            fresh.peer.inject(&frame(60, 1));
            fresh.dev.poll_backend();
            fresh.write(r::tx_queue(queue % 2) + r::Q_TAIL, words[20] & 0xFFFF);
            let _ = fresh.read(r::VTEICR);
            let _ = fresh.read(r::VFMAILBOX);
            fresh.write(r::VFMAILBOX, r::MBX_REQ);
        }
    }
}

proptest! {
    /// Whatever bytes arrive, the RX checksum verdict never panics, claims an L4 check only
    /// for an IPv4 packet whose header checked out, and finds a frame it just checked again
    /// unchanged (the verdict is a pure function of the bytes).
    #[test]
    fn rx_checksum_status_of_any_frame(
        frame in proptest::collection::vec(any::<u8>(), 0..200),
        ipv4 in any::<bool>(),
    ) {
        let mut frame = frame;
        if ipv4 && frame.len() > 14 {
            frame[12..14].copy_from_slice(&[0x08, 0x00]);
            frame[14] = 0x45;
        }
        let bits = super::rx::checksum_status(&frame);
        if bits & r::RXD_STAT_L4CS != 0 {
            prop_assert!(bits & r::RXD_STAT_IPCS != 0 && bits & r::RXD_ERR_IPE == 0);
        }
        prop_assert_eq!(bits, super::rx::checksum_status(&frame));
    }
}
