//! The guest-agent protocol: the one definition of what host-vmm and the guest agent say to
//! each other over the control channel (a virtio-console port, a plain byte stream), and of
//! the NIC vocabulary both sides share ([`Nic`], [`NicStatus`], [`Status`], [`SwitchError`]).
//!
//! Users: `migration-client` (the guest agent), `netstack` (its failover device reports in
//! these types), the kernel, host-vmm (the host end of the channel) and xtask (which reads
//! `host-vmm ctl status` into [`Status`]). `no_std`, no allocation, no dependencies: pure
//! encode and decode functions that never panic on what the peer sends.
//!
//! # Frames
//!
//! Every message is one frame; all integers are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | magic `F7 52` (0xF7 never occurs in UTF-8 text, so stray text is never a frame) |
//! | 2 | 1 | protocol version, [`VERSION`] |
//! | 3 | 1 | message kind ([`kind`]) |
//! | 4 | 2 | sequence number: a reply carries its request's |
//! | 6 | 2 | payload length, at most [`MAX_PAYLOAD`] |
//! | 8 | 4 | header check: [`check32`] of bytes 0..8 |
//! | 12 | n | payload |
//! | 12 + n | 4 | payload check: [`check32`] of the payload |
//!
//! The header has its own check so that a corrupt length is caught before the receiver waits
//! for bytes that will never come. The checksum is a Fletcher-style pair of 16-bit sums: two
//! additions per byte (guest code is emulated at ~0.4 µs per instruction), and it catches
//! every single-byte change and every swap of two different adjacent bytes.
//!
//! # Compatibility
//!
//! The rules, for both sides and every version:
//!
//! 1. The header layout above is fixed for every version, so a receiver can always recover
//!    the sequence number and answer a frame of a version it does not speak with
//!    [`ErrorCode::UnsupportedVersion`].
//! 2. A new request or reply is a new kind in the same version; an agent that predates it
//!    answers [`ErrorCode::UnknownKind`] (never silence), so host-vmm can tell "older guest"
//!    from "no guest". PREPARE and RESUMED (0x03, 0x04) came this way: a version-1 agent
//!    without them says UnknownKind, and host-vmm reports that the guest cannot cooperate.
//! 3. The version changes only when an existing message's layout changes. Payload lengths
//!    are exact and reserved flag bits must be zero, so a changed layout is refused
//!    ([`ErrorCode::BadPayload`]), never misread.
//! 4. Every frame whose header check passes gets exactly one reply with its sequence number:
//!    the result, or [`Reply::Error`]. Frames with a corrupt header get none (their sequence
//!    number cannot be trusted); the sender's timeout covers them.
//!
//! # Requests
//!
//! | kind | request | payload | reply |
//! |---|---|---|---|
//! | 0x01 | SWITCH | one [`Nic`] code | [`Reply::Status`] after the switch |
//! | 0x02 | STATUS | none | [`Reply::Status`] |
//! | 0x03 | PREPARE | none | [`Reply::Prepared`] once traffic is on virtio-net and the VF released |
//! | 0x04 | RESUMED | none | [`Reply::Resumed`] once the VF is re-probed, the NIC chosen, the address announced |
//! | 0x05 | SERVICE | none | [`Reply::Service`]: how the agent's work shared the CPU with the network |
//!
//! PREPARE and RESUMED are idempotent: the agent can be asked again after a lost reply.
//! They run in bounded steps between the guest's network passes, and their reply comes when
//! the last step is done; requests sent meanwhile wait their turn. SERVICE came after
//! version 1's STATUS, so by rule 2 it is a kind of its own: an agent that predates it
//! answers UnknownKind.
//! Replies: 0x82 status ([`Status`], 74 bytes), 0x83 prepared and 0x84 resumed (one flags
//! byte, then a [`Status`]), 0x85 service ([`Service`], 24 bytes), 0xFF error (an [`ErrorCode`] byte and up to
//! [`MAX_ERROR_TEXT`] bytes of UTF-8).
//!
//! # Errors and resynchronisation
//!
//! [`decode`] looks at the start of a buffer and says: wait for more bytes, here is a frame,
//! or this is not a frame and how many bytes to drop. A frame whose header check passes has a
//! trustworthy sequence number: the agent answers it with an [`Reply::Error`]. Anything else
//! (bad magic, corrupt header) is dropped up to the next possible magic byte, so the stream
//! resynchronises on the next good frame. Nothing here allocates, panics or needs more than
//! [`MAX_FRAME`] bytes of buffer.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

use core::fmt;

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = [0xF7, b'R'];
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 12;
/// Bytes after the payload (its check).
pub const TRAILER_LEN: usize = 4;
/// Largest payload.
pub const MAX_PAYLOAD: usize = 240;
/// Largest frame: the most a receiver ever needs to buffer.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD + TRAILER_LEN;
/// Longest error text in an [`Reply::Error`], in bytes.
pub const MAX_ERROR_TEXT: usize = 64;

/// Message kinds (requests below 0x80, replies from 0x80).
pub mod kind {
    /// Request: make the given NIC the active one. Payload: one [`super::Nic`] code.
    pub const SWITCH: u8 = 0x01;
    /// Request: report the NICs' state. No payload.
    pub const STATUS: u8 = 0x02;
    /// Request: before a move, put traffic on virtio-net and release the VF. No payload.
    pub const PREPARE: u8 = 0x03;
    /// Request: after a move, re-probe the VF, switch back to it, announce. No payload.
    pub const RESUMED: u8 = 0x04;
    /// Request: report how agent work shared the CPU with the network. No payload.
    pub const SERVICE: u8 = 0x05;
    /// Reply: the NICs' state ([`super::Status`]), to SWITCH and STATUS.
    pub const REPLY_STATUS: u8 = 0x82;
    /// Reply to PREPARE ([`super::Prepared`]).
    pub const REPLY_PREPARED: u8 = 0x83;
    /// Reply to RESUMED ([`super::Resumed`]).
    pub const REPLY_RESUMED: u8 = 0x84;
    /// Reply to SERVICE ([`super::Service`]).
    pub const REPLY_SERVICE: u8 = 0x85;
    /// Reply: the request failed ([`super::ErrorCode`] and a short text).
    pub const REPLY_ERROR: u8 = 0xFF;
}

