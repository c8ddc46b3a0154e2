//! The PVH boot information, `struct hvm_start_info` version 1 (Xen's
//! `arch-x86/hvm/start_info.h`), and its memory map, encoded as the little-endian bytes the
//! guest reads. Encoding by hand keeps the layout explicit and needs no `unsafe`.

/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336E_C578;
/// The structure version written: 1 has the memory map fields.
pub const START_INFO_VERSION: u32 = 1;
/// Size of `struct hvm_start_info` (version 1).
pub const START_INFO_SIZE: usize = 56;
/// Size of `struct hvm_memmap_table_entry`.
pub const MEMMAP_ENTRY_SIZE: usize = 24;
/// Memory map type of usable RAM (E820 numbering).
pub const MEMMAP_TYPE_RAM: u32 = 1;

/// The fields of `hvm_start_info` host-vmm sets; the rest (flags, modules, RSDP) are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartInfo {
    /// Guest-physical address of the command line.
    pub cmdline_paddr: u64,
    /// Guest-physical address of the memory map.
    pub memmap_paddr: u64,
    /// Number of memory map entries.
    pub memmap_entries: u32,
}

impl StartInfo {
    /// The structure's bytes.
    pub fn to_bytes(self) -> [u8; START_INFO_SIZE] {
        let mut b = [0u8; START_INFO_SIZE];
        b[0..4].copy_from_slice(&START_INFO_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&START_INFO_VERSION.to_le_bytes());
        // 8: flags, 12: nr_modules, 16: modlist_paddr stay zero.
        b[24..32].copy_from_slice(&self.cmdline_paddr.to_le_bytes());
        // 32: rsdp_paddr stays zero: there are no ACPI tables.
        b[40..48].copy_from_slice(&self.memmap_paddr.to_le_bytes());
        b[48..52].copy_from_slice(&self.memmap_entries.to_le_bytes());
        // 52: reserved.
        b
    }
}

/// One `hvm_memmap_table_entry`.
pub fn memmap_entry(addr: u64, size: u64, kind: u32) -> [u8; MEMMAP_ENTRY_SIZE] {
    let mut b = [0u8; MEMMAP_ENTRY_SIZE];
    b[0..8].copy_from_slice(&addr.to_le_bytes());
    b[8..16].copy_from_slice(&size.to_le_bytes());
    b[16..20].copy_from_slice(&kind.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_info_fields_sit_at_the_c_offsets() {
        let b = StartInfo {
            cmdline_paddr: 0x7000,
            memmap_paddr: 0x6100,
            memmap_entries: 1,
        }
        .to_bytes();
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(0), 0x336e_c578);
        assert_eq!(u32_at(4), 1);
        assert_eq!((u32_at(8), u32_at(12), u64_at(16)), (0, 0, 0));
        assert_eq!(u64_at(24), 0x7000);
        assert_eq!(u64_at(32), 0);
        assert_eq!(u64_at(40), 0x6100);
        assert_eq!(u32_at(48), 1);
        assert_eq!(u32_at(52), 0);
    }

    #[test]
    fn memmap_entry_layout() {
        let b = memmap_entry(0, 128 << 20, MEMMAP_TYPE_RAM);
        assert_eq!(&b[0..8], &0u64.to_le_bytes());
        assert_eq!(&b[8..16], &(128u64 << 20).to_le_bytes());
        assert_eq!(&b[16..20], &1u32.to_le_bytes());
        assert_eq!(&b[20..24], &[0; 4]);
    }
}
