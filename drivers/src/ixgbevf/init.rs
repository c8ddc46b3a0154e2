//! Bring-up, top to bottom (`docs/ixgbevf.md` §5, as Linux's ixgbevf does it, for one queue pair):
//! stop, reset, mailbox RESET (permanent MAC), API negotiation, GET_QUEUES, transmit queue,
//! SET_LPE, receive queue, interrupt routing, SET_MAC_ADDR, GET_LINK_STATE, interrupts on.
//!
//! It is a state machine ([`BringUp`]): [`Ixgbevf::step`] does one stage and returns, so a
//! kernel can serve its network between stages. Where the device or the PF must act first
//! (the reset, a queue's enable bit, every mailbox exchange), a step looks once and says it
//! is waiting; the deadline is the bring-up's own, checked against the caller's clock. On
//! real hardware the PF answers the mailbox asynchronously and slowly: nothing spins here.
//! [`Ixgbevf::new`], [`Ixgbevf::attach`] and [`Ixgbevf::reinit`] drive the same machine to
//! its end with a [`Delay`] between looks, for callers that may block.

use super::mailbox::{self, Exchange};
use super::{Error, Ixgbevf, MacAddress, RegisterIo, VECTORS, pci, rx, tx};
use crate::hal::dma::{Delay, Dma};
use ixgbevf_regs::{
    DCTL_ENABLE, EICR_MASK, IVAR_VALID, MBX_RSTD, MBX_RSTI, Q_BAH, Q_BAL, Q_DCTL, Q_HEAD, Q_LEN,
    Q_TAIL, RX_SRRCTL, SRRCTL_BSIZEHDR_SHIFT, SRRCTL_DESCTYPE_ADV_ONEBUF, SRRCTL_DROP_EN, TX_WBAH,
    TX_WBAL, TXDCTL_SWFLSH, VFCTRL, VFCTRL_RST, VFLINKS, VFLINKS_UP, VFMAILBOX, VFPSRTYPE,
    VFSTATUS, VTEIAC, VTEIAM, VTEICR, VTEIMC, VTEIMS, VTIVAR_MISC, mbx, rx_queue, tx_queue, vtivar,
};

/// How long the PF may keep RSTI/RSTD set after VFCTRL.RST, and how often to look.
const RESET_WAIT_NS: u64 = 1_000_000;
const RESET_POLL_US: u32 = 5;
/// How long a queue may take to report itself enabled, and how often to look (Linux:
/// 10 × 1 ms).
const ENABLE_WAIT_NS: u64 = 10_000_000;
const ENABLE_POLL_US: u32 = 1000;
/// How long RXDCTL.ENABLE may take to clear before the ring is reprogrammed anyway (Linux:
/// 10 × 10 µs).
const DISABLE_WAIT_NS: u64 = 100_000;
const DISABLE_POLL_US: u32 = 10;
/// API versions we speak, newest first: only the legacy mailbox (`docs/ixgbevf.md` §4).
const APIS: [u32; 4] = [mbx::API_13, mbx::API_12, mbx::API_11, mbx::API_10];
/// Largest frame on the wire, header and FCS included (SET_LPE at MTU 1500).
const MAX_WIRE_FRAME: u32 = 1518;
/// TXDCTL thresholds: prefetch 32, host 1, write-back 1 (each RS descriptor written back at
/// once, so lazy reclaim never waits on a batch).
const TXDCTL_THRESHOLDS: u32 = 32 | (1 << 8) | (1 << 16);
/// SRRCTL: drop when out of descriptors, 256-byte header buffer (unused), 2 KiB packet
/// buffers, advanced one-buffer descriptors.
const SRRCTL: u32 = SRRCTL_DROP_EN
    | ((256 / 64) << SRRCTL_BSIZEHDR_SHIFT)
    | (rx::BUFFER_LEN / 1024) as u32
    | SRRCTL_DESCTYPE_ADV_ONEBUF;
