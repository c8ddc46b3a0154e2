//! The guest side of the protocol (`agent_proto`): [`Agent`] turns the bytes host-vmm sends
//! into calls on the kernel's [`NicControl`] and encoded replies.
//!
//! It is poll-driven and owns nothing but two fixed buffers: the kernel reads whatever the
//! control channel has, hands it to [`Agent::on_input`], and sends each reply the agent
//! emits. No thread, no allocation, no blocking; a request is answered within the call that
//! completes it (so a reply to PREPARE means the VF is already released).
//!
//! What each request does through [`NicControl`]:
//! - SWITCH: `switch`, then the status.
//! - STATUS: the status.
//! - PREPARE (before a move): refused, changing nothing, unless virtio-net is present with
//!   its link up; else `switch(Virtio)` (which pins it), then `release_vf`. Asked again, it
//!   finds virtio-net active and no VF, and says so.
//! - RESUMED (after a move): `after_move` (clock and timers), `reattach_vf` (a fresh PCI
//!   scan), `switch(Vf)` when the VF is there with its link up, and `announce` in every case,
//!   so the L2 learns the new port even without a VF. Asked again, it keeps the VF it has
//!   and announces once more.
//!
//! ```text
//! let n = console.recv(&mut bytes);
//! if n > 0 {
//!     agent.on_input(&bytes[..n], &mut nics, &mut |reply| { let _ = console.send(reply); });
//! }
//! ```

use agent_proto::{
    Decoded, ErrorCode, ErrorText, MAX_FRAME, Nic, Prepared, Reply, Request, Resumed, Status,
    SwitchError,
};
use core::fmt::{self, Write};

/// What the agent needs from the kernel: the failover device's controls.
pub trait NicControl {
    /// Makes `nic` the active NIC (transmit goes through it from now on).
    fn switch(&mut self, nic: Nic) -> Result<(), SwitchError>;
    /// The NICs' state and counters now.
    fn status(&self) -> Status;
    // The move hooks below have defaults for controllers with no VF life cycle and no way
    // to send (test doubles); the kernel implements them all.

    /// Stops using the VF before a move: resets it through its driver (no more DMA), frees
    /// its rings and buffers, and keeps it absent (no automatic re-probe, no switch back)
    /// until [`NicControl::reattach_vf`]. Returns whether a VF was in use. Bounded in time.
    fn release_vf(&mut self) -> bool {
        false
    }
    /// First thing after a move: the kernel checks its clock and re-arms its timers (the
    /// host's TSC and the restored timer deadline may be off).
    fn after_move(&mut self) {}
    /// After a move: keeps a VF in use if it still answers, else scans the PCI bus for one
    /// (the destination may have one at any slot, or none) and brings it up; from now on
    /// traffic may return to the VF automatically once its link is up. Returns whether a VF
    /// is in use. Bounded in time.
    fn reattach_vf(&mut self) -> bool {
        self.status().vf.present
    }
    /// Sends a gratuitous ARP on the active NIC; whether it went out.
    fn announce(&mut self) -> bool {
        false
    }
    /// Gratuitous ARPs sent so far, by [`NicControl::announce`] or by a change of active
    /// NIC (which announces on its own): RESUMED sends one only when nothing else did.
    fn announcements(&self) -> u64 {
        0
    }
}

/// How the agent treats PREPARE. Anything but [`OnPrepare::Obey`] is a test knob (the
/// kernel's `agent.test=refuse-prepare|stall-prepare`, docs/boot-abi.md): a guest that will
/// not cooperate with a move, for host-vmm's `migrate --force`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnPrepare {
    /// Carry it out (every production guest).
    #[default]
    Obey,
    /// Refuse it, changing nothing.
    Refuse,
    /// Never answer it (the request is taken and dropped; later ones are answered).
    Stall,
}

/// What the agent has done, for the kernel's debug log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentCounters {
    /// Requests carried out.
    pub requests: u64,
    /// Frames answered with an error (malformed, unknown, or refused).
    pub errors: u64,
    /// Bytes dropped while looking for a frame.
    pub skipped_bytes: u64,
}

