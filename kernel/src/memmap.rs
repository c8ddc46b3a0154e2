//! Turning the boot memory map into RAM ranges (for the page tables) and heap ranges.

use crate::bootinfo::{MEMMAP_RAM, MemmapEntry};

/// Most RAM ranges kept: real maps have one to three (host-vmm: one; QEMU microvm: below
/// 640 KiB, above 1 MiB and, past 3 GiB, above 4 GiB). Small, because boot copies it around.
pub const MAX_RANGES: usize = 8;
/// Nothing below 1 MiB goes to the heap: the boot structures and legacy areas live there.
pub const LOW_MEMORY_END: u64 = 1 << 20;

/// A physical address range `[start, end)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// A sorted list of disjoint, non-adjacent ranges, stored inline (no heap exists yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranges {
    ranges: [Range; MAX_RANGES],
    len: usize,
    /// Ranges that did not fit in [`MAX_RANGES`] and were dropped.
    pub dropped: usize,
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges::EMPTY
    }
}

impl Ranges {
    /// No ranges.
    pub const EMPTY: Ranges = Ranges {
        ranges: [Range { start: 0, end: 0 }; MAX_RANGES],
        len: 0,
        dropped: 0,
    };

    /// The ranges, lowest first.
    pub fn as_slice(&self) -> &[Range] {
        &self.ranges[..self.len]
    }

    /// Whether `[start, end)` lies inside one of the ranges.
    pub fn contains(&self, start: u64, end: u64) -> bool {
        self.as_slice()
            .iter()
            .any(|r| r.start <= start && end <= r.end)
    }

    /// Takes `[start, end)` out of the ranges, splitting one if needed (if there is no room
    /// for the split-off part, it is dropped and counted in `dropped`).
    pub fn remove(&mut self, start: u64, end: u64) {
        let mut i = 0;
        while i < self.len {
            let r = self.ranges[i];
            if end <= r.start || r.end <= start {
                i += 1;
            } else if start <= r.start && r.end <= end {
                self.ranges.copy_within(i + 1..self.len, i);
                self.len -= 1;
            } else if r.start < start && end < r.end {
                self.ranges[i].end = start;
                if self.len == MAX_RANGES {
                    self.dropped += 1;
                } else {
                    self.ranges.copy_within(i + 1..self.len, i + 2);
                    self.ranges[i + 1] = Range {
                        start: end,
                        end: r.end,
                    };
                    self.len += 1;
                }
                return;
            } else {
                if r.start < start {
                    self.ranges[i].end = start;
                } else {
                    self.ranges[i].start = end;
                }
                i += 1;
            }
        }
    }

    /// Total bytes covered.
    pub fn total(&self) -> u64 {
        self.as_slice().iter().map(|r| r.end - r.start).sum()
    }

    /// Adds `[start, end)`, merging it with ranges it overlaps or touches. Cheap for the
    /// sorted input real memory maps are: no scan, no shifting.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut at = self.len;
        while at > 0 && self.ranges[at - 1].start > start {
            at -= 1;
        }
        if at > 0 && self.ranges[at - 1].end >= start {
            at -= 1;
            self.ranges[at].end = self.ranges[at].end.max(end);
        } else {
            if self.len == MAX_RANGES {
                self.dropped += 1;
                return;
            }
            let mut i = self.len;
            while i > at {
                self.ranges[i] = self.ranges[i - 1];
                i -= 1;
            }
            self.ranges[at] = Range { start, end };
            self.len += 1;
        }
        // The new or grown range may now reach the ranges after it.
        while at + 1 < self.len && self.ranges[at + 1].start <= self.ranges[at].end {
            self.ranges[at].end = self.ranges[at].end.max(self.ranges[at + 1].end);
            for i in at + 1..self.len - 1 {
                self.ranges[i] = self.ranges[i + 1];
            }
            self.len -= 1;
        }
    }
}

