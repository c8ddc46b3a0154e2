//! The VF side of the legacy PF↔VF mailbox (`docs/ixgbevf.md` §3): VFMAILBOX with its read-to-clear
//! shadow, and VFMBMEM.
//!
//! VFMAILBOX's PFSTS, PFACK and RSTD bits clear when read, and one read often carries several
//! of them (host-vmm's PF answers a request in place and sets PFACK and PFSTS together). So
//! every read is OR-ed into a software shadow and each bit is consumed from the shadow, never
//! from the read itself (Linux's `vf_mailbox`). Every wait is bounded: a PF that stays silent
//! for [`POLL_TRIES`] × [`POLL_US`] µs (1 s, Linux's budget) makes the request fail with
//! [`Error::MailboxTimeout`], and the mailbox then refuses requests until the next VF reset.

use super::Error;
use crate::hal::{Delay, RegisterIo};
use ixgbevf_regs::{
    MBX_ACK, MBX_PFACK, MBX_PFSTS, MBX_R2C_BITS, MBX_REQ, MBX_RSTD, MBX_RSTI, MBX_VFU, MBX_WORDS,
    VFMAILBOX, VFMBMEM,
};

/// Polls per wait (lock, acknowledgement, reply).
pub const POLL_TRIES: u32 = 2000;
/// Microseconds between polls.
pub const POLL_US: u32 = 500;

/// What the PF signalled (see [`Mailbox::poll`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// The PF reset, or is resetting: the VF must be initialised again.
    pub reset: bool,
    /// The PF posted a message (link change, or "not clear to send").
    pub message: bool,
}

/// The VF's mailbox state.
#[derive(Debug, Default)]
pub struct Mailbox {
    /// Read-to-clear bits seen and not yet consumed.
    shadow: u32,
    /// A wait ran out; no more requests until the VF is reset.
    timed_out: bool,
}

impl Mailbox {
    /// A mailbox after a VF reset: nothing seen, requests allowed.
    pub fn new() -> Mailbox {
        Mailbox::default()
    }

    /// Reads VFMAILBOX into the shadow and returns the raw value. All ones means the device
    /// is gone (REQ and ACK always read 0).
    pub fn read(&mut self, io: &impl RegisterIo) -> Result<u32, Error> {
        let value = io.read32(VFMAILBOX);
        if value == u32::MAX {
            return Err(Error::Removed);
        }
        self.shadow |= value & MBX_R2C_BITS;
        Ok(value)
    }

    /// Reads VFMAILBOX and consumes `bits` from the shadow: whether any of them was set.
    fn take(&mut self, io: &impl RegisterIo, bits: u32) -> Result<bool, Error> {
        self.read(io)?;
        let seen = self.shadow & bits != 0;
        self.shadow &= !bits;
        Ok(seen)
    }

    /// Reads VFMAILBOX once and consumes what the PF signalled since the last poll: a reset
    /// (RSTD, or RSTI while the PF is resetting) and a posted message (PFSTS). Non-blocking.
    pub fn poll(&mut self, io: &impl RegisterIo) -> Result<Signals, Error> {
        let raw = self.read(io)?;
        let signals = Signals {
            reset: self.shadow & MBX_RSTD != 0 || raw & MBX_RSTI != 0,
            message: self.shadow & MBX_PFSTS != 0,
        };
        self.shadow &= !(MBX_RSTD | MBX_PFSTS);
        Ok(signals)
    }

    /// Puts back a message flag that could not be handled yet (the buffer was busy).
    pub fn keep_message(&mut self) {
        self.shadow |= MBX_PFSTS;
    }

    /// Whether a wait timed out since the last reset.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Takes the buffer: write VFU, read it back set (the PF may hold the buffer meanwhile).
    fn lock(
        &mut self,
        io: &mut impl RegisterIo,
        delay: &mut dyn Delay,
        tries: u32,
    ) -> Result<(), Error> {
        for attempt in 0..tries {
            if attempt > 0 {
                delay.delay_us(POLL_US);
            }
            io.write32(VFMAILBOX, MBX_VFU);
            if self.read(io)? & MBX_VFU != 0 {
                return Ok(());
            }
        }
        Err(Error::MailboxBusy)
    }

    /// Polls until `bit` appears in the shadow; consumes it.
    fn wait(
        &mut self,
        io: &mut impl RegisterIo,
        delay: &mut dyn Delay,
        bit: u32,
    ) -> Result<(), Error> {
        for attempt in 0..POLL_TRIES {
            if attempt > 0 {
                delay.delay_us(POLL_US);
            }
            if self.take(io, bit)? {
                return Ok(());
            }
        }
        self.timed_out = true;
        Err(Error::MailboxTimeout)
    }

