//! Checked access to split virtqueues in guest memory.
//!
//! virtio-queue's [`Queue`] keeps the ring bookkeeping (indexes, used ring writes, event-index
//! suppression) and its state is what a migration will save. Its descriptor-chain iterator,
//! though, ends a chain quietly at the first bad descriptor; a device here must instead
//! *notice* a bad chain and fail. So chains are walked by [`walk_chain`], which checks every
//! descriptor (index, flags, direction, buffer inside guest RAM, chain length) before the
//! device touches a byte, and rings are checked once, when the driver sets DRIVER_OK
//! ([`QueueRegs::build`]).

use super::GuestError;
use crate::memory::GuestMemoryMmap;
use std::num::Wrapping;
use std::sync::atomic::{Ordering, fence};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors (not offered here).
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver wants no interrupts for this queue.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Bytes per descriptor.
const DESC_SIZE: u64 = 16;

/// One queue's registers as the driver programs them through the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueRegs {
    /// The device's maximum size.
    pub max_size: u16,
    /// Size chosen by the driver.
    pub size: u16,
    /// MSI-X vector for used-buffer notifications.
    pub msix_vector: u16,
    /// Set by the driver once configured.
    pub enabled: bool,
    /// Descriptor table.
    pub desc: u64,
    /// Driver area (available ring).
    pub driver: u64,
    /// Device area (used ring).
    pub device: u64,
}

impl QueueRegs {
    /// Registers after reset: maximum size, no vector, disabled, addresses zero.
    pub fn new(max_size: u16) -> Self {
        QueueRegs {
            max_size,
            size: max_size,
            msix_vector: super::NO_VECTOR,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }

    /// Checks the registers of queue `index` against the specification and guest RAM and
    /// builds the queue (virtio 1.x, 2.7: alignment 16/2/4; sizes per 2.7.5, 2.7.6, 2.7.8).
    pub fn build(
        &self,
        index: usize,
        mem: &GuestMemoryMmap,
        event_idx: bool,
    ) -> Result<Queue, GuestError> {
        let size = self.size;
        if size == 0 || !size.is_power_of_two() || size > self.max_size {
            return Err(GuestError::QueueSize {
                queue: index,
                size,
                max: self.max_size,
            });
        }
        let n = u64::from(size);
        let event = if event_idx { 2 } else { 0 };
        let areas = [
            ("descriptor table", self.desc, 16, DESC_SIZE * n),
            ("driver area", self.driver, 2, 4 + 2 * n + event),
            ("device area", self.device, 4, 4 + 8 * n + event),
        ];
        for (area, addr, align, len) in areas {
            if addr % align != 0 {
                return Err(GuestError::RingAlignment {
                    queue: index,
                    area,
                    addr,
                });
            }
            if !range_in_ram(mem, addr, len) {
                return Err(GuestError::RingOutsideRam {
                    queue: index,
                    area,
                    addr,
                    len,
                });
            }
        }
        // Checked above, so these cannot fail; map the error anyway rather than unwrap.
        let bad = |_| GuestError::QueueSize {
            queue: index,
            size,
            max: self.max_size,
        };
        let mut q = Queue::new(self.max_size).map_err(bad)?;
        q.try_set_size(size).map_err(bad)?;
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .map_err(bad)?;
        q.try_set_avail_ring_address(GuestAddress(self.driver))
            .map_err(bad)?;
        q.try_set_used_ring_address(GuestAddress(self.device))
            .map_err(bad)?;
        q.set_event_idx(event_idx);
        q.set_ready(true);
        Ok(q)
    }
}

/// Whether `[addr, addr + len)` is guest RAM (an empty range must still start inside it).
pub fn range_in_ram(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    addr.checked_add(len as u64).is_some()
        && if len == 0 {
            GuestMemoryBackend::address_in_range(mem, GuestAddress(addr))
        } else {
            GuestMemoryBackend::check_range(mem, GuestAddress(addr), len)
        }
}

/// Who writes a chain's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Driver-to-device buffers (transmit): every descriptor read-only to the device.
    DeviceReads,
    /// Device-to-driver buffers (receive): every descriptor write-only to the device.
    DeviceWrites,
}

/// One buffer of a chain, already checked to lie in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Start.
    pub addr: GuestAddress,
    /// Length.
    pub len: u32,
}

/// Takes the next available chain head of `q` (queue number `index`), checking the ring
/// index and the head. `None` when the driver made nothing new available.
pub fn pop_head(
    q: &mut Queue,
    index: usize,
    mem: &GuestMemoryMmap,
) -> Result<Option<u16>, GuestError> {
    let err = |what: String| GuestError::Memory { queue: index, what };
    let next = q.next_avail();
    // Acquire: the ring entries the driver wrote before bumping the index are visible.
    let avail = q
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|e| err(e.to_string()))?
        .0;
    let pending = avail.wrapping_sub(next);
    if pending == 0 {
        return Ok(None);
    }
    if pending > q.size() {
        return Err(GuestError::AvailIndex {
            queue: index,
            avail,
            next,
        });
    }
    let entry = q.avail_ring() + 4 + 2 * u64::from(next % q.size());
    let head: u16 = mem
        .load(GuestAddress(entry), Ordering::Relaxed)
        .map_err(|e| err(e.to_string()))?;
    let head = u16::from_le(head);
    if head >= q.size() {
        return Err(GuestError::DescriptorIndex {
            queue: index,
            index: head,
            size: q.size(),
        });
    }
    q.set_next_avail(next.wrapping_add(1));
    Ok(Some(head))
}