/// Longest reply we read (GET_QUEUES).
const MAX_REPLY_WORDS: usize = 5;

/// What one step of a bring-up came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A stage is done and the next can run at once: call again (after serving the network).
    Ready,
    /// Waiting on the device or the PF: call again later; a caller that blocks waits `us`
    /// microseconds first.
    Waiting {
        /// The pause a blocking caller takes before looking again.
        us: u32,
    },
    /// Finished: the VF is up, or why not.
    Done(Result<(), Error>),
}

/// A mailbox request of the bring-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Question {
    /// RESET: the permanent MAC.
    Reset,
    /// API_NEGOTIATE with `APIS[i]`.
    Api(usize),
    /// GET_QUEUES.
    Queues,
    /// SET_LPE.
    Lpe,
    /// SET_MAC_ADDR with the requested MAC.
    Mac,
    /// GET_LINK_STATE.
    LinkState,
}

/// Where a bring-up stands: the next stage, and for a waiting one its deadline (on the
/// clock the caller passes to [`Ixgbevf::step`]). A device wait's deadline starts at the
/// first look that found the device not ready (`None` before), so a caller that comes back
/// late still gets a second look before the wait can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BringUp {
    /// Interrupts off, queues stopped.
    Stop,
    /// VFCTRL.RST written: waiting for RSTI/RSTD to clear.
    AwaitReset { deadline: Option<u64> },
    /// A mailbox exchange under way.
    Ask {
        question: Question,
        at: Exchange,
        deadline: u64,
    },
    /// Transmit queue programmed and enabled: waiting for its enable bit.
    AwaitTx { deadline: Option<u64> },
    /// Receive queue disabled: waiting for its enable bit to clear.
    AwaitRxStopped { deadline: Option<u64> },
    /// Receive queue programmed and enabled: waiting for its enable bit.
    AwaitRx { deadline: Option<u64> },
}

impl BringUp {
    /// A device wait that looked at `now` and found the device not ready: the same wait
    /// again (its deadline set now if this was the first look), or `None` once its
    /// deadline has passed.
    fn look_again(self, now: u64) -> Option<BringUp> {
        let (deadline, budget) = match self {
            BringUp::AwaitReset { deadline } => (deadline, RESET_WAIT_NS),
            BringUp::AwaitTx { deadline } | BringUp::AwaitRx { deadline } => {
                (deadline, ENABLE_WAIT_NS)
            }
            BringUp::AwaitRxStopped { deadline } => (deadline, DISABLE_WAIT_NS),
            BringUp::Stop | BringUp::Ask { .. } => return Some(self),
        };
        let deadline = match deadline {
            None => Some(now + budget),
            Some(d) if now < d => return Some(self),
            Some(_) => return None,
        };
        Some(match self {
            BringUp::AwaitReset { .. } => BringUp::AwaitReset { deadline },
            BringUp::AwaitTx { .. } => BringUp::AwaitTx { deadline },
            BringUp::AwaitRx { .. } => BringUp::AwaitRx { deadline },
            BringUp::AwaitRxStopped { .. } => BringUp::AwaitRxStopped { deadline },
            BringUp::Stop | BringUp::Ask { .. } => self,
        })
    }
}

/// How the PF answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Ack,
    Nack,
}

/// A unicast, nonzero MAC (what RESET may carry).
fn usable_mac(mac: [u8; 6]) -> Option<MacAddress> {
    (mac != [0; 6] && mac[0] & 1 == 0).then_some(MacAddress(mac))
}

impl<R: RegisterIo, D: Dma> Ixgbevf<R, D> {
    /// Starts a bring-up from the top; [`Ixgbevf::step`] carries it out.
    pub(super) fn begin(&mut self) {
        self.ready = false;
        self.link_up = false;
        self.bring_up = Some(BringUp::Stop);
    }