    /// Sends `message` (at most 16 words) and waits for the PF's acknowledgement.
    pub fn post(
        &mut self,
        io: &mut impl RegisterIo,
        delay: &mut dyn Delay,
        message: &[u32],
    ) -> Result<(), Error> {
        if self.timed_out {
            return Err(Error::MailboxTimeout);
        }
        self.lock(io, delay, POLL_TRIES)?;
        // Whatever the PF signalled before this request is stale now: its buffer is about to
        // be overwritten (the lock's read already moved those bits into the shadow).
        self.shadow &= !(MBX_PFSTS | MBX_PFACK);
        for (i, word) in message.iter().take(MBX_WORDS).enumerate() {
            io.write32(VFMBMEM + 4 * i, *word);
        }
        // REQ alone: this also releases VFU.
        io.write32(VFMAILBOX, MBX_REQ);
        self.wait(io, delay, MBX_PFACK)
    }

    /// Copies the PF's message into `out` (at most 16 words) and acknowledges it. `tries`
    /// bounds the attempts to take the buffer.
    pub fn fetch(
        &mut self,
        io: &mut impl RegisterIo,
        delay: &mut dyn Delay,
        tries: u32,
        out: &mut [u32],
    ) -> Result<(), Error> {
        self.lock(io, delay, tries)?;
        // A message flag seen up to the lock is for what is in the buffer now: this copy.
        self.shadow &= !MBX_PFSTS;
        for (i, word) in out.iter_mut().take(MBX_WORDS).enumerate() {
            *word = io.read32(VFMBMEM + 4 * i);
        }
        // ACK alone: tells the PF the buffer is read, and releases VFU.
        io.write32(VFMAILBOX, MBX_ACK);
        Ok(())
    }

