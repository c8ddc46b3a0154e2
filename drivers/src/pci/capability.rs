//! The capability list (PCI Local Bus Specification 3.0, 6.7).
//!
//! The walk trusts nothing: pointers below the standard header (0x40) end it, the two
//! reserved low bits are masked, and it stops after 48 entries (all the 4-byte-aligned slots
//! there are), so a looping list cannot hang the kernel.

use super::{Bdf, CAPABILITY_POINTER, COMMAND_STATUS, ConfigAccess, STATUS_CAPABILITIES};

/// Capability ID: MSI.
pub const ID_MSI: u8 = 0x05;
/// Capability ID: vendor-specific (virtio uses these for its structures).
pub const ID_VENDOR: u8 = 0x09;
/// Capability ID: MSI-X.
pub const ID_MSIX: u8 = 0x11;

/// Most entries a list can hold: the dword slots between 0x40 and 0x100.
const MAX_ENTRIES: usize = (256 - 0x40) / 4;

/// One entry of the capability list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    /// Capability ID.
    pub id: u8,
    /// Offset of the capability in configuration space.
    pub offset: u8,
    /// The two bytes after the ID and next pointer (vendor capabilities keep their length
    /// and type there).
    pub header: u16,
}

/// Iterator over the capability list of one function.
#[derive(Debug)]
pub struct Capabilities<'a, A: ConfigAccess> {
    access: &'a A,
    bdf: Bdf,
    next: u8,
    remaining: usize,
}

impl<A: ConfigAccess> Iterator for Capabilities<'_, A> {
    type Item = Capability;

    fn next(&mut self) -> Option<Capability> {
        if self.remaining == 0 || self.next < 0x40 {
            return None;
        }
        self.remaining -= 1;
        let offset = self.next;
        let dword = self.access.read32(self.bdf, offset);
        self.next = (dword >> 8) as u8 & !3;
        Some(Capability {
            id: dword as u8,
            offset,
            header: (dword >> 16) as u16,
        })
    }
}

/// The capabilities of `bdf` (none if its status register says it has no list).
pub fn capabilities<A: ConfigAccess>(access: &A, bdf: Bdf) -> Capabilities<'_, A> {
    let status = access.read16(bdf, COMMAND_STATUS + 2);
    let next = if status & STATUS_CAPABILITIES != 0 {
        access.read8(bdf, CAPABILITY_POINTER) & !3
    } else {
        0
    };
    Capabilities {
        access,
        bdf,
        next,
        remaining: MAX_ENTRIES,
    }
}

/// The first capability of `bdf` with `id`.
pub fn find(access: &impl ConfigAccess, bdf: Bdf, id: u8) -> Option<Capability> {
    capabilities(access, bdf).find(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    use super::super::fake::{FakeConfig, FakeFunction};
    use super::*;

    const F: Bdf = Bdf {
        bus: 0,
        device: 4,
        function: 0,
    };

    fn with_caps(build: impl FnOnce(&mut FakeFunction)) -> FakeConfig {
        let mut f = FakeFunction::new(0x1af4, 0x1041, 0x02, 0x00);
        f.set_status(STATUS_CAPABILITIES);
        build(&mut f);
        let mut config = FakeConfig::default();
        config.add(F, f);
        config
    }

    #[test]
    fn walks_the_list_in_order() {
        let config = with_caps(|f| {
            f.set_byte(CAPABILITY_POINTER, 0x98);
            f.add_capability(0x98, ID_MSIX, 0x84, &[0x02, 0x00]);
            f.add_capability(0x84, ID_VENDOR, 0x40, &[0x14, 0x03]);
            // Reserved low bits of a pointer are ignored.
            f.add_capability(0x40, ID_VENDOR, 0x03, &[0x10, 0x01]);
        });
        let caps: Vec<_> = capabilities(&config, F)
            .map(|c| (c.id, c.offset, c.header))
            .collect();
        assert_eq!(
            caps,
            vec![
                (ID_MSIX, 0x98, 0x0002),
                (ID_VENDOR, 0x84, 0x0314),
                (ID_VENDOR, 0x40, 0x0110)
            ]
        );
        assert_eq!(find(&config, F, ID_MSIX).map(|c| c.offset), Some(0x98));
        assert_eq!(find(&config, F, ID_MSI), None);
    }

    #[test]
    fn no_list_without_the_status_bit() {
        let mut config = with_caps(|f| {
            f.set_byte(CAPABILITY_POINTER, 0x40);
            f.add_capability(0x40, ID_MSIX, 0, &[]);
        });
        config.function(F).set_status(0);
        assert_eq!(capabilities(&config, F).count(), 0);
    }

    #[test]
    fn a_looping_list_ends() {
        let config = with_caps(|f| {
            f.set_byte(CAPABILITY_POINTER, 0x50);
            f.add_capability(0x50, ID_VENDOR, 0x60, &[]);
            f.add_capability(0x60, ID_VENDOR, 0x50, &[]);
        });
        assert_eq!(capabilities(&config, F).count(), MAX_ENTRIES);
    }

    #[test]
    fn pointers_into_the_header_end_the_list() {
        let config = with_caps(|f| {
            f.set_byte(CAPABILITY_POINTER, 0x50);
            f.add_capability(0x50, ID_VENDOR, 0x3C, &[]);
        });
        assert_eq!(capabilities(&config, F).count(), 1);
    }
}
