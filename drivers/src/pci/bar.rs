//! Base address registers of type-0 (endpoint) headers: decoding, sizing and assignment.
//!
//! Sizing follows the PCI Local Bus Specification 3.0, 6.2.5.1: with decoding turned off in
//! the command register, write all ones, read back the writable bits, restore. A 64-bit
//! memory BAR spans two registers (its index and the next).

use super::Bdf;
use super::{COMMAND_IO, COMMAND_MEMORY, ConfigAccess, command, set_command};
use core::fmt;

/// Offset of BAR 0.
pub const BAR0: u8 = 0x10;
/// Number of BARs in a type-0 header.
pub const BAR_COUNT: u8 = 6;

const IO_SPACE: u32 = 1;
const MEMORY_TYPE_MASK: u32 = 0b110;
const MEMORY_TYPE_64: u32 = 0b100;
const MEMORY_TYPE_RESERVED: u32 = 0b110;
const PREFETCHABLE: u32 = 0b1000;

/// One decoded BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// A memory BAR.
    Memory {
        /// Base address (0 when firmware did not assign one).
        address: u64,
        /// Size in bytes, a power of two.
        size: u64,
        /// Spans this register and the next.
        is_64: bool,
        /// Prefetchable memory.
        prefetchable: bool,
    },
    /// An I/O-port BAR.
    Io {
        /// First port.
        port: u32,
        /// Number of ports, a power of two.
        size: u32,
    },
}

impl Bar {
    /// Base address and size of a memory BAR.
    pub fn memory(self) -> Option<(u64, u64)> {
        match self {
            Bar::Memory { address, size, .. } => Some((address, size)),
            Bar::Io { .. } => None,
        }
    }
}

/// A range of device memory: the only thing the HAL maps (`hal::map`). Made only by
/// [`Bar::region`] (inside an assigned memory BAR) and by a checked virtio-mmio command-line
/// entry (`virtio_mmio::MmioDevice::region`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    phys: u64,
    len: usize,
}

impl Region {
    /// `len` bytes at `phys`; callers vouch that the range is device memory.
    pub(crate) fn new(phys: u64, len: usize) -> Region {
        Region { phys, len }
    }

    /// Physical address of the first byte.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Bar {
    /// Bytes `offset..offset + len` of an assigned memory BAR; `None` for I/O BARs,
    /// unassigned BARs, empty ranges, or ranges that leave the BAR.
    pub fn region(&self, offset: u64, len: u64) -> Option<Region> {
        let (address, size) = self.memory()?;
        let end = offset.checked_add(len)?;
        if address == 0 || len == 0 || end > size {
            return None;
        }
        Some(Region {
            phys: address.checked_add(offset)?,
            len: usize::try_from(len).ok()?,
        })
    }
}

impl fmt::Display for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bar::Memory {
                address,
                size,
                is_64,
                prefetchable,
            } => write!(
                f,
                "memory {address:#x} size {size:#x}{}{}",
                if is_64 { " 64-bit" } else { "" },
                if prefetchable { " prefetchable" } else { "" }
            ),
            Bar::Io { port, size } => write!(f, "I/O {port:#x} size {size:#x}"),
        }
    }
}

/// Why a BAR could not be decoded or assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarError {
    /// There is no BAR with this index.
    BadIndex(u8),
    /// The BAR is the upper half of a 64-bit BAR, or a 64-bit BAR in the last slot.
    Not64BitCapable(u8),
    /// The BAR uses the reserved memory type.
    ReservedType(u8),
    /// The BAR is not a memory BAR.
    NotMemory(u8),
    /// No room left in the address window for the BAR.
    WindowFull(u8),
}

impl fmt::Display for BarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BarError::BadIndex(i) => write!(f, "BAR {i} does not exist"),
            BarError::Not64BitCapable(i) => write!(f, "BAR {i} cannot be a 64-bit BAR"),
            BarError::ReservedType(i) => write!(f, "BAR {i} has the reserved memory type"),
            BarError::NotMemory(i) => write!(f, "BAR {i} is not a memory BAR"),
            BarError::WindowFull(i) => write!(f, "no address space left for BAR {i}"),
        }
    }
}

fn register(index: u8) -> u8 {
    BAR0 + 4 * index
}

/// Decodes and sizes BAR `index` of `bdf`: `Ok(None)` when the BAR is not implemented.
///
/// Turns memory and I/O decoding off while sizing and restores the command register after.
pub fn read(access: &mut impl ConfigAccess, bdf: Bdf, index: u8) -> Result<Option<Bar>, BarError> {
    let saved_command = command(access, bdf);
    set_command(access, bdf, saved_command & !(COMMAND_IO | COMMAND_MEMORY));
    let bar = size(access, bdf, index);
    set_command(access, bdf, saved_command);
    bar
}

