//! The kernel's identity map: 2 MiB pages only (these guests have no 1 GiB pages).
//!
//! [`init`] builds the map of RAM from the boot memory map into static tables that cover the
//! first 4 GiB (the boot ABI puts all of host-vmm's RAM there), adds the IOAPIC and LAPIC
//! pages uncached, and switches CR3 to it. Anything else (RAM above 4 GiB, PCI BARs) goes
//! through [`map`], which takes new tables from an allocator, or [`map_mmio`], which takes
//! them from the kernel heap.
//!
//! The tables are only changed on the one CPU and never from an interrupt handler, so they
//! need no lock. Only not-present entries are ever filled in, so no TLB flush is needed.

use core::arch::asm;
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// Size of one mapping.
pub const PAGE_2M: u64 = 2 * 1024 * 1024;
/// The static tables map up to this address; beyond it [`map`] allocates tables.
pub const STATIC_LIMIT: u64 = 4 << 30;
/// The IOAPIC's 2 MiB page.
pub const IOAPIC_PAGE: u64 = 0xFEC0_0000;
/// Virtual base of the app stack: one 2 MiB page in the top PML4 slot, far from the
/// identity map, with unmapped 2 MiB on both sides. Overflowing it faults on the guard below,
/// the CPU cannot push the #PF frame there either, and the #DF handler (on its own IST
/// stack) reports it.
pub const STACK_BASE: u64 = 0xFFFF_FF80_0020_0000;
/// Top of the app stack (exclusive).
pub const STACK_TOP: u64 = STACK_BASE + PAGE_2M;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;
const TABLE: u64 = PRESENT | WRITABLE;
const ADDRESS_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// What a range of physical addresses holds, which sets its caching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// Ordinary RAM: write-back.
    Ram,
    /// Device registers: uncached (PCD | PWT, UC with the reset PAT).
    Mmio,
}

impl Memory {
    fn leaf_flags(self) -> u64 {
        match self {
            Memory::Ram => PRESENT | WRITABLE | HUGE,
            Memory::Mmio => PRESENT | WRITABLE | HUGE | WRITE_THROUGH | CACHE_DISABLE,
        }
    }
}

/// Why a range could not be mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No memory for a new page table.
    OutOfMemory,
    /// The 2 MiB page at this address is already mapped as a different kind of memory.
    Conflict(u64),
    /// The range is beyond the 48-bit physical address space, or empty.
    BadRange,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::OutOfMemory => write!(f, "no memory for a page table"),
            MapError::Conflict(a) => write!(f, "the 2 MiB page at {a:#x} is mapped differently"),
            MapError::BadRange => write!(f, "the range is empty or beyond 48 bits"),
        }
    }
}

#[repr(C, align(4096))]
struct Table([u64; 512]);

#[repr(C)]
struct StaticTables {
    pml4: Table,
    pdpt: Table,
    pd: [Table; (STATIC_LIMIT >> 30) as usize],
    /// The top PML4 slot's PDPT and PD, for the app stack.
    stack_pdpt: Table,
    stack_pd: Table,
}

struct TablesCell(UnsafeCell<StaticTables>);

// SAFETY: the tables are only touched by this module, on one CPU, outside interrupt handlers.
unsafe impl Sync for TablesCell {}

/// All zero, so it lives in .bss and costs the image nothing.
static TABLES: TablesCell = TablesCell(UnsafeCell::new(StaticTables {
    pml4: Table([0; 512]),
    pdpt: Table([0; 512]),
    pd: [const { Table([0; 512]) }; (STATIC_LIMIT >> 30) as usize],
    stack_pdpt: Table([0; 512]),
    stack_pd: Table([0; 512]),
}));