    /// Drives the bring-up under way to its end, pausing as `delay` does while it waits
    /// (the clock is the pauses taken).
    pub(super) fn finish(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        let mut now = 0u64;
        loop {
            match self.step(now) {
                Progress::Ready => {}
                Progress::Waiting { us } => {
                    delay.delay_us(us);
                    now += u64::from(us) * 1000;
                }
                Progress::Done(result) => return result,
            }
        }
    }

    /// One stage of the bring-up under way at time `now_ns` (any monotonic clock, the same
    /// for every call of one bring-up): a few register accesses at most. With nothing under
    /// way: done, with whether the VF is ready.
    pub fn step(&mut self, now_ns: u64) -> Progress {
        let Some(stage) = self.bring_up else {
            return Progress::Done(if self.ready {
                Ok(())
            } else {
                Err(Error::Removed)
            });
        };
        let next = if self.removed {
            Err(Error::Removed)
        } else {
            self.run(stage, now_ns)
        };
        match next {
            Ok(Some(stage)) => {
                let waiting = self.bring_up == Some(stage);
                self.bring_up = Some(stage);
                match stage {
                    _ if !waiting => Progress::Ready,
                    BringUp::AwaitReset { .. } => Progress::Waiting { us: RESET_POLL_US },
                    BringUp::AwaitRxStopped { .. } => Progress::Waiting {
                        us: DISABLE_POLL_US,
                    },
                    BringUp::AwaitTx { .. } | BringUp::AwaitRx { .. } => {
                        Progress::Waiting { us: ENABLE_POLL_US }
                    }
                    BringUp::Ask { .. } => Progress::Waiting {
                        us: mailbox::POLL_US,
                    },
                    BringUp::Stop => Progress::Ready,
                }
            }
            Ok(None) => {
                self.bring_up = None;
                Progress::Done(Ok(()))
            }
            Err(e) => {
                self.bring_up = None;
                self.failed(e);
                Progress::Done(Err(e))
            }
        }
    }

    /// Runs `stage`: the stage to run next (the same one, unchanged, while it waits), or
    /// `None` when the VF is up.
    fn run(&mut self, stage: BringUp, now: u64) -> Result<Option<BringUp>, Error> {
        Ok(Some(match stage {
            BringUp::Stop => {
                self.stop()?;
                // §5.2: VFCTRL.RST, then wait while the PF shows a reset in progress (RSTI)
                // or just done (RSTD, which clears on read).
                self.io.write32(VFCTRL, VFCTRL_RST);
                self.flush()?;
                BringUp::AwaitReset { deadline: None }
            }
            BringUp::AwaitReset { .. } => {
                let status = self.io.read32(VFMAILBOX);
                if status == u32::MAX {
                    return Err(Error::Removed);
                }
                if status & (MBX_RSTI | MBX_RSTD) != 0 {
                    return stage.look_again(now).map(Some).ok_or(Error::ResetTimeout);
                }
                self.mbx = mailbox::Mailbox::new();
                self.ask(Question::Reset, now)
            }
            BringUp::Ask {
                question,
                mut at,
                deadline,
            } => {
                let (message, len) = self.message(question);
                let mut reply = [0u32; MAX_REPLY_WORDS];
                let before = at;
                if !self
                    .mbx
                    .exchange(&mut self.io, &mut at, &message[..len], &mut reply)?
                {
                    if now >= deadline {
                        return Err(self.mbx.give_up(at));
                    }
                    // Each phase of the exchange gets the whole wait.
                    let deadline = if at == before {
                        deadline
                    } else {
                        now + mailbox::WAIT_NS
                    };
                    return Ok(Some(BringUp::Ask {
                        question,
                        at,
                        deadline,
                    }));
                }
                let answer = self.judge(message[0], &reply);
                return self.answered(question, answer, &reply, now);
            }
            BringUp::AwaitTx { .. } => {
                if !self.queue_enabled(tx_queue(0), true)? {
                    return stage
                        .look_again(now)
                        .map(Some)
                        .ok_or(Error::TxQueueNotEnabled);
                }
                // §5.8: one receive queue, and the largest frame.
                self.io.write32(VFPSRTYPE, 0);
                self.ask(Question::Lpe, now)
            }
            BringUp::AwaitRxStopped { .. } => {
                if !self.queue_enabled(rx_queue(0), false)? {
                    if let Some(again) = stage.look_again(now) {
                        return Ok(Some(again));
                    }
                    // Linux only logs a queue that does not stop; so do we.
                    log::warn!("ixgbevf: the receive queue did not stop");
                }
                self.start_rx();
                BringUp::AwaitRx { deadline: None }
            }
            BringUp::AwaitRx { .. } => {
                if !self.queue_enabled(rx_queue(0), true)? {
                    return stage
                        .look_again(now)
                        .map(Some)
                        .ok_or(Error::RxQueueNotEnabled);
                }
                let tail = self.rx.start();
                self.io.write32(rx_queue(0) + Q_TAIL, tail);
                self.route_interrupts();
                // §5.9: SET_MAC_ADDR with the MAC we were given; without one, the PF's.
                if self.requested_mac.is_none() {
                    self.mac = self.permanent_mac.ok_or(Error::NoMac)?;
                    return self.after_mac(now);
                }
                self.ask(Question::Mac, now)
            }
        }))
    }