/// [`read`] with decoding already off.
fn size(access: &mut impl ConfigAccess, bdf: Bdf, index: u8) -> Result<Option<Bar>, BarError> {
    if index >= BAR_COUNT {
        return Err(BarError::BadIndex(index));
    }
    let reg = register(index);
    let original = access.read32(bdf, reg);
    let is_io = original & IO_SPACE != 0;
    let memory_type = original & MEMORY_TYPE_MASK;
    if !is_io && memory_type == MEMORY_TYPE_RESERVED {
        return Err(BarError::ReservedType(index));
    }
    let is_64 = !is_io && memory_type == MEMORY_TYPE_64;
    if is_64 && index + 1 >= BAR_COUNT {
        return Err(BarError::Not64BitCapable(index));
    }

    let low_mask = size_mask(access, bdf, reg, original);
    let high = if is_64 {
        let original_high = access.read32(bdf, reg + 4);
        Some((
            original_high,
            size_mask(access, bdf, reg + 4, original_high),
        ))
    } else {
        None
    };

    if is_io {
        let mut mask = low_mask & !0b11;
        if mask == 0 {
            return Ok(None);
        }
        // I/O BARs may implement only 16 address bits; the upper ones then read back as zero.
        if mask & 0xFFFF_0000 == 0 {
            mask |= 0xFFFF_0000;
        }
        let size = (!mask).wrapping_add(1);
        return Ok(Some(Bar::Io {
            port: original & !0b11,
            size,
        }));
    }

    let low_mask = u64::from(low_mask & !0xF);
    let (address, mask) = match high {
        Some((original_high, high_mask)) => (
            u64::from(original & !0xF) | (u64::from(original_high) << 32),
            low_mask | (u64::from(high_mask) << 32),
        ),
        // A 32-bit BAR's mask is sign-extended so that `!mask + 1` is its size.
        None => (u64::from(original & !0xF), low_mask | 0xFFFF_FFFF_0000_0000),
    };
    if mask & 0xFFFF_FFFF == 0 && high.is_none_or(|(_, m)| m == 0) {
        return Ok(None);
    }
    Ok(Some(Bar::Memory {
        address,
        size: (!mask).wrapping_add(1),
        is_64,
        prefetchable: original & PREFETCHABLE != 0,
    }))
}

/// Writes all ones to `reg`, reads back the writable bits and restores `original`.
fn size_mask(access: &mut impl ConfigAccess, bdf: Bdf, reg: u8, original: u32) -> u32 {
    access.write32(bdf, reg, u32::MAX);
    let mask = access.read32(bdf, reg);
    access.write32(bdf, reg, original);
    mask
}

/// Decodes all six BARs of `bdf`, with decoding off once for all of them. The upper half of
/// a 64-bit BAR is `None`; so is a BAR that fails to decode (the error is logged).
pub fn read_all(access: &mut impl ConfigAccess, bdf: Bdf) -> [Option<Bar>; BAR_COUNT as usize] {
    let mut bars = [None; BAR_COUNT as usize];
    let saved_command = command(access, bdf);
    set_command(access, bdf, saved_command & !(COMMAND_IO | COMMAND_MEMORY));
    let mut index = 0;
    while index < BAR_COUNT {
        match size(access, bdf, index) {
            Ok(bar) => {
                bars[usize::from(index)] = bar;
                if let Some(Bar::Memory { is_64: true, .. }) = bar {
                    index += 1;
                }
            }
            Err(e) => log::warn!("pci {bdf}: {e}"),
        }
        index += 1;
    }
    set_command(access, bdf, saved_command);
    bars
}

/// Sizes every BAR of `bdf` once ([`read_all`]) and, with a `window`, gives the unassigned
/// memory BARs addresses from it: the BARs a driver's probe takes, so that nothing sizes them
/// again (each sizing turns decoding off and on, exits to the VMM several times, and made
/// host-vmm move its ioeventfds before it learnt better).
pub fn read_assigned(
    access: &mut impl ConfigAccess,
    bdf: Bdf,
    window: Option<&mut Window>,
) -> Result<[Option<Bar>; BAR_COUNT as usize], BarError> {
    let mut bars = read_all(access, bdf);
    if let Some(window) = window {
        for (index, slot) in bars.iter_mut().enumerate() {
            if let Some(b @ Bar::Memory { address: 0, .. }) = *slot {
                *slot = Some(assign(access, bdf, index as u8, b, window)?);
            }
        }
    }
    Ok(bars)
}