/// The usable RAM in a boot memory map.
pub fn ram(entries: impl IntoIterator<Item = MemmapEntry>) -> Ranges {
    let mut ranges = Ranges::default();
    for e in entries.into_iter().filter(|e| e.kind == MEMMAP_RAM) {
        ranges.insert(e.addr, e.addr.saturating_add(e.size));
    }
    ranges
}

/// Size and alignment of the app stack's physical block: one 2 MiB page.
pub const STACK_BLOCK: u64 = 2 << 20;

/// Where the app stack goes: the first 2 MiB-aligned 2 MiB of RAM above the image and
/// 1 MiB, if there is such a block. The caller takes it out of the heap.
pub fn stack_block(ram: &Ranges, image_end: u64) -> Option<Range> {
    let start = image_end
        .max(LOW_MEMORY_END)
        .checked_next_multiple_of(STACK_BLOCK)?;
    let block = Range {
        start,
        end: start.checked_add(STACK_BLOCK)?,
    };
    ram.contains(block.start, block.end).then_some(block)
}

/// The RAM the heap may use: everything at or above both 1 MiB and `image_end`.
pub fn heap(ram: &Ranges, image_end: u64) -> Ranges {
    let mut ranges = *ram;
    ranges.keep_heap(image_end);
    ranges
}