    /// The first step of `question`'s exchange.
    fn ask(&self, question: Question, now: u64) -> BringUp {
        BringUp::Ask {
            question,
            at: Exchange::Lock,
            deadline: now + mailbox::WAIT_NS,
        }
    }

    /// The words `question` sends, and how many.
    fn message(&self, question: Question) -> ([u32; 3], usize) {
        match question {
            Question::Reset => ([mbx::RESET, 0, 0], 1),
            Question::Api(i) => ([mbx::API_NEGOTIATE, APIS[i], 0], 3),
            Question::Queues => ([mbx::GET_QUEUES, 0, 0], 3),
            Question::Lpe => ([mbx::SET_LPE, MAX_WIRE_FRAME, 0], 2),
            Question::Mac => {
                let [w1, w2] = mbx::mac_to_words(self.requested_mac.unwrap_or_default().0);
                ([mbx::SET_MAC_ADDR, w1, w2], 3)
            }
            Question::LinkState => ([mbx::GET_LINK_STATE, 0, 0], 2),
        }
    }

    /// Checks that `reply` names `request` and says ACK or NACK. Every reply but RESET's
    /// carries the PF's clear-to-send flag, which the link needs.
    fn judge(&mut self, request: u32, reply: &[u32]) -> Result<Answer, Error> {
        let word = reply.first().copied().unwrap_or(0);
        if request != mbx::RESET {
            self.pf_cts = word & mbx::CTS != 0;
        }
        let bad = Error::BadReply {
            request,
            reply: word,
        };
        if word & mbx::ID_MASK != request & mbx::ID_MASK {
            return Err(bad);
        }
        if word & mbx::NACK != 0 {
            Ok(Answer::Nack)
        } else if word & mbx::ACK != 0 {
            Ok(Answer::Ack)
        } else {
            Err(bad)
        }
    }