/// The guest agent: a frame decoder over a fixed buffer, and the request handler.
#[derive(Clone, Debug)]
pub struct Agent {
    buf: [u8; MAX_FRAME],
    len: usize,
    counters: AgentCounters,
    on_prepare: OnPrepare,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new()
    }
}

impl Agent {
    /// An agent with nothing buffered (`const`, so it can live in a static).
    pub const fn new() -> Agent {
        Agent {
            buf: [0; MAX_FRAME],
            len: 0,
            counters: AgentCounters {
                requests: 0,
                errors: 0,
                skipped_bytes: 0,
            },
            on_prepare: OnPrepare::Obey,
        }
    }

    /// An agent that treats PREPARE as `on_prepare` says (a test knob).
    pub const fn with_prepare(on_prepare: OnPrepare) -> Agent {
        let mut agent = Agent::new();
        agent.on_prepare = on_prepare;
        agent
    }

    /// What the agent has done so far.
    pub fn counters(&self) -> AgentCounters {
        self.counters
    }

    /// Bytes of an incomplete frame held for the next call.
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// Takes bytes from the control channel: every complete request is carried out on
    /// `nics` and its reply passed to `send` (one whole frame per call), in order.
    pub fn on_input(
        &mut self,
        mut input: &[u8],
        nics: &mut impl NicControl,
        send: &mut impl FnMut(&[u8]),
    ) {
        loop {
            let n = (MAX_FRAME - self.len).min(input.len());
            self.buf[self.len..self.len + n].copy_from_slice(&input[..n]);
            self.len += n;
            input = &input[n..];
            self.drain(nics, send);
            if self.len == MAX_FRAME {
                // Cannot happen (the decoder never waits on a full frame buffer); never
                // stall on it either.
                self.counters.skipped_bytes += self.len as u64;
                self.len = 0;
            }
            if input.is_empty() {
                return;
            }
        }
    }

    /// Decodes and handles every complete frame in the buffer; keeps the incomplete rest.
    fn drain(&mut self, nics: &mut impl NicControl, send: &mut impl FnMut(&[u8])) {
        let mut start = 0;
        while start < self.len {
            match agent_proto::decode::<Request>(&self.buf[start..self.len]) {
                Decoded::Incomplete => break,
                Decoded::Frame { seq, message, len } => {
                    start += len;
                    if message == Request::Prepare && self.on_prepare == OnPrepare::Stall {
                        continue;
                    }
                    let reply = self.handle(message, nics);
                    reply_with(seq, &reply, send);
                }
                Decoded::Invalid { error, seq, skip } => {
                    start += skip;
                    match seq {
                        Some(seq) => {
                            self.counters.errors += 1;
                            let mut text = ErrorText::empty();
                            let _ = write!(text, "{error}");
                            reply_with(seq, &Reply::Error(error.code(), text), send);
                        }
                        None => self.counters.skipped_bytes += skip as u64,
                    }
                }
            }
        }
        self.buf.copy_within(start..self.len, 0);
        self.len -= start;
    }

    fn handle(&mut self, request: Request, nics: &mut impl NicControl) -> Reply {
        match request {
            Request::Status => {
                self.counters.requests += 1;
                Reply::Status(nics.status())
            }
            Request::Switch(nic) => match nics.switch(nic) {
                Ok(()) => {
                    self.counters.requests += 1;
                    Reply::Status(nics.status())
                }
                Err(e) => self.refuse(format_args!("cannot switch to {nic}: {e}")),
            },
            Request::Prepare => self.prepare(nics),
            Request::Resumed => self.resumed(nics),
        }
    }

    /// PREPARE: traffic to virtio-net, then the VF released. Refused, changing nothing, if
    /// virtio-net cannot carry the traffic.
    fn prepare(&mut self, nics: &mut impl NicControl) -> Reply {
        if self.on_prepare == OnPrepare::Refuse {
            return self.refuse(format_args!("cannot prepare: agent.test=refuse-prepare"));
        }
        if !nics.status().virtio.present {
            return self.refuse(format_args!("cannot prepare: the guest has no virtio-net"));
        }
        if let Err(e) = nics.switch(Nic::Virtio) {
            return self.refuse(format_args!("cannot prepare: virtio-net: {e}"));
        }
        let released_vf = nics.release_vf();
        self.counters.requests += 1;
        Reply::Prepared(Prepared {
            released_vf,
            status: nics.status(),
        })
    }

