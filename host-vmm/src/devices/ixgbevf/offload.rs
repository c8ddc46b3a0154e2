//! Transmit offloads done in software (`docs/ixgbevf.md` §6): IPv4 header checksum (IXSM), TCP/UDP
//! checksum and SCTP CRC32c (TXSM), and TCP segmentation (TSE) over IPv4 and IPv6.
//!
//! Offsets come from the packet's context descriptor: MACLEN, IPLEN, L4LEN, MSS, the IPv4
//! flag and the L4 type. As on the 82599, the driver leaves the pseudo-header sum in the L4
//! checksum field (for TSO without the length, which the device adds per segment), and
//! MACLEN excludes a VLAN tag the device inserts. Segments get the IPv4 total length, an
//! incrementing IPv4 ID and a fresh header checksum (or the IPv6 payload length), the TCP
//! sequence number advanced by MSS per segment, FIN and PSH only on the last segment and
//! CWR only on the first, and their own TCP checksum.
//!
//! A careful PF refuses absurd segmentation requests before doing any work: an MSS below
//! [`MIN_MSS`] (a 64 KiB packet would become thousands of frames) or one whose segments
//! would not fit the VF's largest frame (SET_LPE, 1518 bytes by default) is
//! [`OffloadError::Mss`], and the packet is dropped and counted.

use super::state::TxContext;
use ixgbevf_regs as r;

/// Context TUCMD: IPv4 packet.
pub const TUCMD_IPV4: u32 = 0x400;
/// Context TUCMD: L4 type field shift (00 UDP, 01 TCP, 10 SCTP).
pub const TUCMD_L4T_SHIFT: u32 = 11;
/// Bytes of the Ethernet FCS the frame size counts (the device adds it on the wire).
const FCS_LEN: usize = 4;
/// Smallest MSS segmented (Linux's `TCP_MIN_MSS`): it bounds a 64 KiB packet to ~750
/// segments.
pub const MIN_MSS: usize = 88;
/// TCP flags the device rewrites per segment.
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Layer-4 protocol named by the context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum L4 {
    /// UDP (checksum at offset 6).
    #[default]
    Udp,
    /// TCP (checksum at offset 16).
    Tcp,
    /// SCTP (CRC32c at offset 8).
    Sctp,
    /// The reserved value.
    Reserved,
}

/// What the device must do to one packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// Insert the IPv4 header checksum.
    pub ixsm: bool,
    /// Insert the L4 checksum.
    pub txsm: bool,
    /// Segment (TCP).
    pub tse: bool,
    /// Insert this VLAN tag.
    pub vlan: Option<u16>,
    /// Bytes before the IP header.
    pub maclen: usize,
    /// IP header length, extension headers included.
    pub iplen: usize,
    /// TCP header length (TSO).
    pub l4len: usize,
    /// Segment payload size (TSO).
    pub mss: usize,
    /// IPv4 (else IPv6).
    pub ipv4: bool,
    /// The L4 protocol.
    pub l4: L4,
}

/// Why an offload could not be done; the packet is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The headers the context describes do not fit the packet.
    #[error("the context's header lengths do not fit the packet")]
    Headers,
    /// Segmentation of something other than TCP, or with MSS 0, or with no payload.
    #[error("segmentation needs TCP, a nonzero MSS and a payload")]
    Segmentation,
    /// An MSS below [`MIN_MSS`], or whose segments exceed the largest frame.
    #[error("MSS {mss} is outside {MIN_MSS}..={max} for this frame size")]
    Mss {
        /// The MSS asked for.
        mss: usize,
        /// The largest that fits the VF's frame size with these headers.
        max: usize,
    },
}