    /// Takes the PF's `answer` to `question`; the stage after it.
    fn answered(
        &mut self,
        question: Question,
        answer: Result<Answer, Error>,
        reply: &[u32; MAX_REPLY_WORDS],
        now: u64,
    ) -> Result<Option<BringUp>, Error> {
        Ok(Some(match (question, answer) {
            // §5.4: an ACK carries the MAC the PF assigned (NACK: it assigned none).
            (Question::Reset, answer) => {
                self.permanent_mac = match answer? {
                    Answer::Ack => usable_mac(mbx::words_to_mac([reply[1], reply[2]])),
                    Answer::Nack => None,
                };
                self.ask(Question::Api(0), now)
            }
            // §5.5: the newest API the PF accepts, from 1.3 down to 1.0.
            (Question::Api(i), Ok(Answer::Ack)) => {
                self.api = APIS[i];
                if self.api >= mbx::API_11 {
                    self.ask(Question::Queues, now)
                } else {
                    self.start_tx()
                }
            }
            // Anything but an ACK means "try an older version".
            (Question::Api(i), Ok(Answer::Nack) | Err(Error::BadReply { .. })) => {
                if i + 1 == APIS.len() {
                    return Err(Error::NoCommonApi);
                }
                self.ask(Question::Api(i + 1), now)
            }
            // §5.6: we use queue 0 whatever the PF grants; a PF port VLAN (word 3) would tag
            // our frames, which we do not handle, so it is logged.
            (Question::Queues, answer) => {
                if answer? == Answer::Ack && reply[3] != 0 {
                    log::warn!(
                        "ixgbevf: the PF reports traffic classes or a port VLAN ({})",
                        reply[3]
                    );
                }
                self.start_tx()
            }
            // A NACK only means the PF keeps its limit, which is at least ours on an 82599.
            (Question::Lpe, Ok(Answer::Nack) | Err(Error::BadReply { .. })) => {
                log::warn!("ixgbevf: the PF refused a {MAX_WIRE_FRAME}-byte frame limit");
                self.stop_rx()
            }
            (Question::Lpe, answer) => {
                answer?;
                self.stop_rx()
            }
            // If the PF refuses our MAC, its permanent one.
            (Question::Mac, answer) => {
                self.mac = match answer? {
                    Answer::Ack => self.requested_mac.unwrap_or_default(),
                    Answer::Nack => {
                        let permanent = self.permanent_mac.ok_or(Error::NoMac)?;
                        log::warn!(
                            "ixgbevf: the PF refused MAC {}; using its {permanent}",
                            self.requested_mac.unwrap_or_default()
                        );
                        permanent
                    }
                };
                return self.after_mac(now);
            }
            // §5.9: whether the PF administratively disabled our link (a NACK leaves it
            // enabled).
            (Question::LinkState, answer) => {
                self.link_enabled = match answer {
                    Ok(Answer::Ack) => reply[1] != 0,
                    Ok(Answer::Nack) | Err(Error::BadReply { .. }) => true,
                    Err(e) => return Err(e),
                };
                self.up()?;
                return Ok(None);
            }
            (_, Err(e)) => return Err(e),
        }))
    }

    /// After the MAC: GET_LINK_STATE (API 1.2 and later), else up.
    fn after_mac(&mut self, now: u64) -> Result<Option<BringUp>, Error> {
        if self.api >= mbx::API_12 {
            return Ok(Some(self.ask(Question::LinkState, now)));
        }
        self.up()?;
        Ok(None)
    }

    /// The last stage: ready, interrupts on, the link as it stands.
    fn up(&mut self) -> Result<(), Error> {
        self.reset_needed = false;
        self.ready = true;
        self.enable_interrupts();
        self.refresh_link()
    }

    /// Reads VFSTATUS, which flushes posted writes and tells whether the VF is still there.
    fn flush(&mut self) -> Result<(), Error> {
        match self.io.read32(VFSTATUS) {
            u32::MAX => Err(Error::Removed),
            _ => Ok(()),
        }
    }

    /// §5.1: interrupts off and stale causes dropped, queues stopped.
    fn stop(&mut self) -> Result<(), Error> {
        self.io.write32(VTEIMC, EICR_MASK);
        self.io.read32(VTEICR);
        for q in 0..2 {
            self.io.write32(tx_queue(q) + Q_DCTL, TXDCTL_SWFLSH);
            self.io.write32(rx_queue(q) + Q_DCTL, 0);
        }
        self.io.write32(VFPSRTYPE, 0);
        self.flush()
    }

