//! The VF model through its PCI face: configuration space, the mailbox as a driver drives
//! it, RX and TX descriptors, interrupts, bad rings, link changes and hot-plug.

use super::state::SRRCTL_DEFAULT;
use super::testing::*;
use super::*;
use super::{VfOpError, VfOperator};
use crate::devices::BusDevice;
use crate::devices::Persist;
use crate::devices::pci::{PciConfigPorts, PciMmioWindow, PciRoot};
use crate::io_thread::IoThread;
use ixgbevf_regs::mbx;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

const RX: usize = r::rx_queue(0);

fn tx(q: usize) -> usize {
    r::tx_queue(q)
}

/// A way to break a queue, named.
type Breakage = fn(&mut Vf);

/// A VF brought up with interrupts on and RX queue 0 set up with `count` 2 KiB buffers.
fn receiving(count: u32) -> Vf {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.enable_interrupts();
    vf.setup_rx(
        count,
        SRRCTL_DEFAULT | r::SRRCTL_DESCTYPE_ADV_ONEBUF | r::SRRCTL_DROP_EN,
    );
    vf.drain_irqs();
    vf
}

#[test]
fn configuration_space_is_an_82599_vf_with_msix_and_no_intx() {
    let mut vf = Vf::new();
    assert_eq!(vf.config(0), 0x10ED_8086);
    assert_eq!(vf.config(8), 0x0200_0001, "class 02/00/00, revision 1");
    assert_eq!(vf.config(0x2C), 0x000C_8086);
    assert_eq!(vf.config(0x3C) >> 8 & 0xFF, 0, "interrupt pin 0");
    // BAR 0 and BAR 3: 16 KiB, 64-bit, non-prefetchable; nothing else.
    for (bar, size) in [
        (0, 0xFFFF_C004u32),
        (1, 0xFFFF_FFFF),
        (2, 0),
        (3, 0xFFFF_C004),
        (5, 0),
    ] {
        let reg = 0x10 + 4 * bar;
        vf.dev.write_config(reg, &[0xFF; 4]);
        assert_eq!(vf.config(reg), size, "BAR {bar}");
    }
    let cap = (vf.config(0x34) & 0xFF) as usize;
    let header = vf.config(cap);
    assert_eq!(header & 0xFF, 0x11, "MSI-X");
    assert_eq!(header >> 8 & 0xFF, 0, "the only capability");
    assert_eq!(header >> 16 & 0x7FF, 2, "three vectors");
    assert_eq!(vf.config(cap + 4), 3, "table in BAR 3 at 0");
    assert_eq!(vf.config(cap + 8), 0x2003, "PBA in BAR 3 at 0x2000");
}

#[test]
fn status_links_and_unknown_registers() {
    let mut vf = Vf::new();
    assert_ne!(vf.read(r::VFSTATUS), 0xFFFF_FFFF);
    assert_eq!(vf.read(r::VFLINKS), 0x7000_0000);
    assert_eq!(vf.read(0x3190), 0, "unknown reads 0");
    vf.write(0x3190, 5);
    vf.write(r::VFLINKS, 0);
    assert_eq!(vf.read(r::VFLINKS), 0x7000_0000, "read-only");
    // Plain storage reads back.
    vf.write(r::VFPSRTYPE, 1 << 29);
    vf.write(r::vteitr(2), 0xFF8);
    vf.write(RX + r::RX_RSCCTL, 3);
    vf.write(tx(1) + r::Q_DCA, 9);
    assert_eq!(vf.read(r::VFPSRTYPE), 1 << 29);
    assert_eq!(vf.read(r::vteitr(2)), 0xFF8);
    assert_eq!(vf.read(RX + r::RX_RSCCTL), 3);
    assert_eq!(vf.read(tx(1) + r::Q_DCA), 9);
    assert_eq!(vf.read(RX + r::RX_SRRCTL), SRRCTL_DEFAULT);
}

#[test]
fn wide_and_narrow_register_accesses() {
    let mut vf = Vf::new();
    vf.dev.write_bar(
        0,
        (RX + r::Q_BAL) as u64,
        &0x0000_0001_0002_0000u64.to_le_bytes(),
    );
    assert_eq!(vf.read(RX + r::Q_BAL), 0x0002_0000);
    assert_eq!(vf.read(RX + r::Q_BAH), 1);
    let mut q = [0u8; 8];
    vf.dev.read_bar(0, (RX + r::Q_BAL) as u64, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x0000_0001_0002_0000);
    let mut b = [0u8; 1];
    vf.dev.read_bar(0, r::VFLINKS as u64 + 3, &mut b);
    assert_eq!(b[0], 0x70);
    vf.dev.write_bar(0, (RX + r::Q_LEN) as u64, &[0x80]);
    assert_eq!(vf.read(RX + r::Q_LEN), 0, "narrow writes are ignored");
}

#[test]
fn vf_reset_clears_queues_interrupts_and_the_mailbox() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.enable_interrupts();
    vf.setup_rx(8, SRRCTL_DEFAULT);
    vf.setup_tx(0, 8);
    vf.write(r::VTEIAC, 7);
    vf.write(r::VTEICS, 1);
    vf.write(r::VFCTRL, r::VFCTRL_RST);
    assert_eq!(vf.read(r::VFCTRL), 0, "RST self-clears");
    assert_eq!(vf.read(RX + r::Q_DCTL), 0);
    assert_eq!(vf.read(RX + r::Q_LEN), 0);
    assert_eq!(vf.read(tx(0) + r::Q_DCTL), 0);
    assert_eq!(vf.read(r::VTEIMS), 0);
    assert_eq!(vf.read(r::VTEIAC), 0);
    assert_eq!(vf.read(r::vtivar(0)), 0);
    assert_eq!(vf.read(r::VTEICR), 0);
    assert_eq!(vf.read(r::VFMAILBOX), r::MBX_RSTD, "RSTD once, RSTI never");
    assert_eq!(vf.read(r::VFMAILBOX), 0);
    assert_eq!(vf.read(r::VFLINKS), 0x7000_0000, "link survives");
    // Not clear to send until RESET again.
    assert_eq!(vf.call(&[0x08, 4, 0])[0], 0x4000_0008);
}

