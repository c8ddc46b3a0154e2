//! Descriptor rings in guest memory: the checks a queue's registers must pass before the
//! device touches the ring, descriptor reads, and ordered write-backs.
//!
//! Every use of a queue starts with [`Ring::check`] (base 128-byte aligned, length a nonzero
//! multiple of 128 and at most 1 MiB, the whole ring inside guest RAM, head and tail inside
//! the ring); buffers are checked against guest RAM before each copy. A failure is a
//! [`QueueError`]: the device logs it once and stops the queue. vm-memory checks every access
//! again, so even a ring the guest rewrites between check and use cannot reach outside RAM.

use super::state::QueueRegs;
use crate::devices::virtio::queue::range_in_ram;
use crate::memory::GuestMemoryMmap;
use ixgbevf_regs as r;
use std::sync::atomic::Ordering;
use vm_memory::{Bytes, GuestAddress};

/// Bytes per descriptor.
pub const DESC: u64 = r::DESC_LEN as u64;
/// Longest ring: RDLEN/TDLEN hold 20 bits, and 65536 descriptors are what 16-bit head and
/// tail registers can index.
pub const MAX_RING_BYTES: u32 = 1 << 20;

/// What was wrong with a queue; the queue stops until the driver sets it up again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The ring base is not 128-byte aligned.
    #[error("ring base {0:#x} is not 128-byte aligned")]
    BaseAlignment(u64),
    /// The ring length is zero, not a multiple of 128 or above 1 MiB.
    #[error("ring length {0:#x} is not a nonzero multiple of 128 up to 1 MiB")]
    Length(u32),
    /// The ring is not inside guest RAM.
    #[error("ring {base:#x}+{len:#x} is outside guest RAM")]
    RingOutsideRam {
        /// Ring base.
        base: u64,
        /// Ring length in bytes.
        len: u32,
    },
    /// Head or tail is not below the number of descriptors.
    #[error("head {head} or tail {tail} is not below the ring size {count}")]
    Index {
        /// Head register.
        head: u32,
        /// Tail register.
        tail: u32,
        /// Descriptors in the ring.
        count: u32,
    },
    /// A descriptor's buffer is not inside guest RAM.
    #[error("descriptor {index}: buffer {addr:#x}+{len:#x} is outside guest RAM")]
    BufferOutsideRam {
        /// Descriptor index.
        index: u32,
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u64,
    },
    /// A TX descriptor of a type the device does not know.
    #[error("descriptor {index}: unknown type (cmd_type_len {cmd:#x})")]
    DescriptorType {
        /// Descriptor index.
        index: u32,
        /// Its cmd_type_len dword.
        cmd: u32,
    },
    /// A TX packet longer than the device takes.
    #[error("a packet of more than {0} bytes")]
    PacketTooLong(usize),
    /// The TX head write-back address is not inside guest RAM.
    #[error("head write-back address {0:#x} is outside guest RAM")]
    HeadWriteBack(u64),
    /// Guest memory refused an access the checks allowed (the ring moved under the device).
    #[error("guest memory access at {0:#x} failed")]
    Memory(u64),
}

/// A checked ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    base: u64,
    /// Number of descriptors.
    pub count: u32,
}

impl Ring {
    /// Checks queue `q`'s ring registers, head and tail.
    pub fn check(q: &QueueRegs, mem: &GuestMemoryMmap) -> Result<Ring, QueueError> {
        let base = q.base();
        if !base.is_multiple_of(u64::from(r::RING_ALIGN_LEN)) {
            return Err(QueueError::BaseAlignment(base));
        }
        if q.len == 0 || !q.len.is_multiple_of(r::RING_ALIGN_LEN) || q.len > MAX_RING_BYTES {
            return Err(QueueError::Length(q.len));
        }
        if !range_in_ram(mem, base, u64::from(q.len)) {
            return Err(QueueError::RingOutsideRam { base, len: q.len });
        }
        let count = q.len / r::DESC_LEN as u32;
        if q.head >= count || q.tail >= count {
            return Err(QueueError::Index {
                head: q.head,
                tail: q.tail,
                count,
            });
        }
        Ok(Ring { base, count })
    }

    /// The index after `index`.
    pub fn next(&self, index: u32) -> u32 {
        if index + 1 >= self.count {
            0
        } else {
            index + 1
        }
    }

    /// Descriptors from `from` up to (not including) `to`, going round.
    pub fn distance(&self, from: u32, to: u32) -> u32 {
        (to + self.count - from) % self.count
    }

    fn addr(&self, index: u32) -> u64 {
        self.base + u64::from(index) * DESC
    }