    /// Whether queue register block `q`'s enable bit reads as `set`.
    fn queue_enabled(&mut self, q: usize, set: bool) -> Result<bool, Error> {
        let value = self.io.read32(q + Q_DCTL);
        if value == u32::MAX {
            return Err(Error::Removed);
        }
        Ok((value & DCTL_ENABLE != 0) == set)
    }

    /// §5.8: transmit queue 0 (ring, no head write-back, head = tail = 0), enabled.
    fn start_tx(&mut self) -> BringUp {
        let q = tx_queue(0);
        let ring = self.tx.ring_address();
        self.io.write32(q + Q_DCTL, TXDCTL_SWFLSH);
        // The reset stopped all DMA: every transmit buffer is ours again.
        self.tx.start();
        self.io.write32(q + Q_BAL, ring as u32);
        self.io.write32(q + Q_BAH, (ring >> 32) as u32);
        self.io.write32(q + Q_LEN, self.tx.ring_len());
        self.io.write32(q + TX_WBAL, 0);
        self.io.write32(q + TX_WBAH, 0);
        self.io.write32(q + Q_HEAD, 0);
        self.io.write32(q + Q_TAIL, 0);
        self.io.write32(q + Q_DCTL, DCTL_ENABLE | TXDCTL_THRESHOLDS);
        BringUp::AwaitTx { deadline: None }
    }

    /// §5.8: receive queue 0 is disabled while it is reprogrammed.
    fn stop_rx(&mut self) -> BringUp {
        self.io.write32(rx_queue(0) + Q_DCTL, 0);
        BringUp::AwaitRxStopped { deadline: None }
    }

    /// §5.8: receive queue 0 with advanced one-buffer descriptors, enabled; it is filled
    /// (all descriptors but one) and its tail written once the enable bit shows.
    fn start_rx(&mut self) {
        let q = rx_queue(0);
        let ring = self.rx.ring_address();
        self.io.write32(q + Q_BAL, ring as u32);
        self.io.write32(q + Q_BAH, (ring >> 32) as u32);
        self.io.write32(q + Q_LEN, self.rx.ring_len());
        self.io.write32(q + Q_HEAD, 0);
        self.io.write32(q + Q_TAIL, 0);
        self.io.write32(q + RX_SRRCTL, SRRCTL);
        self.io.write32(q + Q_DCTL, DCTL_ENABLE);
    }

    /// §5.9: queue 0's receive and transmit causes on vector 0, mailbox and link on vector 1.
    fn route_interrupts(&mut self) {
        let queue = u32::from(pci::QUEUE_ENTRY) | IVAR_VALID;
        self.io.write32(vtivar(0), queue | (queue << 8));
        self.io
            .write32(VTIVAR_MISC, u32::from(pci::OTHER_ENTRY) | IVAR_VALID);
    }

    /// §5.9: drop stale causes; both vectors auto-clear their cause and auto-mask themselves
    /// when sent (re-enabled by `rearm_interrupts`), and are enabled.
    fn enable_interrupts(&mut self) {
        self.io.read32(VTEICR);
        self.io.write32(VTEIAM, VECTORS);
        self.io.write32(VTEIAC, VECTORS);
        self.io.write32(VTEIMS, VECTORS);
    }

    /// The link as it stands after bring-up: VFLINKS up, and the PF's last reply carried
    /// CTS.
    fn refresh_link(&mut self) -> Result<(), Error> {
        let links = self.io.read32(VFLINKS);
        if links == u32::MAX {
            return Err(Error::Removed);
        }
        self.link_up = links & VFLINKS_UP != 0 && self.pf_cts && self.link_enabled;
        Ok(())
    }
}

/// Keeps `tx::MAX_FRAME` below the wire limit (header + FCS).
const _: () = assert!(tx::MAX_FRAME + 4 == MAX_WIRE_FRAME as usize);