#[test]
fn the_linux_probe_sequence_word_by_word() {
    let mut vf = Vf::new();
    // Stop, reset, wait for RSTI/RSTD to go away.
    vf.write(r::VTEIMC, 7);
    vf.read(r::VTEICR);
    vf.write(r::VFCTRL, r::VFCTRL_RST);
    vf.read(r::VFSTATUS);
    let mut polls = 0;
    while vf.mbx() & (r::MBX_RSTI | r::MBX_RSTD) != 0 {
        polls += 1;
        assert!(polls < 200, "RSTI/RSTD never cleared");
    }
    // (Linux maps its vectors later; here now, to see which ones the mailbox raises.)
    vf.enable_interrupts();
    vf.drain_irqs();
    // RESET: 4 words, no CTS.
    let reply = vf.call(&[mbx::RESET]);
    assert_eq!(&reply[..4], &[0x8000_0001, 0x1200_5452, 0x0000_5634, 0]);
    // API negotiation from 1.7 down: refused until 1.3.
    for api in [8, 7, 6, 5] {
        assert_eq!(vf.call(&[mbx::API_NEGOTIATE, api, 0])[0], 0x6000_0008);
    }
    assert_eq!(vf.call(&[mbx::API_NEGOTIATE, 4, 0])[0], 0xA000_0008);
    assert_eq!(
        &vf.call(&[mbx::GET_QUEUES, 0, 0, 0, 0])[..5],
        &[0xA000_0009, 2, 2, 0, 0]
    );
    let mut mc = [0u32; 16];
    mc[0] = mbx::SET_MULTICAST;
    assert_eq!(vf.call(&mc)[0], 0xA000_0003);
    assert_eq!(
        &vf.call(&[mbx::UPDATE_XCAST_MODE, 1])[..2],
        &[0xA000_000C, 1]
    );
    assert_eq!(vf.call(&[mbx::SET_MACVLAN, 0, 0])[0], 0xA000_0006);
    assert_eq!(vf.call(&[mbx::SET_VLAN | 1 << 16, 0])[0], 0xA001_0004);
    assert_eq!(vf.call(&[mbx::SET_LPE, 1518])[0], 0xA000_0005);
    let [lo, hi] = mbx::mac_to_words(MAC);
    assert_eq!(vf.call(&[mbx::SET_MAC_ADDR, lo, hi])[0], 0xA000_0002);
    assert_eq!(&vf.call(&[mbx::GET_LINK_STATE, 0])[..2], &[0xA000_0010, 1]);
    assert_eq!(vf.call(&[0x0A])[0], 0x6000_000A, "GET_RETA: NACK");
    assert_eq!(vf.call(&[0x77])[0], 0x6000_0077, "unknown: NACK");
    // Link check: VFLINKS up five times, the last PF word carries CTS.
    for _ in 0..5 {
        assert_ne!(vf.read(r::VFLINKS) & r::VFLINKS_UP, 0);
    }
    assert_ne!(vf.read(r::VFMBMEM) & mbx::CTS, 0);
    // Every request raised "other" (vector 2), nothing else.
    assert!(vf.fired(OTHER_VECTOR));
    assert!(!vf.fired(RX_VECTOR) && !vf.fired(TX_VECTOR));
}

#[test]
fn requests_before_reset_get_a_lone_nack_and_an_untrusted_mac_change_is_nacked() {
    let mut vf = Vf::new();
    vf.write(r::VFMBMEM + 4, 0x1234_5678);
    let reply = vf.call(&[mbx::GET_QUEUES]);
    assert_eq!(reply[..2], [0x4000_0009, 0x1234_5678], "a one-word reply");
    vf.bring_up();
    let [lo, hi] = mbx::mac_to_words([0x52, 0x54, 0, 1, 2, 3]);
    assert_eq!(vf.call(&[mbx::SET_MAC_ADDR, lo, hi])[0], 0x6000_0002);
    let mut trusted = Vf::with_trust(true);
    trusted.bring_up();
    assert_eq!(trusted.call(&[mbx::SET_MAC_ADDR, lo, hi])[0], 0xA000_0002);
    assert_eq!(trusted.dev.state().mailbox.mac, [0x52, 0x54, 0, 1, 2, 3]);
}

#[test]
fn a_frame_is_written_back_into_the_first_free_descriptor() {
    let mut vf = receiving(8);
    vf.write(RX + r::Q_TAIL, 7);
    let f = frame(98, 3);
    vf.peer.inject(&f);
    assert_eq!(vf.dev.poll_backend(), 1);
    // The whole 16 bytes: info 0, hash 0, DD|EOP without errors, the length.
    assert_eq!(
        vf.desc(RX_RING, 0),
        [0, 0, r::RXD_STAT_DD | r::RXD_STAT_EOP, 98]
    );
    assert_eq!(vf.bytes(rx_buf(0), 98), f);
    assert_eq!(vf.read(RX + r::Q_HEAD), 1);
    assert_eq!(
        vf.desc(RX_RING, 1)[2],
        0xDEAD_BEEF,
        "the next one is untouched"
    );
    assert_eq!(vf.read(r::VFGPRC), 1);
    assert_eq!(vf.read(r::VFGORC_LSB), 98);
    assert_eq!(vf.read(r::VFMPRC), 0, "broadcast is not multicast");
    assert!(vf.fired(RX_VECTOR));
    assert_eq!(vf.read(r::VTEICR), 1 << RX_VECTOR);
    let m = vf.dev.metrics();
    assert_eq!((m.rx_frames, m.rx_bytes, m.rx_dropped), (1, 98, 0));
}

