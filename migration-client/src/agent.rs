//! The guest side of the protocol (`agent_proto`): [`Agent`] turns the bytes host-vmm sends
//! into calls on the kernel's [`NicControl`] and encoded replies.
//!
//! It is poll-driven and owns nothing but two fixed buffers: the kernel reads whatever the
//! control channel has, hands it to [`Agent::on_input`], and sends each reply the agent
//! emits. No thread, no allocation, no blocking. PREPARE and RESUMED wait on devices (a
//! drain, the VF's bring-up), so they are jobs: each [`Agent::advance`] takes one bounded
//! step, and the kernel polls its network between steps. The reply goes out with the last
//! step (so a reply to PREPARE still means the VF is already released); requests that
//! arrive meanwhile stay buffered and are answered in order afterwards.
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
//! - SERVICE: the figures of [`Agent::service`].
//!
//! ```text
//! if agent.busy() {
//!     agent.advance(&mut nics, &mut send);
//! } else {
//!     let n = console.recv(&mut bytes[..agent.room()]);
//!     agent.on_input(&bytes[..n], &mut nics, &mut send);
//! }
//! agent.record_step(time_spent_above);
//! ```

use agent_proto::{
    Decoded, ErrorCode, ErrorText, MAX_FRAME, Nic, Prepared, Reply, Request, Resumed, Service,
    Status, SwitchError,
};
use core::fmt::{self, Write};

/// Where a piece of work that waits on a device stands after one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Not done: call again after the network has had its pass.
    Pending,
    /// Done, with its result.
    Done(T),
}

/// What the agent needs from the kernel: the failover device's controls.
pub trait NicControl {
    /// Makes `nic` the active NIC (transmit goes through it from now on).
    fn switch(&mut self, nic: Nic) -> Result<(), SwitchError>;
    /// The NICs' state and counters now.
    fn status(&self) -> Status;
    // The move hooks below have defaults for controllers with no VF life cycle and no way
    // to send (test doubles); the kernel implements them all.

