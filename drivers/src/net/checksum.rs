//! TCP checksums over IPv4 in an Ethernet frame: where a segment's checksum lives
//! ([`tcp_segment`]), the pseudo-header sum a NIC that completes the checksum expects in the
//! field ([`write_pseudo_header`]: virtio 1.1 §5.1.6.2, the 82599's TXSM), and the software
//! fallbacks ([`fill_tcp`], [`verify_tcp`]) for frames no NIC handled, and
//! [`complete_partial`] for a frame a NIC handed over with its checksum still partial.
//!
//! Only unfragmented IPv4 TCP is recognised: smoltcp sends nothing else that carries a TCP
//! checksum, and (built without fragmentation) drops fragments on receive. Everything here
//! is bounds-checked: a frame that lies about its lengths is `None`, never a panic.

/// Ethernet header length (no VLAN tag: the NICs insert and strip tags themselves).
pub const ETH_HLEN: usize = 14;
/// Offset of the checksum in the TCP header.
pub const TCP_CSUM_OFFSET: usize = 16;
const TCP_MIN_HLEN: usize = 20;
const IPV4_MIN_HLEN: usize = 20;
const PROTO_TCP: u8 = 6;

/// Where a TCP segment sits in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// IPv4 header length (20 to 60).
    pub ip_len: usize,
    /// Offset of the TCP header: the checksum covers from here to `end`.
    pub start: usize,
    /// End of the IP packet (the frame may carry Ethernet padding after it).
    pub end: usize,
}

impl TcpSegment {
    /// Offset of the checksum field in the frame.
    pub fn checksum_at(&self) -> usize {
        self.start + TCP_CSUM_OFFSET
    }
}

/// The TCP segment in `frame`, if it is an unfragmented IPv4 TCP packet whose lengths fit.
pub fn tcp_segment(frame: &[u8]) -> Option<TcpSegment> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(ETH_HLEN..)?;
    let (version_ihl, proto) = (*ip.first()?, *ip.get(9)?);
    let ip_len = usize::from(version_ihl & 0x0F) * 4;
    if version_ihl >> 4 != 4 || ip_len < IPV4_MIN_HLEN || proto != PROTO_TCP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let fragment = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x3FFF;
    let start = ETH_HLEN + ip_len;
    let end = ETH_HLEN + total;
    (fragment == 0 && end <= frame.len() && end >= start + TCP_MIN_HLEN).then_some(TcpSegment {
        ip_len,
        start,
        end,
    })
}

/// Adds `data` as big-endian 16-bit words (an odd last byte padded with zero) to `sum`.
fn add(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    sum + u64::from(u32::from_be_bytes(tail))
}

/// Folds a sum of big-endian words into 16 bits (ones' complement addition).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// The pseudo-header's sum (addresses, protocol, TCP length), not yet folded.
fn pseudo_header(frame: &[u8], seg: &TcpSegment) -> u64 {
    let addresses = frame.get(ETH_HLEN + 12..ETH_HLEN + 20).unwrap_or(&[]);
    add(u64::from(PROTO_TCP), addresses) + (seg.end - seg.start) as u64
}

/// Writes the pseudo-header sum into the checksum field, as a NIC that completes the
/// checksum over `start..end` expects it.
pub fn write_pseudo_header(frame: &mut [u8], seg: &TcpSegment) {
    let sum = fold(pseudo_header(frame, seg));
    if let Some(field) = frame.get_mut(seg.checksum_at()..seg.checksum_at() + 2) {
        field.copy_from_slice(&sum.to_be_bytes());
    }
}

/// Computes the segment's checksum in software and writes it.
pub fn fill_tcp(frame: &mut [u8], seg: &TcpSegment) {
    let at = seg.checksum_at();
    let Some(field) = frame.get_mut(at..at + 2) else {
        return;
    };
    field.fill(0);
    let sum = add(pseudo_header(frame, seg), &frame[seg.start..seg.end]);
    frame[at..at + 2].copy_from_slice(&(!fold(sum)).to_be_bytes());
}