    /// Descriptor `index` as four little-endian dwords.
    pub fn read(&self, mem: &GuestMemoryMmap, index: u32) -> Result<[u32; 4], QueueError> {
        let addr = self.addr(index);
        let mut raw = [0u8; r::DESC_LEN];
        mem.read_slice(&mut raw, GuestAddress(addr))
            .map_err(|_| QueueError::Memory(addr))?;
        let dword = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        Ok([dword(0), dword(4), dword(8), dword(12)])
    }

    /// Writes a whole descriptor: qword 0 first, then qword 1 with one release store, so a
    /// driver that sees qword 1's status (DD, length) also sees everything written before.
    pub fn write_back(
        &self,
        mem: &GuestMemoryMmap,
        index: u32,
        desc: [u32; 4],
    ) -> Result<(), QueueError> {
        let addr = self.addr(index);
        let lo = u64::from(desc[0]) | (u64::from(desc[1]) << 32);
        let hi = u64::from(desc[2]) | (u64::from(desc[3]) << 32);
        mem.write_obj(lo.to_le(), GuestAddress(addr))
            .map_err(|_| QueueError::Memory(addr))?;
        mem.store(hi.to_le(), GuestAddress(addr + 8), Ordering::Release)
            .map_err(|_| QueueError::Memory(addr + 8))
    }

    /// Sets dword 3 of descriptor `index` (a TX status write-back), as a release store.
    pub fn write_dword3(
        &self,
        mem: &GuestMemoryMmap,
        index: u32,
        value: u32,
    ) -> Result<(), QueueError> {
        let addr = self.addr(index) + 12;
        mem.store(value.to_le(), GuestAddress(addr), Ordering::Release)
            .map_err(|_| QueueError::Memory(addr))
    }
}

/// Checks that a buffer of descriptor `index` lies in guest RAM.
pub fn check_buffer(
    mem: &GuestMemoryMmap,
    index: u32,
    addr: u64,
    len: u64,
) -> Result<(), QueueError> {
    if range_in_ram(mem, addr, len) {
        Ok(())
    } else {
        Err(QueueError::BufferOutsideRam { index, addr, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn regs(base: u64, len: u32, head: u32, tail: u32) -> QueueRegs {
        QueueRegs {
            bal: base as u32,
            bah: (base >> 32) as u32,
            len,
            head,
            tail,
            ..QueueRegs::TX_RESET
        }
    }

    #[test]
    fn rings_are_checked_against_alignment_length_ram_and_indexes() {
        let m = mem();
        assert_eq!(Ring::check(&regs(0x1000, 128, 0, 7), &m).unwrap().count, 8);
        assert_eq!(
            Ring::check(&regs(0x1040, 128, 0, 0), &m),
            Err(QueueError::BaseAlignment(0x1040))
        );
        for len in [0, 100, 129, MAX_RING_BYTES + 128] {
            assert_eq!(
                Ring::check(&regs(0x1000, len, 0, 0), &m),
                Err(QueueError::Length(len))
            );
        }
        assert!(matches!(
            Ring::check(&regs(0xFF80, 256, 0, 0), &m),
            Err(QueueError::RingOutsideRam { .. })
        ));
        assert!(matches!(
            Ring::check(&regs(u64::MAX - 127, 256, 0, 0), &m),
            Err(QueueError::RingOutsideRam { .. })
        ));
        assert_eq!(
            Ring::check(&regs(0x1000, 128, 8, 0), &m),
            Err(QueueError::Index {
                head: 8,
                tail: 0,
                count: 8
            })
        );
    }

    #[test]
    fn indexes_go_round() {
        let ring = Ring::check(&regs(0, 128, 0, 0), &mem()).unwrap();
        assert_eq!(ring.next(7), 0);
        assert_eq!(ring.distance(6, 2), 4);
        assert_eq!(ring.distance(3, 3), 0);
    }

    #[test]
    fn write_back_and_read_agree() {
        let m = mem();
        let ring = Ring::check(&regs(0x2000, 128, 0, 0), &m).unwrap();
        ring.write_back(&m, 3, [1, 2, 3, 4]).unwrap();
        assert_eq!(ring.read(&m, 3).unwrap(), [1, 2, 3, 4]);
        ring.write_dword3(&m, 3, 9).unwrap();
        assert_eq!(ring.read(&m, 3).unwrap(), [1, 2, 3, 9]);
        assert!(check_buffer(&m, 0, 0xFFF0, 0x10).is_ok());
        assert!(check_buffer(&m, 0, 0xFFF0, 0x11).is_err());
    }
}
