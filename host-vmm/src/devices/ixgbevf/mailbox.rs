//! The VF mailbox with the PF's side played by the model (`docs/ixgbevf.md` §3, §4).
//!
//! VFMAILBOX bits: REQ and ACK are write-only strobes; VFU is the VF's lock (the PF never
//! holds PFU here, since it answers synchronously); PFSTS, PFACK and RSTD are set by the PF
//! and cleared by the VF's read (drivers OR each read into a shadow); RSTI stays 0.
//!
//! A REQ write is answered before the write returns: the request is read from VFMBMEM, the
//! reply built in place, PFACK and PFSTS set, and the caller raises the "other" vector. The
//! policy is Linux's PF (`ixgbe_sriov.c`) with the model's choices of §4: RESET replies
//! ACK, the permanent MAC and filter type 0 without CTS and makes the VF clear to send;
//! requests before it get a one-word `ID|NACK`; afterwards every reply carries CTS; API 1.0
//! to 1.3 are accepted and 1.4 and newer refused (so the VF stays on this legacy protocol);
//! GET_QUEUES grants 2/2/0/0; a VF that is not trusted cannot change its MAC or add MAC
//! filters; unknown requests are NACKed. Nothing is ever left unanswered.
//!
//! Messages the PF sends on its own (link changes, [`Mailbox::post`]) must not overwrite a
//! reply the VF has not read yet, nor a buffer the VF holds: they wait until the VF writes
//! ACK or releases VFU, the latest one winning.

use crate::devices::DeviceStateError;
use ixgbevf_regs::{self as r, mbx};
use serde::{Deserialize, Serialize};

/// Smallest frame SET_LPE accepts (Linux's `ETH_MIN_MTU`).
const LPE_MIN: u32 = 68;
/// Largest frame SET_LPE accepts (`IXGBE_MAX_JUMBO_FRAME_SIZE`).
const LPE_MAX: u32 = 9728;
/// Frame size before any SET_LPE: 1500-byte MTU plus header and FCS.
const LPE_DEFAULT: u32 = 1518;
/// UPDATE_XCAST_MODE modes.
const XCAST_MULTI: u32 = 1;
const XCAST_PROMISC: u32 = 3;
/// Multicast filter type in the RESET reply.
const MC_FILTER_TYPE: u32 = 0;

/// What the PF decided for this VF (fixed for the model's life).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfPolicy {
    /// The permanent (administratively assigned) MAC.
    pub mac: [u8; 6],
    /// A trusted VF may change its MAC, add MAC filters and ask for promiscuous mode.
    pub trusted: bool,
}

/// Mailbox registers and the PF's view of the VF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// VFMBMEM.
    pub mem: [u32; r::MBX_WORDS],
    /// The VF holds the buffer.
    pub vfu: bool,
    /// The PF wrote a message (read clears).
    pub pfsts: bool,
    /// The PF acknowledged the VF's message (read clears).
    pub pfack: bool,
    /// A reset completed (read clears).
    pub rstd: bool,
    /// The VF sent RESET since its last reset: it is clear to send.
    pub cts: bool,
    /// Negotiated API (`mbx::API_*`).
    pub api: u32,
    /// The MAC the VF uses now.
    pub mac: [u8; 6],
    /// Largest frame, from SET_LPE.
    pub max_frame: u32,
    /// Multicast/promiscuous mode granted.
    pub xcast_mode: u32,
    /// A reply sits in VFMBMEM that the VF has not acknowledged.
    pub reply_unread: bool,
    /// A PF message waiting for the buffer.
    pub pending: Option<u32>,
}

