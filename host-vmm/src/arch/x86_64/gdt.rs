//! The boot GDT at [`super::GDT_ADDR`] and the segment registers that match it.
//!
//! The vCPU starts with its hidden segment state loaded from [`segment`], which decodes the
//! very descriptors written to guest memory, so the two cannot disagree. Accessed bits are
//! preset: the CPU then never writes to the table.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment.
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment (DS, ES, SS, FS, GS).
pub const DATA_SELECTOR: u16 = 0x10;

/// The descriptors: null, 64-bit code (present, DPL 0, execute/read, L=1, G=1), data
/// (present, DPL 0, read/write, D/B=1, G=1), both with base 0 and limit 4 GiB.
pub const GDT: [u64; 3] = [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];

/// Size of the GDT in bytes.
pub const GDT_SIZE: usize = GDT.len() * 8;

/// The GDT as it is written to guest memory.
pub fn gdt_bytes() -> [u8; GDT_SIZE] {
    let mut bytes = [0u8; GDT_SIZE];
    for (chunk, entry) in bytes.chunks_exact_mut(8).zip(GDT) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    bytes
}

/// The hidden segment state for `selector`, decoded from its GDT descriptor.
pub fn segment(selector: u16) -> kvm_segment {
    let entry = GDT[usize::from(selector >> 3)];
    let bits = |shift: u32, width: u32| (entry >> shift) & ((1 << width) - 1);
    let base = bits(16, 24) | (bits(56, 8) << 24);
    let raw_limit = bits(0, 16) | (bits(48, 4) << 16);
    let granular = bits(55, 1) == 1;
    // KVM wants the limit in bytes, as the CPU expands it with G=1.
    let limit = if granular {
        (raw_limit << 12) | 0xFFF
    } else {
        raw_limit
    };
    kvm_segment {
        base,
        limit: limit as u32,
        selector,
        type_: bits(40, 4) as u8,
        s: bits(44, 1) as u8,
        dpl: bits(45, 2) as u8,
        present: bits(47, 1) as u8,
        avl: bits(52, 1) as u8,
        l: bits(53, 1) as u8,
        db: bits(54, 1) as u8,
        g: bits(55, 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_flat_64_bit_ring_0() {
        let cs = segment(CODE_SELECTOR);
        assert_eq!(cs.selector, 0x08);
        assert_eq!((cs.base, cs.limit), (0, 0xFFFF_FFFF));
        assert_eq!(cs.type_, 0xB, "execute/read, accessed");
        assert_eq!((cs.s, cs.dpl, cs.present), (1, 0, 1));
        assert_eq!((cs.l, cs.db, cs.g), (1, 0, 1), "64-bit code needs L=1, D=0");
    }

    #[test]
    fn data_segment_is_flat_read_write() {
        let ds = segment(DATA_SELECTOR);
        assert_eq!(ds.selector, 0x10);
        assert_eq!((ds.base, ds.limit), (0, 0xFFFF_FFFF));
        assert_eq!(ds.type_, 0x3, "read/write, accessed");
        assert_eq!((ds.s, ds.dpl, ds.present), (1, 0, 1));
        assert_eq!((ds.l, ds.db, ds.g), (0, 1, 1));
    }

    #[test]
    fn gdt_bytes_are_little_endian_descriptors() {
        let bytes = gdt_bytes();
        assert_eq!(&bytes[..8], &[0; 8]);
        assert_eq!(
            &bytes[8..16],
            &[0xFF, 0xFF, 0x00, 0x00, 0x00, 0x9B, 0xAF, 0x00]
        );
        assert_eq!(
            &bytes[16..24],
            &[0xFF, 0xFF, 0x00, 0x00, 0x00, 0x93, 0xCF, 0x00]
        );
    }
}