impl Ranges {
    /// In place, what [`heap`] returns: drops everything below both 1 MiB and `image_end`.
    /// (Boot uses this form: each copy of a `Ranges` costs a few emulated microseconds.)
    pub fn keep_heap(&mut self, image_end: u64) {
        let floor = image_end.max(LOW_MEMORY_END);
        // Sorted and disjoint: drop what ends below the floor, clip the first one left.
        let skip = self
            .as_slice()
            .iter()
            .take_while(|r| r.end <= floor)
            .count();
        if skip > 0 {
            self.ranges.copy_within(skip..self.len, 0);
            self.len -= skip;
        }
        if let Some(first) = self.ranges[..self.len].first_mut() {
            first.start = first.start.max(floor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: u64, size: u64, kind: u32) -> MemmapEntry {
        MemmapEntry {
            addr,
            size,
            kind,
            reserved: 0,
        }
    }

    /// Roughly what QEMU microvm's firmware reports for `-m 128M`.
    fn microvm_128m() -> [MemmapEntry; 4] {
        [
            entry(0, 0x9fc00, 1),
            entry(0x9fc00, 0x400, 2),
            entry(0xf0000, 0x10000, 2),
            entry(0x10_0000, 0x7f0_0000, 1),
        ]
    }

    #[test]
    fn keeps_only_ram_sorted() {
        let ram = ram(microvm_128m());
        assert_eq!(
            ram.as_slice(),
            &[
                Range {
                    start: 0,
                    end: 0x9fc00
                },
                Range {
                    start: 0x10_0000,
                    end: 0x800_0000
                }
            ]
        );
        assert_eq!(ram.total(), 0x9fc00 + 0x7f0_0000);
    }

    #[test]
    fn merges_touching_and_overlapping_ranges_in_any_order() {
        let ram = ram([
            entry(0x300, 0x100, 1),
            entry(0, 0x100, 1),
            entry(0x100, 0x200, 1),
            entry(0x350, 0x1000, 1),
        ]);
        assert_eq!(
            ram.as_slice(),
            &[Range {
                start: 0,
                end: 0x1350
            }]
        );
    }

    #[test]
    fn heap_skips_low_memory_and_the_image() {
        let ram = ram(microvm_128m());
        assert_eq!(
            heap(&ram, 0x14_3000).as_slice(),
            &[Range {
                start: 0x14_3000,
                end: 0x800_0000
            }]
        );
        // An image ending below 1 MiB still leaves low memory alone.
        assert_eq!(
            heap(&ram, 0x8000).as_slice(),
            &[Range {
                start: 0x10_0000,
                end: 0x800_0000
            }]
        );
    }

    #[test]
    fn host_vmm_single_region() {
        let ram = ram([entry(0, 3 << 30, 1)]);
        assert_eq!(
            heap(&ram, 0x20_0000).as_slice(),
            &[Range {
                start: 0x20_0000,
                end: 3 << 30
            }]
        );
    }

    #[test]
    fn ignores_empty_and_overflowing_entries() {
        let ram = ram([entry(0x1000, 0, 1), entry(u64::MAX - 10, 100, 1)]);
        assert_eq!(
            ram.as_slice(),
            &[Range {
                start: u64::MAX - 10,
                end: u64::MAX
            }]
        );
    }

    #[test]
    fn merges_a_range_that_bridges_several() {
        let bridged = ram([
            entry(0, 0x10, 1),
            entry(0x20, 0x10, 1),
            entry(0x40, 0x10, 1),
            entry(0x8, 0x40, 1),
        ]);
        assert_eq!(
            bridged.as_slice(),
            &[Range {
                start: 0,
                end: 0x50
            }]
        );
        let reversed = ram([
            entry(0x40, 0x10, 1),
            entry(0x20, 0x10, 1),
            entry(0, 0x10, 1),
        ]);
        assert_eq!(
            reversed.as_slice(),
            &[
                Range {
                    start: 0,
                    end: 0x10
                },
                Range {
                    start: 0x20,
                    end: 0x30
                },
                Range {
                    start: 0x40,
                    end: 0x50
                }
            ]
        );
    }

    #[test]
    fn heap_drops_ranges_below_the_floor() {
        let ram = ram([
            entry(0, 0x9fc00, 1),
            entry(0x10_0000, 0x10_0000, 1),
            entry(0x100_0000, 0x100_0000, 1),
        ]);
        assert_eq!(
            heap(&ram, 0x30_0000).as_slice(),
            &[Range {
                start: 0x100_0000,
                end: 0x200_0000
            }]
        );
        assert_eq!(heap(&ram, 0x300_0000).as_slice(), &[]);
    }

    #[test]
    fn remove_cuts_splits_and_deletes() {
        let mut r = ram([
            entry(0, 0x100, 1),
            entry(0x200, 0x100, 1),
            entry(0x400, 0x100, 1),
        ]);
        r.remove(0x250, 0x260);
        r.remove(0x80, 0x220);
        r.remove(0x400, 0x500);
        assert_eq!(
            r.as_slice(),
            &[
                Range {
                    start: 0,
                    end: 0x80
                },
                Range {
                    start: 0x220,
                    end: 0x250
                },
                Range {
                    start: 0x260,
                    end: 0x300
                }
            ]
        );
        r.remove(0x1000, 0x2000);
        assert_eq!(r.as_slice().len(), 3);
    }

    #[test]
    fn stack_block_is_the_first_aligned_2_mib_above_the_image() {
        let vm = ram(microvm_128m());
        let block = stack_block(&vm, 0x15f000).unwrap();
        assert_eq!(
            block,
            Range {
                start: 0x20_0000,
                end: 0x40_0000
            }
        );
        let mut free = heap(&vm, 0x15f000);
        free.remove(block.start, block.end);
        assert_eq!(
            free.as_slice(),
            &[
                Range {
                    start: 0x15f000,
                    end: 0x20_0000
                },
                Range {
                    start: 0x40_0000,
                    end: 0x800_0000
                }
            ]
        );
        // Too little RAM for a block above the image.
        let tiny = ram([entry(0, 0x30_0000, 1)]);
        assert_eq!(stack_block(&tiny, 0x15f000), None);
    }

    #[test]
    fn counts_what_does_not_fit() {
        let entries: Vec<_> = (0..MAX_RANGES as u64 + 3)
            .map(|i| entry(i * 0x10000, 0x1000, 1))
            .collect();
        let ram = ram(entries);
        assert_eq!(ram.as_slice().len(), MAX_RANGES);
        assert_eq!(ram.dropped, 3);
    }
}
