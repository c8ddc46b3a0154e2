//! The host's side of the guest-agent protocol: [`AgentLink`] sends one request over the
//! console port and waits for the reply that carries its sequence number.
//!
//! Replies to earlier requests that timed out (a slow guest) arrive late with an older
//! sequence number and are dropped; so are bytes that are not frames. On a timeout the
//! request is withdrawn if the guest has not taken it yet, so it is not carried out later.

use crate::devices::virtio::console::{HostPort, PortFull};
use migration_client::protocol::{self, Decoded, ErrorCode, FrameError, MAX_FRAME, Reply, Request};
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
    /// The port to the guest is full.
    #[error(transparent)]
    Full(#[from] PortFull),
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

    /// Sends `request` and returns the agent's reply (an error reply is an `Err`).
    pub fn call(&mut self, request: Request) -> Result<Reply, AgentError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut frame = [0u8; MAX_FRAME];
        let n = protocol::encode(seq, &request, &mut frame);
        self.port.send(&frame[..n])?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(result) = self.take_reply(seq) {
                return result;
            }
            if self.port.recv_until(&mut self.pending, deadline) == 0 && Instant::now() >= deadline
            {
                let withdrawn = self.port.discard_unsent();
                log::debug!("control: request {seq} timed out ({withdrawn} bytes withdrawn)");
                return Err(AgentError::Timeout(Wait(self.timeout)));
            }
        }
    }

    /// Decodes what has arrived; the reply to `seq` if it is there. Everything before it
    /// (late replies, garbage) is dropped; an incomplete frame stays for the next look.
    fn take_reply(&mut self, seq: u16) -> Option<Result<Reply, AgentError>> {
        let mut at = 0;
        let mut found = None;
        while at < self.pending.len() && found.is_none() {
            match protocol::decode::<Reply>(&self.pending[at..]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::test_guest::{self, GuestEnd};
    use migration_client::protocol::{ErrorText, Nic, Status, encode_raw, kind};

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
                Request::Status => ErrorCode::UnknownKind,
            };
            vec![frame(seq, &Reply::Error(code, text))]
        });
        let e = link.call(Request::Switch(Nic::Vf)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the guest agent refused: cannot switch to vf: its link is down"
        );
        let e = link.call(Request::Status).unwrap_err();
        assert!(
            matches!(
                e,
                AgentError::Rejected {
                    code: ErrorCode::UnknownKind,
                    ..
                }
            ),
            "{e}"
        );
        drop(agent);
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
        let n = protocol::encode(seq, r, &mut out);
        out[..n].to_vec()
    }
}