#[test]
fn rx_wraps_round_the_ring_and_a_frame_without_descriptors_waits_for_rdt() {
    let mut vf = receiving(8);
    vf.write(RX + r::Q_HEAD, 6);
    vf.write(RX + r::Q_TAIL, 2);
    for i in 0..6 {
        vf.peer.inject(&frame(60 + i, i as u8));
    }
    assert_eq!(vf.dev.poll_backend(), 4);
    assert_eq!(vf.read(RX + r::Q_HEAD), 2);
    for (k, index) in [6u32, 7, 0, 1].into_iter().enumerate() {
        let d = vf.desc(RX_RING, index);
        assert_eq!(d[2], r::RXD_STAT_DD | r::RXD_STAT_EOP);
        assert_eq!(d[3], 60 + k as u32);
        assert_eq!(vf.bytes(rx_buf(index), 60 + k), frame(60 + k, k as u8));
    }
    assert_eq!(
        vf.dev.metrics().rx_dropped,
        0,
        "nothing lost for want of a descriptor"
    );
    assert_eq!(
        vf.peer.waiting(),
        1,
        "the sixth stays in the backend behind the fifth"
    );
    // The driver frees three descriptors: the fifth and sixth go in at once, in order.
    vf.write(RX + r::Q_TAIL, 5);
    assert_eq!(vf.read(RX + r::Q_HEAD), 4);
    assert_eq!(vf.desc(RX_RING, 2)[3], 64);
    assert_eq!(vf.desc(RX_RING, 3)[3], 65);
    assert_eq!(vf.peer.waiting(), 0);
    vf.peer.inject(&frame(70, 9));
    assert_eq!(vf.dev.poll_backend(), 1);
    assert_eq!(vf.desc(RX_RING, 4)[3], 70);
    assert_eq!(vf.dev.metrics().rx_frames, 7);
}

#[test]
fn a_long_frame_spans_descriptors_with_eop_on_the_last() {
    let mut vf = receiving(8);
    vf.write(RX + r::RX_SRRCTL, 1 | r::SRRCTL_DESCTYPE_ADV_ONEBUF); // 1 KiB buffers
    vf.write(RX + r::Q_TAIL, 7);
    let f = frame(2500, 1);
    vf.peer.inject(&f);
    assert_eq!(vf.dev.poll_backend(), 1);
    let lens: Vec<u32> = (0..3).map(|i| vf.desc(RX_RING, i)[3]).collect();
    assert_eq!(lens, vec![1024, 1024, 452]);
    let status: Vec<u32> = (0..3).map(|i| vf.desc(RX_RING, i)[2]).collect();
    assert_eq!(status, vec![1, 1, 3], "DD everywhere, EOP only at the end");
    let mut got = Vec::new();
    for (i, len) in [(0, 1024), (1, 1024), (2, 452)] {
        got.extend(vf.bytes(rx_buf(i), len));
    }
    assert_eq!(got, f);
    assert_eq!(vf.read(RX + r::Q_HEAD), 3);
    // A frame needing more descriptors than are free waits, unwritten.
    vf.peer.inject(&frame(5000, 2));
    assert_eq!(vf.dev.poll_backend(), 0);
    assert_eq!(vf.read(RX + r::Q_HEAD), 3);
    assert_eq!(vf.desc(RX_RING, 3)[2], 0xDEAD_BEEF);
    assert_eq!(vf.dev.metrics().rx_dropped, 0);
    // One more than the whole ring could ever hold is dropped, and the next one goes in.
    vf.write(RX + r::Q_TAIL, 2);
    assert_eq!(
        vf.read(RX + r::Q_HEAD),
        0,
        "the 5 KiB frame took descriptors 3..=7"
    );
    vf.peer.inject(&frame(8 * 1024, 3));
    vf.peer.inject(&frame(60, 4));
    vf.write(RX + r::Q_TAIL, 1);
    vf.dev.poll_backend();
    assert_eq!(vf.dev.metrics().rx_dropped, 1);
    assert_eq!(vf.desc(RX_RING, 0)[3], 60);
}

#[test]
fn a_vlan_tag_is_stripped_into_the_descriptor() {
    let mut vf = receiving(8);
    vf.write(RX + r::Q_TAIL, 7);
    let mut f = frame(64, 0);
    f.splice(12..12, [0x81, 0x00, 0x20, 0x05]);
    vf.peer.inject(&f);
    vf.dev.poll_backend();
    let d = vf.desc(RX_RING, 0);
    assert_eq!(d[2], r::RXD_STAT_DD | r::RXD_STAT_EOP | rx::RXD_STAT_VP);
    assert_eq!(d[3], 64 | 0x2005 << 16);
    assert_eq!(vf.bytes(rx_buf(0), 64), frame(64, 0));
}

#[test]
fn frames_are_dropped_while_rx_is_off_and_not_delivered_later() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.peer.inject(&frame(60, 0));
    assert_eq!(vf.dev.poll_backend(), 0);
    vf.setup_rx(8, SRRCTL_DEFAULT);
    vf.write(RX + r::Q_TAIL, 7);
    assert_eq!(vf.dev.poll_backend(), 0);
    assert_eq!(vf.dev.metrics().rx_dropped, 1);
    assert_eq!(vf.read(RX + r::Q_HEAD), 0);
}

#[test]
fn a_packet_of_context_and_several_data_descriptors_is_sent_with_dd_on_rs() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.enable_interrupts();
    vf.setup_tx(0, 8);
    vf.drain_irqs();
    let f = frame(300, 4);
    vf.mem.write_slice(&f, GuestAddress(TX_BUFS)).unwrap();
    let cc = r::TXD_OLINFO_CC | 300 << r::TXD_PAYLEN_SHIFT;
    vf.put_desc(tx_ring(0), 0, ctx_desc(14, 0, 0, 0, 0, 0));
    vf.put_desc(tx_ring(0), 1, data_desc(TX_BUFS, 100, 0, cc));
    vf.put_desc(tx_ring(0), 2, data_desc(TX_BUFS + 100, 150, 0, cc));
    let last = r::TXD_CMD_EOP | r::TXD_CMD_RS;
    vf.put_desc(tx_ring(0), 3, data_desc(TX_BUFS + 250, 50, last, cc));
    vf.write(tx(0) + r::Q_TAIL, 4);
    assert_eq!(vf.peer.take(), Some(f));
    assert_eq!(vf.peer.take(), None);
    assert_eq!(vf.read(tx(0) + r::Q_HEAD), 4);
    assert_eq!(vf.desc(tx_ring(0), 3)[3], cc | r::TXD_STAT_DD);
    for i in 1..3 {
        assert_eq!(
            vf.desc(tx_ring(0), i)[3] & r::TXD_STAT_DD,
            0,
            "no RS, no DD"
        );
    }
    assert_eq!(vf.read(r::VFGPTC), 1);
    assert_eq!(vf.read(r::VFGOTC_LSB), 300);
    assert!(vf.fired(TX_VECTOR));
    assert!(!vf.fired(RX_VECTOR));
}

