//! Transmit: walk a TX queue from TDH to TDT and send what the descriptors describe
//! (`docs/ixgbevf.md` §6).
//!
//! Context descriptors (advanced, DTYP 0010) fill one of the queue's two context slots.
//! Data descriptors (advanced, DTYP 0011) and legacy descriptors (DEXT clear) are gathered
//! into one packet until EOP; the packet's first descriptor says which offloads apply
//! (advanced only: IXSM, TXSM, TSE, VLE; legacy only VLE) and which context slot. Then the
//! packet is checksummed or segmented ([`super::offload`]), a VLAN tag inserted if asked,
//! and every frame handed to the sink; DD is written into dword 3 of each of its
//! descriptors that had RS. A packet whose EOP lies beyond TDT is left for a later tail
//! write: TDH only ever moves past whole packets (or lone context descriptors), so it is
//! always accurate for Linux's hang check. With TDWBAL bit 0 set, TDH is also written to
//! TDWBAH:TDWBAL after the pass.
//!
//! A descriptor with a buffer outside guest RAM, of an unknown type, or a packet over
//! [`TX_MAX`] bytes is a [`QueueError`]: the caller stops the queue. A packet whose offload
//! request does not fit it is dropped (counted), and the queue goes on; an absurd TSO MSS
//! ([`offload::OffloadError::Mss`]) is counted apart.

use super::offload::{self, Offload};
use super::ring::{QueueError, Ring, check_buffer};
use super::state::{QueueRegs, TxContext};
use crate::devices::virtio::queue::range_in_ram;
use crate::memory::GuestMemoryMmap;
use ixgbevf_regs as r;
use std::sync::atomic::Ordering;
use vm_memory::{Bytes, GuestAddress};

/// Largest packet the device gathers (a 64 KiB TSO packet with headers fits easily).
pub const TX_MAX: usize = 128 * 1024;
/// Bytes a VLAN tag adds.
const VLAN_LEN: usize = 4;

/// Buffers allocated once per device, so transmitting allocates nothing.
pub struct TxScratch {
    /// The packet being gathered.
    packet: Box<[u8]>,
    /// One TSO segment.
    segment: Box<[u8]>,
    /// A frame with a VLAN tag inserted.
    tagged: Box<[u8]>,
    /// The current packet's descriptors with RS: index and dword 3.
    report: Vec<(u32, u32)>,
}

impl std::fmt::Debug for TxScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxScratch").finish_non_exhaustive()
    }
}

impl Default for TxScratch {
    fn default() -> Self {
        TxScratch {
            packet: vec![0; TX_MAX].into_boxed_slice(),
            segment: vec![0; TX_MAX].into_boxed_slice(),
            tagged: vec![0; TX_MAX + VLAN_LEN].into_boxed_slice(),
            report: Vec::new(),
        }
    }
}

/// What one pass over a queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxPass {
    /// DD was written back to at least one descriptor (raise the queue's interrupt).
    pub reported: bool,
    /// Packets dropped because their offload request did not fit them.
    pub bad_offloads: u32,
    /// Of those, TSO packets refused for their MSS (too small, or beyond the frame size).
    pub bad_mss: u32,
    /// Packets whose L4 checksum the device inserted (TXSM).
    pub checksummed: u32,
}

/// The first data descriptor of a packet.
#[derive(Clone, Copy, Debug)]
struct First {
    cmd: u32,
    olinfo: u32,
}