/// Builds the identity map of `ram` (start, end) ranges below [`STATIC_LIMIT`], plus the
/// IOAPIC and LAPIC pages, and switches to it. Ranges are widened to whole 2 MiB pages;
/// parts above the limit are left for [`map`].
///
/// About five instructions per 2 MiB of RAM: 64 pages for a 128 MiB guest.
pub fn init(ram: impl Iterator<Item = (u64, u64)>) {
    let tables = TABLES.0.get();
    // SAFETY: `tables` points at the static tables, which nothing else references yet (CR3
    // still points at the boot tables); the identity map makes their addresses physical.
    unsafe {
        (*tables).pml4.0[0] = (&raw const (*tables).pdpt) as u64 | TABLE;
        for (i, pd) in (*tables).pd.iter().enumerate() {
            (*tables).pdpt.0[i] = core::ptr::from_ref(pd) as u64 | TABLE;
        }
    }
    for (start, end) in ram {
        // The static page directories are contiguous: one flat array of 2 MiB entries,
        // filled by copying from a template (REP MOVSQ: about a tenth of a store loop's
        // cost per entry in this emulated ring 0).
        let first = (start / PAGE_2M).min(STATIC_ENTRIES) as usize;
        let last = (end.min(STATIC_LIMIT).div_ceil(PAGE_2M) as usize).max(first);
        // SAFETY: first <= last <= STATIC_ENTRIES: both ranges lie inside their arrays, which
        // do not overlap; nothing else references the PDs (CR3 still has the boot tables).
        unsafe {
            core::ptr::copy_nonoverlapping(
                RAM_TEMPLATE.as_ptr().add(first),
                pd_base(tables).add(first),
                last - first,
            )
        };
    }
    set_static(IOAPIC_PAGE, Memory::Mmio);
    set_static(super::apic::LAPIC_BASE, Memory::Mmio);
    // SAFETY: the new map covers everything the kernel runs on: the image and its stack (in
    // RAM, which the boot memory map lists), the boot structures (RAM too) and the LAPIC.
    unsafe {
        asm!("mov cr3, {}", in(reg) &raw const (*tables).pml4, options(nostack, preserves_flags))
    };
}

/// Number of 2 MiB entries in the static page directories.
const STATIC_ENTRIES: u64 = STATIC_LIMIT / PAGE_2M;

/// Every RAM entry the static directories can hold, precomputed at build time (16 KiB of
/// read-only data).
static RAM_TEMPLATE: [u64; STATIC_ENTRIES as usize] = {
    let mut entries = [0; STATIC_ENTRIES as usize];
    let mut i = 0;
    while i < entries.len() {
        entries[i] = (i as u64 * PAGE_2M) | PRESENT | WRITABLE | HUGE;
        i += 1;
    }
    entries
};

/// The first entry of the static page directories, which are contiguous.
fn pd_base(tables: *mut StaticTables) -> *mut u64 {
    // SAFETY: projecting a field of the static tables creates no reference.
    unsafe { &raw mut (*tables).pd }.cast::<u64>()
}

fn set_static(page: u64, kind: Memory) {
    let index = page / PAGE_2M;
    assert!(
        index < STATIC_ENTRIES,
        "{page:#x} is beyond the static page tables"
    );
    // SAFETY: index < STATIC_ENTRIES, inside the static PDs; the entry was not present, so no
    // live translation changes.
    unsafe {
        pd_base(TABLES.0.get())
            .add(index as usize)
            .write(page | kind.leaf_flags())
    };
}

/// Physical address of the app stack (0 until [`map_stack`]).
static STACK_PHYS: AtomicU64 = AtomicU64::new(0);

/// The physical address behind kernel virtual address `addr`: the same address in the
/// identity map, or the app stack's RAM for addresses in it. `None` outside both.
pub fn virt_to_phys(addr: u64) -> Option<u64> {
    if (STACK_BASE..STACK_TOP).contains(&addr) {
        let phys = STACK_PHYS.load(Ordering::Relaxed);
        return (phys != 0).then(|| phys + (addr - STACK_BASE));
    }
    (addr < 1 << 47).then_some(addr)
}