/// Whether `bdf`'s BAR registers still hold the addresses `bars` records (as
/// [`read_assigned`] left them): one or two config reads per BAR and no sizing, so a driver
/// that brings the same function up again skips the decode flips sizing costs.
pub fn unchanged(
    access: &impl ConfigAccess,
    bdf: Bdf,
    bars: &[Option<Bar>; BAR_COUNT as usize],
) -> bool {
    bars.iter().zip(0..BAR_COUNT).all(|(bar, index)| {
        let reg = register(index);
        match *bar {
            None => true,
            Some(Bar::Io { port, .. }) => access.read32(bdf, reg) & !0b11 == port,
            Some(Bar::Memory { address, is_64, .. }) => {
                let low = u64::from(access.read32(bdf, reg) & !0xF);
                let high = if is_64 {
                    u64::from(access.read32(bdf, reg + 4)) << 32
                } else {
                    0
                };
                low | high == address
            }
        }
    })
}

/// A range of physical address space from which unassigned memory BARs get addresses (for
/// machines without firmware that assigns them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    next: u64,
    end: u64,
}

impl Window {
    /// The window `[start, end)`.
    pub const fn new(start: u64, end: u64) -> Window {
        Window { next: start, end }
    }

    /// Takes `size` bytes (a power of two) aligned to their size.
    fn take(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        let start = self.next.checked_next_multiple_of(size)?;
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }
}

/// Gives memory BAR `index` of `bdf`, as [`read`] sized it (`bar`), an address from `window`
/// if it has none, and returns the BAR as it now is. A 32-bit BAR only takes addresses below
/// 4 GiB. Nothing is sized again.
pub fn assign(
    access: &mut impl ConfigAccess,
    bdf: Bdf,
    index: u8,
    bar: Bar,
    window: &mut Window,
) -> Result<Bar, BarError> {
    if index >= BAR_COUNT {
        return Err(BarError::BadIndex(index));
    }
    let Bar::Memory {
        address,
        size,
        is_64,
        prefetchable,
    } = bar
    else {
        return Err(BarError::NotMemory(index));
    };
    if address != 0 {
        return Ok(bar);
    }
    let mut trial = *window;
    let start = trial.take(size).ok_or(BarError::WindowFull(index))?;
    if !is_64 && start.saturating_add(size) > 1 << 32 {
        return Err(BarError::WindowFull(index));
    }
    *window = trial;
    let reg = register(index);
    let type_bits = access.read32(bdf, reg) & 0xF;
    access.write32(bdf, reg, start as u32 | type_bits);
    if is_64 {
        access.write32(bdf, reg + 4, (start >> 32) as u32);
    }
    Ok(Bar::Memory {
        address: start,
        size,
        is_64,
        prefetchable,
    })
}

#[cfg(test)]
mod tests {
    use super::super::COMMAND_BUS_MASTER;
    use super::super::fake::{FakeConfig, FakeFunction};
    use super::*;

    const NIC: Bdf = Bdf {
        bus: 0,
        device: 3,
        function: 0,
    };

    /// BARs like QEMU's modern virtio-net-pci: BAR1 32-bit 4 KiB (MSI-X), BAR4 64-bit
    /// prefetchable 16 KiB, plus an I/O BAR 0 and nothing in 2, 3.
    fn nic() -> FakeConfig {
        let mut f = FakeFunction::new(0x1af4, 0x1041, 0x02, 0x00);
        f.set_bar(0, 0x20, 0b01, 0xC040);
        f.set_bar(1, 0x1000, 0b0000, 0xFEBD_1000);
        f.set_bar(4, 0x4000, 0b1100, 0x0000_0008_0000_0000);
        f.set_dword(
            0x04,
            u32::from(COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER),
        );
        let mut config = FakeConfig::default();
        config.add(NIC, f);
        config
    }

    #[test]
    fn unchanged_bars_are_recognised_without_sizing_and_a_moved_one_is_not() {
        let mut config = nic();
        let bars = read_all(&mut config, NIC);
        let (sizings, last) = (config.bar_sizings(NIC), config.last_write(NIC));
        assert!(unchanged(&config, NIC, &bars));
        assert_eq!(
            (config.bar_sizings(NIC), config.last_write(NIC)),
            (sizings, last),
            "nothing written: no sizing"
        );
        // The high half of the 64-bit BAR moved.
        config.write32(NIC, 0x24, 9);
        assert!(!unchanged(&config, NIC, &bars));
        // Another function (or none) at the slot: its registers do not match.
        let mut empty = FakeConfig::default();
        empty.add(NIC, FakeFunction::new(0x1af4, 0x1041, 0x02, 0x00));
        assert!(!unchanged(&empty, NIC, &bars));
    }

