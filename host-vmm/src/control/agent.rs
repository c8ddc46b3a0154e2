//! The host's side of the guest-agent protocol: [`AgentLink`] sends one request over the
//! console port and waits for the reply that carries its sequence number.
//!
//! Replies to earlier requests that timed out (a slow guest) arrive late with an older
//! sequence number and are dropped; so are bytes that are not frames. On a timeout the
//! request is withdrawn if the guest has not taken it yet, so it is not carried out later.

use crate::devices::virtio::console::{HostPort, PortFull};
use agent_proto::{Decoded, ErrorCode, FrameError, MAX_FRAME, Prepared, Reply, Request, Resumed};
use std::fmt;
use std::time::{Duration, Instant};

/// How long the guest agent has to answer.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A duration as an operator reads it: whole seconds, else milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait(pub Duration);

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.subsec_millis() {
            0 => write!(f, "{} s", self.0.as_secs()),
            _ => write!(f, "{} ms", self.0.as_millis()),
        }
    }
}

/// Why a request to the guest agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No reply in time.
    #[error(
        "the guest agent did not answer within {0}: is the guest up with its network started \
         (the agent runs once the guest has brought up its NICs)?"
    )]
    Timeout(Wait),
    /// The reply to this request is not a valid frame.
    #[error("the guest agent sent a malformed reply ({0})")]
    Malformed(FrameError),
    /// The agent could not carry the request out.
    #[error("the guest agent refused: {0}")]
    Refused(String),
    /// The agent did not accept the request as sent.
    #[error(
        "the guest agent rejected the request ({code}: {text}); are host-vmm and the guest from the same release?"
    )]
    Rejected {
        /// The error code.
        code: ErrorCode,
        /// The agent's words.
        text: String,
    },
    /// The agent does not know the request: a guest image from before it.
    #[error(
        "the guest agent does not know {0} (a guest image older than this host-vmm); it cannot cooperate with a move"
    )]
    Unsupported(&'static str),
    /// The agent answered with a reply of another request's kind.
    #[error("the guest agent answered {request} with a {reply} reply")]
    Unexpected {
        /// What was asked.
        request: &'static str,
        /// What came back.
        reply: &'static str,
    },
    /// The port to the guest is full.
    #[error(transparent)]
    Full(#[from] PortFull),
}

/// A request's name in messages.
fn request_name(request: Request) -> &'static str {
    match request {
        Request::Switch(_) => "SWITCH",
        Request::Status => "STATUS",
        Request::Prepare => "PREPARE",
        Request::Resumed => "RESUMED",
        Request::Service => "SERVICE",
    }
}

/// A reply's name in messages.
fn reply_name(reply: &Reply) -> &'static str {
    match reply {
        Reply::Status(_) => "STATUS",
        Reply::Prepared(_) => "PREPARE",
        Reply::Resumed(_) => "RESUMED",
        Reply::Service(_) => "SERVICE",
        Reply::Error(..) => "error",
    }
}

/// Requests to the guest agent, one at a time, over a console port.
#[derive(Debug)]
pub struct AgentLink {
    port: HostPort,
    seq: u16,
    /// Bytes from the guest not yet decoded (at most one partial frame between calls).
    pending: Vec<u8>,
    timeout: Duration,
}

impl AgentLink {
    /// A link over `port`; each request waits at most `timeout` for its reply.
    pub fn new(port: HostPort, timeout: Duration) -> AgentLink {
        AgentLink {
            port,
            seq: 0,
            pending: Vec::with_capacity(2 * MAX_FRAME),
            timeout,
        }
    }

    /// Before a move: asks the guest to put its traffic on virtio-net and release the VF;
    /// returns once it has (the VF then does no DMA). Safe to retry after a timeout.
    /// Refused (`AgentError::Refused`) when the guest has no usable virtio-net; an older
    /// guest says `AgentError::Unsupported`.
    pub fn prepare(&mut self) -> Result<Prepared, AgentError> {
        match self.call(Request::Prepare)? {
            Reply::Prepared(p) => Ok(p),
            other => Err(unexpected(Request::Prepare, &other)),
        }
    }

    /// After a move (or a rolled-back one): asks the guest to re-probe its VF, switch back
    /// to it when its link is up, and announce its address; returns what it did. Safe to
    /// retry after a timeout.
    pub fn resumed(&mut self) -> Result<Resumed, AgentError> {
        match self.call(Request::Resumed)? {
            Reply::Resumed(r) => Ok(r),
            other => Err(unexpected(Request::Resumed, &other)),
        }
    }

    /// Sends `request` and returns the agent's reply (an error reply is an `Err`).
    pub fn call(&mut self, request: Request) -> Result<Reply, AgentError> {
        match self.exchange(request) {
            Err(AgentError::Rejected {
                code: ErrorCode::UnknownKind,
                ..
            }) => Err(AgentError::Unsupported(request_name(request))),
            other => other,
        }
    }

