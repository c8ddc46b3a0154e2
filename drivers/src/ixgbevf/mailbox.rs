//! The VF side of the legacy PF↔VF mailbox (`docs/ixgbevf.md` §3): VFMAILBOX with its read-to-clear
//! shadow, and VFMBMEM.
//!
//! VFMAILBOX's PFSTS, PFACK and RSTD bits clear when read, and one read often carries several
//! of them (host-vmm's PF answers a request in place and sets PFACK and PFSTS together). So
//! every read is OR-ed into a software shadow and each bit is consumed from the shadow, never
//! from the read itself (Linux's `vf_mailbox`).
//!
//! Nothing here waits. A request and its reply are an [`Exchange`] that
//! [`Mailbox::exchange`] advances as far as the PF lets it and then returns; the caller
//! (the driver's bring-up) looks again later and holds the deadline: a PF silent for
//! [`WAIT_NS`] (1 s, Linux's budget) fails the request ([`Mailbox::give_up`]), and the
//! mailbox then refuses requests until the next VF reset.

use super::Error;
use crate::hal::RegisterIo;
use ixgbevf_regs::{
    MBX_ACK, MBX_PFACK, MBX_PFSTS, MBX_R2C_BITS, MBX_REQ, MBX_RSTD, MBX_RSTI, MBX_VFU, MBX_WORDS,
    VFMAILBOX, VFMBMEM,
};

/// How long each phase of an exchange may wait on the PF (taking the buffer, its
/// acknowledgement, its reply).
pub const WAIT_NS: u64 = 1_000_000_000;
/// How often a blocking caller looks again, in microseconds.
pub const POLL_US: u32 = 500;

/// What the PF signalled (see [`Mailbox::poll`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// The PF reset, or is resetting: the VF must be initialised again.
    pub reset: bool,
    /// The PF posted a message (link change, or "not clear to send").
    pub message: bool,
}