    /// Sends `message`, waits for the PF's reply and copies it into `reply`.
    pub fn request(
        &mut self,
        io: &mut impl RegisterIo,
        delay: &mut dyn Delay,
        message: &[u32],
        reply: &mut [u32],
    ) -> Result<(), Error> {
        self.post(io, delay, message)?;
        self.wait(io, delay, MBX_PFSTS)?;
        self.fetch(io, delay, POLL_TRIES, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use ixgbevf_regs::{MBX_PFU, mbx};

    /// A scripted PF: VFMAILBOX with hardware semantics and a reply written in place.
    #[derive(Default)]
    struct FakePf {
        mem: [u32; 16],
        /// Read-to-clear and level status bits.
        status: RefCell<u32>,
        vfu: bool,
        /// Hold the buffer for this many VFU attempts.
        pf_holds: u32,
        /// What the PF does on REQ: replace word 0 and set these bits.
        reply: Option<(u32, u32)>,
        requests: Vec<u32>,
        acks: u32,
        removed: bool,
    }

    impl RegisterIo for FakePf {
        fn read8(&self, _: usize) -> u8 {
            0
        }
        fn read16(&self, _: usize) -> u16 {
            0
        }
        fn read32(&self, offset: usize) -> u32 {
            if self.removed {
                return u32::MAX;
            }
            match offset {
                VFMAILBOX => {
                    let mut s = self.status.borrow_mut();
                    let value = *s
                        | if self.vfu { MBX_VFU } else { 0 }
                        | if self.pf_holds > 0 { MBX_PFU } else { 0 };
                    *s &= !MBX_R2C_BITS;
                    value
                }
                o if (VFMBMEM..VFMBMEM + 64).contains(&o) => self.mem[(o - VFMBMEM) / 4],
                _ => 0,
            }
        }
        fn write16(&mut self, _: usize, _: u16) {}
        fn write32(&mut self, offset: usize, value: u32) {
            match offset {
                VFMAILBOX => {
                    if value & MBX_VFU != 0 {
                        if self.pf_holds > 0 {
                            self.pf_holds -= 1;
                        } else {
                            self.vfu = true;
                        }
                    } else {
                        self.vfu = false;
                    }
                    if value & MBX_REQ != 0 {
                        self.requests.push(self.mem[0]);
                        if let Some((word, bits)) = self.reply {
                            self.mem[0] = word;
                            *self.status.borrow_mut() |= bits;
                        }
                    }
                    if value & MBX_ACK != 0 {
                        self.acks += 1;
                    }
                }
                o if (VFMBMEM..VFMBMEM + 64).contains(&o) => self.mem[(o - VFMBMEM) / 4] = value,
                _ => {}
            }
        }
    }

    fn no_delay() -> impl FnMut(u32) {
        |_| {}
    }

    #[test]
    fn one_read_carrying_ack_and_message_satisfies_both_waits() {
        let mut pf = FakePf {
            reply: Some((mbx::SET_LPE | mbx::ACK | mbx::CTS, MBX_PFACK | MBX_PFSTS)),
            ..FakePf::default()
        };
        let mut m = Mailbox::new();
        let mut reply = [0; 2];
        m.request(&mut pf, &mut no_delay(), &[mbx::SET_LPE, 1518], &mut reply)
            .unwrap();
        assert_eq!(reply[0], mbx::SET_LPE | mbx::ACK | mbx::CTS);
        assert_eq!(pf.requests, [mbx::SET_LPE]);
        assert_eq!(pf.acks, 1);
        assert!(!pf.vfu, "ACK releases the buffer");
        // Both bits were consumed: no message is pending any more.
        assert_eq!(m.poll(&pf).unwrap(), Signals::default());
    }

    #[test]
    fn stale_bits_are_flushed_before_a_request() {
        // A PF message nobody fetched, then a PF that never answers.
        let mut pf = FakePf::default();
        *pf.status.borrow_mut() = MBX_PFSTS | MBX_PFACK;
        let mut m = Mailbox::new();
        let mut waited = 0;
        let mut delay = |us| waited += us;
        let r = m.request(&mut pf, &mut delay, &[mbx::GET_QUEUES], &mut [0; 5]);
        assert_eq!(r, Err(Error::MailboxTimeout));
        assert_eq!(waited, (POLL_TRIES - 1) * POLL_US);
        // After a timeout the mailbox refuses work until reset, without touching the device.
        assert!(m.timed_out());
        let before = pf.requests.len();
        assert_eq!(
            m.post(&mut pf, &mut no_delay(), &[mbx::SET_LPE]),
            Err(Error::MailboxTimeout)
        );
        assert_eq!(pf.requests.len(), before);
    }

    #[test]
    fn lock_waits_for_the_pf_to_release_the_buffer() {
        let mut pf = FakePf {
            pf_holds: 3,
            reply: Some((mbx::RESET | mbx::ACK, MBX_PFACK | MBX_PFSTS)),
            ..FakePf::default()
        };
        let mut m = Mailbox::new();
        let mut polls = 0;
        m.request(&mut pf, &mut |_| polls += 1, &[mbx::RESET], &mut [0; 4])
            .unwrap();
        assert_eq!(polls, 3);
        // A PF that never lets go: bounded, and reported as busy.
        pf.pf_holds = u32::MAX;
        assert_eq!(
            m.fetch(&mut pf, &mut no_delay(), 5, &mut [0; 1]),
            Err(Error::MailboxBusy)
        );
    }

    #[test]
    fn signals_come_from_the_shadow() {
        let mut pf = FakePf::default();
        let mut m = Mailbox::new();
        *pf.status.borrow_mut() = MBX_RSTD | MBX_PFSTS | MBX_PFACK;
        let both = Signals {
            reset: true,
            message: true,
        };
        assert_eq!(m.poll(&pf).unwrap(), both);
        assert_eq!(m.poll(&pf).unwrap(), Signals::default());
        // A message flag the lock read sees belongs to the message the fetch copies.
        *pf.status.borrow_mut() = MBX_PFSTS;
        pf.mem[0] = mbx::PF_CONTROL_MSG;
        let mut word = [0];
        m.fetch(&mut pf, &mut no_delay(), 1, &mut word).unwrap();
        assert_eq!(word, [mbx::PF_CONTROL_MSG]);
        assert!(!m.poll(&pf).unwrap().message);
        // A reset seen by a lock read is kept for `poll`.
        *pf.status.borrow_mut() = MBX_RSTD;
        m.fetch(&mut pf, &mut no_delay(), 1, &mut word).unwrap();
        assert!(m.poll(&pf).unwrap().reset);
        m.keep_message();
        assert!(m.poll(&pf).unwrap().message);
        // RSTI is a level: it counts while it is set.
        *pf.status.borrow_mut() = MBX_RSTI;
        assert!(m.poll(&pf).unwrap().reset);
        assert!(m.poll(&pf).unwrap().reset);
        pf.removed = true;
        assert_eq!(m.poll(&pf), Err(Error::Removed));
        assert_eq!(
            m.request(&mut pf, &mut no_delay(), &[1], &mut [0]),
            Err(Error::Removed)
        );
    }
}