/// Whether the segment's checksum is right (computed in software).
pub fn verify_tcp(frame: &[u8], seg: &TcpSegment) -> bool {
    frame
        .get(seg.start..seg.end)
        .is_some_and(|segment| fold(add(pseudo_header(frame, seg), segment)) == 0xFFFF)
}

/// Completes a partial checksum in software, as a NIC would: the ones' complement sum of
/// `frame[start..]` (the field at `start + offset` already holds the pseudo-header sum)
/// written at `start + offset`. `false` (nothing written) when the field does not fit the frame.
pub fn complete_partial(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(at) = start.checked_add(offset) else {
        return false;
    };
    if at.checked_add(2).is_none_or(|end| end > frame.len()) {
        return false;
    }
    let sum = !fold(add(0, &frame[start..]));
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet frame with an IPv4 TCP segment carrying `payload` (checksum zero), and
    /// `pad` bytes of Ethernet padding.
    pub(crate) fn frame(payload: &[u8], pad: usize) -> alloc::vec::Vec<u8> {
        let mut f = alloc::vec![0u8; 14 + 20 + 20 + payload.len() + pad];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let total = (40 + payload.len()) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f[14 + 8] = 64;
        f[14 + 9] = 6;
        f[26..30].copy_from_slice(&[198, 18, 0, 1]);
        f[30..34].copy_from_slice(&[198, 18, 0, 2]);
        f[34..36].copy_from_slice(&7u16.to_be_bytes());
        f[36..38].copy_from_slice(&40000u16.to_be_bytes());
        f[34 + 12] = 5 << 4;
        f[54..54 + payload.len()].copy_from_slice(payload);
        f
    }

    #[test]
    fn finds_the_segment_and_ignores_padding() {
        let f = frame(b"abc", 6);
        let seg = tcp_segment(&f).unwrap();
        assert_eq!((seg.ip_len, seg.start, seg.end), (20, 34, 57));
        assert_eq!(seg.checksum_at(), 50);
    }

    #[test]
    fn rejects_what_is_not_unfragmented_ipv4_tcp() {
        let good = frame(b"x", 0);
        let mut f = good.clone();
        f[14 + 9] = 17;
        assert_eq!(tcp_segment(&f), None, "UDP");
        let mut f = good.clone();
        f[14 + 6] = 0x20;
        assert_eq!(tcp_segment(&f), None, "more fragments");
        let mut f = good.clone();
        f[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(tcp_segment(&f), None, "total length beyond the frame");
        let mut f = good.clone();
        f[14] = 0x44;
        assert_eq!(tcp_segment(&f), None, "IHL below 5");
        let mut f = good;
        f[12] = 0x86;
        assert_eq!(tcp_segment(&f), None, "not IPv4");
        assert_eq!(tcp_segment(&[0u8; 20]), None);
    }

    #[test]
    fn fill_verifies_and_a_flipped_bit_does_not() {
        for len in [0, 1, 2, 3, 1460] {
            let payload: alloc::vec::Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut f = frame(&payload, 4);
            let seg = tcp_segment(&f).unwrap();
            assert!(!verify_tcp(&f, &seg) || len == 0);
            fill_tcp(&mut f, &seg);
            assert!(verify_tcp(&f, &seg), "{len}-byte payload");
            f[seg.start + 4] ^= 0x10;
            assert!(!verify_tcp(&f, &seg));
        }
    }

    #[test]
    fn pseudo_header_then_completion_equals_software() {
        let mut offloaded = frame(b"hello, offload", 0);
        let seg = tcp_segment(&offloaded).unwrap();
        let mut software = offloaded.clone();
        fill_tcp(&mut software, &seg);
        write_pseudo_header(&mut offloaded, &seg);
        assert!(complete_partial(
            &mut offloaded[..seg.end],
            seg.start,
            TCP_CSUM_OFFSET
        ));
        assert_eq!(offloaded, software);
        assert!(!complete_partial(&mut offloaded, 60, 16));
        assert!(!complete_partial(&mut offloaded, usize::MAX, 16));
    }
}