#[test]
fn a_packet_without_eop_before_tail_waits_for_the_rest() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.setup_tx(1, 8);
    let f = frame(120, 9);
    vf.mem.write_slice(&f, GuestAddress(TX_BUFS)).unwrap();
    vf.put_desc(tx_ring(1), 0, data_desc(TX_BUFS, 60, 0, 0));
    vf.write(tx(1) + r::Q_TAIL, 1);
    assert_eq!(vf.peer.take(), None);
    assert_eq!(
        vf.read(tx(1) + r::Q_HEAD),
        0,
        "head stays at the packet's start"
    );
    let last = r::TXD_CMD_EOP | r::TXD_CMD_RS;
    vf.put_desc(tx_ring(1), 1, data_desc(TX_BUFS + 60, 60, last, 0));
    vf.write(tx(1) + r::Q_TAIL, 2);
    assert_eq!(vf.peer.take(), Some(f), "TX queue 1 sends too");
    assert_eq!(vf.read(tx(1) + r::Q_HEAD), 2);
}

#[test]
fn tx_wraps_and_writes_the_head_back_when_asked() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.setup_tx(0, 8);
    vf.write(tx(0) + r::TX_WBAL, 0x9_0000 | r::TDWBAL_ENABLE);
    vf.write(tx(0) + r::Q_HEAD, 6);
    vf.write(tx(0) + r::Q_TAIL, 6);
    for (i, index) in [6u32, 7, 0].into_iter().enumerate() {
        let addr = TX_BUFS + 0x100 * i as u64;
        vf.mem
            .write_slice(&frame(64, i as u8), GuestAddress(addr))
            .unwrap();
        vf.put_desc(
            tx_ring(0),
            index,
            data_desc(addr, 64, r::TXD_CMD_EOP | r::TXD_CMD_RS, 0),
        );
    }
    vf.write(tx(0) + r::Q_TAIL, 1);
    for i in 0..3 {
        assert_eq!(vf.peer.take(), Some(frame(64, i)));
    }
    assert_eq!(vf.read(tx(0) + r::Q_HEAD), 1);
    assert_eq!(vf.bytes(0x9_0000, 4), vec![1, 0, 0, 0], "TDH written back");
}

#[test]
fn legacy_descriptors_are_sent_too() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.setup_tx(0, 8);
    let f = frame(80, 5);
    vf.mem.write_slice(&f, GuestAddress(TX_BUFS)).unwrap();
    let cmd = 80 | r::TXD_CMD_EOP | r::TXD_CMD_RS | r::TXD_CMD_IFCS | r::TXD_CMD_VLE;
    vf.put_desc(tx_ring(0), 0, [TX_BUFS as u32, 0, cmd, 0x0064_0000]);
    vf.write(tx(0) + r::Q_TAIL, 1);
    let sent = vf.peer.take().unwrap();
    assert_eq!(
        &sent[12..16],
        &[0x81, 0x00, 0x00, 0x64],
        "VLAN 100 inserted"
    );
    assert_eq!([&sent[..12], &sent[16..]].concat(), f);
    assert_eq!(vf.desc(tx_ring(0), 0)[3] & r::TXD_STAT_DD, r::TXD_STAT_DD);
}

/// Ethernet + IPv4 + TCP with `payload`, 10.0.0.1 → 10.0.0.2, checksums zero.
fn tcp_packet(payload: &[u8]) -> Vec<u8> {
    let mut f = frame(14, 0);
    let total = (40 + payload.len()) as u16;
    let t = total.to_be_bytes();
    f.extend_from_slice(&[0x45, 0, t[0], t[1], 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&[
        0x30, 0x39, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xFF, 0xFF,
    ]);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Ones'-complement sum of `data` plus `extra`, folded.
fn csum(data: &[u8], extra: u32) -> u16 {
    let mut acc = extra;
    for w in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

/// 10.0.0.1, 10.0.0.2, TCP: the pseudo-header without its length.
const PSEUDO: u32 = 0x0A00 + 0x0001 + 0x0A00 + 0x0002 + 6;

#[test]
fn ip_and_tcp_checksums_are_inserted_on_transmit() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.setup_tx(0, 8);
    let payload: Vec<u8> = (0..77).collect();
    let mut f = tcp_packet(&payload);
    let l4 = (20 + payload.len()) as u32;
    let seed = csum(&[], PSEUDO + l4);
    f[50..52].copy_from_slice(&seed.to_be_bytes());
    vf.mem.write_slice(&f, GuestAddress(TX_BUFS)).unwrap();
    let tcp4 = offload::TUCMD_IPV4 | 1 << offload::TUCMD_L4T_SHIFT;
    vf.put_desc(tx_ring(0), 0, ctx_desc(14, 20, tcp4, 0, 0, 0));
    let olinfo = r::TXD_OLINFO_CC | r::TXD_POPTS_IXSM | r::TXD_POPTS_TXSM;
    let last = r::TXD_CMD_EOP | r::TXD_CMD_RS;
    vf.put_desc(tx_ring(0), 1, data_desc(TX_BUFS, f.len(), last, olinfo));
    vf.write(tx(0) + r::Q_TAIL, 2);
    let sent = vf.peer.take().unwrap();
    assert_eq!(csum(&sent[14..34], 0), 0xFFFF, "IPv4 header");
    assert_eq!(csum(&sent[34..], PSEUDO + l4), 0xFFFF, "TCP");
    assert_eq!(&sent[54..], &payload[..]);
}

#[test]
fn tso_sends_one_frame_per_mss() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.setup_tx(0, 8);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let mut f = tcp_packet(&payload);
    f[16..18].fill(0); // Linux zeroes the IPv4 total length for TSO
    f[50..52].copy_from_slice(&csum(&[], PSEUDO).to_be_bytes());
    vf.mem.write_slice(&f, GuestAddress(TX_BUFS)).unwrap();
    let tcp4 = offload::TUCMD_IPV4 | 1 << offload::TUCMD_L4T_SHIFT;
    vf.put_desc(tx_ring(0), 0, ctx_desc(14, 20, tcp4, 20, 1448, 1));
    let olinfo = r::TXD_OLINFO_CC
        | 1 << 4
        | r::TXD_POPTS_IXSM
        | r::TXD_POPTS_TXSM
        | 3000 << r::TXD_PAYLEN_SHIFT;
    let cmd = r::TXD_CMD_TSE;
    vf.put_desc(tx_ring(0), 1, data_desc(TX_BUFS, 54, cmd, olinfo));
    let last = cmd | r::TXD_CMD_EOP | r::TXD_CMD_RS;
    vf.put_desc(tx_ring(0), 2, data_desc(TX_BUFS + 54, 3000, last, olinfo));
    vf.write(tx(0) + r::Q_TAIL, 3);
    let mut joined = Vec::new();
    for (k, chunk) in [1448usize, 1448, 104].into_iter().enumerate() {
        let s = vf.peer.take().expect("a segment");
        assert_eq!(s.len(), 54 + chunk);
        assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, 40 + chunk);
        assert_eq!(csum(&s[14..34], 0), 0xFFFF);
        assert_eq!(
            csum(&s[34..], PSEUDO + 20 + chunk as u32),
            0xFFFF,
            "segment {k}"
        );
        let seq = u32::from_be_bytes(s[38..42].try_into().unwrap());
        assert_eq!(seq, 1 + 1448 * k as u32);
        joined.extend_from_slice(&s[54..]);
    }
    assert_eq!(vf.peer.take(), None);
    assert_eq!(joined, payload);
    assert_eq!(vf.read(r::VFGPTC), 3);
}

