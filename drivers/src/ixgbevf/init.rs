//! Bring-up, top to bottom (`docs/ixgbevf.md` §5, as Linux's ixgbevf does it, for one queue pair):
//! stop, reset, mailbox RESET (permanent MAC), API negotiation, GET_QUEUES, transmit queue,
//! SET_LPE, receive queue, interrupt routing, SET_MAC_ADDR, GET_LINK_STATE, interrupts on.

use super::{Error, Ixgbevf, MacAddress, Mailbox, RegisterIo, VECTORS, pci, rx, tx};
use crate::hal::dma::{Delay, Dma};
use ixgbevf_regs::{
    DCTL_ENABLE, EICR_MASK, IVAR_VALID, MBX_RSTD, MBX_RSTI, Q_BAH, Q_BAL, Q_DCTL, Q_HEAD, Q_LEN,
    Q_TAIL, RX_SRRCTL, SRRCTL_BSIZEHDR_SHIFT, SRRCTL_DESCTYPE_ADV_ONEBUF, SRRCTL_DROP_EN, TX_WBAH,
    TX_WBAL, TXDCTL_SWFLSH, VFCTRL, VFCTRL_RST, VFLINKS, VFLINKS_UP, VFMAILBOX, VFPSRTYPE,
    VFSTATUS, VTEIAC, VTEIAM, VTEICR, VTEIMC, VTEIMS, VTIVAR_MISC, mbx, rx_queue, tx_queue, vtivar,
};