    /// One step of stopping the VF before a move: frames on their way to it are taken in,
    /// then it is reset through its driver (no more DMA) and kept absent (no automatic
    /// re-probe, no switch back) until [`NicControl::reattach_vf`]. Called until it is done;
    /// the result says whether a VF was in use. Each step is short.
    fn release_vf(&mut self) -> Step<bool> {
        Step::Done(false)
    }
    /// First thing after a move: the kernel checks its clock and re-arms its timers (the
    /// host's TSC and the restored timer deadline may be off).
    fn after_move(&mut self) {}
    /// One step of bringing the VF back after a move: keeps a VF in use if it still
    /// answers, else looks for one on the PCI bus (the destination may have one at any slot,
    /// or none) and brings it up; from then on traffic may return to the VF automatically
    /// once its link is up. Called until it is done; the result says whether a VF is in
    /// use. Each step is short.
    fn reattach_vf(&mut self) -> Step<bool> {
        Step::Done(self.status().vf.present)
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

/// A request that waits on devices, between its first and last step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Job {
    /// The request's sequence number, for the reply.
    seq: u16,
    /// Steps that ended pending so far.
    waited: u32,
    what: JobKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JobKind {
    /// PREPARE: traffic is on virtio-net; the VF is being released.
    Prepare,
    /// RESUMED: the clock is checked; the VF is being brought back. `announcements` is the
    /// count before the request (announce only if nothing else did).
    Resumed { announcements: u64 },
}

/// The guest agent: a frame decoder over a fixed buffer, and the request handler.
#[derive(Clone, Debug)]
pub struct Agent {
    buf: [u8; MAX_FRAME],
    len: usize,
    counters: AgentCounters,
    on_prepare: OnPrepare,
    job: Option<Job>,
    service: Service,
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
            job: None,
            service: Service {
                longest_step_ns: 0,
                steps: 0,
                deferred: 0,
            },
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

    /// Bytes held for the next call: an incomplete frame, or requests waiting behind a job.
    pub fn buffered(&self) -> usize {
        self.len
    }

    /// Bytes [`Agent::on_input`] takes now (read no more from the channel than this).
    pub fn room(&self) -> usize {
        MAX_FRAME - self.len
    }

    /// Whether a request is under way: call [`Agent::advance`] after each network pass.
    pub fn busy(&self) -> bool {
        self.job.is_some()
    }

    /// How the agent's work shared the CPU with the network so far.
    pub fn service(&self) -> Service {
        self.service
    }

    /// Records how long one call into the agent kept the network waiting (the kernel
    /// times [`Agent::on_input`] and [`Agent::advance`]); SERVICE reports the longest.
    pub fn record_step(&mut self, ns: u64) {
        self.service.steps += 1;
        self.service.longest_step_ns = self.service.longest_step_ns.max(ns);
    }

    /// Takes bytes from the control channel, as many as fit (the return value): every
    /// complete request is carried out on `nics` and its reply passed to `send` (one whole
    /// frame per call), in order. A request that waits on devices starts a job
    /// ([`Agent::busy`]); what follows it waits in the buffer.
    pub fn on_input(
        &mut self,
        input: &[u8],
        nics: &mut impl NicControl,
        send: &mut impl FnMut(&[u8]),
    ) -> usize {
        let mut taken = 0;
        loop {
            let n = self.room().min(input.len() - taken);
            self.buf[self.len..self.len + n].copy_from_slice(&input[taken..taken + n]);
            self.len += n;
            taken += n;
            self.drain(nics, send);
            if self.len == MAX_FRAME && !self.busy() {
                // Cannot happen (the decoder never waits on a full frame buffer); never
                // stall on it either.
                self.counters.skipped_bytes += self.len as u64;
                self.len = 0;
            }
            if taken == input.len() || self.room() == 0 {
                return taken;
            }
        }
    }

    /// One step of the request under way; with its last step its reply goes out, and the
    /// requests buffered behind it are carried out (up to the next job).
    pub fn advance(&mut self, nics: &mut impl NicControl, send: &mut impl FnMut(&[u8])) {
        let Some(job) = self.job.as_mut() else {
            return;
        };
        let reply = match job.what {
            JobKind::Prepare => match nics.release_vf() {
                Step::Pending => None,
                Step::Done(released_vf) => Some(Reply::Prepared(Prepared {
                    released_vf,
                    status: nics.status(),
                })),
            },
            JobKind::Resumed { announcements } => match nics.reattach_vf() {
                Step::Pending => None,
                Step::Done(vf_attached) => {
                    Some(Self::resumed_with(nics, vf_attached, announcements))
                }
            },
        };
        let Some(reply) = reply else {
            job.waited += 1;
            return;
        };
        let (seq, waited) = (job.seq, job.waited);
        self.job = None;
        self.counters.requests += 1;
        if waited > 0 {
            self.service.deferred += 1;
        }
        reply_with(seq, &reply, send);
        self.drain(nics, send);
    }

    /// Decodes and handles every complete frame in the buffer up to the first job; keeps
    /// the rest.
    fn drain(&mut self, nics: &mut impl NicControl, send: &mut impl FnMut(&[u8])) {
        let mut start = 0;
        while start < self.len && self.job.is_none() {
            match agent_proto::decode::<Request>(&self.buf[start..self.len]) {
                Decoded::Incomplete => break,
                Decoded::Frame { seq, message, len } => {
                    start += len;
                    if message == Request::Prepare && self.on_prepare == OnPrepare::Stall {
                        continue;
                    }
                    if let Some(reply) = self.handle(seq, message, nics) {
                        reply_with(seq, &reply, send);
                    }
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

    /// Carries out `request` (sequence number `seq`): its reply, or `None` when it became
    /// the job under way.
    fn handle(&mut self, seq: u16, request: Request, nics: &mut impl NicControl) -> Option<Reply> {
        match request {
            Request::Status => {
                self.counters.requests += 1;
                Some(Reply::Status(nics.status()))
            }
            Request::Switch(nic) => Some(match nics.switch(nic) {
                Ok(()) => {
                    self.counters.requests += 1;
                    Reply::Status(nics.status())
                }
                Err(e) => self.refuse(format_args!("cannot switch to {nic}: {e}")),
            }),
            Request::Prepare => self.prepare(seq, nics),
            Request::Resumed => {
                // Clock and timers first: everything after runs on the destination's time.
                let announcements = nics.announcements();
                nics.after_move();
                self.job = Some(Job {
                    seq,
                    waited: 0,
                    what: JobKind::Resumed { announcements },
                });
                None
            }
            Request::Service => {
                self.counters.requests += 1;
                Some(Reply::Service(self.service))
            }
        }
    }

    /// PREPARE's first step: traffic to virtio-net; the job then releases the VF. Refused,
    /// changing nothing, if virtio-net cannot carry the traffic.
    fn prepare(&mut self, seq: u16, nics: &mut impl NicControl) -> Option<Reply> {
        if self.on_prepare == OnPrepare::Refuse {
            return Some(self.refuse(format_args!("cannot prepare: agent.test=refuse-prepare")));
        }
        if !nics.status().virtio.present {
            return Some(self.refuse(format_args!("cannot prepare: the guest has no virtio-net")));
        }
        if let Err(e) = nics.switch(Nic::Virtio) {
            return Some(self.refuse(format_args!("cannot prepare: virtio-net: {e}")));
        }
        self.job = Some(Job {
            seq,
            waited: 0,
            what: JobKind::Prepare,
        });
        None
    }

    /// RESUMED's last step, once the VF is back or known absent: switch back, announce (once:
    /// a switch back announced already). Never refused: whatever the destination has, the
    /// guest runs on it and says how.
    fn resumed_with(nics: &mut impl NicControl, vf_attached: bool, before: u64) -> Reply {
        if vf_attached && nics.status().vf.link_up {
            // A refusal (the link went down in between) leaves traffic on virtio-net, and
            // the failover device moves it once the link is back: nothing to report.
            let _ = nics.switch(Nic::Vf);
        }
        let announced = nics.announcements() != before || nics.announce();
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
        /// Steps each release or re-attach stays pending before it does its work (a VF
        /// that drains, a mailbox that answers later).
        waits: u32,
        /// Steps left pending in the one under way.
        waiting: Option<u32>,
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

        /// Whether this step of a release or re-attach is still pending.
        fn pending(&mut self) -> bool {
            let left = self.waiting.get_or_insert(self.waits);
            if *left > 0 {
                *left -= 1;
                return true;
            }
            self.waiting = None;
            false
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

        fn release_vf(&mut self) -> Step<bool> {
            if self.pending() {
                return Step::Pending;
            }
            self.calls.push(Call::Release);
            assert_ne!(self.status.active, Some(Nic::Vf), "released while in use");
            let had = self.status.vf.present;
            self.status.vf.present = false;
            self.status.vf.link_up = false;
            self.released = true;
            Step::Done(had)
        }

        fn after_move(&mut self) {
            self.calls.push(Call::AfterMove);
        }

        fn reattach_vf(&mut self) -> Step<bool> {
            if self.pending() {
                return Step::Pending;
            }
            self.calls.push(Call::Reattach);
            self.released = false;
            if !self.status.vf.present
                && let Some(link_up) = self.bus_vf
            {
                self.status.vf.present = true;
                self.status.vf.link_up = link_up;
            }
            Step::Done(self.status.vf.present)
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

    /// Feeds `input` as the kernel does (no more than the agent has room for, each job
    /// advanced to its end before more is read); returns the decoded replies.
    fn run(agent: &mut Agent, nics: &mut FakeNics, mut input: &[u8]) -> Vec<(u16, Reply)> {
        let mut out = Vec::new();
        let mut send = |bytes: &[u8]| out.push(bytes.to_vec());
        let mut steps = 0;
        loop {
            if agent.busy() {
                agent.advance(nics, &mut send);
                steps += 1;
                assert!(steps < 10_000, "a job never ended");
                continue;
            }
            if input.is_empty() {
                break;
            }
            let n = agent.room().min(input.len());
            assert_eq!(agent.on_input(&input[..n], nics, &mut send), n);
            input = &input[n..];
        }
        decode_replies(&out)
    }

    fn decode_replies(out: &[Vec<u8>]) -> Vec<(u16, Reply)> {
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
    fn a_job_that_waits_is_answered_after_its_last_step_and_requests_behind_it_wait() {
        let mut nics = FakeNics::on_vf();
        nics.waits = 3;
        let mut agent = Agent::new();
        let mut input = request(1, Request::Prepare);
        input.extend(request(2, Request::Status));
        let mut out = Vec::new();
        let mut send = |bytes: &[u8]| out.push(bytes.to_vec());
        assert_eq!(agent.on_input(&input, &mut nics, &mut send), input.len());
        assert!(agent.busy(), "PREPARE is under way");
        assert!(agent.buffered() > 0, "STATUS waits behind it");
        for _ in 0..3 {
            agent.advance(&mut nics, &mut send);
            assert!(agent.busy());
        }
        assert_eq!(
            nics.calls,
            vec![Call::Switch(Nic::Virtio)],
            "not released yet"
        );
        agent.advance(&mut nics, &mut send);
        assert!(!agent.busy());
        let replies = decode_replies(&out);
        assert!(
            matches!(&replies[..], [(1, Reply::Prepared(p)), (2, Reply::Status(s))] if p.released_vf && !s.vf.present),
            "{replies:?}"
        );
        assert_eq!(agent.buffered(), 0);
        agent.record_step(5_000);
        agent.record_step(2_000);
        let service = agent.service();
        assert_eq!(
            (service.deferred, service.steps, service.longest_step_ns),
            (1, 2, 5_000)
        );
        assert_eq!(
            ask(&mut agent, &mut nics, 3, Request::Service),
            Reply::Service(service)
        );
    }

    #[test]
    fn a_busy_agent_takes_no_more_than_it_can_hold() {
        let mut nics = FakeNics::on_vf();
        nics.waits = 1;
        let mut agent = Agent::new();
        let mut input = request(1, Request::Resumed);
        for seq in 2..40 {
            input.extend(request(seq, Request::Status));
        }
        let mut out = Vec::new();
        let taken = agent.on_input(&input, &mut nics, &mut |b: &[u8]| out.push(b.to_vec()));
        assert!(taken < input.len(), "took {taken} of {}", input.len());
        assert_eq!(agent.room(), 0);
        assert!(out.is_empty(), "nothing answered before RESUMED");
        // Nothing was dropped: the rest, fed as room frees up, is answered in order.
        let mut replies = run(&mut agent, &mut nics, &[]);
        replies.extend(run(&mut agent, &mut nics, &input[taken..]));
        let seqs: Vec<u16> = replies.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..40).collect::<Vec<u16>>());
        assert_eq!(agent.counters().skipped_bytes, 0);
    }

    #[test]
    fn an_agent_answers_a_kind_it_does_not_know_with_unknown_kind() {
        // What an agent from before PREPARE and RESUMED did, and what this one does for
        // the next kinds: an error reply, never silence.
        let mut nics = FakeNics::both_up();
        let mut agent = Agent::new();
        let mut out = [0u8; MAX_FRAME];
        for (seq, k) in [(1, 0x06), (2, 0x7F), (3, kind::REPLY_PREPARED)] {
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
