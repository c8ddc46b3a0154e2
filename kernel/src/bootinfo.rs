//! The PVH boot information (`struct hvm_start_info`, Xen's `arch-x86/hvm/start_info.h`),
//! which both boot entries receive: host-vmm writes it, QEMU's firmware fills the same
//! structure. Only validation lives here; copying it out of memory is `arch::bootmem`.

use core::fmt;

/// `hvm_start_info.magic`: "xEn3" with the top bit of each byte cleared.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Memory map entry type for usable RAM (the E820 numbering).
pub const MEMMAP_RAM: u32 = 1;

/// `struct hvm_start_info`, version 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StartInfo {
    /// Must be [`START_INFO_MAGIC`].
    pub magic: u32,
    /// 1 or later has the memory map fields.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Number of modules (unused by Roam).
    pub nr_modules: u32,
    /// Physical address of the module list.
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line, or 0.
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP, or 0.
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version 1).
    pub memmap_paddr: u64,
    /// Number of memory map entries (version 1).
    pub memmap_entries: u32,
    /// Reserved.
    pub reserved: u32,
}

/// `struct hvm_memmap_table_entry`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemmapEntry {
    /// Start of the range.
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// E820-style type; [`MEMMAP_RAM`] is usable RAM.
    pub kind: u32,
    /// Reserved.
    pub reserved: u32,
}

/// Why the boot information cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// The magic number is wrong: this is not an `hvm_start_info` (or RDI/EBX was not set).
    BadMagic {
        /// Address the VMM passed.
        paddr: u64,
        /// What was found there.
        found: u32,
    },
    /// Version 0 has no memory map, and the kernel needs one.
    NoMemoryMap {
        /// The version found.
        version: u32,
    },
    /// The memory map is empty or its address is 0.
    EmptyMemoryMap,
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BootInfoError::BadMagic { paddr, found } => write!(
                f,
                "no hvm_start_info at {paddr:#x}: magic is {found:#010x}, expected {START_INFO_MAGIC:#010x}"
            ),
            BootInfoError::NoMemoryMap { version } => write!(
                f,
                "hvm_start_info version {version} has no memory map (version 1 or later needed)"
            ),
            BootInfoError::EmptyMemoryMap => write!(f, "hvm_start_info has an empty memory map"),
        }
    }
}

/// Checks the magic, the version and the memory map fields of the structure found at `paddr`.
pub fn validate(paddr: u64, info: &StartInfo) -> Result<(), BootInfoError> {
    if info.magic != START_INFO_MAGIC {
        return Err(BootInfoError::BadMagic {
            paddr,
            found: info.magic,
        });
    }
    if info.version < 1 {
        return Err(BootInfoError::NoMemoryMap {
            version: info.version,
        });
    }
    if info.memmap_entries == 0 || info.memmap_paddr == 0 {
        return Err(BootInfoError::EmptyMemoryMap);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> StartInfo {
        StartInfo {
            magic: START_INFO_MAGIC,
            version: 1,
            memmap_paddr: 0x6100,
            memmap_entries: 1,
            ..StartInfo::default()
        }
    }

    #[test]
    fn layout_matches_the_c_structures() {
        assert_eq!(core::mem::size_of::<StartInfo>(), 56);
        assert_eq!(core::mem::offset_of!(StartInfo, cmdline_paddr), 24);
        assert_eq!(core::mem::offset_of!(StartInfo, memmap_paddr), 40);
        assert_eq!(core::mem::offset_of!(StartInfo, memmap_entries), 48);
        assert_eq!(core::mem::size_of::<MemmapEntry>(), 24);
    }

    #[test]
    fn accepts_version_1_with_a_memory_map() {
        assert_eq!(validate(0x6000, &good()), Ok(()));
    }

    #[test]
    fn rejects_a_wrong_magic_and_says_what_was_found() {
        let info = StartInfo {
            magic: 0xdead_beef,
            ..good()
        };
        let err = validate(0x6000, &info).unwrap_err();
        assert_eq!(
            err,
            BootInfoError::BadMagic {
                paddr: 0x6000,
                found: 0xdead_beef
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("0x6000") && text.contains("0xdeadbeef") && text.contains("0x336ec578"),
            "{text}"
        );
    }

    #[test]
    fn rejects_version_0_and_an_empty_map() {
        let v0 = StartInfo {
            version: 0,
            ..good()
        };
        assert_eq!(
            validate(0, &v0),
            Err(BootInfoError::NoMemoryMap { version: 0 })
        );
        let empty = StartInfo {
            memmap_entries: 0,
            ..good()
        };
        assert_eq!(validate(0, &empty), Err(BootInfoError::EmptyMemoryMap));
    }
}