#[test]
fn a_bad_offload_request_drops_the_packet_and_the_queue_goes_on() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.setup_tx(0, 8);
    vf.mem
        .write_slice(&frame(40, 0), GuestAddress(TX_BUFS))
        .unwrap();
    // MACLEN + IPLEN beyond the packet.
    vf.put_desc(tx_ring(0), 0, ctx_desc(14, 100, 0, 0, 0, 0));
    let last = r::TXD_CMD_EOP | r::TXD_CMD_RS;
    vf.put_desc(
        tx_ring(0),
        1,
        data_desc(TX_BUFS, 40, last, r::TXD_POPTS_IXSM),
    );
    vf.put_desc(tx_ring(0), 2, data_desc(TX_BUFS, 40, last, 0));
    vf.write(tx(0) + r::Q_TAIL, 3);
    assert_eq!(vf.peer.take(), Some(frame(40, 0)), "only the second one");
    assert_eq!(vf.peer.take(), None);
    assert_eq!(
        vf.desc(tx_ring(0), 1)[3] & r::TXD_STAT_DD,
        1,
        "still completed"
    );
    assert_eq!(vf.dev.metrics().tx_dropped, 1);
    assert_eq!(vf.read(tx(0) + r::Q_HEAD), 3);
}

#[test]
fn frames_from_another_source_mac_are_dropped_and_counted() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.setup_tx(0, 8);
    let own = frame(60, 0);
    let mut spoofed = frame(60, 1);
    spoofed[6..12].copy_from_slice(&[0x52, 0x54, 0x00, 0xBA, 0xD0, 0x01]);
    let runt = frame(10, 2);
    let last = r::TXD_CMD_EOP | r::TXD_CMD_RS;
    for (i, f) in [&spoofed, &own, &runt].into_iter().enumerate() {
        let at = TX_BUFS + 0x1000 * i as u64;
        vf.mem.write_slice(f, GuestAddress(at)).unwrap();
        vf.put_desc(tx_ring(0), i as u32, data_desc(at, f.len(), last, 0));
    }
    vf.write(tx(0) + r::Q_TAIL, 3);
    assert_eq!(vf.peer.take(), Some(own), "only the VF's own frame");
    assert_eq!(vf.peer.take(), None);
    let m = vf.dev.metrics();
    assert_eq!((m.tx_spoofed, m.tx_dropped, m.tx_frames), (2, 2, 1));
    assert_eq!(vf.read(tx(0) + r::Q_HEAD), 3, "the queue goes on");
    assert_eq!(vf.desc(tx_ring(0), 0)[3] & r::TXD_STAT_DD, 1, "completed");
}

#[test]
fn tso_with_an_absurd_mss_is_refused_and_counted() {
    let mut vf = Vf::new();
    vf.bring_up();
    vf.setup_tx(0, 16);
    let payload = vec![7u8; 3000];
    let f = tcp_packet(&payload);
    vf.mem.write_slice(&f, GuestAddress(TX_BUFS)).unwrap();
    let tcp4 = offload::TUCMD_IPV4 | 1 << offload::TUCMD_L4T_SHIFT;
    let olinfo = r::TXD_OLINFO_CC | 3000 << r::TXD_PAYLEN_SHIFT;
    let cmd = r::TXD_CMD_TSE | r::TXD_CMD_EOP | r::TXD_CMD_RS;
    // MSS 0, 1, below the minimum, beyond a 1518-byte frame: four packets, none sent.
    let mut i = 0;
    for mss in [0, 1, 87, 1461] {
        vf.put_desc(tx_ring(0), i, ctx_desc(14, 20, tcp4, 20, mss, 0));
        vf.put_desc(tx_ring(0), i + 1, data_desc(TX_BUFS, f.len(), cmd, olinfo));
        i += 2;
    }
    vf.write(tx(0) + r::Q_TAIL, i);
    assert_eq!(vf.peer.take(), None, "nothing segmented");
    let m = vf.dev.metrics();
    assert_eq!(
        m.tx_bad_mss, 3,
        "MSS 0 is refused as no segmentation at all"
    );
    assert_eq!(m.tx_dropped, 4);
    assert_eq!(vf.read(tx(0) + r::Q_HEAD), i, "the queue goes on");
}