/// Sends everything from TDH to TDT on queue `q`, handing frames to `send`; TSO segments
/// are at most `max_frame` bytes with their FCS (the VF's SET_LPE size).
pub fn process(
    q: &mut QueueRegs,
    contexts: &mut [TxContext; 2],
    mem: &GuestMemoryMmap,
    max_frame: usize,
    scratch: &mut TxScratch,
    send: &mut dyn FnMut(&[u8]),
) -> Result<TxPass, QueueError> {
    let ring = Ring::check(q, mem)?;
    let mut pass = TxPass::default();
    let start_head = q.head;
    let mut index = q.head;
    let mut len = 0usize;
    let mut first: Option<First> = None;
    scratch.report.clear();
    while index != q.tail {
        let d = ring.read(mem, index)?;
        let cmd = d[2];
        let advanced = cmd & r::TXD_CMD_DEXT != 0;
        let dtyp = cmd & r::TXD_DTYP_MASK;
        if advanced && dtyp == r::TXD_DTYP_CTXT {
            contexts[((d[3] >> 4) & 1) as usize] = TxContext {
                vlan_macip_lens: d[0],
                seqnum_seed: d[1],
                type_tucmd: d[2],
                mss_l4len_idx: d[3],
            };
            index = ring.next(index);
            if first.is_none() {
                q.head = index;
            }
            continue;
        }
        if advanced && dtyp != r::TXD_DTYP_DATA {
            return Err(QueueError::DescriptorType { index, cmd });
        }
        let buf_len = (cmd & r::TXD_LEN_MASK) as usize;
        let addr = u64::from(d[0]) | (u64::from(d[1]) << 32);
        check_buffer(mem, index, addr, buf_len as u64)?;
        if len + buf_len > TX_MAX {
            return Err(QueueError::PacketTooLong(TX_MAX));
        }
        mem.read_slice(&mut scratch.packet[len..len + buf_len], GuestAddress(addr))
            .map_err(|_| QueueError::Memory(addr))?;
        len += buf_len;
        let packet_first = *first.get_or_insert(First { cmd, olinfo: d[3] });
        if cmd & r::TXD_CMD_RS != 0 {
            scratch.report.push((index, d[3]));
        }
        index = ring.next(index);
        if cmd & r::TXD_CMD_EOP == 0 {
            continue;
        }
        match finish(packet_first, len, contexts, max_frame, scratch, send) {
            Ok(txsm) => pass.checksummed += u32::from(txsm),
            Err(offload::OffloadError::Mss { .. }) => {
                pass.bad_offloads += 1;
                pass.bad_mss += 1;
            }
            Err(_) => pass.bad_offloads += 1,
        }
        for &(i, dword3) in &scratch.report {
            ring.write_dword3(mem, i, dword3 | r::TXD_STAT_DD)?;
            pass.reported = true;
        }
        scratch.report.clear();
        q.head = index;
        len = 0;
        first = None;
    }
    if q.head != start_head && q.wbal & r::TDWBAL_ENABLE != 0 {
        let addr = (u64::from(q.wbah) << 32) | u64::from(q.wbal & !3);
        if !range_in_ram(mem, addr, 4) {
            return Err(QueueError::HeadWriteBack(addr));
        }
        mem.store(q.head.to_le(), GuestAddress(addr), Ordering::Release)
            .map_err(|_| QueueError::HeadWriteBack(addr))?;
    }
    Ok(pass)
}

/// Applies the packet's offloads and sends the result (one frame, or the TSO segments);
/// whether it inserted an L4 checksum.
fn finish(
    first: First,
    len: usize,
    contexts: &[TxContext; 2],
    max_frame: usize,
    scratch: &mut TxScratch,
    send: &mut dyn FnMut(&[u8]),
) -> Result<bool, offload::OffloadError> {
    let TxScratch {
        packet,
        segment,
        tagged,
        ..
    } = scratch;
    let frame = &mut packet[..len];
    if first.cmd & r::TXD_CMD_DEXT == 0 {
        // Legacy: the VLAN tag is in dword 3's upper half.
        let vlan = (first.cmd & r::TXD_CMD_VLE != 0).then_some((first.olinfo >> 16) as u16);
        emit(frame, vlan, tagged, send);
        return Ok(false);
    }
    let ctx = &contexts[((first.olinfo >> 4) & 1) as usize];
    let o = Offload::advanced(first.cmd, first.olinfo, ctx);
    if o.tse {
        offload::segment(frame, &o, max_frame, segment, &mut |s| {
            emit(s, o.vlan, tagged, send);
        })?;
    } else {
        offload::checksum(frame, &o)?;
        emit(frame, o.vlan, tagged, send);
    }
    Ok(o.txsm)
}

/// Sends `frame`, with `vlan` inserted after the MAC addresses if given.
fn emit(frame: &[u8], vlan: Option<u16>, tagged: &mut [u8], send: &mut dyn FnMut(&[u8])) {
    let Some(tag) = vlan.filter(|_| frame.len() >= 12) else {
        send(frame);
        return;
    };
    let out = &mut tagged[..frame.len() + VLAN_LEN];
    out[..12].copy_from_slice(&frame[..12]);
    out[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    out[14..16].copy_from_slice(&tag.to_be_bytes());
    out[16..].copy_from_slice(&frame[12..]);
    send(out);
}