    fn exchange(&mut self, request: Request) -> Result<Reply, AgentError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut frame = [0u8; MAX_FRAME];
        let n = agent_proto::encode(seq, &request, &mut frame);
        self.port.send(&frame[..n])?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(result) = self.take_reply(seq) {
                return result;
            }
            // The deadline is checked on every pass, not only when nothing came: a guest
            // that keeps sending bytes other than our reply must not hold us past it.
            if Instant::now() >= deadline {
                let withdrawn = self.port.discard_unsent();
                log::debug!("control: request {seq} timed out ({withdrawn} bytes withdrawn)");
                return Err(AgentError::Timeout(Wait(self.timeout)));
            }
            self.port.recv_until(&mut self.pending, deadline);
        }
    }

    /// Decodes what has arrived; the reply to `seq` if it is there. Everything before it
    /// (late replies, garbage) is dropped; an incomplete frame stays for the next look.
    fn take_reply(&mut self, seq: u16) -> Option<Result<Reply, AgentError>> {
        let mut at = 0;
        let mut found = None;
        while at < self.pending.len() && found.is_none() {
            match agent_proto::decode::<Reply>(&self.pending[at..]) {
                Decoded::Incomplete => break,
                Decoded::Frame {
                    seq: got,
                    message,
                    len,
                } => {
                    at += len;
                    if got == seq {
                        found = Some(match message {
                            Reply::Error(ErrorCode::Refused, text) => {
                                Err(AgentError::Refused(text.as_str().to_owned()))
                            }
                            Reply::Error(code, text) => Err(AgentError::Rejected {
                                code,
                                text: text.as_str().to_owned(),
                            }),
                            reply => Ok(reply),
                        });
                    } else {
                        log::debug!("control: dropping a late reply ({got}, waiting for {seq})");
                    }
                }
                Decoded::Invalid {
                    error,
                    seq: got,
                    skip,
                } => {
                    at += skip;
                    if got == Some(seq) {
                        found = Some(Err(AgentError::Malformed(error)));
                    }
                }
            }
        }
        self.pending.drain(..at);
        found
    }
}

