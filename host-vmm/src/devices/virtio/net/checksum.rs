//! Checksums left to the other side (virtio 1.1 §5.1.6.2, §5.1.6.4): the checksum fields
//! of `struct virtio_net_hdr` as the device reads them from the guest ([`header_partial`])
//! and writes them for it ([`write_rx_header`]), and their completion in software
//! ([`Partial::complete`]) wherever a frame goes on to something that cannot take a partial
//! checksum. Offsets come from the guest or the host kernel: every use is bounds-checked
//! ([`Partial::fits`]); a field outside the frame is never written.

use super::HEADER_LEN;

/// `flags`: the checksum from `csum_start` on is left to the other side.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksums were checked (receive only).
pub const F_DATA_VALID: u8 = 2;
/// Offsets of `csum_start` and `csum_offset` in the header.
const CSUM_START: usize = 6;
const CSUM_OFFSET: usize = 8;
/// Offset of `num_buffers`.
const NUM_BUFFERS: usize = 10;

/// A checksum left partial: the ones' complement sum of the frame from `start` on belongs
/// at `start + offset` (where the pseudo-header sum, if any, already is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    /// Where the sum starts (`csum_start`).
    pub start: u16,
    /// Where it goes, from `start` (`csum_offset`).
    pub offset: u16,
}

/// What is known of a received frame's checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RxChecksum {
    /// Nothing: the guest checks them.
    #[default]
    Unknown,
    /// Checked by the host (`DATA_VALID`).
    Valid,
    /// Left partial by the host's own stack (`NEEDS_CSUM`).
    Partial(Partial),
}

impl Partial {
    /// Whether the checksum field lies inside a frame of `len` bytes.
    pub fn fits(&self, len: usize) -> bool {
        usize::from(self.start) + usize::from(self.offset) + 2 <= len
    }

    /// Computes the checksum in software and writes it; `false` (nothing written) when the
    /// field is not inside `frame`.
    pub fn complete(&self, frame: &mut [u8]) -> bool {
        if !self.fits(frame.len()) {
            return false;
        }
        let start = usize::from(self.start);
        let mut sum = 0u64;
        let mut words = frame[start..].chunks_exact(2);
        for w in &mut words {
            sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u64::from(*last) << 8;
        }
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        let at = start + usize::from(self.offset);
        frame[at..at + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        true
    }
}

/// The partial checksum a header asks for (`NEEDS_CSUM`), if any; offsets not yet checked
/// against the frame.
pub fn header_partial(header: &[u8; HEADER_LEN]) -> Option<Partial> {
    let field = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    (header[0] & F_NEEDS_CSUM != 0).then(|| Partial {
        start: field(CSUM_START),
        offset: field(CSUM_OFFSET),
    })
}

/// A receive header: `num_buffers` 1, no segmentation, and `checksum` as flags and offsets.
pub fn write_rx_header(header: &mut [u8], checksum: RxChecksum) {
    let Some(header) = header.get_mut(..HEADER_LEN) else {
        return;
    };
    header.fill(0);
    header[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
    match checksum {
        RxChecksum::Unknown => {}
        RxChecksum::Valid => header[0] = F_DATA_VALID,
        RxChecksum::Partial(p) => {
            header[0] = F_NEEDS_CSUM;
            header[CSUM_START..CSUM_START + 2].copy_from_slice(&p.start.to_le_bytes());
            header[CSUM_OFFSET..CSUM_OFFSET + 2].copy_from_slice(&p.offset.to_le_bytes());
        }
    }
}

/// A transmit header asking for `partial` (or nothing), as a TAP with a vnet header takes it.
pub fn tx_header(partial: Option<Partial>) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    if let Some(p) = partial {
        header[0] = F_NEEDS_CSUM;
        header[CSUM_START..CSUM_START + 2].copy_from_slice(&p.start.to_le_bytes());
        header[CSUM_OFFSET..CSUM_OFFSET + 2].copy_from_slice(&p.offset.to_le_bytes());
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn completion_matches_the_internet_checksum() {
        // RFC 1071's example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2; the field follows.
        let mut frame = vec![0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7, 0, 0];
        let p = Partial {
            start: 0,
            offset: 8,
        };
        assert!(p.complete(&mut frame));
        assert_eq!(&frame[8..], &(!0xddf2u16).to_be_bytes());
        // An odd length: the last byte is padded with zero, and a receiver's check of the
        // completed data (sum 0xffff) passes.
        let mut odd = vec![1, 2, 0, 0, 9];
        let p = Partial {
            start: 0,
            offset: 2,
        };
        assert!(p.complete(&mut odd));
        let sum: u32 = [
            0x0102u32,
            u32::from(u16::from_be_bytes([odd[2], odd[3]])),
            0x0900,
        ]
        .iter()
        .sum();
        assert_eq!((sum & 0xFFFF) + (sum >> 16), 0xFFFF);
    }

    #[test]
    fn headers_round_trip() {
        let p = Partial {
            start: 34,
            offset: 16,
        };
        let mut rx = [0u8; HEADER_LEN];
        write_rx_header(&mut rx, RxChecksum::Partial(p));
        assert_eq!(header_partial(&rx), Some(p));
        assert_eq!(rx[10], 1, "num_buffers");
        assert_eq!(header_partial(&tx_header(Some(p))), Some(p));
        assert_eq!(header_partial(&tx_header(None)), None);
        write_rx_header(&mut rx, RxChecksum::Valid);
        assert_eq!((rx[0], header_partial(&rx)), (F_DATA_VALID, None));
    }

    proptest! {
        /// Whatever offsets a guest or host writes, completion writes inside the frame or
        /// not at all, and never panics.
        #[test]
        fn any_offsets_are_checked(start: u16, offset: u16, len in 0usize..200) {
            let mut frame = vec![0xA5u8; len];
            let p = Partial { start, offset };
            let done = p.complete(&mut frame);
            prop_assert_eq!(done, usize::from(start) + usize::from(offset) + 2 <= len);
            if !done {
                prop_assert!(frame.iter().all(|&b| b == 0xA5));
            }
        }
    }
}
