//! [`Remembered`]: configuration access to one function that answers a second read of a
//! register that does not change on its own from what the first read returned.
//!
//! A virtio probe walks the capability list, then virtio-drivers' `PciTransport::new` walks
//! it again: each read is two port exits (~40 µs here). Through one `Remembered` the second
//! walk costs nothing.

use super::{Bdf, ConfigAccess};
use core::cell::Cell;

/// Dwords in a type-0 function's configuration space.
const DWORDS: usize = 64;

/// Whether the dword at `offset` only changes when the driver writes it: the IDs, class,
/// header type, subsystem, capability pointer and the capabilities. Not the command and
/// status register (the device sets status bits), the BARs (sizing reads back a mask) or the
/// interrupt line.
fn stable(offset: u8) -> bool {
    matches!(offset & !3, 0x00 | 0x08 | 0x0C | 0x2C | 0x34) || offset >= 0x40
}

/// `access` to `bdf` with its stable registers remembered once read; other functions and
/// other registers go straight through. Writes go through and update what is remembered.
///
/// Every access to the function must go through this value (or its clones made after),
/// else what it remembers can go stale: it is meant for the length of a probe.
#[derive(Clone, Debug)]
pub struct Remembered<C> {
    access: C,
    bdf: Bdf,
    words: [Cell<u32>; DWORDS],
    /// Bit `i`: `words[i]` holds what the register read.
    known: Cell<u64>,
}

impl<C: ConfigAccess> Remembered<C> {
    /// Nothing remembered yet.
    pub fn new(access: C, bdf: Bdf) -> Remembered<C> {
        Remembered {
            access,
            bdf,
            words: [const { Cell::new(0) }; DWORDS],
            known: Cell::new(0),
        }
    }

    fn slot(&self, bdf: Bdf, offset: u8) -> Option<usize> {
        (bdf == self.bdf && stable(offset)).then_some(usize::from(offset / 4))
    }
}

impl<C: ConfigAccess> ConfigAccess for Remembered<C> {
    fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
        let Some(i) = self.slot(bdf, offset) else {
            return self.access.read32(bdf, offset);
        };
        if self.known.get() & (1 << i) != 0 {
            return self.words[i].get();
        }
        let value = self.access.read32(bdf, offset);
        self.words[i].set(value);
        self.known.set(self.known.get() | 1 << i);
        value
    }

    fn write32(&mut self, bdf: Bdf, offset: u8, value: u32) {
        self.access.write32(bdf, offset, value);
        if let Some(i) = self.slot(bdf, offset) {
            // Read-only bits may not have taken the value: read it back next time.
            self.known.set(self.known.get() & !(1 << i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::RefCell;
    use std::rc::Rc;

    const F: Bdf = match Bdf::new(0, 3, 0) {
        Some(bdf) => bdf,
        None => panic!("a valid function"),
    };

    /// The reads seen, and how many writes.
    type Log = (Vec<(Bdf, u8)>, u32);

    /// Counts reads per offset; every register reads back `offset * 3 + writes`.
    #[derive(Clone, Default)]
    struct Counting(Rc<RefCell<Log>>);

    impl ConfigAccess for Counting {
        fn read32(&self, bdf: Bdf, offset: u8) -> u32 {
            let mut s = self.0.borrow_mut();
            s.0.push((bdf, offset));
            u32::from(offset) * 3 + s.1
        }
        fn write32(&mut self, _: Bdf, _: u8, _: u32) {
            self.0.borrow_mut().1 += 1;
        }
    }

    #[test]
    fn stable_registers_are_read_once_others_every_time() {
        let inner = Counting::default();
        let r = Remembered::new(inner.clone(), F);
        for _ in 0..3 {
            assert_eq!(r.read32(F, 0x40), 0x40 * 3);
            assert_eq!(r.read32(F, 0x34), 0x34 * 3);
            r.read32(F, 0x04);
            r.read32(F, 0x10);
        }
        let reads = inner.0.borrow().0.clone();
        let count = |o| reads.iter().filter(|&&(_, x)| x == o).count();
        assert_eq!((count(0x40), count(0x34)), (1, 1));
        assert_eq!(
            (count(0x04), count(0x10)),
            (3, 3),
            "command and BARs are never kept"
        );
        assert_eq!(r.read16(F, 0x42), ((0x40 * 3) >> 16) as u16);
    }

    #[test]
    fn a_write_forgets_the_register_and_other_functions_pass_through() {
        let inner = Counting::default();
        let mut r = Remembered::new(inner.clone(), F);
        assert_eq!(r.read32(F, 0x44), 0x44 * 3);
        r.write32(F, 0x44, 7);
        assert_eq!(
            r.read32(F, 0x44),
            0x44 * 3 + 1,
            "read again after the write"
        );
        let other = Bdf::new(0, 4, 0).unwrap();
        r.read32(other, 0x40);
        r.read32(other, 0x40);
        let reads = inner.0.borrow().0.clone();
        assert_eq!(reads.iter().filter(|&&(b, _)| b == other).count(), 2);
    }

    #[test]
    fn a_clone_keeps_what_was_read() {
        let inner = Counting::default();
        let r = Remembered::new(inner.clone(), F);
        r.read32(F, 0x48);
        let c = r.clone();
        c.read32(F, 0x48);
        assert_eq!(inner.0.borrow().0.len(), 1);
    }
}