/// Fletcher-style check of `bytes`: a running sum (starting at 1, as in Adler-32, so that
/// leading zeros count) and a sum of running sums, 16 bits each (high half: the second sum).
/// Cheap, and sensitive to byte order.
pub fn check32(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u16, 0u16);
    for &byte in bytes {
        a = a.wrapping_add(u16::from(byte));
        b = b.wrapping_add(a);
    }
    (u32::from(b) << 16) | u32::from(a)
}

/// One of the guest's two NICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Nic {
    /// The 82599 virtual function.
    Vf,
    /// virtio-net.
    Virtio,
}

impl Nic {
    /// Wire code (0 means "none" where a NIC is optional).
    pub const fn code(self) -> u8 {
        match self {
            Nic::Vf => 1,
            Nic::Virtio => 2,
        }
    }

    /// The NIC with wire code `code`.
    pub const fn from_code(code: u8) -> Option<Nic> {
        match code {
            1 => Some(Nic::Vf),
            2 => Some(Nic::Virtio),
            _ => None,
        }
    }

    /// Its name on the operator's command line, in `status` and in logs: `vf` or `virtio`.
    pub const fn name(self) -> &'static str {
        match self {
            Nic::Vf => "vf",
            Nic::Virtio => "virtio",
        }
    }

    /// The NIC named `name` ([`Nic::name`]).
    pub fn from_name(name: &str) -> Option<Nic> {
        match name {
            "vf" => Some(Nic::Vf),
            "virtio" => Some(Nic::Virtio),
            _ => None,
        }
    }

    /// The other NIC.
    pub const fn other(self) -> Nic {
        match self {
            Nic::Vf => Nic::Virtio,
            Nic::Virtio => Nic::Vf,
        }
    }
}

impl fmt::Display for Nic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a switch of the active NIC was refused (the guest's failover device says it; the
/// agent sends its text in a [`Reply::Error`]).
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

/// One NIC's state and counters as the guest sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NicStatus {
    /// The guest has this NIC (probed and not removed).
    pub present: bool,
    /// Its link is up.
    pub link_up: bool,
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Received frames dropped as bad.
    pub rx_errors: u64,
    /// Frames that could not be sent.
    pub tx_dropped: u64,
}

/// Bytes of an encoded [`NicStatus`]: flags, then four counters.
const NIC_STATUS_LEN: usize = 1 + 4 * 8;
/// [`NicStatus`] flag bits (the others must be zero).
const FLAG_PRESENT: u8 = 1;
const FLAG_LINK_UP: u8 = 2;

impl NicStatus {
    fn encode(&self, out: &mut [u8]) {
        let mut flags = 0;
        if self.present {
            flags |= FLAG_PRESENT;
        }
        if self.link_up {
            flags |= FLAG_LINK_UP;
        }
        out[0] = flags;
        for (i, v) in [self.rx, self.tx, self.rx_errors, self.tx_dropped]
            .into_iter()
            .enumerate()
        {
            out[1 + 8 * i..9 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> Option<NicStatus> {
        let flags = *b.first()?;
        if flags & !(FLAG_PRESENT | FLAG_LINK_UP) != 0 {
            return None;
        }
        Some(NicStatus {
            present: flags & FLAG_PRESENT != 0,
            link_up: flags & FLAG_LINK_UP != 0,
            rx: le64(b, 1)?,
            tx: le64(b, 9)?,
            rx_errors: le64(b, 17)?,
            tx_dropped: le64(b, 25)?,
        })
    }
}

/// What the guest reports for STATUS (and after a SWITCH).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Status {
    /// The NIC transmitting now, if any.
    pub active: Option<Nic>,
    /// The VF.
    pub vf: NicStatus,
    /// virtio-net.
    pub virtio: NicStatus,
    /// Changes of the active NIC so far, explicit or automatic.
    pub switches: u64,
}

/// Bytes of an encoded [`Status`].
const STATUS_LEN: usize = 1 + 2 * NIC_STATUS_LEN + 8;

impl Status {
    /// The state of `nic`.
    pub fn nic(&self, nic: Nic) -> &NicStatus {
        match nic {
            Nic::Vf => &self.vf,
            Nic::Virtio => &self.virtio,
        }
    }

    fn encode(&self, out: &mut [u8]) -> usize {
        out[0] = self.active.map_or(0, Nic::code);
        self.vf.encode(&mut out[1..1 + NIC_STATUS_LEN]);
        self.virtio
            .encode(&mut out[1 + NIC_STATUS_LEN..1 + 2 * NIC_STATUS_LEN]);
        out[STATUS_LEN - 8..STATUS_LEN].copy_from_slice(&self.switches.to_le_bytes());
        STATUS_LEN
    }

    fn decode(payload: &[u8]) -> Result<Status, FrameError> {
        if payload.len() != STATUS_LEN {
            return Err(FrameError::BadPayload);
        }
        let active = match payload[0] {
            0 => None,
            code => Some(Nic::from_code(code).ok_or(FrameError::BadPayload)?),
        };
        let nic = |at: usize| {
            NicStatus::decode(&payload[at..at + NIC_STATUS_LEN]).ok_or(FrameError::BadPayload)
        };
        Ok(Status {
            active,
            vf: nic(1)?,
            virtio: nic(1 + NIC_STATUS_LEN)?,
            switches: le64(payload, STATUS_LEN - 8).ok_or(FrameError::BadPayload)?,
        })
    }
}

/// What PREPARE did: traffic is on virtio-net and no VF is in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// This request released a VF (`false` when there was none in use: no VF, or an earlier
    /// PREPARE released it).
    pub released_vf: bool,
    /// The NICs' state afterwards (active: virtio-net; the VF not present).
    pub status: Status,
}

/// What RESUMED did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resumed {
    /// A VF was found on the bus and is in use (it may still wait for its link).
    pub vf_attached: bool,
    /// The gratuitous ARP went out on the active NIC (`false`: no transmit buffer or no NIC).
    pub announced: bool,
    /// The NICs' state afterwards; `status.active` is the NIC traffic is on.
    pub status: Status,
}