#[test]
fn interrupt_causes_masks_auto_clear_and_auto_mask() {
    let mut vf = Vf::new();
    vf.enable_interrupts();
    vf.drain_irqs();
    vf.write(r::VTEIMC, 7);
    vf.write(r::VTEICS, 0b101);
    assert!(!vf.fired(0) && !vf.fired(2), "masked");
    assert_eq!(vf.read(r::VTEICR), 0b101);
    assert_eq!(vf.read(r::VTEICR), 0, "read clears");
    vf.write(r::VTEICS, 0b011);
    vf.write(r::VTEICR, 0b001);
    vf.write(r::VTEIMS, 0b011);
    assert!(!vf.fired(0), "cleared by W1C before the enable");
    assert!(vf.fired(1), "a pending cause goes out when enabled");
    assert_eq!(vf.read(r::VTEIMS), 0b011);
    // Auto-clear and auto-mask as Linux programs them.
    vf.write(r::VTEIAC, 7);
    vf.write(r::VTEIAM, 7);
    vf.read(r::VTEICR);
    vf.write(r::VTEIMS, 7);
    vf.write(r::VTEICS, 0b100);
    assert!(vf.fired(2));
    assert_eq!(vf.read(r::VTEIMS), 0b011, "auto-masked");
    assert_eq!(vf.read(r::VTEICR), 0, "auto-cleared");
    vf.write(r::VTEICS, 0b100);
    assert!(!vf.fired(2), "stays masked until VTEIMS");
    vf.write(r::VTEIMS, 0b100);
    assert!(vf.fired(2));
}

#[test]
fn a_masked_msix_entry_sets_the_pba_and_fires_on_unmask() {
    let mut vf = Vf::new();
    vf.enable_interrupts();
    vf.drain_irqs();
    vf.dev.write_bar(3, 2 * 16 + 12, &1u32.to_le_bytes());
    vf.write(r::VTEICS, 0b100);
    assert!(!vf.fired(2));
    let mut pba = [0u8; 8];
    vf.dev.read_bar(3, r::MSIX_PBA_OFFSET, &mut pba);
    assert_eq!(pba[0], 0b100);
    vf.dev.write_bar(3, 2 * 16 + 12, &0u32.to_le_bytes());
    assert!(vf.fired(2));
    vf.dev.read_bar(3, r::MSIX_PBA_OFFSET, &mut pba);
    assert_eq!(pba[0], 0);
    let routes = vf.vm.recorded().routes;
    assert_eq!(routes.keys().copied().collect::<Vec<_>>(), vec![40, 41, 42]);
    assert_eq!(routes[&42].data, 0x32);
}

#[test]
fn bad_rx_rings_stop_the_queue_until_it_is_set_up_again() {
    let cases: [(&str, Breakage); 5] = [
        ("outside RAM", |vf| vf.write(RX + r::Q_BAL, RAM as u32)),
        ("misaligned", |vf| {
            vf.write(RX + r::Q_BAL, RX_RING as u32 + 16)
        }),
        ("bad length", |vf| vf.write(RX + r::Q_LEN, 100)),
        ("tail past the end", |vf| vf.write(RX + r::Q_TAIL, 9)),
        ("buffer outside RAM", |vf| {
            vf.put_desc(RX_RING, 0, [(RAM - 10) as u32, 0, 0, 0]);
        }),
    ];
    for (what, break_it) in cases {
        let mut vf = receiving(8);
        vf.write(RX + r::Q_TAIL, 7);
        break_it(&mut vf);
        let before = vf.bytes(0, RAM as usize);
        vf.peer.inject(&frame(60, 0));
        assert_eq!(vf.dev.poll_backend(), 0, "{what}");
        assert!(vf.dev.state().rx[0].stopped, "{what}");
        assert_eq!(
            vf.bytes(0, RAM as usize),
            before,
            "{what}: memory untouched"
        );
        assert_eq!(vf.dev.metrics().queue_errors, 1);
        // Stopped: later frames are dropped without another look.
        vf.setup_rx(8, SRRCTL_DEFAULT);
        assert!(
            !vf.dev.state().rx[0].stopped,
            "{what}: RXDCTL write restarts it"
        );
        vf.write(RX + r::Q_TAIL, 7);
        vf.peer.inject(&frame(60, 0));
        assert_eq!(vf.dev.poll_backend(), 1, "{what}");
    }
}

#[test]
fn bad_tx_rings_and_buffers_stop_the_queue_without_touching_memory() {
    let cases: [(&str, Breakage); 5] = [
        ("base overflows", |vf| {
            vf.write(tx(0) + r::Q_BAL, 0xFFFF_FF80);
            vf.write(tx(0) + r::Q_BAH, 0xFFFF_FFFF);
        }),
        ("length zero", |vf| vf.write(tx(0) + r::Q_LEN, 0)),
        ("head past the end", |vf| vf.write(tx(0) + r::Q_HEAD, 100)),
        ("buffer outside RAM", |vf| {
            vf.put_desc(
                tx_ring(0),
                0,
                data_desc(RAM - 8, 64, r::TXD_CMD_EOP | r::TXD_CMD_RS, 0),
            );
        }),
        ("unknown descriptor type", |vf| {
            let mut d = data_desc(TX_BUFS, 64, r::TXD_CMD_EOP | r::TXD_CMD_RS, 0);
            d[2] = (d[2] & !r::TXD_DTYP_MASK) | 0x7 << 20;
            vf.put_desc(tx_ring(0), 0, d);
        }),
    ];
    for (what, break_it) in cases {
        let mut vf = Vf::new();
        vf.bring_up();
        vf.setup_tx(0, 8);
        let good = data_desc(TX_BUFS, 64, r::TXD_CMD_EOP | r::TXD_CMD_RS, 0);
        vf.put_desc(tx_ring(0), 0, good);
        break_it(&mut vf);
        let before = vf.bytes(0, RAM as usize);
        vf.write(tx(0) + r::Q_TAIL, 1);
        assert_eq!(vf.peer.take(), None, "{what}");
        assert!(vf.dev.state().tx[0].stopped, "{what}");
        assert_eq!(
            vf.bytes(0, RAM as usize),
            before,
            "{what}: no DD, nothing written"
        );
        vf.write(tx(0) + r::Q_TAIL, 1);
        assert_eq!(
            vf.dev.metrics().queue_errors,
            1,
            "{what}: stopped queues are not retried"
        );
    }
    // A head write-back address outside RAM stops the queue after the packet went out.
    let mut vf = Vf::new();
    vf.bring_up();
    vf.setup_tx(0, 8);
    vf.mem
        .write_slice(&frame(64, 0), GuestAddress(TX_BUFS))
        .unwrap();
    vf.write(tx(0) + r::TX_WBAL, RAM as u32 | 1);
    vf.put_desc(tx_ring(0), 0, data_desc(TX_BUFS, 64, r::TXD_CMD_EOP, 0));
    vf.write(tx(0) + r::Q_TAIL, 1);
    assert!(vf.peer.take().is_some());
    assert!(vf.dev.state().tx[0].stopped);
}

