//! The boot identity map: PML4 at [`super::PML4_ADDR`], PDPT at [`super::PDPT_ADDR`], then
//! one page directory per GiB from [`super::PD_ADDR`], mapping all of guest RAM with 2 MiB
//! pages (these guests have no 1 GiB pages). Entries beyond RAM stay zero (not present).

use super::{PD_ADDR, PDPT_ADDR};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Bytes one 2 MiB page maps.
pub const PAGE_2M: u64 = 2 << 20;
/// Bytes one page directory maps.
pub const PD_SPAN: u64 = 1 << 30;
/// Bytes in one page table.
pub const TABLE_SIZE: usize = 4096;

/// One page table, ready to write into guest memory at `addr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Guest-physical address of the table.
    pub addr: u64,
    /// Its 512 entries as little-endian bytes.
    pub bytes: Vec<u8>,
}

fn table(addr: u64, entries: impl IntoIterator<Item = u64>) -> Table {
    let mut bytes = vec![0u8; TABLE_SIZE];
    for (chunk, entry) in bytes.chunks_exact_mut(8).zip(entries) {
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    Table { addr, bytes }
}

/// The tables that identity-map `[0, mem_size)`: PML4, PDPT, then one PD per started GiB.
/// `mem_size` is a multiple of 2 MiB and at most 512 GiB (the caller enforces 3 GiB).
pub fn identity_map(mem_size: u64) -> Vec<Table> {
    let pd_count = mem_size.div_ceil(PD_SPAN);
    let mut tables = vec![
        table(super::PML4_ADDR, [PDPT_ADDR | PRESENT | WRITABLE]),
        table(
            PDPT_ADDR,
            (0..pd_count).map(|i| (PD_ADDR + i * TABLE_SIZE as u64) | PRESENT | WRITABLE),
        ),
    ];
    for i in 0..pd_count {
        let start = i * PD_SPAN;
        let end = mem_size.min(start + PD_SPAN);
        let pages = (start..end).step_by(PAGE_2M as usize);
        tables.push(table(
            PD_ADDR + i * TABLE_SIZE as u64,
            pages.map(|addr| addr | PRESENT | WRITABLE | PAGE_SIZE_2M),
        ));
    }
    tables
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(t: &Table, i: usize) -> u64 {
        u64::from_le_bytes(t.bytes[i * 8..i * 8 + 8].try_into().unwrap())
    }

    #[test]
    fn small_ram_needs_one_page_directory() {
        let tables = identity_map(64 << 20);
        assert_eq!(tables.len(), 3);
        let [pml4, pdpt, pd] = &tables[..] else {
            unreachable!()
        };
        assert_eq!((pml4.addr, pdpt.addr, pd.addr), (0x9000, 0xA000, 0xB000));
        assert_eq!(entry(pml4, 0), 0xA003);
        assert!((1..512).all(|i| entry(pml4, i) == 0));
        assert_eq!(entry(pdpt, 0), 0xB003);
        assert!((1..512).all(|i| entry(pdpt, i) == 0));
        for i in 0..32 {
            assert_eq!(entry(pd, i), (i as u64) << 21 | 0x83);
        }
        assert!((32..512).all(|i| entry(pd, i) == 0), "nothing beyond RAM");
    }

    #[test]
    fn three_gib_needs_three_full_page_directories() {
        let tables = identity_map(3 << 30);
        assert_eq!(tables.len(), 5);
        let pdpt = &tables[1];
        assert_eq!(entry(pdpt, 0), 0xB003);
        assert_eq!(entry(pdpt, 1), 0xC003);
        assert_eq!(entry(pdpt, 2), 0xD003);
        assert_eq!(entry(pdpt, 3), 0);
        let last = &tables[4];
        assert_eq!(last.addr, 0xD000);
        assert_eq!(entry(last, 0), (2 << 30) | 0x83);
        assert_eq!(entry(last, 511), ((3 << 30) - PAGE_2M) | 0x83);
    }

    #[test]
    fn a_partial_gib_is_mapped_up_to_the_end_of_ram() {
        let tables = identity_map((1 << 30) + (4 << 20));
        assert_eq!(tables.len(), 4);
        let second = &tables[3];
        assert_eq!(entry(second, 0), (1 << 30) | 0x83);
        assert_eq!(entry(second, 1), ((1 << 30) + PAGE_2M) | 0x83);
        assert_eq!(entry(second, 2), 0);
    }
}