/// How the agent's work shared the guest's CPU with the network, since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Service {
    /// The longest time one agent step kept the network loop from polling the stack, in
    /// nanoseconds of the guest's clock.
    pub longest_step_ns: u64,
    /// Agent steps taken (a request takes one step, or several when it waits on a device).
    pub steps: u64,
    /// Requests answered after more than one step (the network was served in between).
    pub deferred: u64,
}

/// Bytes of an encoded [`Service`].
const SERVICE_LEN: usize = 24;

impl Service {
    fn encode(&self, out: &mut [u8]) -> usize {
        out[..8].copy_from_slice(&self.longest_step_ns.to_le_bytes());
        out[8..16].copy_from_slice(&self.steps.to_le_bytes());
        out[16..24].copy_from_slice(&self.deferred.to_le_bytes());
        SERVICE_LEN
    }

    fn decode(payload: &[u8]) -> Result<Service, FrameError> {
        if payload.len() != SERVICE_LEN {
            return Err(FrameError::BadPayload);
        }
        let field = |at| le64(payload, at).ok_or(FrameError::BadPayload);
        Ok(Service {
            longest_step_ns: field(0)?,
            steps: field(8)?,
            deferred: field(16)?,
        })
    }
}

/// [`Prepared`] and [`Resumed`] flag bits (the others must be zero).
const FLAG_RELEASED_VF: u8 = 1;
const FLAG_VF_ATTACHED: u8 = 1;
const FLAG_ANNOUNCED: u8 = 2;

/// A flags byte then a [`Status`]; a bad payload if a flag outside `allowed` is set.
fn decode_flagged(payload: &[u8], allowed: u8) -> Result<(u8, Status), FrameError> {
    let (&flags, status) = payload.split_first().ok_or(FrameError::BadPayload)?;
    if flags & !allowed != 0 {
        return Err(FrameError::BadPayload);
    }
    Ok((flags, Status::decode(status)?))
}

/// Why a request failed, as carried in [`Reply::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request's protocol version is not [`VERSION`].
    UnsupportedVersion,
    /// The payload length is above [`MAX_PAYLOAD`].
    BadLength,
    /// The payload check failed.
    BadChecksum,
    /// The agent does not know the request kind (an older agent).
    UnknownKind,
    /// The payload does not fit the kind.
    BadPayload,
    /// The request was valid but could not be carried out (the text says why).
    Refused,
    /// A code this version does not know.
    Other(u8),
}

impl ErrorCode {
    /// Wire code.
    pub const fn to_u8(self) -> u8 {
        match self {
            ErrorCode::UnsupportedVersion => 1,
            ErrorCode::BadLength => 2,
            ErrorCode::BadChecksum => 3,
            ErrorCode::UnknownKind => 4,
            ErrorCode::BadPayload => 5,
            ErrorCode::Refused => 6,
            ErrorCode::Other(code) => code,
        }
    }

    /// The code for wire value `code` (unknown values are kept as [`ErrorCode::Other`]).
    pub const fn from_u8(code: u8) -> ErrorCode {
        match code {
            1 => ErrorCode::UnsupportedVersion,
            2 => ErrorCode::BadLength,
            3 => ErrorCode::BadChecksum,
            4 => ErrorCode::UnknownKind,
            5 => ErrorCode::BadPayload,
            6 => ErrorCode::Refused,
            other => ErrorCode::Other(other),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorCode::UnsupportedVersion => f.write_str("unsupported protocol version"),
            ErrorCode::BadLength => f.write_str("bad length"),
            ErrorCode::BadChecksum => f.write_str("bad checksum"),
            ErrorCode::UnknownKind => f.write_str("unknown request"),
            ErrorCode::BadPayload => f.write_str("malformed request"),
            ErrorCode::Refused => f.write_str("refused"),
            ErrorCode::Other(code) => write!(f, "error {code}"),
        }
    }
}

/// A short UTF-8 text held inline (no allocation): at most [`MAX_ERROR_TEXT`] bytes, cut at
/// a character boundary when longer. Implements `fmt::Write`, so `write!` builds one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ErrorText {
    len: u8,
    bytes: [u8; MAX_ERROR_TEXT],
}

impl ErrorText {
    /// An empty text.
    pub const fn empty() -> ErrorText {
        ErrorText {
            len: 0,
            bytes: [0; MAX_ERROR_TEXT],
        }
    }

    /// `text`, cut to fit.
    pub fn new(text: &str) -> ErrorText {
        let mut t = ErrorText::empty();
        t.push(text);
        t
    }

    /// Appends as much of `text` as fits, ending at a character boundary.
    pub fn push(&mut self, text: &str) {
        let at = usize::from(self.len);
        let mut n = text.len().min(MAX_ERROR_TEXT - at);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        self.bytes[at..at + n].copy_from_slice(&text.as_bytes()[..n]);
        self.len += n as u8;
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only whole characters are ever stored, so this never fails.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    fn from_wire(bytes: &[u8]) -> Option<ErrorText> {
        if bytes.len() > MAX_ERROR_TEXT {
            return None;
        }
        let text = core::str::from_utf8(bytes).ok()?;
        Some(ErrorText::new(text))
    }
}

impl Default for ErrorText {
    fn default() -> Self {
        ErrorText::empty()
    }
}

impl fmt::Write for ErrorText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s);
        Ok(())
    }
}

impl fmt::Debug for ErrorText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for ErrorText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What host-vmm asks the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Make this NIC the active one; answered with [`Reply::Status`] after the switch.
    Switch(Nic),
    /// Report the NICs' state; answered with [`Reply::Status`].
    Status,
    /// Before a move: traffic to virtio-net, the VF released; answered with
    /// [`Reply::Prepared`] when done.
    Prepare,
    /// After a move: re-probe the VF, switch back to it, announce; answered with
    /// [`Reply::Resumed`] when done.
    Resumed,
    /// Report how agent work shared the CPU with the network; answered with
    /// [`Reply::Service`].
    Service,
}