/// Where one request and its reply stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Exchange {
    /// Taking the buffer to write the request.
    #[default]
    Lock,
    /// The request is posted; waiting for the PF's acknowledgement.
    AwaitAck,
    /// Acknowledged; waiting for the PF's reply.
    AwaitReply,
    /// The reply is there; taking the buffer to read it.
    Fetch,
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

    /// One attempt to take the buffer: write VFU, read it back set (the PF may hold it).
    fn try_lock(&mut self, io: &mut impl RegisterIo) -> Result<bool, Error> {
        io.write32(VFMAILBOX, MBX_VFU);
        Ok(self.read(io)? & MBX_VFU != 0)
    }

    /// Copies the PF's message into `out` (at most 16 words) and acknowledges it, if the
    /// buffer can be taken at once; `Ok(false)` if the PF holds it.
    pub fn fetch(&mut self, io: &mut impl RegisterIo, out: &mut [u32]) -> Result<bool, Error> {
        if !self.try_lock(io)? {
            return Ok(false);
        }
        // A message flag seen up to the lock is for what is in the buffer now: this copy.
        self.shadow &= !MBX_PFSTS;
        for (i, word) in out.iter_mut().take(MBX_WORDS).enumerate() {
            *word = io.read32(VFMBMEM + 4 * i);
        }
        // ACK alone: tells the PF the buffer is read, and releases VFU.
        io.write32(VFMAILBOX, MBX_ACK);
        Ok(true)
    }

    /// Advances the exchange `at` of `message` (at most 16 words) as far as the PF lets it
    /// without waiting: the request is posted once the buffer is ours, the PF's
    /// acknowledgement and reply are looked for once each, and the reply is copied into
    /// `reply`. `Ok(true)`: done; `Ok(false)`: the PF has not got that far yet (call again,
    /// or [`Mailbox::give_up`] past the deadline).
    pub fn exchange(
        &mut self,
        io: &mut impl RegisterIo,
        at: &mut Exchange,
        message: &[u32],
        reply: &mut [u32],
    ) -> Result<bool, Error> {
        if self.timed_out {
            return Err(Error::MailboxTimeout);
        }
        loop {
            match at {
                Exchange::Lock => {
                    if !self.try_lock(io)? {
                        return Ok(false);
                    }
                    // Whatever the PF signalled before this request is stale now: its buffer
                    // is about to be overwritten (the lock's read moved those bits into the
                    // shadow).
                    self.shadow &= !(MBX_PFSTS | MBX_PFACK);
                    for (i, word) in message.iter().take(MBX_WORDS).enumerate() {
                        io.write32(VFMBMEM + 4 * i, *word);
                    }
                    // REQ alone: this also releases VFU.
                    io.write32(VFMAILBOX, MBX_REQ);
                    *at = Exchange::AwaitAck;
                }
                Exchange::AwaitAck => {
                    if !self.take(io, MBX_PFACK)? {
                        return Ok(false);
                    }
                    *at = Exchange::AwaitReply;
                }
                Exchange::AwaitReply => {
                    // The read that carried PFACK often carried PFSTS too: the shadow has it.
                    let seen = self.shadow & MBX_PFSTS != 0 || self.take(io, MBX_PFSTS)?;
                    self.shadow &= !MBX_PFSTS;
                    if !seen {
                        return Ok(false);
                    }
                    *at = Exchange::Fetch;
                }
                Exchange::Fetch => return self.fetch(io, reply),
            }
        }
    }

    /// The error for an exchange that waited at `at` past its deadline: the PF held the
    /// buffer, or never answered (then no more requests until the next reset).
    pub fn give_up(&mut self, at: Exchange) -> Error {
        match at {
            Exchange::Lock | Exchange::Fetch => Error::MailboxBusy,
            Exchange::AwaitAck | Exchange::AwaitReply => {
                self.timed_out = true;
                Error::MailboxTimeout
            }
        }
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

    /// Drives one exchange to its end, looking at most `looks` times: how many looks it
    /// took, or the error (past the last look: what `give_up` says).
    fn request(
        m: &mut Mailbox,
        pf: &mut FakePf,
        message: &[u32],
        reply: &mut [u32],
        looks: u32,
    ) -> Result<u32, Error> {
        let mut at = Exchange::Lock;
        for look in 1..=looks {
            if m.exchange(pf, &mut at, message, reply)? {
                return Ok(look);
            }
        }
        Err(m.give_up(at))
    }

    #[test]
    fn one_read_carrying_ack_and_message_satisfies_both_waits() {
        let mut pf = FakePf {
            reply: Some((mbx::SET_LPE | mbx::ACK | mbx::CTS, MBX_PFACK | MBX_PFSTS)),
            ..FakePf::default()
        };
        let mut m = Mailbox::new();
        let mut reply = [0; 2];
        let looks = request(&mut m, &mut pf, &[mbx::SET_LPE, 1518], &mut reply, 1).unwrap();
        assert_eq!(looks, 1, "a PF that answers at once: done in one look");
        assert_eq!(reply[0], mbx::SET_LPE | mbx::ACK | mbx::CTS);
        assert_eq!(pf.requests, [mbx::SET_LPE]);
        assert_eq!(pf.acks, 1);
        assert!(!pf.vfu, "ACK releases the buffer");
        // Both bits were consumed: no message is pending any more.
        assert_eq!(m.poll(&pf).unwrap(), Signals::default());
    }

    #[test]
    fn a_late_pf_is_looked_at_again_without_waiting_and_then_answered() {
        let mut pf = FakePf::default();
        let mut m = Mailbox::new();
        let mut at = Exchange::Lock;
        let mut reply = [0; 1];
        assert!(
            !m.exchange(&mut pf, &mut at, &[mbx::SET_LPE], &mut reply)
                .unwrap()
        );
        assert_eq!(at, Exchange::AwaitAck, "posted, no acknowledgement yet");
        assert!(
            !m.exchange(&mut pf, &mut at, &[mbx::SET_LPE], &mut reply)
                .unwrap()
        );
        assert_eq!(pf.requests, [mbx::SET_LPE], "posted once");
        // The PF acknowledges, then replies a look later.
        *pf.status.borrow_mut() |= MBX_PFACK;
        assert!(
            !m.exchange(&mut pf, &mut at, &[mbx::SET_LPE], &mut reply)
                .unwrap()
        );
        assert_eq!(at, Exchange::AwaitReply);
        pf.mem[0] = mbx::SET_LPE | mbx::ACK;
        *pf.status.borrow_mut() |= MBX_PFSTS;
        assert!(
            m.exchange(&mut pf, &mut at, &[mbx::SET_LPE], &mut reply)
                .unwrap()
        );
        assert_eq!(reply, [mbx::SET_LPE | mbx::ACK]);
        assert_eq!(pf.acks, 1);
    }

    #[test]
    fn stale_bits_are_flushed_before_a_request() {
        // A PF message nobody fetched, then a PF that never answers.
        let mut pf = FakePf::default();
        *pf.status.borrow_mut() = MBX_PFSTS | MBX_PFACK;
        let mut m = Mailbox::new();
        let r = request(&mut m, &mut pf, &[mbx::GET_QUEUES], &mut [0; 5], 50);
        assert_eq!(r, Err(Error::MailboxTimeout));
        // After a timeout the mailbox refuses work until reset, without touching the device.
        assert!(m.timed_out());
        let before = pf.requests.len();
        assert_eq!(
            request(&mut m, &mut pf, &[mbx::SET_LPE], &mut [0], 5),
            Err(Error::MailboxTimeout)
        );
        assert_eq!(pf.requests.len(), before);
    }

    #[test]
    fn the_buffer_is_taken_once_the_pf_releases_it() {
        let mut pf = FakePf {
            pf_holds: 3,
            reply: Some((mbx::RESET | mbx::ACK, MBX_PFACK | MBX_PFSTS)),
            ..FakePf::default()
        };
        let mut m = Mailbox::new();
        let looks = request(&mut m, &mut pf, &[mbx::RESET], &mut [0; 4], 10).unwrap();
        assert_eq!(looks, 4, "three looks while the PF held it");
        // A PF that never lets go: reported as busy, and the mailbox stays usable.
        pf.pf_holds = u32::MAX;
        assert_eq!(
            request(&mut m, &mut pf, &[mbx::RESET], &mut [0; 4], 5),
            Err(Error::MailboxBusy)
        );
        assert!(!m.timed_out());
        assert_eq!(m.fetch(&mut pf, &mut [0; 1]), Ok(false));
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
        assert_eq!(m.fetch(&mut pf, &mut word), Ok(true));
        assert_eq!(word, [mbx::PF_CONTROL_MSG]);
        assert!(!m.poll(&pf).unwrap().message);
        // A reset seen by a lock read is kept for `poll`.
        *pf.status.borrow_mut() = MBX_RSTD;
        assert_eq!(m.fetch(&mut pf, &mut word), Ok(true));
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
            request(&mut m, &mut pf, &[1], &mut [0], 1),
            Err(Error::Removed)
        );
    }
}