fn unexpected(request: Request, reply: &Reply) -> AgentError {
    AgentError::Unexpected {
        request: request_name(request),
        reply: reply_name(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::test_guest::{self, FakeNics, GuestEnd};
    use agent_proto::{ErrorText, Nic, NicStatus, Status, encode_raw, kind};

    /// A link over a port whose device end the test plays.
    fn link(timeout: Duration) -> (AgentLink, GuestEnd) {
        let (port, guest) = test_guest::pair();
        (AgentLink::new(port, timeout), guest)
    }

    #[test]
    fn the_reply_with_our_sequence_number_is_returned() {
        let (mut link, guest) = link(Duration::from_secs(5));
        let status = Status {
            active: Some(Nic::Virtio),
            switches: 3,
            ..Status::default()
        };
        let agent = guest.answer_with(move |seq, req| {
            assert_eq!(req, Request::Status);
            vec![frame(seq, &Reply::Status(status))]
        });
        assert_eq!(link.call(Request::Status).unwrap(), Reply::Status(status));
        drop(agent);
    }

    #[test]
    fn late_replies_and_garbage_are_skipped() {
        let (mut link, guest) = link(Duration::from_secs(5));
        let agent = guest.answer_with(|seq, _| {
            let mut late = frame(seq.wrapping_sub(1), &Reply::Status(Status::default()));
            late.extend(b"garbage");
            late.extend(frame(
                seq,
                &Reply::Status(Status {
                    switches: 9,
                    ..Status::default()
                }),
            ));
            vec![late]
        });
        let Reply::Status(s) = link.call(Request::Status).unwrap() else {
            panic!()
        };
        assert_eq!(s.switches, 9);
        drop(agent);
    }

    #[test]
    fn no_answer_is_a_timeout_and_the_request_is_withdrawn() {
        let (mut link, guest) = link(Duration::from_millis(50));
        let e = link.call(Request::Status).unwrap_err();
        assert!(matches!(e, AgentError::Timeout(_)), "{e}");
        assert!(e.to_string().contains("did not answer within 50 ms"), "{e}");
        assert_eq!(guest.unsent(), 0, "withdrawn");
    }

    #[test]
    fn error_replies_are_errors() {
        let (mut link, guest) = link(Duration::from_secs(5));
        let agent = guest.answer_with(|seq, req| {
            let text = ErrorText::new("cannot switch to vf: its link is down");
            let code = match req {
                Request::Switch(_) => ErrorCode::Refused,
                _ => ErrorCode::UnknownKind,
            };
            vec![frame(seq, &Reply::Error(code, text))]
        });
        let e = link.call(Request::Switch(Nic::Vf)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the guest agent refused: cannot switch to vf: its link is down"
        );
        let e = link.call(Request::Status).unwrap_err();
        assert!(matches!(e, AgentError::Unsupported("STATUS")), "{e}");
        drop(agent);
    }

    #[test]
    fn prepare_then_resumed_through_the_real_agent() {
        let (mut link, guest) = link(Duration::from_secs(5));
        let nics = FakeNics::both_up();
        nics.lock().unwrap().status.active = Some(Nic::Vf);
        let agent = guest.run_agent(nics.clone());
        let p = link.prepare().unwrap();
        assert!(p.released_vf);
        assert_eq!(p.status.active, Some(Nic::Virtio));
        assert!(!p.status.vf.present);
        // A retry (say, after a lost reply) is harmless.
        let again = link.prepare().unwrap();
        assert!(!again.released_vf);
        assert_eq!(again.status, p.status);
        let r = link.resumed().unwrap();
        assert!(r.vf_attached && r.announced);
        assert_eq!(r.status.active, Some(Nic::Vf));
        assert!(r.status.vf.present && r.status.vf.link_up);
        let n = nics.lock().unwrap();
        assert_eq!((n.moves, n.announcements), (1, 1));
        drop(n);
        drop(agent);
    }

    #[test]
    fn resumed_on_a_destination_without_a_vf_stays_on_virtio() {
        let (mut link, guest) = link(Duration::from_secs(5));
        let nics = FakeNics::both_up();
        nics.lock().unwrap().bus_vf = None;
        let agent = guest.run_agent(nics.clone());
        link.prepare().unwrap();
        let r = link.resumed().unwrap();
        assert!(!r.vf_attached);
        assert!(r.announced, "announced anyway");
        assert_eq!(r.status.active, Some(Nic::Virtio));
        drop(agent);
    }

    #[test]
    fn prepare_without_virtio_net_is_refused_with_the_guests_reason() {
        let (mut link, guest) = link(Duration::from_secs(5));
        let nics = FakeNics::both_up();
        nics.lock().unwrap().status.virtio = NicStatus::default();
        let agent = guest.run_agent(nics.clone());
        let e = link.prepare().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the guest agent refused: cannot prepare: the guest has no virtio-net"
        );
        assert!(nics.lock().unwrap().status.vf.present, "VF kept");
        drop(agent);
    }

    #[test]
    fn an_older_agent_or_a_wrong_reply_is_a_clear_error() {
        let (mut link, guest) = link(Duration::from_secs(5));
        let agent = guest.answer_with(|seq, req| {
            let reply = match req {
                // An agent from before PREPARE.
                Request::Prepare => Reply::Error(
                    ErrorCode::UnknownKind,
                    ErrorText::new("unknown message kind 0x03"),
                ),
                _ => Reply::Status(Status::default()),
            };
            vec![frame(seq, &reply)]
        });
        let e = link.prepare().unwrap_err();
        assert!(matches!(e, AgentError::Unsupported("PREPARE")), "{e}");
        assert!(e.to_string().contains("does not know PREPARE"), "{e}");
        let e = link.resumed().unwrap_err();
        assert_eq!(
            e.to_string(),
            "the guest agent answered RESUMED with a STATUS reply"
        );
        drop(agent);
    }

    #[test]
    fn a_silent_guest_times_prepare_out_and_withdraws_it() {
        let (mut link, guest) = link(Duration::from_millis(50));
        let e = link.prepare().unwrap_err();
        assert!(matches!(e, AgentError::Timeout(_)), "{e}");
        assert_eq!(
            guest.unsent(),
            0,
            "withdrawn, so a later guest does not act on it"
        );
        let e = link.resumed().unwrap_err();
        assert!(matches!(e, AgentError::Timeout(_)), "{e}");
    }

    #[test]
    fn a_chattering_guest_cannot_hold_the_link_past_its_deadline() {
        let (mut link, guest) = link(Duration::from_millis(200));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let chatter = guest.chatter(stop.clone());
        let started = Instant::now();
        let e = link.call(Request::Status).unwrap_err();
        let took = started.elapsed();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let sent = chatter.join().unwrap();
        assert!(matches!(e, AgentError::Timeout(_)), "{e}");
        assert!(sent > 0, "the guest chattered");
        assert!(
            took < Duration::from_secs(2),
            "a 200 ms deadline held for {took:?} under chatter"
        );
    }

    #[test]
    fn a_malformed_reply_to_this_request_is_reported() {
        let (mut link, guest) = link(Duration::from_secs(5));
        let agent = guest.answer_with(|seq, _| {
            let mut out = [0u8; MAX_FRAME];
            let n = encode_raw(1, kind::REPLY_STATUS, seq, &[1, 2, 3], &mut out).unwrap();
            vec![out[..n].to_vec()]
        });
        let e = link.call(Request::Status).unwrap_err();
        assert!(
            matches!(e, AgentError::Malformed(FrameError::BadPayload)),
            "{e}"
        );
        drop(agent);
    }

    #[test]
    fn a_reply_in_pieces_is_reassembled() {
        let (mut link, guest) = link(Duration::from_secs(5));
        let agent = guest.answer_with(|seq, _| {
            let f = frame(seq, &Reply::Status(Status::default()));
            f.chunks(5).map(<[u8]>::to_vec).collect()
        });
        assert!(link.call(Request::Status).is_ok());
        drop(agent);
    }

    fn frame(seq: u16, r: &Reply) -> Vec<u8> {
        let mut out = [0u8; MAX_FRAME];
        let n = agent_proto::encode(seq, r, &mut out);
        out[..n].to_vec()
    }
}