#[test]
fn link_down_and_up_reach_the_driver_through_links_and_the_mailbox() {
    let mut vf = receiving(8);
    vf.setup_tx(0, 8);
    vf.write(RX + r::Q_TAIL, 7);
    vf.shadow = 0;
    vf.dev.set_link(false);
    assert_eq!(vf.read(r::VFLINKS), 0x3000_0000);
    assert!(vf.fired(OTHER_VECTOR));
    assert_ne!(vf.mbx() & r::MBX_PFSTS, 0);
    vf.write(r::VFMAILBOX, r::MBX_VFU);
    assert_eq!(vf.read(r::VFMBMEM), 0x2000_0100, "PF_CONTROL_MSG | CTS");
    vf.write(r::VFMAILBOX, r::MBX_ACK);
    // No traffic while down: frames in are dropped, frames out complete unsent.
    vf.peer.inject(&frame(60, 0));
    assert_eq!(vf.dev.poll_backend(), 0);
    vf.mem
        .write_slice(&frame(60, 1), GuestAddress(TX_BUFS))
        .unwrap();
    vf.put_desc(
        tx_ring(0),
        0,
        data_desc(TX_BUFS, 60, r::TXD_CMD_EOP | r::TXD_CMD_RS, 0),
    );
    vf.write(tx(0) + r::Q_TAIL, 1);
    assert_eq!(vf.peer.take(), None);
    assert_eq!(vf.desc(tx_ring(0), 0)[3] & r::TXD_STAT_DD, 1);
    assert_eq!(vf.dev.metrics().tx_dropped, 1);
    vf.drain_irqs();
    vf.write(r::VTEIMS, 7); // Linux's "other" handler re-enables
    vf.dev.set_link(true);
    assert_eq!(vf.read(r::VFLINKS), 0x7000_0000);
    assert!(vf.fired(OTHER_VECTOR));
    vf.write(r::VFMAILBOX, r::MBX_VFU);
    assert_eq!(vf.read(r::VFMBMEM), 0x2000_0100);
    vf.write(r::VFMAILBOX, r::MBX_ACK);
    vf.peer.inject(&frame(60, 2));
    assert_eq!(vf.dev.poll_backend(), 1);
}

/// A VF on a bus, as `host-vmm` wires it, with its operator handle.
struct Plugged {
    root: Arc<Mutex<PciRoot>>,
    dev: Arc<Mutex<Ixgbevf<crate::devices::virtio::net::backend::MemBackend>>>,
    handle: VfHandle<crate::devices::virtio::net::backend::MemBackend>,
    peer: crate::devices::virtio::net::backend::MemPeer,
    ports: PciConfigPorts,
    window: PciMmioWindow,
}

fn plugged() -> Plugged {
    let vf = Vf::new();
    let dev = Arc::new(Mutex::new(vf.dev));
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let slot = root.lock().unwrap().add_device(dev.clone()).unwrap();
    assert_eq!(slot, 1);
    Plugged {
        handle: VfHandle::new(dev.clone(), root.clone(), slot),
        ports: PciConfigPorts(root.clone()),
        window: PciMmioWindow(root.clone()),
        root,
        dev,
        peer: vf.peer,
    }
}