    #[test]
    fn decodes_memory_io_and_64_bit_bars() {
        let mut config = nic();
        assert_eq!(
            read(&mut config, NIC, 0),
            Ok(Some(Bar::Io {
                port: 0xC040,
                size: 0x20
            }))
        );
        assert_eq!(
            read(&mut config, NIC, 1),
            Ok(Some(Bar::Memory {
                address: 0xFEBD_1000,
                size: 0x1000,
                is_64: false,
                prefetchable: false
            }))
        );
        assert_eq!(read(&mut config, NIC, 2), Ok(None));
        assert_eq!(
            read(&mut config, NIC, 4),
            Ok(Some(Bar::Memory {
                address: 0x8_0000_0000,
                size: 0x4000,
                is_64: true,
                prefetchable: true
            }))
        );
        assert_eq!(read(&mut config, NIC, 6), Err(BarError::BadIndex(6)));
    }

    #[test]
    fn sizing_restores_the_bar_and_the_command_register() {
        let mut config = nic();
        let before: Vec<u32> = (0..0x40)
            .step_by(4)
            .map(|o| config.function(NIC).dword(o))
            .collect();
        let bars = read_all(&mut config, NIC);
        let after: Vec<u32> = (0..0x40)
            .step_by(4)
            .map(|o| config.function(NIC).dword(o))
            .collect();
        assert_eq!(before, after);
        assert!(bars[5].is_none(), "upper half of BAR 4");
        assert_eq!(bars.iter().flatten().count(), 3);
    }

    #[test]
    fn rejects_reserved_types_and_64_bit_in_the_last_slot() {
        let mut config = nic();
        config.function(NIC).set_dword(BAR0 + 8, 0b0110);
        assert_eq!(read(&mut config, NIC, 2), Err(BarError::ReservedType(2)));
        config.function(NIC).set_dword(BAR0 + 20, 0b0100);
        assert_eq!(read(&mut config, NIC, 5), Err(BarError::Not64BitCapable(5)));
    }

    #[test]
    fn assigns_unassigned_bars_from_the_window() {
        let mut config = nic();
        config.function(NIC).set_bar(1, 0x1000, 0, 0);
        config.function(NIC).set_bar(4, 0x4000, 0b1100, 0);
        let mut window = Window::new(0xC000_0800, 0xC001_0000);
        let bars = read_all(&mut config, NIC);
        let b1 = assign(&mut config, NIC, 1, bars[1].unwrap(), &mut window).unwrap();
        assert_eq!(b1.memory(), Some((0xC000_1000, 0x1000)));
        let b4 = assign(&mut config, NIC, 4, bars[4].unwrap(), &mut window).unwrap();
        assert_eq!(b4.memory(), Some((0xC000_4000, 0x4000)));
        assert_eq!(
            read(&mut config, NIC, 4).unwrap().unwrap().memory(),
            Some((0xC000_4000, 0x4000))
        );
        // Assigned BARs keep their address; I/O BARs are refused; a full window is an error.
        assert_eq!(
            assign(&mut config, NIC, 1, b1, &mut window)
                .unwrap()
                .memory(),
            Some((0xC000_1000, 0x1000))
        );
        assert_eq!(
            assign(&mut config, NIC, 0, bars[0].unwrap(), &mut window),
            Err(BarError::NotMemory(0))
        );
        config.function(NIC).set_bar(1, 0x10_0000, 0, 0);
        let big = read(&mut config, NIC, 1).unwrap().unwrap();
        assert_eq!(
            assign(&mut config, NIC, 1, big, &mut window),
            Err(BarError::WindowFull(1))
        );
    }

    #[test]
    fn regions_stay_inside_assigned_memory_bars() {
        let mut config = nic();
        let bar4 = read(&mut config, NIC, 4).unwrap().unwrap();
        let r = bar4.region(0x3000, 0x1000).unwrap();
        assert_eq!((r.phys(), r.len()), (0x8_0000_3000, 0x1000));
        assert_eq!(bar4.region(0x3000, 0x1001), None);
        assert_eq!(bar4.region(u64::MAX, 2), None);
        assert_eq!(bar4.region(0, 0), None);
        let io = read(&mut config, NIC, 0).unwrap().unwrap();
        assert_eq!(io.region(0, 4), None);
        config.function(NIC).set_bar(1, 0x1000, 0, 0);
        let unassigned = read(&mut config, NIC, 1).unwrap().unwrap();
        assert_eq!(unassigned.region(0, 4), None);
    }

    #[test]
    fn thirty_two_bit_bars_stay_below_4_gib() {
        let mut config = nic();
        config.function(NIC).set_bar(1, 0x1000, 0, 0);
        let mut window = Window::new(0x1_0000_0000, 0x2_0000_0000);
        let b1 = read(&mut config, NIC, 1).unwrap().unwrap();
        assert_eq!(
            assign(&mut config, NIC, 1, b1, &mut window),
            Err(BarError::WindowFull(1))
        );
        assert_eq!(window, Window::new(0x1_0000_0000, 0x2_0000_0000));
    }
}
