//! Writes the boot structures of the Boot ABI into guest memory: GDT, `hvm_start_info`, its
//! one-entry memory map, the command line and the identity map. Everything lands below 1 MiB
//! and, apart from the page directories (4 KiB per GiB of RAM), in a few small writes.

use super::start_info::{self, StartInfo};
use super::{CMDLINE_ADDR, GDT_ADDR, MEMMAP_ADDR, START_INFO_ADDR, gdt, paging};
use crate::config::Cmdline;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

/// Why the boot structures could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A write into guest memory failed (guest RAM smaller than the boot area).
    #[error("cannot write the {what} at {addr:#x} into guest memory")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Its guest-physical address.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: GuestMemoryError,
    },
}

fn write<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    mem: &M,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), BootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| BootError::Write { what, addr, source })
}

/// Writes every boot structure for a guest with `mem_size` bytes of RAM starting at 0.
///
/// Guest RAM is assumed zeroed (a fresh memfd is), so only non-zero bytes and the NUL that
/// ends the command line are written.
pub fn write_boot_structures<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    mem: &M,
    mem_size: u64,
    cmdline: &Cmdline,
) -> Result<(), BootError> {
    write(mem, "GDT", GDT_ADDR, &gdt::gdt_bytes())?;
    let info = StartInfo {
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: 1,
    };
    write(mem, "hvm_start_info", START_INFO_ADDR, &info.to_bytes())?;
    let ram = start_info::memmap_entry(0, mem_size, start_info::MEMMAP_TYPE_RAM);
    write(mem, "memory map", MEMMAP_ADDR, &ram)?;
    let mut line = Vec::with_capacity(cmdline.as_bytes().len() + 1);
    line.extend_from_slice(cmdline.as_bytes());
    line.push(0);
    write(mem, "command line", CMDLINE_ADDR, &line)?;
    for table in paging::identity_map(mem_size) {
        write(mem, "page table", table.addr, &table.bytes)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::{PD_ADDR, PDPT_ADDR, PML4_ADDR};
    use vm_memory::GuestMemoryMmap;

    const MEM: u64 = 32 << 20;

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
    }

    fn read<const N: usize>(mem: &GuestMemoryMmap, addr: u64) -> [u8; N] {
        let mut b = [0u8; N];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    fn u64_at(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        u64::from_le_bytes(read(mem, addr))
    }

    #[test]
    fn boot_structures_land_where_the_abi_says() {
        let mem = guest();
        let cmdline = Cmdline::new("log=debug foo=bar").unwrap();
        write_boot_structures(&mem, MEM, &cmdline).unwrap();

        assert_eq!(read::<24>(&mem, 0x500), gdt::gdt_bytes());
        assert_eq!(u64_at(&mem, 0x508), 0x00AF_9B00_0000_FFFF);

        let info: [u8; 56] = read(&mem, 0x6000);
        assert_eq!(&info[0..4], &0x336e_c578u32.to_le_bytes());
        assert_eq!(&info[4..8], &1u32.to_le_bytes());
        assert_eq!(&info[24..32], &0x7000u64.to_le_bytes());
        assert_eq!(&info[40..48], &0x6100u64.to_le_bytes());
        assert_eq!(&info[48..52], &1u32.to_le_bytes());

        assert_eq!(u64_at(&mem, 0x6100), 0);
        assert_eq!(u64_at(&mem, 0x6108), MEM);
        assert_eq!(u32::from_le_bytes(read(&mem, 0x6110)), 1);

        assert_eq!(&read::<18>(&mem, 0x7000), b"log=debug foo=bar\0");

        assert_eq!(u64_at(&mem, PML4_ADDR), PDPT_ADDR | 3);
        assert_eq!(u64_at(&mem, PDPT_ADDR), PD_ADDR | 3);
        assert_eq!(u64_at(&mem, PDPT_ADDR + 8), 0);
        assert_eq!(u64_at(&mem, PD_ADDR), 0x83);
        assert_eq!(u64_at(&mem, PD_ADDR + 15 * 8), (15 << 21) | 0x83);
        assert_eq!(u64_at(&mem, PD_ADDR + 16 * 8), 0, "32 MiB = 16 pages");
    }

    #[test]
    fn an_empty_command_line_is_a_lone_nul() {
        let mem = guest();
        mem.write_slice(&[0xAA; 4], GuestAddress(0x7000)).unwrap();
        write_boot_structures(&mem, MEM, &Cmdline::default()).unwrap();
        assert_eq!(read::<1>(&mem, 0x7000), [0]);
    }

    #[test]
    fn the_longest_command_line_ends_inside_its_4_kib() {
        let mem = guest();
        let cmdline = Cmdline::new(&"x".repeat(4095)).unwrap();
        write_boot_structures(&mem, MEM, &cmdline).unwrap();
        assert_eq!(read::<1>(&mem, 0x7000 + 4094), [b'x']);
        assert_eq!(read::<1>(&mem, 0x7000 + 4095), [0]);
        assert_eq!(u64_at(&mem, 0x8000), 0, "nothing written past 0x8000");
    }

    #[test]
    fn too_small_a_guest_is_an_error_not_a_panic() {
        let tiny: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let err = write_boot_structures(&tiny, 0x4000, &Cmdline::default()).unwrap_err();
        assert!(err.to_string().contains("hvm_start_info"), "{err}");
    }
}