/// Polls of VFMAILBOX while RSTI/RSTD are set after VFCTRL.RST, and the pause between.
const RESET_POLLS: u32 = 200;
const RESET_POLL_US: u32 = 5;
/// Polls of a queue's ENABLE bit, and the pause between (Linux: 10 × 1 ms).
const ENABLE_POLLS: u32 = 10;
const ENABLE_POLL_US: u32 = 1000;
/// Polls of RXDCTL.ENABLE clearing before the ring is reprogrammed (Linux: 10 × 10 µs).
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
    /// The whole bring-up; leaves the VF ready, or not ready with the error.
    pub(super) fn bring_up(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        self.ready = false;
        self.link_up = false;
        self.stop()?;
        self.reset(delay)?;
        self.reset_message(delay)?;
        self.negotiate_api(delay)?;
        if self.api >= mbx::API_11 {
            self.get_queues(delay)?;
        }
        self.start_tx(delay)?;
        self.set_lpe(delay)?;
        self.start_rx(delay)?;
        self.route_interrupts();
        self.set_mac(delay)?;
        if self.api >= mbx::API_12 {
            self.get_link_state(delay)?;
        }
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

    /// §5.2: VFCTRL.RST, then wait while the PF shows a reset in progress (RSTI) or just
    /// done (RSTD, which clears on read).
    fn reset(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        self.io.write32(VFCTRL, VFCTRL_RST);
        self.flush()?;
        for attempt in 0..RESET_POLLS {
            if attempt > 0 {
                delay.delay_us(RESET_POLL_US);
            }
            let status = self.io.read32(VFMAILBOX);
            if status == u32::MAX {
                return Err(Error::Removed);
            }
            if status & (MBX_RSTI | MBX_RSTD) == 0 {
                self.mbx = Mailbox::new();
                return Ok(());
            }
        }
        Err(Error::ResetTimeout)
    }

    /// Sends `message` and reads the `reply.len()`-word answer; checks it names the request.
    /// Every reply but RESET's carries the PF's clear-to-send flag, which the link needs.
    fn ask(
        &mut self,
        delay: &mut dyn Delay,
        message: &[u32],
        reply: &mut [u32],
    ) -> Result<Answer, Error> {
        let request = message.first().copied().unwrap_or(0);
        self.mbx.request(&mut self.io, delay, message, reply)?;
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

    /// §5.4: RESET; an ACK carries the MAC the PF assigned (NACK: it assigned none).
    fn reset_message(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        let mut reply = [0; mbx::RESET_REPLY_WORDS];
        self.permanent_mac = match self.ask(delay, &[mbx::RESET], &mut reply)? {
            Answer::Ack => usable_mac(mbx::words_to_mac([reply[1], reply[2]])),
            Answer::Nack => None,
        };
        Ok(())
    }

    /// §5.5: the newest API the PF accepts, from 1.3 down to 1.0.
    fn negotiate_api(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        for api in APIS {
            let answer = self.ask(delay, &[mbx::API_NEGOTIATE, api, 0], &mut [0]);
            match answer {
                Ok(Answer::Ack) => {
                    self.api = api;
                    return Ok(());
                }
                // Anything but an ACK means "try an older version".
                Ok(Answer::Nack) | Err(Error::BadReply { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Err(Error::NoCommonApi)
    }

    /// §5.6: GET_QUEUES. We use queue 0 whatever the PF grants; a PF port VLAN (word 3)
    /// would tag our frames, which we do not handle, so it is logged.
    fn get_queues(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        let mut reply = [0; mbx::GET_QUEUES_WORDS];
        let message = [mbx::GET_QUEUES, 0, 0, 0, 0];
        if self.ask(delay, &message, &mut reply)? == Answer::Ack && reply[3] != 0 {
            log::warn!(
                "ixgbevf: the PF reports traffic classes or a port VLAN ({})",
                reply[3]
            );
        }
        Ok(())
    }

    /// Polls `register` until `bit` reads as `set` (bounded).
    fn poll_bit(
        &mut self,
        delay: &mut dyn Delay,
        register: usize,
        bit: u32,
        set: bool,
        pause_us: u32,
    ) -> Result<bool, Error> {
        for attempt in 0..ENABLE_POLLS {
            if attempt > 0 {
                delay.delay_us(pause_us);
            }
            let value = self.io.read32(register);
            if value == u32::MAX {
                return Err(Error::Removed);
            }
            if (value & bit != 0) == set {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// §5.8: transmit queue 0 (ring, no head write-back, head = tail = 0), enabled.
    fn start_tx(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
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
        if !self.poll_bit(delay, q + Q_DCTL, DCTL_ENABLE, true, ENABLE_POLL_US)? {
            return Err(Error::TxQueueNotEnabled);
        }
        Ok(())
    }

    /// §5.8: one receive queue, and the largest frame (a NACK only means the PF keeps its
    /// limit, which is at least ours on an 82599).
    fn set_lpe(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        self.io.write32(VFPSRTYPE, 0);
        match self.ask(delay, &[mbx::SET_LPE, MAX_WIRE_FRAME], &mut [0]) {
            Ok(Answer::Ack) => Ok(()),
            Ok(Answer::Nack) | Err(Error::BadReply { .. }) => {
                log::warn!("ixgbevf: the PF refused a {MAX_WIRE_FRAME}-byte frame limit");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// §5.8: receive queue 0: disabled while reprogrammed, advanced one-buffer descriptors,
    /// enabled, then filled (all descriptors but one) and the tail written.
    fn start_rx(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        let q = rx_queue(0);
        self.io.write32(q + Q_DCTL, 0);
        // Linux only logs a queue that does not stop; so do we.
        if !self.poll_bit(delay, q + Q_DCTL, DCTL_ENABLE, false, DISABLE_POLL_US)? {
            log::warn!("ixgbevf: the receive queue did not stop");
        }
        let ring = self.rx.ring_address();
        self.io.write32(q + Q_BAL, ring as u32);
        self.io.write32(q + Q_BAH, (ring >> 32) as u32);
        self.io.write32(q + Q_LEN, self.rx.ring_len());
        self.io.write32(q + Q_HEAD, 0);
        self.io.write32(q + Q_TAIL, 0);
        self.io.write32(q + RX_SRRCTL, SRRCTL);
        self.io.write32(q + Q_DCTL, DCTL_ENABLE);
        if !self.poll_bit(delay, q + Q_DCTL, DCTL_ENABLE, true, ENABLE_POLL_US)? {
            return Err(Error::RxQueueNotEnabled);
        }
        let tail = self.rx.start();
        self.io.write32(q + Q_TAIL, tail);
        Ok(())
    }

    /// §5.9: queue 0's receive and transmit causes on vector 0, mailbox and link on vector 1.
    fn route_interrupts(&mut self) {
        let queue = u32::from(pci::QUEUE_ENTRY) | IVAR_VALID;
        self.io.write32(vtivar(0), queue | (queue << 8));
        self.io
            .write32(VTIVAR_MISC, u32::from(pci::OTHER_ENTRY) | IVAR_VALID);
    }

    /// §5.9: SET_MAC_ADDR with the MAC we were given; if the PF refuses, or none was given,
    /// its permanent MAC.
    fn set_mac(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        let Some(requested) = self.requested_mac else {
            self.mac = self.permanent_mac.ok_or(Error::NoMac)?;
            return Ok(());
        };
        let [w1, w2] = mbx::mac_to_words(requested.0);
        self.mac = match self.ask(delay, &[mbx::SET_MAC_ADDR, w1, w2], &mut [0])? {
            Answer::Ack => requested,
            Answer::Nack => {
                let permanent = self.permanent_mac.ok_or(Error::NoMac)?;
                log::warn!("ixgbevf: the PF refused MAC {requested}; using its {permanent}");
                permanent
            }
        };
        Ok(())
    }

    /// §5.9: GET_LINK_STATE (API 1.2 and later): whether the PF administratively disabled
    /// our link (a NACK leaves it enabled).
    fn get_link_state(&mut self, delay: &mut dyn Delay) -> Result<(), Error> {
        let mut reply = [0; 2];
        self.link_enabled = match self.ask(delay, &[mbx::GET_LINK_STATE, 0], &mut reply) {
            Ok(Answer::Ack) => reply[1] != 0,
            Ok(Answer::Nack) | Err(Error::BadReply { .. }) => true,
            Err(e) => return Err(e),
        };
        Ok(())
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