/// What the agent answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The NICs' state.
    Status(Status),
    /// PREPARE is done.
    Prepared(Prepared),
    /// RESUMED is done.
    Resumed(Resumed),
    /// The agent's service figures.
    Service(Service),
    /// The request failed.
    Error(ErrorCode, ErrorText),
}

/// Why bytes are not a (usable) frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes do not start with [`MAGIC`].
    BadMagic,
    /// The header check failed (so nothing in the header can be trusted).
    BadHeaderCheck,
    /// A version other than [`VERSION`].
    UnsupportedVersion(u8),
    /// A payload length above [`MAX_PAYLOAD`].
    BadLength(u16),
    /// The payload check failed.
    BadChecksum,
    /// A kind this side does not accept.
    UnknownKind(u8),
    /// The payload does not fit its kind.
    BadPayload,
}

impl FrameError {
    /// The code an agent answers this with (the same for both directions).
    pub const fn code(self) -> ErrorCode {
        match self {
            FrameError::BadMagic | FrameError::BadHeaderCheck | FrameError::BadChecksum => {
                ErrorCode::BadChecksum
            }
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::BadLength(_) => ErrorCode::BadLength,
            FrameError::UnknownKind(_) => ErrorCode::UnknownKind,
            FrameError::BadPayload => ErrorCode::BadPayload,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadMagic => f.write_str("no frame magic"),
            FrameError::BadHeaderCheck => f.write_str("bad header check"),
            FrameError::UnsupportedVersion(v) => {
                write!(f, "protocol version {v} is not supported (only {VERSION})")
            }
            FrameError::BadLength(n) => {
                write!(f, "payload length {n} is above {MAX_PAYLOAD}")
            }
            FrameError::BadChecksum => f.write_str("bad payload checksum"),
            FrameError::UnknownKind(k) => write!(f, "unknown message kind {k:#04x}"),
            FrameError::BadPayload => f.write_str("payload does not fit its kind"),
        }
    }
}

/// A message with a kind and a payload: [`Request`] (host to guest) or [`Reply`].
pub trait Message: Sized {
    /// Its kind byte.
    fn kind(&self) -> u8;
    /// Writes the payload into `out` (at least [`MAX_PAYLOAD`] bytes); returns its length.
    fn encode_payload(&self, out: &mut [u8]) -> usize;
    /// The message of kind `kind` in `payload`.
    fn decode_payload(kind: u8, payload: &[u8]) -> Result<Self, FrameError>;
}

impl Message for Request {
    fn kind(&self) -> u8 {
        match self {
            Request::Switch(_) => kind::SWITCH,
            Request::Status => kind::STATUS,
            Request::Prepare => kind::PREPARE,
            Request::Resumed => kind::RESUMED,
            Request::Service => kind::SERVICE,
        }
    }

    fn encode_payload(&self, out: &mut [u8]) -> usize {
        match self {
            Request::Switch(nic) => {
                out[0] = nic.code();
                1
            }
            Request::Status | Request::Prepare | Request::Resumed | Request::Service => 0,
        }
    }

    fn decode_payload(kind: u8, payload: &[u8]) -> Result<Self, FrameError> {
        match (kind, payload) {
            (kind::SWITCH, &[code]) => Nic::from_code(code)
                .map(Request::Switch)
                .ok_or(FrameError::BadPayload),
            (kind::STATUS, []) => Ok(Request::Status),
            (kind::PREPARE, []) => Ok(Request::Prepare),
            (kind::RESUMED, []) => Ok(Request::Resumed),
            (kind::SERVICE, []) => Ok(Request::Service),
            (kind::SWITCH | kind::STATUS | kind::PREPARE | kind::RESUMED | kind::SERVICE, _) => {
                Err(FrameError::BadPayload)
            }
            (other, _) => Err(FrameError::UnknownKind(other)),
        }
    }
}

impl Message for Reply {
    fn kind(&self) -> u8 {
        match self {
            Reply::Status(_) => kind::REPLY_STATUS,
            Reply::Prepared(_) => kind::REPLY_PREPARED,
            Reply::Resumed(_) => kind::REPLY_RESUMED,
            Reply::Service(_) => kind::REPLY_SERVICE,
            Reply::Error(..) => kind::REPLY_ERROR,
        }
    }

    fn encode_payload(&self, out: &mut [u8]) -> usize {
        match self {
            Reply::Status(s) => s.encode(out),
            Reply::Prepared(p) => {
                out[0] = if p.released_vf { FLAG_RELEASED_VF } else { 0 };
                1 + p.status.encode(&mut out[1..])
            }
            Reply::Resumed(r) => {
                let mut flags = 0;
                if r.vf_attached {
                    flags |= FLAG_VF_ATTACHED;
                }
                if r.announced {
                    flags |= FLAG_ANNOUNCED;
                }
                out[0] = flags;
                1 + r.status.encode(&mut out[1..])
            }
            Reply::Service(s) => s.encode(out),
            Reply::Error(code, text) => {
                let text = text.as_str().as_bytes();
                out[0] = code.to_u8();
                out[1..1 + text.len()].copy_from_slice(text);
                1 + text.len()
            }
        }
    }