impl Plugged {
    fn config(&mut self, register: u32) -> u32 {
        self.ports
            .write(0, &(0x8000_0800u32 | register).to_le_bytes());
        let mut b = [0u8; 4];
        self.ports.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    /// A register through the MMIO window (BAR 0 sits at the window's start).
    fn reg(&mut self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.window.read(offset as u64, &mut b);
        u32::from_le_bytes(b)
    }

    fn set(&mut self, offset: usize, value: u32) {
        self.window.write(offset as u64, &value.to_le_bytes());
    }
}

#[test]
fn removal_makes_everything_read_all_ones_and_re_adding_brings_a_fresh_vf() {
    let mut p = plugged();
    assert_eq!(p.config(0), 0x10ED_8086);
    assert_eq!(p.config(0x10), 0xC000_0004);
    assert_eq!(p.config(0x1C), 0xC000_4004, "BAR 3 after BAR 0");
    assert_eq!(p.reg(r::VFLINKS), 0x7000_0000);
    p.set(r::VTEIAM, 5);
    assert_eq!(
        p.handle.state(),
        super::VfState {
            present: true,
            link_up: true
        }
    );

    p.handle.remove().unwrap();
    assert_eq!(p.handle.remove(), Err(VfOpError::NotPresent));
    assert_eq!(p.handle.set_link(false), Err(VfOpError::NotPresent));
    assert!(!p.handle.state().present);
    assert_eq!(p.config(0), 0xFFFF_FFFF);
    assert_eq!(p.reg(r::VFSTATUS), 0xFFFF_FFFF, "how a driver sees removal");
    assert_eq!(p.reg(r::VFMAILBOX), 0xFFFF_FFFF);
    p.set(r::VTEIAM, 2);
    // Frames arriving meanwhile are read and dropped, never delivered later.
    p.peer.inject(&frame(60, 0));
    assert_eq!(p.dev.lock().unwrap().poll_backend(), 0);
    assert_eq!(p.peer.waiting(), 0);

    p.handle.add().unwrap();
    assert_eq!(p.handle.add(), Err(VfOpError::AlreadyPresent));
    assert_eq!(
        p.handle.state(),
        super::VfState {
            present: true,
            link_up: true
        }
    );
    assert_eq!(p.config(0), 0x10ED_8086);
    assert_eq!(p.config(0x10), 0xC000_0004, "same addresses");
    assert_ne!(p.config(0x04) & 2, 0, "memory decoding on");
    assert_eq!(p.reg(r::VTEIAM), 0, "fresh registers");
    assert_eq!(p.reg(r::VFMAILBOX), r::MBX_RSTD);
    assert_eq!(p.reg(r::VFLINKS), 0x7000_0000);
    assert!(p.root.lock().unwrap().is_plugged(1));
}

#[test]
fn a_vf_removed_with_its_link_down_comes_back_up() {
    let p = plugged();
    p.handle.set_link(false).unwrap();
    assert!(!p.handle.state().link_up);
    p.handle.remove().unwrap();
    p.handle.add().unwrap();
    assert!(p.handle.state().link_up);
    assert!(p.dev.lock().unwrap().link_up());
}

#[test]
fn the_io_thread_delivers_backend_frames() {
    let mut vf = receiving(8);
    vf.write(RX + r::Q_TAIL, 7);
    let peer = vf.peer.clone();
    let mem = vf.mem.clone();
    let dev = Arc::new(Mutex::new(vf.dev));
    let thread = IoThread::spawn(vec![Box::new(IxgbevfHandler::new(&dev))]).unwrap();
    let f = frame(200, 8);
    peer.inject(&f);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dev.lock().unwrap().metrics().rx_frames == 0 {
        assert!(Instant::now() < deadline, "the frame never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(thread);
    let mut got = vec![0u8; 200];
    mem.read_slice(&mut got, GuestAddress(rx_buf(0))).unwrap();
    assert_eq!(got, f);
}

/// What a migration's destination has: a fresh VF on the same guest memory with `vf`'s
/// state restored (and the driver's mailbox shadow carried over).
fn migrated(vf: &Vf) -> Vf {
    let mut to = Vf::with_memory(false, vf.mem.clone());
    to.dev.restore(vf.dev.save()).unwrap();
    to.shadow = vf.shadow;
    to
}

#[test]
fn the_vf_continues_after_a_save_and_restore() {
    let mut vf = receiving(8);
    vf.setup_tx(0, 8);
    vf.write(RX + r::Q_TAIL, 7);
    vf.peer.inject(&frame(90, 1));
    assert_eq!(vf.dev.poll_backend(), 1);
    vf.dev.set_link(false);
    vf.dev.set_link(true);
    let saved = vf.dev.save();
    let bytes = postcard::to_allocvec(&saved).unwrap();
    assert_eq!(postcard::from_bytes::<IxgbevfState>(&bytes).unwrap(), saved);
    let mut m = migrated(&vf);
    assert_eq!(m.dev.save(), saved, "save, restore, save: the same state");
    assert_eq!(
        m.vm.recorded().routes,
        vf.vm.recorded().routes,
        "MSI-X re-routed"
    );
    // RX goes on at descriptor 1.
    m.peer.inject(&frame(91, 2));
    assert_eq!(m.dev.poll_backend(), 1);
    assert_eq!(m.read(RX + r::Q_HEAD), 2);
    assert_eq!(m.desc(RX_RING, 1)[3], 91);
    assert!(m.fired(RX_VECTOR));
    assert_eq!(m.read(r::VFGPRC), 2, "statistics continue");
    // TX from the destination reaches its own backend.
    let f = frame(64, 9);
    m.mem.write_slice(&f, GuestAddress(TX_BUFS)).unwrap();
    let cc = r::TXD_OLINFO_CC | (f.len() as u32) << r::TXD_PAYLEN_SHIFT;
    let last = r::TXD_CMD_EOP | r::TXD_CMD_RS;
    m.put_desc(tx_ring(0), 0, data_desc(TX_BUFS, f.len(), last, cc));
    m.write(tx(0) + r::Q_TAIL, 1);
    assert_eq!(m.peer.take(), Some(f));
    assert_eq!(vf.peer.take(), None);
    // The mailbox still talks: the negotiated API survived.
    let reply = m.call(&[mbx::GET_QUEUES]);
    assert_eq!(reply[0] & 0xFF, mbx::GET_QUEUES);
    assert_ne!(reply[0] & mbx::ACK, 0);
}

/// A guest may enable a queue on a ring the device cannot use; the device finds out at the
/// queue's next use. Such a state moves (found by the `ixgbevf` fuzz target: the destination
/// refused it, so the guest could not be moved) and the queue stops at its first use there,
/// as it would have on the source.
#[test]
fn an_enabled_queue_on_a_bad_ring_moves_and_stops_at_its_first_use() {
    let mut vf = receiving(8);
    vf.write(r::rx_queue(0) + r::Q_LEN, 100);
    let mut m = Vf::with_memory(false, vf.mem.clone());
    m.dev.restore(vf.dev.save()).unwrap();
    m.peer.inject(&frame(60, 1));
    assert_eq!(m.dev.poll_backend(), 0, "nothing delivered on a bad ring");
    assert_eq!(
        m.dev.metrics().queue_errors,
        1,
        "the queue stopped at its first use"
    );
}

#[test]
fn a_removed_vf_stays_removed_and_bad_vf_states_are_refused() {
    let mut vf = receiving(8);
    let mut s = vf.dev.save();
    s.present = false;
    let mut m = Vf::with_memory(false, vf.mem.clone());
    m.dev.restore(s.clone()).unwrap();
    assert_eq!(m.dev.save(), s);

    type Mutation = fn(&mut IxgbevfState);
    let cases: [(&str, Mutation); 8] = [
        ("MAC", |s| s.mac[0] ^= 2),
        ("MSI-X table", |s| {
            s.msix.entries.pop();
        }),
        ("VTEIMS", |s| s.regs.interrupts.eims = 0x8),
        ("mailbox API", |s| s.regs.mailbox.api = 0x77),
        ("mailbox max frame", |s| s.regs.mailbox.max_frame = 1 << 20),
        ("RX queue 0 head/tail", |s| s.regs.rx[0].tail = 0x1_0000),
        ("VFGORC", |s| s.regs.counters.gorc = u64::MAX),
        ("configuration byte 0x02", |s| s.config.bytes[2] = 0),
    ];
    for (field, mutate) in cases {
        let mut bad = vf.dev.save();
        mutate(&mut bad);
        let mut fresh = Vf::with_memory(false, vf.mem.clone());
        let before = fresh.dev.save();
        let err = fresh.dev.restore(bad).unwrap_err();
        assert!(err.to_string().contains(field), "{err} should name {field}");
        assert_eq!(fresh.dev.save(), before, "unchanged after {err}");
    }
    let _ = vf.read(r::VFSTATUS);
}