impl Offload {
    /// The offloads an advanced data descriptor asks for (`cmd` and `olinfo` of the packet's
    /// first descriptor) with context `ctx`.
    pub fn advanced(cmd: u32, olinfo: u32, ctx: &TxContext) -> Self {
        let lens = ctx.vlan_macip_lens;
        let vle = cmd & r::TXD_CMD_VLE != 0;
        Offload {
            ixsm: olinfo & r::TXD_POPTS_IXSM != 0,
            txsm: olinfo & r::TXD_POPTS_TXSM != 0,
            tse: cmd & r::TXD_CMD_TSE != 0,
            vlan: vle.then_some((lens >> 16) as u16),
            maclen: ((lens >> 9) & 0x7F) as usize,
            iplen: (lens & 0x1FF) as usize,
            l4len: ((ctx.mss_l4len_idx >> 8) & 0xFF) as usize,
            mss: (ctx.mss_l4len_idx >> 16) as usize,
            ipv4: ctx.type_tucmd & TUCMD_IPV4 != 0,
            l4: match (ctx.type_tucmd >> TUCMD_L4T_SHIFT) & 0x3 {
                0 => L4::Udp,
                1 => L4::Tcp,
                2 => L4::Sctp,
                _ => L4::Reserved,
            },
        }
    }

    /// Whether anything but VLAN insertion is asked for.
    pub fn touches_payload(&self) -> bool {
        self.ixsm || self.txsm || self.tse
    }
}

/// Adds `data` as big-endian 16-bit words to a ones'-complement sum.
pub(super) fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits.
pub(super) fn fold(mut acc: u64) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