    /// RESUMED: clock, VF, switch back, announce (once: a switch back announced already).
    /// Never refused: whatever the destination has, the guest runs on it and says how.
    fn resumed(&mut self, nics: &mut impl NicControl) -> Reply {
        let before = nics.announcements();
        nics.after_move();
        let vf_attached = nics.reattach_vf();
        if vf_attached && nics.status().vf.link_up {
            // A refusal (the link went down in between) leaves traffic on virtio-net, and
            // the failover device moves it once the link is back: nothing to report.
            let _ = nics.switch(Nic::Vf);
        }
        let announced = nics.announcements() != before || nics.announce();
        self.counters.requests += 1;
        Reply::Resumed(Resumed {
            vf_attached,
            announced,
            status: nics.status(),
        })
    }

    fn refuse(&mut self, why: fmt::Arguments<'_>) -> Reply {
        self.counters.errors += 1;
        let mut text = ErrorText::empty();
        let _ = text.write_fmt(why);
        Reply::Error(ErrorCode::Refused, text)
    }
}

fn reply_with(seq: u16, reply: &Reply, send: &mut impl FnMut(&[u8])) {
    let mut out = [0u8; MAX_FRAME];
    let n = agent_proto::encode(seq, reply, &mut out);
    send(&out[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_proto::{FrameError, HEADER_LEN, NicStatus, encode, encode_raw, kind};
    use proptest::prelude::*;

    /// What the agent asked of the fake NICs, in order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Call {
        Switch(Nic),
        Release,
        AfterMove,
        Reattach,
        Announce,
    }

    /// A failover device on paper: the VF can be missing or down; `bus_vf` is what a PCI
    /// scan would find (the machine the guest runs on now).
    #[derive(Default)]
    struct FakeNics {
        status: Status,
        calls: Vec<Call>,
        /// A VF on the bus, and whether its link comes up.
        bus_vf: Option<bool>,
        /// Released, and not re-attached since.
        released: bool,
        /// Gratuitous ARPs: from `announce` and from switches that changed the active NIC
        /// (as the kernel's stack announces on a switch).
        announcements: u64,
    }

    impl FakeNics {
        fn both_up() -> FakeNics {
            let up = NicStatus {
                present: true,
                link_up: true,
                ..NicStatus::default()
            };
            FakeNics {
                status: Status {
                    active: Some(Nic::Virtio),
                    vf: up,
                    virtio: up,
                    switches: 0,
                },
                bus_vf: Some(true),
                ..FakeNics::default()
            }
        }

        /// Both up, traffic on the VF.
        fn on_vf() -> FakeNics {
            let mut nics = FakeNics::both_up();
            nics.status.active = Some(Nic::Vf);
            nics
        }

        fn switches(&self) -> Vec<Nic> {
            self.calls
                .iter()
                .filter_map(|c| match c {
                    Call::Switch(nic) => Some(*nic),
                    _ => None,
                })
                .collect()
        }
    }

    impl NicControl for FakeNics {
        fn switch(&mut self, nic: Nic) -> Result<(), SwitchError> {
            self.calls.push(Call::Switch(nic));
            let s = match nic {
                Nic::Vf => self.status.vf,
                Nic::Virtio => self.status.virtio,
            };
            if !s.present {
                return Err(SwitchError::NotPresent);
            }
            if !s.link_up {
                return Err(SwitchError::LinkDown);
            }
            if self.status.active != Some(nic) {
                self.status.active = Some(nic);
                self.status.switches += 1;
                self.announcements += 1;
            }
            Ok(())
        }

        fn status(&self) -> Status {
            self.status
        }

        fn release_vf(&mut self) -> bool {
            self.calls.push(Call::Release);
            assert_ne!(self.status.active, Some(Nic::Vf), "released while in use");
            let had = self.status.vf.present;
            self.status.vf.present = false;
            self.status.vf.link_up = false;
            self.released = true;
            had
        }

        fn after_move(&mut self) {
            self.calls.push(Call::AfterMove);
        }

        fn reattach_vf(&mut self) -> bool {
            self.calls.push(Call::Reattach);
            self.released = false;
            if !self.status.vf.present
                && let Some(link_up) = self.bus_vf
            {
                self.status.vf.present = true;
                self.status.vf.link_up = link_up;
            }
            self.status.vf.present
        }

        fn announce(&mut self) -> bool {
            self.calls.push(Call::Announce);
            self.announcements += 1;
            self.status.active.is_some()
        }

        fn announcements(&self) -> u64 {
            self.announcements
        }
    }

    fn request(seq: u16, r: Request) -> Vec<u8> {
        let mut out = [0u8; MAX_FRAME];
        let n = encode(seq, &r, &mut out);
        out[..n].to_vec()
    }

    /// Feeds `input` in one call; returns the decoded replies.
    fn run(agent: &mut Agent, nics: &mut FakeNics, input: &[u8]) -> Vec<(u16, Reply)> {
        let mut out = Vec::new();
        agent.on_input(input, nics, &mut |bytes: &[u8]| out.push(bytes.to_vec()));
        out.iter()
            .map(|f| match agent_proto::decode::<Reply>(f) {
                Decoded::Frame { seq, message, len } => {
                    assert_eq!(len, f.len(), "one frame per send");
                    (seq, message)
                }
                other => panic!("the agent sent a bad frame: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn status_is_answered_with_the_same_sequence_number() {
        let mut nics = FakeNics::both_up();
        let mut agent = Agent::new();
        let replies = run(&mut agent, &mut nics, &request(41, Request::Status));
        assert_eq!(replies, vec![(41, Reply::Status(nics.status))]);
        assert_eq!(agent.counters().requests, 1);
        assert_eq!(agent.buffered(), 0);
    }

    #[test]
    fn switch_calls_the_nics_and_replies_with_the_new_state() {
        let mut nics = FakeNics::both_up();
        let mut agent = Agent::new();
        let replies = run(&mut agent, &mut nics, &request(1, Request::Switch(Nic::Vf)));
        assert_eq!(nics.calls, vec![Call::Switch(Nic::Vf)]);
        let [(1, Reply::Status(s))] = replies[..] else {
            panic!("{replies:?}");
        };
        assert_eq!((s.active, s.switches), (Some(Nic::Vf), 1));
    }

    #[test]
    fn a_refused_switch_is_an_error_reply_saying_why() {
        let mut nics = FakeNics::both_up();
        nics.status.vf.link_up = false;
        let mut agent = Agent::new();
        let replies = run(&mut agent, &mut nics, &request(9, Request::Switch(Nic::Vf)));
        assert_eq!(
            replies,
            vec![(
                9,
                Reply::Error(
                    ErrorCode::Refused,
                    ErrorText::new("cannot switch to vf: its link is down")
                )
            )]
        );
        assert_eq!(nics.status.active, Some(Nic::Virtio), "unchanged");
        nics.status.vf.present = false;
        let replies = run(
            &mut agent,
            &mut nics,
            &request(10, Request::Switch(Nic::Vf)),
        );
        assert!(
            matches!(replies[..], [(10, Reply::Error(ErrorCode::Refused, t))] if t.as_str().contains("no such NIC"))
        );
    }

    #[test]
    fn a_request_split_over_many_calls_is_answered_once_complete() {
        let mut nics = FakeNics::both_up();
        let mut agent = Agent::new();
        let f = request(5, Request::Switch(Nic::Vf));
        for b in &f[..f.len() - 1] {
            assert!(run(&mut agent, &mut nics, &[*b]).is_empty());
        }
        assert_eq!(agent.buffered(), f.len() - 1);
        let replies = run(&mut agent, &mut nics, &f[f.len() - 1..]);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].0, 5);
    }

    #[test]
    fn malformed_frames_get_error_replies_and_garbage_is_skipped() {
        let mut nics = FakeNics::both_up();
        let mut agent = Agent::new();
        let mut input = b"noise".to_vec();
        let mut out = [0u8; MAX_FRAME];
        let n = encode_raw(2, kind::STATUS, 20, &[], &mut out).unwrap();
        input.extend(&out[..n]);
        let n = encode_raw(1, 0x7E, 21, &[], &mut out).unwrap();
        input.extend(&out[..n]);
        let n = encode_raw(1, kind::SWITCH, 22, &[0], &mut out).unwrap();
        input.extend(&out[..n]);
        let mut bad_check = request(23, Request::Status);
        bad_check[HEADER_LEN] ^= 1; // the payload check (the payload is empty)
        input.extend(&bad_check);
        input.extend(request(24, Request::Status));
        // PREPARE and RESUMED carry no payload: one with a payload is not carried out.
        let n = encode_raw(1, kind::PREPARE, 25, &[0], &mut out).unwrap();
        input.extend(&out[..n]);
        let n = encode_raw(1, kind::RESUMED, 26, &[1, 2], &mut out).unwrap();
        input.extend(&out[..n]);
        let replies = run(&mut agent, &mut nics, &input);
        let codes: Vec<_> = replies
            .iter()
            .map(|(seq, r)| match r {
                Reply::Error(code, _) => (*seq, Some(*code)),
                _ => (*seq, None),
            })
            .collect();
        assert_eq!(
            codes,
            vec![
                (20, Some(ErrorCode::UnsupportedVersion)),
                (21, Some(ErrorCode::UnknownKind)),
                (22, Some(ErrorCode::BadPayload)),
                (23, Some(ErrorCode::BadChecksum)),
                (24, None),
                (25, Some(ErrorCode::BadPayload)),
                (26, Some(ErrorCode::BadPayload)),
            ]
        );
        assert!(nics.calls.is_empty(), "nothing malformed was carried out");
        let Reply::Error(_, text) = replies[0].1 else {
            unreachable!()
        };
        assert_eq!(
            text.as_str(),
            FrameError::UnsupportedVersion(2).to_string().as_str()
        );
        assert!(agent.counters().skipped_bytes >= 5);
        assert_eq!(agent.counters().errors, 6);
    }

    #[test]
    fn a_corrupt_header_is_dropped_without_a_reply() {
        let mut nics = FakeNics::both_up();
        let mut agent = Agent::new();
        let mut input = request(1, Request::Status);
        input[5] ^= 0x40; // the sequence number: the header check fails
        input.extend(request(2, Request::Status));
        let replies = run(&mut agent, &mut nics, &input);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].0, 2);
    }

    #[test]
    fn a_truncated_frame_delays_but_does_not_lose_later_requests() {
        // A header announcing a long payload, then only the next real requests: the decoder
        // waits for the announced length, the payload check fails, and the real requests are
        // found inside and answered in order.
        let mut nics = FakeNics::both_up();
        let mut agent = Agent::new();
        let mut out = [0u8; MAX_FRAME];
        let n = encode_raw(1, kind::SWITCH, 7, &[1; 200], &mut out).unwrap();
        let mut input = out[..HEADER_LEN].to_vec();
        assert!(n > input.len());
        input.extend(request(8, Request::Status));
        let mut replies = run(&mut agent, &mut nics, &input);
        // The rest arrives as later traffic (more requests).
        for seq in 9..30 {
            replies.extend(run(&mut agent, &mut nics, &request(seq, Request::Status)));
        }
        let seqs: Vec<u16> = replies.iter().map(|(s, _)| *s).collect();
        assert!(seqs.contains(&8), "{seqs:?}");
        assert!(seqs.contains(&29), "{seqs:?}");
        assert!(agent.buffered() < MAX_FRAME);
    }

    /// The one reply to `r` sent as request `seq`.
    fn ask(agent: &mut Agent, nics: &mut FakeNics, seq: u16, r: Request) -> Reply {
        let replies = run(agent, nics, &request(seq, r));
        let [(got, reply)] = replies[..] else {
            panic!("{replies:?}");
        };
        assert_eq!(got, seq);
        reply
    }

    #[test]
    fn prepare_moves_traffic_to_virtio_then_releases_the_vf() {
        let mut nics = FakeNics::on_vf();
        let mut agent = Agent::new();
        let reply = ask(&mut agent, &mut nics, 3, Request::Prepare);
        assert_eq!(nics.calls, vec![Call::Switch(Nic::Virtio), Call::Release]);
        let Reply::Prepared(p) = reply else {
            panic!("{reply:?}")
        };
        assert!(p.released_vf);
        assert_eq!(p.status.active, Some(Nic::Virtio));
        assert!(!p.status.vf.present);
        assert!(nics.released);
        assert_eq!(agent.counters().requests, 1);
    }

    #[test]
    fn prepare_is_idempotent_and_fine_without_a_vf() {
        let mut nics = FakeNics::on_vf();
        let mut agent = Agent::new();
        let first = ask(&mut agent, &mut nics, 1, Request::Prepare);
        let again = ask(&mut agent, &mut nics, 2, Request::Prepare);
        let (Reply::Prepared(first), Reply::Prepared(again)) = (first, again) else {
            panic!("{first:?} {again:?}")
        };
        assert!(first.released_vf && !again.released_vf);
        assert_eq!(again.status, first.status, "the retry changed nothing");
        assert_eq!(first.status.switches, 1);
        // A guest that never had a VF: PREPARE only confirms virtio-net.
        let mut nics = FakeNics::both_up();
        nics.status.vf = NicStatus::default();
        let reply = ask(&mut agent, &mut nics, 3, Request::Prepare);
        assert!(
            matches!(reply, Reply::Prepared(p) if !p.released_vf && p.status.active == Some(Nic::Virtio) && p.status.switches == 0),
            "{reply:?}"
        );
    }

    #[test]
    fn prepare_without_a_usable_virtio_net_is_refused_and_keeps_the_vf() {
        let mut agent = Agent::new();
        let mut nics = FakeNics::on_vf();
        nics.status.virtio = NicStatus::default();
        let reply = ask(&mut agent, &mut nics, 4, Request::Prepare);
        assert_eq!(
            reply,
            Reply::Error(
                ErrorCode::Refused,
                ErrorText::new("cannot prepare: the guest has no virtio-net")
            )
        );
        let mut down = FakeNics::on_vf();
        down.status.virtio.link_up = false;
        let reply = ask(&mut agent, &mut down, 5, Request::Prepare);
        assert!(
            matches!(reply, Reply::Error(ErrorCode::Refused, t) if t.as_str() == "cannot prepare: virtio-net: its link is down"),
            "{reply:?}"
        );
        for n in [&nics, &down] {
            assert!(!n.calls.contains(&Call::Release), "the VF stays in use");
            assert_eq!(n.status.active, Some(Nic::Vf));
        }
        assert_eq!(agent.counters().errors, 2);
    }

    #[test]
    fn the_refuse_knob_refuses_prepare_and_changes_nothing() {
        let mut agent = Agent::with_prepare(OnPrepare::Refuse);
        let mut nics = FakeNics::on_vf();
        let reply = ask(&mut agent, &mut nics, 6, Request::Prepare);
        assert!(
            matches!(&reply, Reply::Error(ErrorCode::Refused, t) if t.as_str().contains("agent.test=refuse-prepare")),
            "{reply:?}"
        );
        assert!(nics.calls.is_empty(), "{:?}", nics.calls);
        // Everything else is answered as usual.
        assert!(matches!(
            ask(&mut agent, &mut nics, 7, Request::Status),
            Reply::Status(_)
        ));
    }

    #[test]
    fn the_stall_knob_never_answers_prepare_but_answers_the_rest() {
        let mut agent = Agent::with_prepare(OnPrepare::Stall);
        let mut nics = FakeNics::on_vf();
        let mut input = request(8, Request::Prepare);
        input.extend(request(9, Request::Status));
        let replies = run(&mut agent, &mut nics, &input);
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0].0, 9, "only STATUS is answered");
        assert!(nics.calls.is_empty(), "PREPARE was not carried out");
        assert_eq!(agent.buffered(), 0, "nothing left pending");
    }

    #[test]
    fn resumed_reattaches_a_vf_switches_back_and_announces_once() {
        let mut nics = FakeNics::on_vf();
        let mut agent = Agent::new();
        ask(&mut agent, &mut nics, 1, Request::Prepare);
        nics.calls.clear();
        let before = nics.announcements;
        let reply = ask(&mut agent, &mut nics, 2, Request::Resumed);
        assert_eq!(
            nics.calls,
            vec![Call::AfterMove, Call::Reattach, Call::Switch(Nic::Vf)],
            "clock first; the switch back to the VF announced, so no second ARP"
        );
        assert_eq!(nics.announcements, before + 1, "one gratuitous ARP");
        let Reply::Resumed(r) = reply else {
            panic!("{reply:?}")
        };
        assert!(r.vf_attached && r.announced);
        assert_eq!(r.status.active, Some(Nic::Vf));
        assert!(!nics.released);
        // Retried: the VF is kept, nothing switches, the address is announced again.
        let again = ask(&mut agent, &mut nics, 3, Request::Resumed);
        assert!(
            matches!(again, Reply::Resumed(a) if a.vf_attached && a.status == r.status),
            "{again:?}"
        );
        assert_eq!(nics.calls.last(), Some(&Call::Announce));
        assert_eq!(nics.announcements, before + 2);
    }

    #[test]
    fn resumed_without_a_vf_or_with_its_link_down_stays_on_virtio_and_announces() {
        let mut agent = Agent::new();
        for bus_vf in [None, Some(false)] {
            let mut nics = FakeNics::on_vf();
            nics.bus_vf = bus_vf;
            ask(&mut agent, &mut nics, 1, Request::Prepare);
            let before = nics.announcements;
            let reply = ask(&mut agent, &mut nics, 2, Request::Resumed);
            let Reply::Resumed(r) = reply else {
                panic!("{reply:?}")
            };
            assert_eq!(r.vf_attached, bus_vf.is_some(), "{bus_vf:?}");
            assert!(r.announced, "announced even without the VF");
            assert_eq!(r.status.active, Some(Nic::Virtio));
            assert_eq!(nics.switches(), vec![Nic::Virtio], "no switch back");
            assert_eq!(nics.announcements, before + 1, "RESUMED's own ARP, once");
        }
    }

    #[test]
    fn an_agent_answers_a_kind_it_does_not_know_with_unknown_kind() {
        // What an agent from before PREPARE and RESUMED did, and what this one does for
        // the next kinds: an error reply, never silence.
        let mut nics = FakeNics::both_up();
        let mut agent = Agent::new();
        let mut out = [0u8; MAX_FRAME];
        for (seq, k) in [(1, 0x05), (2, 0x7F), (3, kind::REPLY_PREPARED)] {
            let n = encode_raw(1, k, seq, &[], &mut out).unwrap();
            let replies = run(&mut agent, &mut nics, &out[..n]);
            assert!(
                matches!(replies[..], [(s, Reply::Error(ErrorCode::UnknownKind, _))] if s == seq),
                "{k:#x}: {replies:?}"
            );
        }
        assert!(nics.calls.is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics_and_every_reply_is_a_frame(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)
        ) {
            let mut nics = FakeNics::both_up();
            let mut agent = Agent::new();
            for c in &chunks {
                run(&mut agent, &mut nics, c);
                prop_assert!(agent.buffered() < MAX_FRAME);
            }
        }

        #[test]
        fn a_stream_of_requests_in_any_chunking_is_answered_in_order(
            seqs in proptest::collection::vec(any::<u16>(), 1..20),
            cuts in proptest::collection::vec(1usize..40, 1..50),
        ) {
            let mut stream = Vec::new();
            for (i, &seq) in seqs.iter().enumerate() {
                let r = match i % 4 {
                    0 => Request::Status,
                    1 => Request::Switch(Nic::Vf),
                    2 => Request::Prepare,
                    _ => Request::Resumed,
                };
                stream.extend(request(seq, r));
            }
            let mut nics = FakeNics::both_up();
            let mut agent = Agent::new();
            let mut replies = Vec::new();
            let mut rest = &stream[..];
            let mut cuts = cuts.iter().cycle();
            while !rest.is_empty() {
                let n = (*cuts.next().unwrap()).min(rest.len());
                replies.extend(run(&mut agent, &mut nics, &rest[..n]));
                rest = &rest[n..];
            }
            let got: Vec<u16> = replies.iter().map(|(s, _)| *s).collect();
            prop_assert_eq!(got, seqs);
        }
    }
}
