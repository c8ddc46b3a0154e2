//! The guest side of the protocol: [`Agent`] turns the bytes host-vmm sends into calls on
//! the kernel's [`NicControl`] and encoded replies.
//!
//! It is poll-driven and owns nothing but two fixed buffers: the kernel reads whatever the
//! control channel has, hands it to [`Agent::on_input`], and sends each reply the agent
//! emits. No thread, no allocation, no blocking; a request is answered within the call that
//! completes it.
//!
//! ```ignore
//! let n = console.recv(&mut bytes);
//! if n > 0 {
//!     agent.on_input(&bytes[..n], &mut nics, &mut |reply| { let _ = console.send(reply); });
//! }
//! ```

use crate::protocol::{
    self, Decoded, ErrorCode, ErrorText, MAX_FRAME, Nic, Reply, Request, Status,
};
use core::fmt::{self, Write};

/// What the agent needs from the kernel: the failover device's controls.
pub trait NicControl {
    /// Makes `nic` the active NIC (transmit goes through it from now on).
    fn switch(&mut self, nic: Nic) -> Result<(), SwitchError>;
    /// The NICs' state and counters now.
    fn status(&self) -> Status;
}

/// Why a switch was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchError {
    /// The guest does not have that NIC (never probed, or removed).
    NotPresent,
    /// Its link is down.
    LinkDown,
    /// Anything else, said in a few words.
    Failed(&'static str),
}

impl fmt::Display for SwitchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchError::NotPresent => f.write_str("the guest has no such NIC"),
            SwitchError::LinkDown => f.write_str("its link is down"),
            SwitchError::Failed(why) => f.write_str(why),
        }
    }
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
        }
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
            match protocol::decode::<Request>(&self.buf[start..self.len]) {
                Decoded::Incomplete => break,
                Decoded::Frame { seq, message, len } => {
                    start += len;
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
                Err(e) => {
                    self.counters.errors += 1;
                    let mut text = ErrorText::empty();
                    let _ = write!(text, "cannot switch to {nic}: {e}");
                    Reply::Error(ErrorCode::Refused, text)
                }
            },
        }
    }
}

fn reply_with(seq: u16, reply: &Reply, send: &mut impl FnMut(&[u8])) {
    let mut out = [0u8; MAX_FRAME];
    let n = protocol::encode(seq, reply, &mut out);
    send(&out[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FrameError, HEADER_LEN, NicStatus, encode, encode_raw, kind};
    use proptest::prelude::*;

    /// A failover device on paper: the VF can be missing or down.
    #[derive(Default)]
    struct FakeNics {
        status: Status,
        calls: Vec<Nic>,
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
                calls: Vec::new(),
            }
        }
    }

    impl NicControl for FakeNics {
        fn switch(&mut self, nic: Nic) -> Result<(), SwitchError> {
            self.calls.push(nic);
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
            }
            Ok(())
        }

        fn status(&self) -> Status {
            self.status
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
            .map(|f| match protocol::decode::<Reply>(f) {
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
        assert_eq!(nics.calls, vec![Nic::Vf]);
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
        let replies = run(&mut agent, &mut nics, &input);
        let codes: Vec<_> = replies
            .iter()
            .map(|(seq, r)| match r {
                Reply::Error(code, _) => (*seq, Some(*code)),
                Reply::Status(_) => (*seq, None),
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
        assert_eq!(agent.counters().errors, 4);
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
                let r = if i % 2 == 0 { Request::Status } else { Request::Switch(Nic::Vf) };
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
