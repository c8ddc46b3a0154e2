//! Receive: one frame into RX queue descriptors (`docs/ixgbevf.md` §6).
//!
//! The device owns [RDH, RDT). A frame takes as many descriptors as it needs at SRRCTL's
//! packet-buffer size (2 KiB when the field is 0); each gets the advanced one-buffer
//! write-back, all 16 bytes: packet info and RSS hash 0, status DD (and EOP on the last;
//! VP there too when a VLAN tag was stripped), this buffer's length, the tag. The last one
//! also reports checksums as the 82599 does ([`checksum_status`]): for an IPv4 packet IPCS
//! (and IPE when its header checksum is wrong), for an unfragmented TCP or UDP one L4CS (and
//! UDPCS for UDP; TCPE when the L4 checksum is wrong). Other frames get none of these bits,
//! and the guest checks them itself.
//! Only qword 0 of a descriptor (the buffer address) is read, before it is overwritten. A
//! frame that does not fit the free descriptors is not written at all: the caller keeps it
//! until the driver frees descriptors (RDT moves), or drops it if the whole ring could never
//! hold it.
//! Every descriptor type is treated as advanced one-buffer (what Linux and our driver use).

use super::ring::{QueueError, Ring, check_buffer};
use super::state::QueueRegs;
use crate::memory::GuestMemoryMmap;
use ixgbevf_regs as r;
use vm_memory::{Bytes, GuestAddress};

/// RX status: a VLAN tag was stripped into the descriptor.
pub const RXD_STAT_VP: u32 = 1 << 3;
/// Packet buffer size when SRRCTL's field is 0.
const DEFAULT_BUFFER: u64 = 2048;

/// The packet buffer size SRRCTL selects.
pub fn buffer_size(srrctl: u32) -> u64 {
    match u64::from(srrctl & r::SRRCTL_BSIZEPKT_MASK) * 1024 {
        0 => DEFAULT_BUFFER,
        size => size,
    }
}

/// The checksum status and error bits of a received frame (see the module docs).
pub fn checksum_status(frame: &[u8]) -> u32 {
    use super::offload::{fold, sum16};
    const ETH: usize = 14;
    let Some(ip) = frame
        .get(ETH..)
        .filter(|_| frame.get(12..14) == Some(&[0x08, 0x00]))
    else {
        return 0;
    };
    let Some(&version_ihl) = ip.first() else {
        return 0;
    };
    let ihl = usize::from(version_ihl & 0x0F) * 4;
    let Some(header) = ip.get(..ihl).filter(|_| version_ihl >> 4 == 4 && ihl >= 20) else {
        return 0;
    };
    let mut bits = r::RXD_STAT_IPCS;
    if fold(sum16(header, 0)) != 0xFFFF {
        return bits | r::RXD_ERR_IPE;
    }
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let fragment = u16::from_be_bytes([header[6], header[7]]) & 0x3FFF;
    let proto = header[9];
    let Some(l4) = ip.get(ihl..total).filter(|_| fragment == 0) else {
        return bits;
    };
    match proto {
        6 if l4.len() >= 20 => {}
        // A UDP checksum of zero means none was sent: nothing to check.
        17 if l4.len() >= 8 && l4[6..8] != [0, 0] => bits |= r::RXD_STAT_UDPCS,
        _ => return bits,
    }
    bits |= r::RXD_STAT_L4CS;
    let pseudo = sum16(&header[12..20], u64::from(proto) + l4.len() as u64);
    if fold(sum16(l4, pseudo)) != 0xFFFF {
        bits |= r::RXD_ERR_TCPE;
    }
    bits
}

/// What became of a frame offered to an RX queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Written, descriptors handed back.
    Delivered,
    /// Not enough free descriptors now; nothing written (it may fit once RDT moves).
    Full,
    /// Empty, or more than the whole ring could ever hold: nothing written.
    Unfit,
}

/// Writes `frame` (a VLAN tag already stripped into `vlan`) into queue `q`. `addrs` is
/// scratch space.
pub fn deliver(
    q: &mut QueueRegs,
    mem: &GuestMemoryMmap,
    frame: &[u8],
    vlan: Option<u16>,
    addrs: &mut Vec<u64>,
) -> Result<Delivery, QueueError> {
    let ring = Ring::check(q, mem)?;
    if frame.is_empty() {
        return Ok(Delivery::Unfit);
    }
    let bsize = buffer_size(q.srrctl);
    let len = frame.len() as u64;
    let need = len.div_ceil(bsize);
    // The device owns at most count - 1 descriptors (RDH == RDT means none).
    if need >= u64::from(ring.count) {
        return Ok(Delivery::Unfit);
    }
    if need > u64::from(ring.distance(q.head, q.tail)) {
        return Ok(Delivery::Full);
    }
    // Read and check every buffer address before writing anything.
    addrs.clear();
    let mut index = q.head;
    for chunk in frame.chunks(bsize as usize) {
        let desc = ring.read(mem, index)?;
        let addr = u64::from(desc[0]) | (u64::from(desc[1]) << 32);
        check_buffer(mem, index, addr, chunk.len() as u64)?;
        addrs.push(addr);
        index = ring.next(index);
    }
    let mut index = q.head;
    let last = addrs.len().saturating_sub(1);
    let checksums = checksum_status(frame);
    for (i, (chunk, &addr)) in frame.chunks(bsize as usize).zip(addrs.iter()).enumerate() {
        mem.write_slice(chunk, GuestAddress(addr))
            .map_err(|_| QueueError::Memory(addr))?;
        let mut status = r::RXD_STAT_DD;
        let mut tag = 0;
        if i == last {
            status |= r::RXD_STAT_EOP | checksums;
            if let Some(v) = vlan {
                status |= RXD_STAT_VP;
                tag = u32::from(v);
            }
        }
        ring.write_back(mem, index, [0, 0, status, chunk.len() as u32 | tag << 16])?;
        index = ring.next(index);
    }
    q.head = index;
    Ok(Delivery::Delivered)
}