/// Puts the chain at `head` back as not yet taken (the device could not use it now).
pub fn unpop(q: &mut Queue) {
    q.set_next_avail((Wrapping(q.next_avail()) - Wrapping(1)).0);
}

/// Walks the chain starting at `head`, checking each descriptor, and fills `segments` with
/// its buffers. Returns the chain's total length, which must lie in `min..=max`.
///
/// Checked: every index below the queue size; no more descriptors than the queue holds (no
/// loops); no INDIRECT flag (not offered); the WRITE flag matching `dir` on every descriptor;
/// every buffer inside guest RAM without wrapping.
#[allow(clippy::too_many_arguments)]
pub fn walk_chain(
    q: &Queue,
    index: usize,
    mem: &GuestMemoryMmap,
    head: u16,
    dir: Direction,
    min: u64,
    max: u64,
    segments: &mut Vec<Segment>,
) -> Result<u64, GuestError> {
    segments.clear();
    let size = q.size();
    let table = q.desc_table();
    let mut next = head;
    let mut total: u64 = 0;
    for _ in 0..size {
        if next >= size {
            return Err(GuestError::DescriptorIndex {
                queue: index,
                index: next,
                size,
            });
        }
        let at = GuestAddress(table + DESC_SIZE * u64::from(next));
        let desc: Descriptor = mem.read_obj(at).map_err(|e| GuestError::Memory {
            queue: index,
            what: e.to_string(),
        })?;
        let flags = desc.flags();
        let writes = flags & VIRTQ_DESC_F_WRITE != 0;
        if flags & VIRTQ_DESC_F_INDIRECT != 0 || writes != (dir == Direction::DeviceWrites) {
            return Err(GuestError::DescriptorFlags {
                queue: index,
                index: next,
                flags,
            });
        }
        let (addr, len) = (desc.addr().0, desc.len());
        if !range_in_ram(mem, addr, u64::from(len)) {
            return Err(GuestError::BufferOutsideRam {
                queue: index,
                index: next,
                addr,
                len,
            });
        }
        total += u64::from(len);
        if total > max {
            return Err(GuestError::ChainLength {
                queue: index,
                head,
                len: total,
                min,
                max,
            });
        }
        if len > 0 {
            segments.push(Segment {
                addr: desc.addr(),
                len,
            });
        }
        if flags & VIRTQ_DESC_F_NEXT == 0 {
            if total < min {
                return Err(GuestError::ChainLength {
                    queue: index,
                    head,
                    len: total,
                    min,
                    max,
                });
            }
            return Ok(total);
        }
        next = desc.next();
    }
    Err(GuestError::ChainLoop { queue: index, head })
}

/// Copies the start of the chain's buffers into `buf` (as much as both hold).
pub fn read_segments(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    buf: &mut [u8],
    queue: usize,
) -> Result<usize, GuestError> {
    let mut done = 0;
    for s in segments {
        let n = (s.len as usize).min(buf.len() - done);
        if n == 0 {
            break;
        }
        mem.read_slice(&mut buf[done..done + n], s.addr)
            .map_err(|e| GuestError::Memory {
                queue,
                what: e.to_string(),
            })?;
        done += n;
    }
    Ok(done)
}

/// Copies `data` into the chain's buffers, in order (as much as they hold).
pub fn write_segments(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    data: &[u8],
    queue: usize,
) -> Result<usize, GuestError> {
    let mut done = 0;
    for s in segments {
        let n = (s.len as usize).min(data.len() - done);
        if n == 0 {
            break;
        }
        mem.write_slice(&data[done..done + n], s.addr)
            .map_err(|e| GuestError::Memory {
                queue,
                what: e.to_string(),
            })?;
        done += n;
    }
    Ok(done)
}

/// Returns `head` to the driver with `len` bytes written.
pub fn add_used(
    q: &mut Queue,
    index: usize,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), GuestError> {
    q.add_used(mem, head, len).map_err(|e| GuestError::Memory {
        queue: index,
        what: e.to_string(),
    })
}

/// Whether the driver wants an interrupt for what was just used: `used_event` with
/// EVENT_IDX, otherwise the available ring's NO_INTERRUPT flag (virtio-queue leaves that to
/// the device).
pub fn needs_interrupt(
    q: &mut Queue,
    index: usize,
    mem: &GuestMemoryMmap,
) -> Result<bool, GuestError> {
    let err = |what: String| GuestError::Memory { queue: index, what };
    if q.event_idx_enabled() {
        return q.needs_notification(mem).map_err(|e| err(e.to_string()));
    }
    // The used index must be visible before the flag is read (virtio 1.x, 2.7.7.2).
    fence(Ordering::SeqCst);
    let flags: u16 = mem
        .load(GuestAddress(q.avail_ring()), Ordering::Relaxed)
        .map_err(|e| err(e.to_string()))?;
    Ok(u16::from_le(flags) & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
}

/// Asks the driver not to notify (used ring NO_NOTIFY, or nothing with EVENT_IDX).
pub fn disable_notification(
    q: &mut Queue,
    index: usize,
    mem: &GuestMemoryMmap,
) -> Result<(), GuestError> {
    q.disable_notification(mem).map_err(|e| GuestError::Memory {
        queue: index,
        what: e.to_string(),
    })
}

/// Asks the driver to notify again; `true` if it made buffers available meanwhile.
pub fn enable_notification(
    q: &mut Queue,
    index: usize,
    mem: &GuestMemoryMmap,
) -> Result<bool, GuestError> {
    q.enable_notification(mem).map_err(|e| GuestError::Memory {
        queue: index,
        what: e.to_string(),
    })
}