/// Whether `mac` can be a station address.
fn unicast(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

impl Mailbox {
    /// State after power-on: nothing negotiated, reset done.
    pub fn new(mac: [u8; 6]) -> Self {
        Mailbox {
            mem: [0; r::MBX_WORDS],
            vfu: false,
            pfsts: false,
            pfack: false,
            rstd: true,
            cts: false,
            api: mbx::API_10,
            mac,
            max_frame: LPE_DEFAULT,
            xcast_mode: XCAST_MULTI,
            reply_unread: false,
            pending: None,
        }
    }

    /// Checks a saved mailbox: the negotiated API, frame size and multicast mode must be
    /// values the PF side can have granted (the buffer words and flags may hold anything).
    pub fn check(&self, trusted: bool) -> Result<(), DeviceStateError> {
        const DEV: &str = "ixgbevf";
        if !matches!(
            self.api,
            mbx::API_10 | mbx::API_11 | mbx::API_12 | mbx::API_13
        ) {
            return Err(DeviceStateError::invalid(
                DEV,
                "mailbox API",
                format!("{:#x} was never granted", self.api),
            ));
        }
        if !(LPE_MIN..=LPE_MAX).contains(&self.max_frame) {
            return Err(DeviceStateError::invalid(
                DEV,
                "mailbox max frame",
                format!("{} is outside {LPE_MIN}..={LPE_MAX}", self.max_frame),
            ));
        }
        let most = if trusted { XCAST_PROMISC } else { XCAST_MULTI };
        if self.xcast_mode > most {
            return Err(DeviceStateError::invalid(
                DEV,
                "mailbox multicast mode",
                format!("{} above the {most} this VF may have", self.xcast_mode),
            ));
        }
        Ok(())
    }

    /// VFCTRL.RST: back to power-on state (the VF must send RESET again).
    pub fn vf_reset(&mut self, mac: [u8; 6]) {
        *self = Mailbox::new(mac);
    }

    /// A read of VFMAILBOX; clears PFSTS, PFACK and RSTD.
    pub fn read_control(&mut self) -> u32 {
        let mut value = 0;
        for (set, bit) in [
            (self.vfu, r::MBX_VFU),
            (self.pfsts, r::MBX_PFSTS),
            (self.pfack, r::MBX_PFACK),
            (self.rstd, r::MBX_RSTD),
        ] {
            if set {
                value |= bit;
            }
        }
        self.pfsts = false;
        self.pfack = false;
        self.rstd = false;
        value
    }

    /// A write to VFMAILBOX. Returns whether the PF posted something (raise "other").
    pub fn write_control(&mut self, value: u32, pf: &PfPolicy) -> bool {
        let mut posted = false;
        // VFU=1 takes the buffer (the PF never holds it); VFU=0 releases it.
        self.vfu = value & r::MBX_VFU != 0;
        if value & r::MBX_ACK != 0 {
            self.reply_unread = false;
            if !self.cts {
                // Linux's PF answers an ACK from a VF that has not reset with a lone NACK.
                self.mem[0] = mbx::NACK;
                self.pfsts = true;
                posted = true;
            }
        }
        if value & r::MBX_REQ != 0 {
            self.answer(pf);
            posted = true;
        }
        posted | self.flush_pending()
    }

    /// The PF sends `word` on its own (e.g. `PF_CONTROL_MSG | CTS`). Returns whether it was
    /// posted now; otherwise it waits for the buffer.
    pub fn post(&mut self, word: u32) -> bool {
        self.pending = Some(word);
        self.flush_pending()
    }

    /// The word a link change sends: a control message, with CTS while the VF is in good
    /// standing.
    pub fn control_word(&self) -> u32 {
        mbx::PF_CONTROL_MSG | if self.cts { mbx::CTS } else { 0 }
    }

    fn flush_pending(&mut self) -> bool {
        if self.vfu || self.reply_unread {
            return false;
        }
        let Some(word) = self.pending.take() else {
            return false;
        };
        self.mem[0] = word;
        self.pfsts = true;
        true
    }

    /// Reads the request in VFMBMEM and writes the reply over it.
    fn answer(&mut self, pf: &PfPolicy) {
        let w0 = self.mem[0];
        let id = w0 & mbx::ID_MASK;
        if id == mbx::RESET {
            self.reset_reply(pf);
        } else if !self.cts {
            self.mem[0] = id | mbx::NACK;
        } else {
            let flag = if self.request(id, (w0 >> mbx::INFO_SHIFT) & 0xFF, pf) {
                mbx::ACK
            } else {
                mbx::NACK
            };
            self.mem[0] = (w0 & !(mbx::ACK | mbx::NACK | mbx::CTS)) | flag | mbx::CTS;
        }
        self.reply_unread = true;
        self.pfack = true;
        self.pfsts = true;
    }

    fn reset_reply(&mut self, pf: &PfPolicy) {
        self.cts = true;
        self.api = mbx::API_10;
        self.mac = pf.mac;
        self.max_frame = LPE_DEFAULT;
        self.xcast_mode = XCAST_MULTI;
        let [lo, hi] = mbx::mac_to_words(pf.mac);
        self.mem[..mbx::RESET_REPLY_WORDS].copy_from_slice(&[
            mbx::RESET | mbx::ACK,
            lo,
            hi,
            MC_FILTER_TYPE,
        ]);
    }

    /// Carries out request `id` (MSGINFO `info`) from a VF that is clear to send; its reply
    /// words beyond word 0 are written here. Returns ACK (true) or NACK.
    fn request(&mut self, id: u32, info: u32, pf: &PfPolicy) -> bool {
        let api = self.api;
        let at_least_12 = api == mbx::API_12 || api == mbx::API_13;
        match id {
            mbx::SET_MAC_ADDR => {
                let mac = mbx::words_to_mac([self.mem[1], self.mem[2]]);
                let allowed = unicast(mac) && (pf.trusted || mac == pf.mac);
                if allowed {
                    self.mac = mac;
                }
                allowed
            }
            // The model does no receive filtering: the filters are accepted and ignored.
            mbx::SET_MULTICAST | mbx::SET_VLAN => true,
            mbx::SET_LPE => {
                let frame = self.mem[1];
                let ok = (LPE_MIN..=LPE_MAX).contains(&frame);
                if ok {
                    self.max_frame = frame;
                }
                ok
            }
            mbx::SET_MACVLAN => {
                // Index 0 clears the extra filters; adding one needs trust (Linux's PF).
                info == 0 || (pf.trusted && unicast(mbx::words_to_mac([self.mem[1], self.mem[2]])))
            }
            mbx::API_NEGOTIATE => {
                let wanted = self.mem[1];
                let ok = matches!(
                    wanted,
                    mbx::API_10 | mbx::API_11 | mbx::API_12 | mbx::API_13
                );
                if ok {
                    self.api = wanted;
                }
                ok
            }
            mbx::GET_QUEUES if api != mbx::API_10 => {
                self.mem[1..mbx::GET_QUEUES_WORDS].copy_from_slice(&[r::QUEUES, r::QUEUES, 0, 0]);
                true
            }
            mbx::UPDATE_XCAST_MODE if at_least_12 => {
                let mode = self.mem[1];
                let most = if api == mbx::API_13 {
                    XCAST_PROMISC
                } else {
                    XCAST_PROMISC - 1
                };
                if mode > most {
                    return false;
                }
                // An untrusted VF gets at most multicast (Linux's PF).
                let granted = if pf.trusted {
                    mode
                } else {
                    mode.min(XCAST_MULTI)
                };
                self.xcast_mode = granted;
                self.mem[1] = granted;
                true
            }
            mbx::GET_LINK_STATE if at_least_12 => {
                self.mem[1] = 1;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const PF: PfPolicy = PfPolicy {
        mac: MAC,
        trusted: false,
    };

    /// A VF that follows the legacy protocol word by word, with the read-to-clear shadow.
    struct Vf {
        mbx: Mailbox,
        shadow: u32,
    }

    impl Vf {
        fn new() -> Self {
            Vf {
                mbx: Mailbox::new(MAC),
                shadow: 0,
            }
        }

        fn read(&mut self) -> u32 {
            let v = self.mbx.read_control();
            self.shadow |= v & r::MBX_R2C_BITS;
            v
        }

        /// Sends `words` and returns the reply (as many words as sent), checking each step.
        fn call(&mut self, words: &[u32]) -> Vec<u32> {
            assert!(!self.mbx.write_control(r::MBX_VFU, &PF));
            assert_ne!(self.read() & r::MBX_VFU, 0, "VFU reads back");
            self.shadow &= !(r::MBX_PFSTS | r::MBX_PFACK);
            self.mbx.mem[..words.len()].copy_from_slice(words);
            assert!(self.mbx.write_control(r::MBX_REQ, &PF), "the PF answers");
            let v = self.read();
            assert_eq!(v & r::MBX_VFU, 0, "REQ alone released the buffer");
            assert_ne!(self.shadow & r::MBX_PFACK, 0);
            assert_ne!(self.shadow & r::MBX_PFSTS, 0, "the same read saw the reply");
            assert_eq!(self.read() & (r::MBX_PFACK | r::MBX_PFSTS), 0, "cleared");
            self.shadow &= !(r::MBX_PFSTS | r::MBX_PFACK);
            self.mbx.write_control(r::MBX_VFU, &PF);
            let reply = self.mbx.mem[..words.len().max(5)].to_vec();
            self.mbx.write_control(r::MBX_ACK, &PF);
            reply
        }
    }

    #[test]
    fn reset_replies_with_the_mac_and_no_cts_then_the_vf_may_send() {
        let mut vf = Vf::new();
        assert_eq!(vf.read(), r::MBX_RSTD, "reset done, once");
        assert_eq!(vf.read(), 0);
        let before = vf.call(&[mbx::API_NEGOTIATE, mbx::API_13, 0]);
        assert_eq!(
            before[0],
            mbx::API_NEGOTIATE | mbx::NACK,
            "not clear to send yet"
        );
        let reply = vf.call(&[mbx::RESET]);
        assert_eq!(&reply[..4], &[0x8000_0001, 0x1200_5452, 0x5634, 0]);
        assert!(vf.mbx.cts);
        let reply = vf.call(&[mbx::API_NEGOTIATE, mbx::API_13, 0]);
        assert_eq!(reply[0], 0xA000_0008);
        assert_eq!(vf.mbx.api, mbx::API_13);
    }

    #[test]
    fn api_1_4_and_newer_are_refused_1_3_to_1_0_accepted() {
        let mut vf = Vf::new();
        vf.call(&[mbx::RESET]);
        for api in [8, 7, 6, mbx::API_14, 1] {
            assert_eq!(
                vf.call(&[mbx::API_NEGOTIATE, api, 0])[0],
                0x6000_0008,
                "api {api}"
            );
        }
        for api in [mbx::API_13, mbx::API_12, mbx::API_11, mbx::API_10] {
            assert_eq!(vf.call(&[mbx::API_NEGOTIATE, api, 0])[0], 0xA000_0008);
            assert_eq!(vf.mbx.api, api);
        }
    }

    #[test]
    fn get_queues_needs_api_1_1_and_grants_two_pairs() {
        let mut vf = Vf::new();
        vf.call(&[mbx::RESET]);
        assert_eq!(vf.call(&[mbx::GET_QUEUES, 0, 0, 0, 0])[0], 0x6000_0009);
        vf.call(&[mbx::API_NEGOTIATE, mbx::API_11, 0]);
        let reply = vf.call(&[mbx::GET_QUEUES, 0, 0, 0, 0]);
        assert_eq!(reply, vec![0xA000_0009, 2, 2, 0, 0]);
    }

    #[test]
    fn an_untrusted_vf_keeps_its_mac_a_trusted_one_may_change_it() {
        let other = [0x52, 0x54, 0x00, 0xAA, 0xBB, 0xCC];
        let [lo, hi] = mbx::mac_to_words(other);
        let [plo, phi] = mbx::mac_to_words(MAC);
        let mut vf = Vf::new();
        vf.call(&[mbx::RESET]);
        assert_eq!(vf.call(&[mbx::SET_MAC_ADDR, lo, hi])[0], 0x6000_0002);
        assert_eq!(vf.mbx.mac, MAC);
        assert_eq!(vf.call(&[mbx::SET_MAC_ADDR, plo, phi])[0], 0xA000_0002);
        // Adding a MAC filter needs trust; clearing them does not.
        assert_eq!(
            vf.call(&[mbx::SET_MACVLAN | 1 << 16, lo, hi])[0] & mbx::NACK,
            mbx::NACK
        );
        assert_eq!(vf.call(&[mbx::SET_MACVLAN, 0, 0])[0], 0xA000_0006);

        let trusted = PfPolicy {
            trusted: true,
            ..PF
        };
        let mut m = Mailbox::new(MAC);
        m.mem[0] = mbx::RESET;
        m.write_control(r::MBX_REQ, &trusted);
        m.mem[..3].copy_from_slice(&[mbx::SET_MAC_ADDR, lo, hi]);
        m.write_control(r::MBX_REQ, &trusted);
        assert_eq!(m.mem[0], 0xA000_0002);
        assert_eq!(m.mac, other);
        // Never a multicast address, trusted or not.
        m.mem[..3].copy_from_slice(&[mbx::SET_MAC_ADDR, 0x0000_5E01, 0]);
        m.write_control(r::MBX_REQ, &trusted);
        assert_eq!(m.mem[0], 0x6000_0002);
    }

    #[test]
    fn filters_lpe_xcast_and_link_state_follow_the_pf() {
        let mut vf = Vf::new();
        vf.call(&[mbx::RESET]);
        let mut mc = [0u32; 16];
        mc[0] = mbx::SET_MULTICAST | 3 << 16;
        assert_eq!(vf.call(&mc)[0], 0xA003_0003, "MSGINFO kept");
        assert_eq!(vf.call(&[mbx::SET_VLAN | 1 << 16, 0])[0], 0xA001_0004);
        assert_eq!(vf.call(&[mbx::SET_LPE, 1518])[0], 0xA000_0005);
        assert_eq!(vf.call(&[mbx::SET_LPE, 20_000])[0], 0x6000_0005);
        assert_eq!(vf.mbx.max_frame, 1518);
        // UPDATE_XCAST_MODE and GET_LINK_STATE are API 1.2 messages.
        assert_eq!(vf.call(&[mbx::UPDATE_XCAST_MODE, 2])[0], 0x6000_000C);
        assert_eq!(vf.call(&[mbx::GET_LINK_STATE, 0])[0], 0x6000_0010);
        vf.call(&[mbx::API_NEGOTIATE, mbx::API_12, 0]);
        assert_eq!(
            vf.call(&[mbx::UPDATE_XCAST_MODE, 3])[0],
            0x6000_000C,
            "1.3 only"
        );
        let reply = vf.call(&[mbx::UPDATE_XCAST_MODE, 2]);
        assert_eq!(
            &reply[..2],
            &[0xA000_000C, 1],
            "untrusted: multicast at most"
        );
        let reply = vf.call(&[mbx::GET_LINK_STATE, 0]);
        assert_eq!(&reply[..2], &[0xA000_0010, 1], "enabled");
    }

    #[test]
    fn unknown_requests_are_nacked_with_cts() {
        let mut vf = Vf::new();
        vf.call(&[mbx::RESET]);
        for id in [
            0u32,
            7,
            mbx::GET_RETA,
            mbx::GET_RSS_KEY,
            0x0D,
            0x11,
            0x12,
            0xFFFF,
        ] {
            assert_eq!(vf.call(&[id])[0], id | 0x6000_0000, "id {id:#x}");
        }
    }

    #[test]
    fn an_ack_before_reset_draws_a_lone_nack() {
        let mut m = Mailbox::new(MAC);
        m.read_control();
        assert!(m.write_control(r::MBX_ACK, &PF));
        assert_eq!(m.mem[0], mbx::NACK);
        assert_eq!(m.read_control(), r::MBX_PFSTS);
        m.mem[0] = mbx::RESET;
        m.write_control(r::MBX_REQ, &PF);
        m.read_control();
        assert!(
            !m.write_control(r::MBX_ACK, &PF),
            "clear to send: ACK is quiet"
        );
        assert_eq!(m.read_control(), 0);
    }

    #[test]
    fn vfu_is_taken_and_released_by_writes() {
        let mut m = Mailbox::new(MAC);
        m.write_control(r::MBX_VFU, &PF);
        assert_eq!(m.read_control() & r::MBX_VFU, r::MBX_VFU);
        assert_eq!(
            m.read_control() & r::MBX_VFU,
            r::MBX_VFU,
            "VFU is not read-to-clear"
        );
        m.write_control(0, &PF);
        assert_eq!(m.read_control(), 0);
        assert_eq!(m.read_control() & (r::MBX_RSTI | r::MBX_PFU), 0);
    }

    #[test]
    fn pf_messages_wait_for_an_unread_reply_and_a_held_buffer() {
        let mut vf = Vf::new();
        vf.call(&[mbx::RESET]);
        assert_eq!(vf.mbx.control_word(), 0x2000_0100);
        // Idle mailbox: posted at once.
        assert!(vf.mbx.post(vf.mbx.control_word()));
        assert_eq!(vf.mbx.mem[0], 0x2000_0100);
        assert_eq!(vf.read() & r::MBX_PFSTS, r::MBX_PFSTS);
        vf.mbx.write_control(r::MBX_ACK, &PF);
        // A request answered but its reply not read yet: the message waits for the ACK.
        vf.mbx.mem[0] = mbx::GET_QUEUES;
        vf.mbx.write_control(r::MBX_REQ, &PF);
        vf.read();
        assert!(!vf.mbx.post(mbx::PF_CONTROL_MSG));
        assert!(!vf.mbx.post(0x2000_0100), "the latest one wins");
        assert_eq!(vf.mbx.mem[0], 0x6000_0009, "the reply is intact");
        vf.mbx.write_control(r::MBX_VFU, &PF);
        assert!(vf.mbx.write_control(r::MBX_ACK, &PF), "posted on ACK");
        assert_eq!(vf.mbx.mem[0], 0x2000_0100);
        assert_eq!(vf.read() & r::MBX_PFSTS, r::MBX_PFSTS);
        // The VF holds the buffer: the message waits until it lets go.
        vf.mbx.write_control(r::MBX_VFU, &PF);
        assert!(!vf.mbx.post(mbx::PF_CONTROL_MSG));
        assert!(vf.mbx.write_control(0, &PF));
        assert_eq!(vf.mbx.mem[0], mbx::PF_CONTROL_MSG);
    }

    #[test]
    fn a_vf_reset_forgets_everything_and_sets_rstd_once() {
        let mut vf = Vf::new();
        vf.call(&[mbx::RESET]);
        vf.call(&[mbx::API_NEGOTIATE, mbx::API_13, 0]);
        vf.mbx.vf_reset(MAC);
        assert!(!vf.mbx.cts);
        assert_eq!(vf.mbx.api, mbx::API_10);
        assert_eq!(vf.read(), r::MBX_RSTD);
        assert_eq!(vf.read() & (r::MBX_RSTD | r::MBX_RSTI), 0);
        assert_eq!(vf.mbx.control_word(), 0x0100, "no CTS before RESET");
    }
}