/// Maps the 2 MiB of RAM at `phys` (2 MiB-aligned, taken out of the heap by the caller) at
/// [`STACK_BASE`]. Three stores; call after [`init`].
pub fn map_stack(phys: u64) {
    STACK_PHYS.store(phys & !(PAGE_2M - 1), Ordering::Relaxed);
    let tables = TABLES.0.get();
    const STACK_PML4_INDEX: usize = ((STACK_BASE >> 39) & 511) as usize;
    const STACK_PDPT_INDEX: usize = ((STACK_BASE >> 30) & 511) as usize;
    const STACK_PD_INDEX: usize = ((STACK_BASE >> 21) & 511) as usize;
    // SAFETY: only not-present entries of the static tables are filled in (no live
    // translation changes, so no flush); the identity map makes the table addresses physical.
    unsafe {
        (*tables).stack_pd.0[STACK_PD_INDEX] = (phys & !(PAGE_2M - 1)) | Memory::Ram.leaf_flags();
        (*tables).stack_pdpt.0[STACK_PDPT_INDEX] = (&raw const (*tables).stack_pd) as u64 | TABLE;
        (*tables).pml4.0[STACK_PML4_INDEX] = (&raw const (*tables).stack_pdpt) as u64 | TABLE;
    }
}

/// Maps `[start, end)` (widened to 2 MiB pages) as `kind`, taking zeroed 4 KiB tables from
/// `new_table` (which returns their physical address) where the walk needs them. Pages that
/// are already mapped as the same kind are left alone.
pub fn map(
    start: u64,
    end: u64,
    kind: Memory,
    new_table: &mut dyn FnMut() -> Option<u64>,
) -> Result<(), MapError> {
    if start >= end || end > 1 << 48 {
        return Err(MapError::BadRange);
    }
    let flags = kind.leaf_flags();
    // SAFETY: projecting a field of the static tables creates no reference.
    let pml4 = unsafe { &raw mut (*TABLES.0.get()).pml4 }.cast::<u64>();
    let mut page = start & !(PAGE_2M - 1);
    while page < end {
        let pdpt = next_table(pml4, (page >> 39) & 511, new_table)?;
        let pd = next_table(pdpt, (page >> 30) & 511, new_table)?;
        // SAFETY: `pd` is a present page directory (static or handed out by `new_table`,
        // identity-mapped) and the index is below 512.
        let entry = unsafe { pd.add(((page >> 21) & 511) as usize) };
        // SAFETY: as above; only a not-present entry is written.
        unsafe {
            match *entry {
                0 => *entry = page | flags,
                // The CPU sets the accessed and dirty bits of entries it has used.
                e if e & !(ACCESSED | DIRTY) == page | flags => {}
                _ => return Err(MapError::Conflict(page)),
            }
        }
        page += PAGE_2M;
    }
    Ok(())
}

/// The table `table[index]` points to, created through `new_table` when not present.
fn next_table(
    table: *mut u64,
    index: u64,
    new_table: &mut dyn FnMut() -> Option<u64>,
) -> Result<*mut u64, MapError> {
    // SAFETY: `table` is a present, identity-mapped page table and index < 512.
    let entry = unsafe { table.add(index as usize) };
    // SAFETY: as above.
    let value = unsafe { *entry };
    if value & PRESENT != 0 {
        if value & HUGE != 0 {
            return Err(MapError::Conflict(value & ADDRESS_MASK));
        }
        return Ok((value & ADDRESS_MASK) as *mut u64);
    }
    let fresh = new_table().ok_or(MapError::OutOfMemory)?;
    // SAFETY: `new_table` hands out zeroed, 4 KiB-aligned, identity-mapped pages that nothing
    // else uses; linking one into a not-present entry changes no live translation.
    unsafe { *entry = fresh | TABLE };
    Ok(fresh as *mut u64)
}

/// Maps device registers at `[phys, phys + len)` uncached (identity: the returned virtual
/// address is `phys`). Page tables come from the kernel heap.
pub fn map_mmio(phys: u64, len: u64) -> Result<*mut u8, MapError> {
    let end = phys.checked_add(len).ok_or(MapError::BadRange)?;
    map(phys, end, Memory::Mmio, &mut crate::heap::page_table)?;
    Ok(phys as *mut u8)
}