fn put16(frame: &mut [u8], at: usize, value: u16) {
    frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn get16(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// CRC32c (Castagnoli, reflected), as SCTP uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Writes a fresh IPv4 header checksum over `iplen` bytes at `ip`.
fn ipv4_checksum(frame: &mut [u8], ip: usize, iplen: usize) {
    put16(frame, ip + 10, 0);
    let sum = !fold(sum16(&frame[ip..ip + iplen], 0));
    put16(frame, ip + 10, sum);
}

/// Does IXSM and TXSM on a whole (unsegmented) packet in place.
pub fn checksum(frame: &mut [u8], o: &Offload) -> Result<(), OffloadError> {
    let ip = o.maclen;
    let l4 = ip + o.iplen;
    if o.ixsm {
        if o.iplen < 20 || frame.len() < l4 {
            return Err(OffloadError::Headers);
        }
        ipv4_checksum(frame, ip, o.iplen);
    }
    if o.txsm {
        let field = match o.l4 {
            L4::Udp => 6,
            L4::Tcp => 16,
            L4::Sctp => 8,
            L4::Reserved => return Err(OffloadError::Headers),
        };
        let width = if o.l4 == L4::Sctp { 4 } else { 2 };
        if frame.len() < l4 + field + width {
            return Err(OffloadError::Headers);
        }
        if o.l4 == L4::Sctp {
            frame[l4 + 8..l4 + 12].fill(0);
            let crc = crc32c(&frame[l4..]);
            frame[l4 + 8..l4 + 12].copy_from_slice(&crc.to_le_bytes());
        } else {
            // The field holds the pseudo-header sum; the device sums it with the rest.
            let mut sum = !fold(sum16(&frame[l4..], 0));
            if o.l4 == L4::Udp && sum == 0 {
                sum = 0xFFFF;
            }
            put16(frame, l4 + field, sum);
        }
    }
    Ok(())
}

/// Splits a TSO packet into segments built in `seg` (which must hold the headers plus one
/// MSS) and hands each to `emit`; each segment is at most `max_frame` bytes with its FCS
/// (the VF's SET_LPE size). Returns the number of segments.
pub fn segment(
    frame: &[u8],
    o: &Offload,
    max_frame: usize,
    seg: &mut [u8],
    emit: &mut dyn FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let ip = o.maclen;
    let tcp = ip + o.iplen;
    let hdr = tcp + o.l4len;
    if o.l4 != L4::Tcp || o.mss == 0 || frame.len() <= hdr {
        return Err(OffloadError::Segmentation);
    }
    let min_ip = if o.ipv4 { 20 } else { 40 };
    if o.iplen < min_ip || o.l4len < 20 || hdr + o.mss > seg.len() {
        return Err(OffloadError::Headers);
    }
    // A segment and its FCS within the frame size (MACLEN excludes a tag the device adds).
    let max = max_frame.saturating_sub(hdr + FCS_LEN);
    if o.mss < MIN_MSS || o.mss > max {
        return Err(OffloadError::Mss { mss: o.mss, max });
    }
    let id = get16(frame, ip + 4);
    let seq = u32::from_be_bytes([
        frame[tcp + 4],
        frame[tcp + 5],
        frame[tcp + 6],
        frame[tcp + 7],
    ]);
    let flags = frame[tcp + 13];
    // The pseudo-header sum without the length.
    let seed = u64::from(get16(frame, tcp + 16));
    let payload = &frame[hdr..];
    let count = payload.len().div_ceil(o.mss);
    for (k, chunk) in payload.chunks(o.mss).enumerate() {
        let len = hdr + chunk.len();
        let s = &mut seg[..len];
        s[..hdr].copy_from_slice(&frame[..hdr]);
        s[hdr..].copy_from_slice(chunk);
        let l4_bytes = o.l4len + chunk.len();
        if o.ipv4 {
            put16(s, ip + 2, (o.iplen + l4_bytes) as u16);
            put16(s, ip + 4, id.wrapping_add(k as u16));
            ipv4_checksum(s, ip, o.iplen);
        } else {
            put16(s, ip + 4, (o.iplen - 40 + l4_bytes) as u16);
        }
        let seq_k = seq.wrapping_add((k * o.mss) as u32);
        s[tcp + 4..tcp + 8].copy_from_slice(&seq_k.to_be_bytes());
        let mut f = flags;
        if k + 1 != count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if k != 0 {
            f &= !TCP_CWR;
        }
        s[tcp + 13] = f;
        put16(s, tcp + 16, 0);
        let sum = !fold(sum16(&s[tcp..], seed + l4_bytes as u64));
        put16(s, tcp + 16, sum);
        emit(s);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ones'-complement sum over `data` that verifies to 0xFFFF when the checksum is right.
    fn verify(data: &[u8], extra: u64) -> u16 {
        fold(sum16(data, extra))
    }

    /// Ethernet + IPv4 (20) + TCP (20) + payload, addresses 10.0.0.1 → 10.0.0.2.
    fn tcp4(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let total = (40 + payload.len()) as u16;
        let mut ip = vec![
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&1234u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        f.extend_from_slice(&tcp);
        f.extend_from_slice(payload);
        f
    }

    /// Pseudo-header sum for 10.0.0.1 → 10.0.0.2, protocol `proto`, without the length.
    fn pseudo(proto: u8) -> u64 {
        sum16(&[10, 0, 0, 1, 10, 0, 0, 2, 0, proto], 0)
    }

    fn ctx(maclen: u32, iplen: u32, tucmd: u32, l4len: u32, mss: u32) -> TxContext {
        TxContext {
            vlan_macip_lens: iplen | maclen << 9,
            seqnum_seed: 0,
            type_tucmd: tucmd | r::TXD_DTYP_CTXT | r::TXD_CMD_DEXT,
            mss_l4len_idx: l4len << 8 | mss << 16,
        }
    }

    #[test]
    fn crc32c_matches_the_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn ip_and_tcp_checksums_are_inserted() {
        let payload: Vec<u8> = (0..33).collect();
        let mut f = tcp4(&payload, 0x18);
        let len = (20 + payload.len()) as u64;
        // What Linux leaves: the pseudo-header sum, length included, not inverted.
        put16(&mut f, 34 + 16, fold(pseudo(6) + len));
        let c = ctx(14, 20, TUCMD_IPV4 | 1 << TUCMD_L4T_SHIFT, 0, 0);
        let o = Offload::advanced(r::TXD_CMD_DEXT, r::TXD_POPTS_IXSM | r::TXD_POPTS_TXSM, &c);
        assert_eq!((o.maclen, o.iplen, o.l4), (14, 20, L4::Tcp));
        checksum(&mut f, &o).unwrap();
        assert_eq!(verify(&f[14..34], 0), 0xFFFF, "IPv4 header checksum");
        assert_eq!(verify(&f[34..], pseudo(6) + len), 0xFFFF, "TCP checksum");
        assert_ne!(get16(&f, 50), 0);
    }

    #[test]
    fn udp_zero_becomes_all_ones_and_short_packets_are_refused() {
        // A UDP packet whose checksum comes out as 0: header and pseudo sum chosen so.
        let mut f = vec![0u8; 14 + 20 + 8];
        let c = ctx(14, 20, 0, 0, 0);
        let o = Offload::advanced(0, r::TXD_POPTS_TXSM, &c);
        put16(&mut f, 34 + 6, 0xFFFF); // seed: sums to 0xFFFF, so the checksum is 0
        checksum(&mut f, &o).unwrap();
        assert_eq!(get16(&f, 40), 0xFFFF);
        let mut short = vec![0u8; 14 + 20 + 4];
        assert_eq!(checksum(&mut short, &o), Err(OffloadError::Headers));
        let o = Offload::advanced(0, r::TXD_POPTS_IXSM, &ctx(14, 8, 0, 0, 0));
        assert_eq!(checksum(&mut short, &o), Err(OffloadError::Headers));
    }

    #[test]
    fn sctp_gets_a_crc32c() {
        let mut f = vec![0u8; 14 + 20 + 16];
        f[34..38].copy_from_slice(&[0, 1, 0, 2]);
        let o = Offload::advanced(
            0,
            r::TXD_POPTS_TXSM,
            &ctx(14, 20, 2 << TUCMD_L4T_SHIFT, 0, 0),
        );
        checksum(&mut f, &o).unwrap();
        let stored = u32::from_le_bytes(f[42..46].try_into().unwrap());
        f[42..46].fill(0);
        assert_eq!(stored, crc32c(&f[34..]));
    }

    #[test]
    fn tso_cuts_mss_segments_with_fixed_headers() {
        let payload: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let mut f = tcp4(&payload, 0x80 | 0x18 | 0x01); // CWR, PSH|ACK, FIN
        put16(&mut f, 16, 0); // Linux zeroes the IPv4 total length
        put16(&mut f, 50, fold(pseudo(6))); // and leaves the pseudo sum without length
        let c = ctx(14, 20, TUCMD_IPV4 | 1 << TUCMD_L4T_SHIFT, 20, 100);
        let o = Offload::advanced(r::TXD_CMD_TSE, r::TXD_POPTS_IXSM | r::TXD_POPTS_TXSM, &c);
        let mut seg = vec![0u8; 4096];
        let mut out = Vec::new();
        let n = segment(&f, &o, 1518, &mut seg, &mut |s| out.push(s.to_vec())).unwrap();
        assert_eq!(n, 3);
        let mut joined = Vec::new();
        for (k, s) in out.iter().enumerate() {
            let chunk = s.len() - 54;
            assert_eq!(chunk, [100, 100, 50][k]);
            assert_eq!(get16(s, 16) as usize, 40 + chunk, "IPv4 total length");
            assert_eq!(get16(s, 18), 0x1234 + k as u16, "IPv4 ID");
            assert_eq!(verify(&s[14..34], 0), 0xFFFF);
            let seq = u32::from_be_bytes(s[38..42].try_into().unwrap());
            assert_eq!(seq, 1000 + 100 * k as u32);
            let flags = s[47];
            assert_eq!(flags & TCP_CWR != 0, k == 0, "CWR on the first only");
            assert_eq!(
                flags & (TCP_FIN | TCP_PSH) != 0,
                k == 2,
                "FIN/PSH on the last only"
            );
            assert_eq!(flags & 0x10, 0x10, "ACK everywhere");
            assert_eq!(verify(&s[34..], pseudo(6) + 20 + chunk as u64), 0xFFFF);
            joined.extend_from_slice(&s[54..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn tso_over_ipv6_sets_the_payload_length() {
        let mut f = vec![0u8; 14 + 40 + 20 + 130];
        f[14] = 0x60;
        f[14 + 6] = 6;
        f[54 + 12] = 5 << 4;
        let c = ctx(14, 40, 1 << TUCMD_L4T_SHIFT, 20, 100);
        let o = Offload::advanced(r::TXD_CMD_TSE, r::TXD_POPTS_TXSM, &c);
        let mut seg = vec![0u8; 4096];
        let mut lens = Vec::new();
        segment(&f, &o, 1518, &mut seg, &mut |s| lens.push(get16(s, 18))).unwrap();
        assert_eq!(lens, vec![120, 50]);
    }

    #[test]
    fn bad_tso_requests_are_refused() {
        let f = tcp4(&[0; 10], 0x10);
        let mut seg = vec![0u8; 4096];
        let mut emit = |_: &[u8]| panic!("nothing to send");
        let udp = Offload::advanced(r::TXD_CMD_TSE, 0, &ctx(14, 20, TUCMD_IPV4, 8, 100));
        assert_eq!(
            segment(&f, &udp, 1518, &mut seg, &mut emit),
            Err(OffloadError::Segmentation)
        );
        let tcp = 1 << TUCMD_L4T_SHIFT | TUCMD_IPV4;
        let no_mss = Offload::advanced(r::TXD_CMD_TSE, 0, &ctx(14, 20, tcp, 20, 0));
        assert_eq!(
            segment(&f, &no_mss, 1518, &mut seg, &mut emit),
            Err(OffloadError::Segmentation)
        );
        let no_payload = Offload::advanced(r::TXD_CMD_TSE, 0, &ctx(14, 20, tcp, 30, 8));
        assert_eq!(
            segment(&f, &no_payload, 1518, &mut seg, &mut emit),
            Err(OffloadError::Segmentation)
        );
        let huge_mss = Offload::advanced(r::TXD_CMD_TSE, 0, &ctx(14, 20, tcp, 20, 9000));
        assert_eq!(
            segment(&f, &huge_mss, 1518, &mut seg, &mut emit),
            Err(OffloadError::Headers)
        );
    }

    #[test]
    fn an_mss_too_small_or_beyond_the_frame_size_is_refused() {
        let f = tcp4(&[0; 3000], 0x10);
        let mut seg = vec![0u8; 16 * 1024];
        let tcp = 1 << TUCMD_L4T_SHIFT | TUCMD_IPV4;
        let with_mss = |mss| Offload::advanced(r::TXD_CMD_TSE, 0, &ctx(14, 20, tcp, 20, mss));
        let sent = std::cell::Cell::new(0);
        let mut count = |_: &[u8]| sent.set(sent.get() + 1);
        // 1 byte per segment would be 3000 frames: refused before any.
        for mss in [1, 40, MIN_MSS as u32 - 1] {
            assert_eq!(
                segment(&f, &with_mss(mss), 1518, &mut seg, &mut count),
                Err(OffloadError::Mss {
                    mss: mss as usize,
                    max: 1460
                }),
                "MSS {mss}"
            );
        }
        // 1518-byte frames hold 1460 bytes of TCP payload behind 54 bytes of headers.
        assert_eq!(
            segment(&f, &with_mss(1461), 1518, &mut seg, &mut count),
            Err(OffloadError::Mss {
                mss: 1461,
                max: 1460
            })
        );
        // A larger frame size (SET_LPE) allows more.
        assert_eq!(
            segment(&f, &with_mss(8000), 9018, &mut seg, &mut count),
            Ok(1)
        );
        assert_eq!(sent.get(), 1, "nothing sent for a refused request");
        assert_eq!(
            segment(&f, &with_mss(MIN_MSS as u32), 1518, &mut seg, &mut count),
            Ok(3000usize.div_ceil(MIN_MSS))
        );
        assert_eq!(
            segment(&f, &with_mss(1460), 1518, &mut seg, &mut count),
            Ok(3)
        );
        let e = segment(&f, &with_mss(2), 1518, &mut seg, &mut count).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MSS 2 is outside 88..=1460 for this frame size"
        );
    }
}