    fn decode_payload(kind: u8, payload: &[u8]) -> Result<Self, FrameError> {
        match kind {
            kind::REPLY_STATUS => Ok(Reply::Status(Status::decode(payload)?)),
            kind::REPLY_PREPARED => {
                let (flags, status) = decode_flagged(payload, FLAG_RELEASED_VF)?;
                Ok(Reply::Prepared(Prepared {
                    released_vf: flags & FLAG_RELEASED_VF != 0,
                    status,
                }))
            }
            kind::REPLY_RESUMED => {
                let (flags, status) = decode_flagged(payload, FLAG_VF_ATTACHED | FLAG_ANNOUNCED)?;
                Ok(Reply::Resumed(Resumed {
                    vf_attached: flags & FLAG_VF_ATTACHED != 0,
                    announced: flags & FLAG_ANNOUNCED != 0,
                    status,
                }))
            }
            kind::REPLY_SERVICE => Ok(Reply::Service(Service::decode(payload)?)),
            kind::REPLY_ERROR => {
                let (&code, text) = payload.split_first().ok_or(FrameError::BadPayload)?;
                let text = ErrorText::from_wire(text).ok_or(FrameError::BadPayload)?;
                Ok(Reply::Error(ErrorCode::from_u8(code), text))
            }
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// What [`decode`] found at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<M> {
    /// A prefix of what may be a good frame: wait for more bytes (the buffer is then shorter
    /// than [`MAX_FRAME`]).
    Incomplete,
    /// A good frame of `len` bytes.
    Frame {
        /// Its sequence number.
        seq: u16,
        /// The message.
        message: M,
        /// Bytes it takes from the buffer.
        len: usize,
    },
    /// Not a usable frame: drop `skip` bytes (at least one) and look again.
    Invalid {
        /// What is wrong.
        error: FrameError,
        /// The sequence number, when the header is trustworthy (then it deserves an answer).
        seq: Option<u16>,
        /// Bytes to drop.
        skip: usize,
    },
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Where the next possible frame starts after the first byte: the next [`MAGIC`] first byte,
/// else the end.
fn resync(buf: &[u8]) -> usize {
    buf.iter()
        .skip(1)
        .position(|&b| b == MAGIC[0])
        .map_or(buf.len(), |i| i + 1)
}

/// Decodes the frame at the start of `buf` as an `M`. Pure: call it again after dropping
/// what it says to drop.
pub fn decode<M: Message>(buf: &[u8]) -> Decoded<M> {
    let Some(&first) = buf.first() else {
        return Decoded::Incomplete;
    };
    let magic_ok = first == MAGIC[0] && buf.get(1).is_none_or(|&b| b == MAGIC[1]);
    if !magic_ok {
        return Decoded::Invalid {
            error: FrameError::BadMagic,
            seq: None,
            skip: resync(buf),
        };
    }
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Decoded::Incomplete;
    };
    if le32(header, 8) != Some(check32(&header[..8])) {
        return Decoded::Invalid {
            error: FrameError::BadHeaderCheck,
            seq: None,
            skip: resync(buf),
        };
    }
    let (version, kind) = (header[2], header[3]);
    let seq = le16(header, 4).unwrap_or(0);
    let len = le16(header, 6).unwrap_or(0);
    let invalid = |error, skip| Decoded::Invalid {
        error,
        seq: Some(seq),
        skip,
    };
    if version != VERSION {
        // The length may mean something else in that version: resynchronise instead.
        return invalid(FrameError::UnsupportedVersion(version), resync(buf));
    }
    if usize::from(len) > MAX_PAYLOAD {
        return invalid(FrameError::BadLength(len), resync(buf));
    }
    let end = HEADER_LEN + usize::from(len);
    let total = end + TRAILER_LEN;
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    let payload = &buf[HEADER_LEN..end];
    if le32(buf, end) != Some(check32(payload)) {
        // The header is sound but the bytes after it are not what it announced (lost or
        // changed): look for the next frame inside them rather than skip a whole length.
        return invalid(FrameError::BadChecksum, resync(buf));
    }
    match M::decode_payload(kind, payload) {
        Ok(message) => Decoded::Frame {
            seq,
            message,
            len: total,
        },
        Err(error) => invalid(error, total),
    }
}

/// Seals a frame whose payload (`len` bytes) is already at `out[HEADER_LEN..]`: header,
/// header check, payload check. Returns the frame's length.
fn seal(out: &mut [u8; MAX_FRAME], version: u8, kind: u8, seq: u16, len: usize) -> usize {
    let len = len.min(MAX_PAYLOAD);
    out[..2].copy_from_slice(&MAGIC);
    out[2] = version;
    out[3] = kind;
    out[4..6].copy_from_slice(&seq.to_le_bytes());
    out[6..8].copy_from_slice(&(len as u16).to_le_bytes());
    let header_check = check32(&out[..8]);
    out[8..12].copy_from_slice(&header_check.to_le_bytes());
    let end = HEADER_LEN + len;
    let payload_check = check32(&out[HEADER_LEN..end]);
    out[end..end + TRAILER_LEN].copy_from_slice(&payload_check.to_le_bytes());
    end + TRAILER_LEN
}

/// Encodes `message` with sequence number `seq` into `out`; returns the frame's length.
pub fn encode<M: Message>(seq: u16, message: &M, out: &mut [u8; MAX_FRAME]) -> usize {
    let len = message.encode_payload(&mut out[HEADER_LEN..HEADER_LEN + MAX_PAYLOAD]);
    seal(out, VERSION, message.kind(), seq, len)
}

/// Writes a frame with any version, kind and payload (for tests of the receivers, and for
/// talking to a peer of another version). `None` if the payload is too long.
pub fn encode_raw(
    version: u8,
    kind: u8,
    seq: u16,
    payload: &[u8],
    out: &mut [u8; MAX_FRAME],
) -> Option<usize> {
    let dst = out.get_mut(HEADER_LEN..HEADER_LEN + payload.len())?;
    if payload.len() > MAX_PAYLOAD {
        return None;
    }
    dst.copy_from_slice(payload);
    Some(seal(out, version, kind, seq, payload.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;
    use proptest::prelude::*;

    fn frame<M: Message>(seq: u16, m: &M) -> Vec<u8> {
        let mut out = [0u8; MAX_FRAME];
        let n = encode(seq, m, &mut out);
        out[..n].to_vec()
    }

    fn raw(version: u8, kind: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = [0u8; MAX_FRAME];
        let n = encode_raw(version, kind, seq, payload, &mut out).unwrap();
        out[..n].to_vec()
    }

    fn sample_status() -> Status {
        Status {
            active: Some(Nic::Vf),
            vf: NicStatus {
                present: true,
                link_up: true,
                rx: 1,
                tx: 2,
                rx_errors: 3,
                tx_dropped: 4,
            },
            virtio: NicStatus {
                present: true,
                link_up: false,
                rx: u64::MAX,
                tx: 1 << 40,
                rx_errors: 0,
                tx_dropped: 7,
            },
            switches: 12,
        }
    }

    #[test]
    fn a_status_request_is_a_bare_header_and_trailer() {
        let f = frame(0x1234, &Request::Status);
        assert_eq!(f.len(), HEADER_LEN + TRAILER_LEN);
        assert_eq!(&f[..8], &[0xF7, b'R', 1, 0x02, 0x34, 0x12, 0, 0]);
        assert_eq!(&f[8..12], &check32(&f[..8]).to_le_bytes());
        assert_eq!(&f[12..], &[1, 0, 0, 0], "check of an empty payload");
        assert_eq!(
            decode::<Request>(&f),
            Decoded::Frame {
                seq: 0x1234,
                message: Request::Status,
                len: f.len()
            }
        );
    }

    #[test]
    fn the_checksum_is_order_sensitive_and_pinned() {
        assert_eq!(check32(&[]), 1);
        assert_eq!(check32(&[1, 2, 3]), (13 << 16) | 7);
        assert_ne!(check32(&[1, 2]), check32(&[2, 1]));
        assert_ne!(check32(&[0, 1]), check32(&[0, 0, 1]));
    }

    #[test]
    fn requests_and_replies_round_trip() {
        for r in [
            Request::Switch(Nic::Vf),
            Request::Switch(Nic::Virtio),
            Request::Status,
            Request::Prepare,
            Request::Resumed,
            Request::Service,
        ] {
            let f = frame(7, &r);
            assert!(
                matches!(decode::<Request>(&f), Decoded::Frame { seq: 7, message, len } if message == r && len == f.len())
            );
        }
        let mut text = ErrorText::empty();
        write!(text, "cannot switch to {}: gone", Nic::Vf).unwrap();
        for r in [
            Reply::Status(sample_status()),
            Reply::Status(Status::default()),
            Reply::Prepared(Prepared {
                released_vf: true,
                status: sample_status(),
            }),
            Reply::Prepared(Prepared::default()),
            Reply::Resumed(Resumed {
                vf_attached: true,
                announced: false,
                status: sample_status(),
            }),
            Reply::Resumed(Resumed {
                vf_attached: false,
                announced: true,
                status: Status::default(),
            }),
            Reply::Service(Service {
                longest_step_ns: 1_234_567,
                steps: u64::MAX,
                deferred: 3,
            }),
            Reply::Error(ErrorCode::Refused, text),
            Reply::Error(ErrorCode::Other(200), ErrorText::empty()),
        ] {
            let f = frame(65535, &r);
            assert_eq!(
                decode::<Reply>(&f),
                Decoded::Frame {
                    seq: 65535,
                    message: r,
                    len: f.len()
                }
            );
        }
    }

    #[test]
    fn prepare_and_resumed_are_pinned_on_the_wire() {
        // Older and newer peers depend on these bytes: kinds 3 and 4, no payload; replies
        // 0x83 and 0x84 with one flags byte before a status.
        let f = frame(0x0102, &Request::Prepare);
        assert_eq!(&f[..8], &[0xF7, b'R', 1, 0x03, 0x02, 0x01, 0, 0]);
        let f = frame(0x0102, &Request::Resumed);
        assert_eq!(&f[..8], &[0xF7, b'R', 1, 0x04, 0x02, 0x01, 0, 0]);
        let f = frame(
            1,
            &Reply::Prepared(Prepared {
                released_vf: true,
                status: Status::default(),
            }),
        );
        assert_eq!((f[3], f[6], f[HEADER_LEN]), (0x83, 1 + STATUS_LEN as u8, 1));
        let f = frame(
            1,
            &Reply::Resumed(Resumed {
                vf_attached: true,
                announced: true,
                status: sample_status(),
            }),
        );
        assert_eq!((f[3], f[6], f[HEADER_LEN]), (0x84, 1 + STATUS_LEN as u8, 3));
        assert_eq!(f[HEADER_LEN + 1], Nic::Vf.code(), "then the status");
    }

    #[test]
    fn service_is_pinned_on_the_wire_and_refuses_other_lengths() {
        let f = frame(9, &Request::Service);
        assert_eq!(&f[..8], &[0xF7, b'R', 1, 0x05, 9, 0, 0, 0]);
        let reply = Reply::Service(Service {
            longest_step_ns: 0x0102,
            steps: 7,
            deferred: 2,
        });
        let f = frame(9, &reply);
        assert_eq!((f[3], f[6]), (0x85, SERVICE_LEN as u8));
        assert_eq!(&f[HEADER_LEN..HEADER_LEN + 9], &[2, 1, 0, 0, 0, 0, 0, 0, 7]);
        for len in [0, SERVICE_LEN - 1, SERVICE_LEN + 1] {
            assert_eq!(
                Reply::decode_payload(kind::REPLY_SERVICE, &vec![0; len]),
                Err(FrameError::BadPayload),
                "{len} bytes"
            );
        }
        assert_eq!(
            Request::decode_payload(kind::SERVICE, &[0]),
            Err(FrameError::BadPayload)
        );
    }

    #[test]
    fn prepared_and_resumed_replies_refuse_reserved_flags_and_wrong_lengths() {
        let status = [0u8; STATUS_LEN];
        let with_flags = |flags: u8| {
            let mut p = vec![flags];
            p.extend_from_slice(&status);
            p
        };
        for (k, flags) in [
            (kind::REPLY_PREPARED, 2),
            (kind::REPLY_PREPARED, 0x80),
            (kind::REPLY_RESUMED, 4),
        ] {
            assert!(
                matches!(
                    decode::<Reply>(&raw(1, k, 1, &with_flags(flags))),
                    Decoded::Invalid {
                        error: FrameError::BadPayload,
                        seq: Some(1),
                        ..
                    }
                ),
                "{k:#x} {flags:#x}"
            );
        }
        for k in [kind::REPLY_PREPARED, kind::REPLY_RESUMED] {
            for payload in [&[][..], &[0][..], &status[..], &with_flags(0)[..STATUS_LEN]] {
                assert!(
                    matches!(
                        decode::<Reply>(&raw(1, k, 1, payload)),
                        Decoded::Invalid {
                            error: FrameError::BadPayload,
                            ..
                        }
                    ),
                    "{k:#x}, {} bytes",
                    payload.len()
                );
            }
            assert!(matches!(
                decode::<Reply>(&raw(1, k, 1, &with_flags(1))),
                Decoded::Frame { .. }
            ));
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let f = frame(1, &Reply::Status(sample_status()));
        for cut in 0..f.len() {
            assert_eq!(decode::<Reply>(&f[..cut]), Decoded::Incomplete, "cut {cut}");
        }
    }

    #[test]
    fn garbage_is_skipped_up_to_the_next_magic_byte() {
        let mut buf = b"hello".to_vec();
        buf.extend(frame(3, &Request::Status));
        assert_eq!(
            decode::<Request>(&buf),
            Decoded::Invalid {
                error: FrameError::BadMagic,
                seq: None,
                skip: 5
            }
        );
        assert!(matches!(
            decode::<Request>(&buf[5..]),
            Decoded::Frame { seq: 3, .. }
        ));
        // A lone magic byte followed by something else.
        assert_eq!(
            decode::<Request>(&[0xF7, 0x00, 0x01]),
            Decoded::Invalid {
                error: FrameError::BadMagic,
                seq: None,
                skip: 3
            }
        );
        assert_eq!(decode::<Request>(&[0xF7]), Decoded::Incomplete);
    }

    #[test]
    fn a_corrupt_header_has_no_trustworthy_sequence_number() {
        let mut f = frame(9, &Request::Switch(Nic::Vf));
        f[6] = 200; // the length
        assert_eq!(
            decode::<Request>(&f),
            Decoded::Invalid {
                error: FrameError::BadHeaderCheck,
                seq: None,
                skip: f.len()
            }
        );
    }

    #[test]
    fn errors_with_a_sound_header_keep_the_sequence_number() {
        let cases: [(Vec<u8>, FrameError); 7] = [
            (
                raw(2, kind::STATUS, 5, &[]),
                FrameError::UnsupportedVersion(2),
            ),
            (raw(1, 0x7E, 5, &[]), FrameError::UnknownKind(0x7E)),
            (raw(1, kind::SWITCH, 5, &[9]), FrameError::BadPayload),
            (raw(1, kind::SWITCH, 5, &[1, 2]), FrameError::BadPayload),
            (raw(1, kind::STATUS, 5, &[0]), FrameError::BadPayload),
            (raw(1, kind::PREPARE, 5, &[0]), FrameError::BadPayload),
            (raw(1, kind::RESUMED, 5, &[0; 3]), FrameError::BadPayload),
        ];
        for (f, want) in cases {
            let Decoded::Invalid { error, seq, skip } = decode::<Request>(&f) else {
                panic!("{f:x?} decoded");
            };
            assert_eq!((error, seq), (want, Some(5)), "{f:x?}");
            assert!(skip >= 1 && skip <= f.len());
        }
        // A reply kind is not a request, and the other way round.
        assert!(matches!(
            decode::<Request>(&frame(5, &Reply::Status(Status::default()))),
            Decoded::Invalid {
                error: FrameError::UnknownKind(kind::REPLY_STATUS),
                ..
            }
        ));
        assert!(matches!(
            decode::<Reply>(&frame(5, &Request::Status)),
            Decoded::Invalid {
                error: FrameError::UnknownKind(kind::STATUS),
                ..
            }
        ));
    }

    #[test]
    fn a_length_above_the_maximum_is_refused_at_once() {
        let mut f = vec![0xF7, b'R', 1, kind::STATUS, 8, 0];
        f.extend_from_slice(&(MAX_PAYLOAD as u16 + 1).to_le_bytes());
        let c = check32(&f);
        f.extend_from_slice(&c.to_le_bytes());
        assert_eq!(
            decode::<Request>(&f),
            Decoded::Invalid {
                error: FrameError::BadLength(MAX_PAYLOAD as u16 + 1),
                seq: Some(8),
                skip: f.len()
            }
        );
    }

    #[test]
    fn a_bad_payload_check_resynchronises_inside_the_frame() {
        // A frame cut short (bytes lost) followed by a good one: the first one's length
        // swallows the start of the second; the second must still be found.
        let first = frame(1, &Reply::Status(sample_status()));
        let second = frame(2, &Request::Status);
        let mut buf = first[..40].to_vec();
        buf.extend(&second);
        buf.extend(vec![0u8; first.len()]);
        let mut at = 0;
        let mut found = None;
        for _ in 0..100 {
            match decode::<Request>(&buf[at..]) {
                Decoded::Frame { seq, .. } => {
                    found = Some(seq);
                    break;
                }
                Decoded::Invalid { skip, .. } => at += skip,
                Decoded::Incomplete => break,
            }
        }
        assert_eq!(found, Some(2));
        // And the error itself carries the sequence number.
        let mut f = frame(4, &Request::Switch(Nic::Virtio));
        f[HEADER_LEN] = 1;
        assert!(matches!(
            decode::<Request>(&f),
            Decoded::Invalid {
                error: FrameError::BadChecksum,
                seq: Some(4),
                ..
            }
        ));
    }

    #[test]
    fn reserved_flag_bits_and_unknown_nics_are_bad_payloads() {
        let mut f = frame(1, &Reply::Status(sample_status()));
        f[HEADER_LEN + 1] |= 0x80;
        let end = f.len() - TRAILER_LEN;
        let c = check32(&f[HEADER_LEN..end]);
        f[end..].copy_from_slice(&c.to_le_bytes());
        assert!(matches!(
            decode::<Reply>(&f),
            Decoded::Invalid {
                error: FrameError::BadPayload,
                ..
            }
        ));
        let mut payload = [0u8; STATUS_LEN];
        payload[0] = 3;
        assert!(matches!(
            decode::<Reply>(&raw(1, kind::REPLY_STATUS, 1, &payload)),
            Decoded::Invalid {
                error: FrameError::BadPayload,
                ..
            }
        ));
        // Error text must be UTF-8 and short.
        assert!(matches!(
            decode::<Reply>(&raw(1, kind::REPLY_ERROR, 1, &[6, 0xFF])),
            Decoded::Invalid {
                error: FrameError::BadPayload,
                ..
            }
        ));
        assert!(matches!(
            decode::<Reply>(&raw(1, kind::REPLY_ERROR, 1, &[6; 66])),
            Decoded::Invalid {
                error: FrameError::BadPayload,
                ..
            }
        ));
        assert!(matches!(
            decode::<Reply>(&raw(1, kind::REPLY_ERROR, 1, &[])),
            Decoded::Invalid {
                error: FrameError::BadPayload,
                ..
            }
        ));
    }

    #[test]
    fn error_text_is_cut_at_a_character_boundary() {
        let t = ErrorText::new(&"é".repeat(40));
        assert_eq!(t.as_str().len(), 64);
        let t = ErrorText::new(&format!("x{}", "é".repeat(40)));
        assert_eq!(t.as_str().len(), 63, "no half character");
        assert!(t.as_str().ends_with('é'));
        let mut t = ErrorText::new("abc");
        write!(t, "{}", 12).unwrap();
        assert_eq!(t.as_str(), "abc12");
        assert_eq!(format!("{t:?}"), "\"abc12\"");
    }

    #[test]
    fn encode_raw_refuses_oversized_payloads() {
        let mut out = [0u8; MAX_FRAME];
        assert!(encode_raw(1, 1, 1, &[0; MAX_PAYLOAD + 1], &mut out).is_none());
        assert_eq!(
            encode_raw(1, 1, 1, &[0; MAX_PAYLOAD], &mut out),
            Some(MAX_FRAME)
        );
    }

    #[test]
    fn nic_names_round_trip() {
        for nic in [Nic::Vf, Nic::Virtio] {
            assert_eq!(Nic::from_name(nic.name()), Some(nic));
            assert_eq!(nic.other().other(), nic);
            assert_ne!(nic.other(), nic);
        }
        assert_eq!(Nic::from_name("eth0"), None);
        let s = sample_status();
        assert_eq!(s.nic(Nic::Vf), &s.vf);
        assert_eq!(s.nic(Nic::Virtio), &s.virtio);
    }

    fn any_nic() -> impl Strategy<Value = Nic> {
        prop_oneof![Just(Nic::Vf), Just(Nic::Virtio)]
    }

    fn any_nic_status() -> impl Strategy<Value = NicStatus> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(present, link_up, rx, tx, rx_errors, tx_dropped)| NicStatus {
                    present,
                    link_up,
                    rx,
                    tx,
                    rx_errors,
                    tx_dropped,
                },
            )
    }

    fn any_status() -> impl Strategy<Value = Status> {
        (
            proptest::option::of(any_nic()),
            any_nic_status(),
            any_nic_status(),
            any::<u64>(),
        )
            .prop_map(|(active, vf, virtio, switches)| Status {
                active,
                vf,
                virtio,
                switches,
            })
    }

    fn any_reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            any_status().prop_map(Reply::Status),
            (any::<bool>(), any_status()).prop_map(|(released_vf, status)| Reply::Prepared(
                Prepared {
                    released_vf,
                    status
                }
            )),
            (any::<bool>(), any::<bool>(), any_status()).prop_map(
                |(vf_attached, announced, status)| Reply::Resumed(Resumed {
                    vf_attached,
                    announced,
                    status
                })
            ),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(longest_step_ns, steps, deferred)| Reply::Service(Service {
                    longest_step_ns,
                    steps,
                    deferred
                })
            ),
            (any::<u8>(), ".{0,80}").prop_map(|(code, text)| Reply::Error(
                ErrorCode::from_u8(code),
                ErrorText::new(&text)
            )),
        ]
    }

