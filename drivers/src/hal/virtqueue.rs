//! A virtqueue with a buffer of its own for every entry ([`BufferQueue`]), for devices whose
//! driver runs virtio-drivers' `VirtQueue` itself (the console).
//!
//! `VirtQueue::add` and `pop_used` are `unsafe`: a buffer lent to the device must stay valid
//! and untouched until its token comes back, and must be passed back exactly as lent. Here
//! the buffers are boxed (they never move), a buffer is reachable only while it is not lent,
//! and the token and length of every lent buffer are recorded and checked against what the
//! device returns, so lending and taking back are safe calls.

use super::VirtioHal;
use alloc::boxed::Box;
use virtio_drivers::Error;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;

/// Queue entries' buffers of `LEN` bytes, `SIZE` of them, lent to the device and taken back.
///
/// The owner must stop the device (reset it) before dropping this: buffers still lent are
/// freed with it.
pub struct BufferQueue<H: VirtioHal, const SIZE: usize, const LEN: usize> {
    queue: VirtQueue<H, SIZE>,
    index: u16,
    buffers: Box<[[u8; LEN]; SIZE]>,
    /// For each buffer lent to the device: its token and the length lent.
    lent: [Option<(u16, usize)>; SIZE],
    /// The device fills the buffers (a receive queue); else it reads them.
    device_writes: bool,
}

impl<H: VirtioHal, const SIZE: usize, const LEN: usize> BufferQueue<H, SIZE, LEN> {
    /// Sets up queue `index` of `transport` (between its `begin_init` and `finish_init`);
    /// `device_writes`: the device fills the buffers, else it reads what the driver put in.
    pub fn new<T: Transport>(
        transport: &mut T,
        index: u16,
        event_idx: bool,
        device_writes: bool,
    ) -> Result<Self, Error> {
        Ok(BufferQueue {
            queue: VirtQueue::new(transport, index, false, event_idx)?,
            index,
            buffers: Box::new([[0; LEN]; SIZE]),
            lent: [None; SIZE],
            device_writes,
        })
    }

    /// Lends a free buffer to the device and kicks it if it asks for kicks: holding `bytes`
    /// (at most `LEN`) for a device that reads, whole and empty for one that writes.
    /// `Ok(false)`: every buffer is lent (take some back first).
    pub fn lend<T: Transport>(&mut self, transport: &mut T, bytes: &[u8]) -> Result<bool, Error> {
        let Some(slot) = self.lent.iter().position(Option::is_none) else {
            return Ok(false);
        };
        let buffer = &mut self.buffers[slot];
        let token = if self.device_writes {
            // SAFETY: the buffer is boxed (it never moves) and owned by this queue; it is not
            // reachable through `buffer` while lent, and `take` pops it with the same slice.
            unsafe { self.queue.add(&[], &mut [buffer.as_mut_slice()]) }?
        } else {
            let len = bytes.len();
            if len == 0 || len > LEN {
                return Err(Error::InvalidParam);
            }
            buffer[..len].copy_from_slice(bytes);
            // SAFETY: as above; the device only reads the first `len` bytes.
            unsafe { self.queue.add(&[&buffer[..len]], &mut []) }?
        };
        self.lent[slot] = Some((token, if self.device_writes { LEN } else { bytes.len() }));
        if self.queue.should_notify() {
            transport.notify(self.index);
        }
        Ok(true)
    }

    /// Takes back the next buffer the device has used, if there is one: its slot and, for a
    /// device that writes, how many bytes it wrote (never more than `LEN`). A token that was
    /// never lent is an error (`WrongToken`): the device is broken.
    pub fn take(&mut self) -> Result<Option<(usize, usize)>, Error> {
        let Some(token) = self.queue.peek_used() else {
            return Ok(None);
        };
        let slot = self
            .lent
            .iter()
            .position(|lent| matches!(lent, Some((t, _)) if *t == token))
            .ok_or(Error::WrongToken)?;
        let lent_len = self.lent[slot].map_or(0, |(_, len)| len);
        let buffer = &mut self.buffers[slot];
        let written = if self.device_writes {
            // SAFETY: the slice `lend` added with this token.
            unsafe {
                self.queue
                    .pop_used(token, &[], &mut [buffer.as_mut_slice()])
            }?
        } else {
            // SAFETY: the slice `lend` added with this token.
            unsafe { self.queue.pop_used(token, &[&buffer[..lent_len]], &mut []) }?
        };
        self.lent[slot] = None;
        let written = if self.device_writes {
            (written as usize).min(LEN)
        } else {
            0
        };
        Ok(Some((slot, written)))
    }

    /// Buffer `slot`, unless it is lent to the device.
    pub fn buffer(&self, slot: usize) -> Option<&[u8; LEN]> {
        match self.lent.get(slot) {
            Some(None) => self.buffers.get(slot),
            _ => None,
        }
    }
}
