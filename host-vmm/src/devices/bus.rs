//! A bus: non-overlapping address ranges, each owned by one device.
//!
//! An access goes to the device whose range holds *all* of it, at an offset into that range;
//! anything else is unhandled: reads return all-ones (as on a real ISA/PCI bus with nothing
//! behind it) and writes are dropped. Devices sit behind `Arc<Mutex<..>>` so a bus can later
//! be shared with an I/O thread and more vCPUs.

use std::sync::{Arc, Mutex, PoisonError};

/// A device on a [`Bus`]. Offsets are relative to the start of the device's range and the
/// access lies entirely inside it; sizes are whatever the guest used (1, 2, 4 or 8 bytes).
pub trait BusDevice: Send {
    /// Fills `data` with what the guest reads at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles the guest writing `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be added to a bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The range is empty or wraps around.
    #[error("invalid bus range {base:#x}+{len:#x} for {name}")]
    BadRange {
        /// Device name.
        name: &'static str,
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("{name} at {base:#x}+{len:#x} overlaps {other}")]
    Overlap {
        /// Device name.
        name: &'static str,
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
        /// The device already there.
        other: &'static str,
    },
}

/// A shared device handle.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

struct Slot {
    base: u64,
    len: u64,
    name: &'static str,
    device: SharedDevice,
}

/// An address space of devices (port I/O or MMIO).
pub struct Bus {
    kind: &'static str,
    /// Sorted by `base`, never overlapping.
    slots: Vec<Slot>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_map();
        for s in &self.slots {
            list.entry(&format_args!("{:#x}+{:#x}", s.base, s.len), &s.name);
        }
        list.finish()
    }
}

impl Bus {
    /// An empty bus; `kind` ("pio", "mmio") names it in logs.
    pub fn new(kind: &'static str) -> Self {
        Bus {
            kind,
            slots: Vec::new(),
        }
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        name: &'static str,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::BadRange { name, base, len }),
        };
        let at = self.slots.partition_point(|s| s.base < base);
        let clash = [at.checked_sub(1), Some(at)]
            .into_iter()
            .flatten()
            .filter_map(|i| self.slots.get(i))
            .find(|s| s.base < end && base < s.base + s.len);
        if let Some(other) = clash {
            return Err(BusError::Overlap {
                name,
                base,
                len,
                other: other.name,
            });
        }
        self.slots.insert(
            at,
            Slot {
                base,
                len,
                name,
                device,
            },
        );
        Ok(())
    }

    /// The device holding all of `[addr, addr + size)`, and the offset of `addr` in it.
    fn find(&self, addr: u64, size: usize) -> Option<(&Slot, u64)> {
        let at = self
            .slots
            .partition_point(|s| s.base <= addr)
            .checked_sub(1)?;
        let slot = &self.slots[at];
        let offset = addr - slot.base;
        let end = offset.checked_add(size as u64)?;
        (end <= slot.len).then_some((slot, offset))
    }

    /// Dispatches a guest read; returns `false` (and all-ones data) if nothing handled it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((slot, offset)) => {
                lock(&slot.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xFF);
                log::trace!(
                    "{}: unhandled read of {} at {addr:#x}",
                    self.kind,
                    data.len()
                );
                false
            }
        }
    }

    /// Dispatches a guest write; returns `false` if nothing handled it (it is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((slot, offset)) => {
                lock(&slot.device).write(offset, data);
                true
            }
            None => {
                log::trace!("{}: unhandled write of {data:02x?} at {addr:#x}", self.kind);
                false
            }
        }
    }
}

/// Locks a device; a device that panicked earlier is still used (its state is plain data).
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records accesses; reads return the offset.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn bus_with_probe() -> (Bus, Arc<Mutex<Probe>>) {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new("pio");
        bus.insert(0x3F8, 8, "probe", probe.clone()).unwrap();
        (bus, probe)
    }

    #[test]
    fn accesses_reach_the_device_at_an_offset() {
        let (bus, probe) = bus_with_probe();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3FD, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3F8, b"A"));
        assert!(bus.write(0x3FC, &[1, 2, 3, 4]));
        assert_eq!(
            probe.lock().unwrap().writes,
            vec![(0, b"A".to_vec()), (4, vec![1, 2, 3, 4])]
        );
    }

    #[test]
    fn unhandled_reads_are_all_ones_and_writes_are_dropped() {
        let (bus, probe) = bus_with_probe();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x80, &mut b));
        assert_eq!(b, [0xFF; 4]);
        assert!(!bus.write(0x3F7, &[0]));
        assert!(!bus.write(0x400, &[0]));
        // Straddling the end of the device's range is not the device's access.
        assert!(!bus.read(0x3FE, &mut b));
        assert_eq!(b, [0xFF; 4]);
        assert!(!bus.write(u64::MAX, &[0, 0]));
        assert!(probe.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused() {
        let (mut bus, probe) = bus_with_probe();
        let err = bus.insert(0x3FF, 2, "late", probe.clone()).unwrap_err();
        assert!(matches!(err, BusError::Overlap { other: "probe", .. }));
        assert!(bus.insert(0x3F0, 9, "early", probe.clone()).is_err());
        assert!(bus.insert(0x3F0, 8, "before", probe.clone()).is_ok());
        assert!(bus.insert(0x400, 1, "after", probe.clone()).is_ok());
        assert!(matches!(
            bus.insert(0x500, 0, "empty", probe.clone()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, "wraps", probe),
            Err(BusError::BadRange { .. })
        ));
        let mut b = [0u8; 1];
        assert!(bus.read(0x3F7, &mut b));
        assert_eq!(b, [7]);
    }
}