    fn any_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            any_nic().prop_map(Request::Switch),
            Just(Request::Status),
            Just(Request::Prepare),
            Just(Request::Resumed),
            Just(Request::Service),
        ]
    }

    fn check_shape<M>(buf: &[u8], d: &Decoded<M>) {
        match d {
            Decoded::Incomplete => assert!(buf.len() < MAX_FRAME),
            Decoded::Frame { len, .. } => assert!(*len >= HEADER_LEN && *len <= buf.len()),
            Decoded::Invalid { skip, .. } => assert!(*skip >= 1 && *skip <= buf.len()),
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            check_shape(&buf, &decode::<Request>(&buf));
            check_shape(&buf, &decode::<Reply>(&buf));
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_header_never_panic(
            kind in any::<u8>(),
            seq in any::<u16>(),
            body in proptest::collection::vec(any::<u8>(), 0..MAX_PAYLOAD),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut f = raw(VERSION, kind, seq, &body);
            f.extend(tail);
            check_shape(&f, &decode::<Request>(&f));
            check_shape(&f, &decode::<Reply>(&f));
        }

        #[test]
        fn requests_round_trip(seq in any::<u16>(), r in any_request()) {
            let f = frame(seq, &r);
            prop_assert_eq!(decode::<Request>(&f), Decoded::Frame { seq, message: r, len: f.len() });
        }

        #[test]
        fn replies_round_trip(seq in any::<u16>(), r in any_reply()) {
            let f = frame(seq, &r);
            prop_assert!(f.len() <= MAX_FRAME);
            prop_assert_eq!(decode::<Reply>(&f), Decoded::Frame { seq, message: r, len: f.len() });
        }

        #[test]
        fn any_single_byte_change_is_caught(
            seq in any::<u16>(),
            r in any_reply(),
            at in any::<usize>(),
            delta in 1u8..,
        ) {
            let mut f = frame(seq, &r);
            let at = at % f.len();
            f[at] = f[at].wrapping_add(delta);
            let d = decode::<Reply>(&f);
            prop_assert!(!matches!(d, Decoded::Frame { .. }), "{:?}", d);
        }
    }
}
