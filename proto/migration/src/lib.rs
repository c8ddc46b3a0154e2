//! The migration stream format both host-vmm ends speak, over any byte stream (TCP or Unix):
//! frames, messages, the page batches and the machine-state envelope. host-vmm's migration
//! source and destination use it, and so do the rollback tests (`tests/rollback.rs`, the
//! fault-injecting `migproxy`), which read and forge streams. It knows nothing of KVM or of
//! host-vmm's state structs: [`encode_state`] and [`decode_state`] take any serde type.
//!
//! Every message travels in one frame; all integers are little-endian:
//!
//! | offset  | size | field                                                          |
//! |---------|------|----------------------------------------------------------------|
//! | 0       | 4    | magic `b"RMIG"` ([`MAGIC`])                                     |
//! | 4       | 2    | format version `u16` ([`FORMAT_VERSION`]): this envelope's layout |
//! | 6       | 2    | message kind `u16` ([`kind`])                                   |
//! | 8       | 4    | payload length `N` `u32`, at most [`MAX_PAYLOAD`]               |
//! | 12      | N    | payload (per kind, below)                                      |
//! | 12 + N  | 4    | CRC-32 (IEEE, as `crc32fast`) of bytes `0 .. 12 + N`            |
//!
//! The header is checked (magic, format version, length bound) before any payload byte is
//! read or allocated, and the checksum before the payload is interpreted, so a hostile or
//! corrupt stream is refused with a [`WireError`] and never costs more than one bounded frame.
//!
//! | kind | message                | direction | payload                                        |
//! |------|------------------------|-----------|------------------------------------------------|
//! | 1    | [`Message::Hello`]     | src → dst | protocol `u32`, mode `u8` (0 pre-copy, 1 zero-copy), RAM size `u64`, vCPUs `u32` |
//! | 2    | [`Message::Accept`]    | dst → src | empty                                          |
//! | 3    | [`Message::Pages`]     | src → dst | count `u32`, count × page frame number `u64` (strictly increasing), count × 4096 page bytes |
//! | 4    | [`Message::State`]     | src → dst | machine state: [`STATE_VERSION`] `u32`, then postcard ([`encode_state`]) |
//! | 5    | [`Message::Done`]      | src → dst | empty                                          |
//! | 6    | [`Message::Ready`]     | dst → src | empty                                          |
//! | 7    | [`Message::Running`]   | dst → src | empty                                          |
//! | 8    | [`Message::Failed`]    | dst → src | UTF-8 reason                                   |
//! | 9    | [`Message::Abort`]     | src → dst | UTF-8 reason                                   |
//! | 10   | [`Message::Sync`]      | src → dst | empty                                          |
//! | 11   | [`Message::Synced`]    | dst → src | empty                                          |
//! | 12   | [`Message::Frames`]    | both      | count `u32` (1..=64), then per frame its length `u32` (1..=65550) and bytes ([`Frames`]) |
//! | 13   | [`Message::Announced`] | dst → src | empty                                          |
//! | 14   | [`Message::Forwarded`] | src → dst | frames forwarded in all, `u64`                 |
//! | 16   | memfd (host-vmm's `migration::fd`) | src → dst | opaque tag bytes; the frame's first bytes carry the guest-RAM memfd (SCM_RIGHTS) |
//!
//! Three versions, each checked where it lives: the format version (this envelope, every
//! frame), the protocol version (the message set and its order, in [`Hello`], the first
//! message) and [`STATE_VERSION`] (the layout of the machine-state structs, inside
//! [`Message::State`]). A mismatch of any of them is an error naming both numbers.
//!
//! The intended order (the migration driver owns it; this crate only checks each frame):
//! pre-copy: `Hello` → `Accept`, `Pages`…, `Sync` → `Synced`, (pause) `Pages`…, `State`,
//! `Done` → `Running`; zero-copy: `Hello` → `Accept`, memfd → `Ready`, (pause) `State`,
//! `Done` → `Running`. Then, both modes, the hand-over window: the source sends `Frames`
//! from `Done` on, the destination answers `Announced` once the guest runs there, the
//! source ends with `Forwarded`. Either side may give up at any point before `Running`:
//! the source with `Abort`, the destination with `Failed` (after the state, preceded by
//! the `Frames` it read for the guest).
//!
//! Readers here never read past the frame they decode, so a Unix stream can interleave
//! plain frames and host-vmm's memfd frame; do not wrap such a stream in a `BufReader`.
//!
//! Over TCP the stream runs inside mutual TLS ([`tls`]: the certificate directory, both
//! ends' configurations, and making a directory).
//!
//! Pure entry points for fuzzing: [`Message::decode`] (one frame from a byte slice) and
//! [`decode_state`]; neither panics on any input.

#![deny(unsafe_code)]

mod frames;
mod message;
mod state;
#[cfg(test)]
mod tests;
pub mod tls;

pub use frames::{Frames, MAX_FRAME_LEN, MAX_FRAMES_PER_MESSAGE};
pub use message::{Hello, MAX_BATCH_PAGES, Message, Mode, PAGE_SIZE, Pages, kind_name};
pub use message::{encode_pages, encode_pages_from_slice, write_pages};
pub use state::{STATE_VERSION, decode_state, encode_state};

use std::io::{self, Read, Write};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"RMIG";
/// The envelope layout this host-vmm writes and accepts.
pub const FORMAT_VERSION: u16 = 1;
/// The message set and sequence this host-vmm speaks (carried in [`Hello`]).
pub const PROTOCOL_VERSION: u32 = 3;
/// The largest payload accepted: a larger length is refused before allocating.
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 12;
/// Bytes after the payload (the CRC-32).
pub const TRAILER_LEN: usize = 4;

/// Message kinds, the `u16` at offset 6 of a frame.
pub mod kind {
    /// [`crate::Message::Hello`].
    pub const HELLO: u16 = 1;
    /// [`crate::Message::Accept`].
    pub const ACCEPT: u16 = 2;
    /// [`crate::Message::Pages`].
    pub const PAGES: u16 = 3;
    /// [`crate::Message::State`].
    pub const STATE: u16 = 4;
    /// [`crate::Message::Done`].
    pub const DONE: u16 = 5;
    /// [`crate::Message::Ready`].
    pub const READY: u16 = 6;
    /// [`crate::Message::Running`].
    pub const RUNNING: u16 = 7;
    /// [`crate::Message::Failed`].
    pub const FAILED: u16 = 8;
    /// [`crate::Message::Abort`].
    pub const ABORT: u16 = 9;
    /// [`crate::Message::Sync`] (protocol version 2).
    pub const SYNC: u16 = 10;
    /// [`crate::Message::Synced`] (protocol version 2).
    pub const SYNCED: u16 = 11;
    /// [`crate::Message::Frames`] (protocol version 3).
    pub const FRAMES: u16 = 12;
    /// [`crate::Message::Announced`] (protocol version 3).
    pub const ANNOUNCED: u16 = 13;
    /// [`crate::Message::Forwarded`] (protocol version 3).
    pub const FORWARDED: u16 = 14;
    /// The memfd frame of host-vmm's `migration::fd` (its data carries a file descriptor).
    pub const MEMFD: u16 = 16;
}

/// Why a migration stream was refused or could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The transport failed (the cause is in the message, not a separate source, so a
    /// chain printed with `{:#}` says it once).
    #[error("migration stream I/O failed: {0}")]
    Io(io::Error),
    /// The stream (or byte slice) ended inside a frame.
    #[error(
        "the migration stream ended early: {what} needs {needed} bytes, only {got} arrived \
         (the peer closed the connection or the stream was cut)"
    )]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes it needs.
        needed: usize,
        /// Bytes there were.
        got: usize,
    },
    /// The first bytes are not [`MAGIC`].
    #[error("not a Roam migration stream: frame starts with {got:02x?}, expected \"RMIG\"")]
    BadMagic {
        /// The four bytes found.
        got: [u8; 4],
    },
    /// The frame's format version is not [`FORMAT_VERSION`].
    #[error(
        "migration stream format version {got} is not supported: this host-vmm speaks format \
         version {supported} (run the same host-vmm release on both ends)"
    )]
    UnsupportedVersion {
        /// The version in the frame.
        got: u16,
        /// The version this host-vmm speaks.
        supported: u16,
    },
    /// The peer's [`Hello`] names another protocol version.
    #[error(
        "migration protocol version {got} is not supported: this host-vmm speaks protocol \
         version {supported} (run the same host-vmm release on both ends)"
    )]
    UnsupportedProtocol {
        /// The peer's version.
        got: u32,
        /// The version this host-vmm speaks.
        supported: u32,
    },
    /// The machine state was written with another [`STATE_VERSION`].
    #[error(
        "machine state version {got} is not supported: this host-vmm reads state version \
         {supported} (run the same host-vmm release on both ends)"
    )]
    UnsupportedStateVersion {
        /// The version in the state.
        got: u32,
        /// The version this host-vmm reads.
        supported: u32,
    },
    /// The CRC-32 does not match: the frame was corrupted in transit.
    #[error(
        "corrupt migration stream: frame checksum {found:#010x} does not match its contents \
         ({computed:#010x})"
    )]
    BadChecksum {
        /// The checksum in the frame.
        found: u32,
        /// The checksum of the bytes received.
        computed: u32,
    },
    /// A length beyond [`MAX_PAYLOAD`] (refused before allocating).
    #[error("migration frame of {len} bytes refused: the limit is {max} bytes")]
    TooLarge {
        /// The length asked for.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A message kind this host-vmm does not know.
    #[error("unknown migration message kind {0} (a newer peer, or a corrupt stream)")]
    UnknownKind(u16),
    /// A well-framed message whose contents do not make sense.
    #[error("malformed migration message: {0}")]
    Malformed(String),
    /// The machine state does not decode into the expected structs.
    #[error("machine state does not decode")]
    State(#[source] postcard::Error),
    /// A message arrived that the protocol does not allow at this point.
    #[error("unexpected migration message {got} while waiting for {expected}")]
    Unexpected {
        /// The message that came.
        got: &'static str,
        /// What the receiver was waiting for.
        expected: &'static str,
    },
    /// The destination reported that it gave up.
    #[error("the destination failed: {0}")]
    PeerFailed(String),
    /// The source reported that it rolled back.
    #[error("the source aborted the migration: {0}")]
    PeerAborted(String),
    /// A memfd frame arrived without its file descriptor.
    #[error("the memfd message arrived without a file descriptor")]
    MissingFd,
    /// More than one file descriptor (or truncated control data) came with a memfd frame.
    #[error("the memfd message carried more than one file descriptor")]
    ExtraFds,
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

/// A checked frame header: what follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message kind ([`kind`]).
    pub kind: u16,
    /// The payload length, at most [`MAX_PAYLOAD`].
    pub len: u32,
}

impl FrameHeader {
    /// Checks magic, format version and length bound (the kind is checked once the frame's
    /// checksum is, so a corrupt kind reads as corruption).
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != MAGIC {
            return Err(WireError::BadMagic { got: magic });
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != FORMAT_VERSION {
            return Err(WireError::UnsupportedVersion {
                got: version,
                supported: FORMAT_VERSION,
            });
        }
        let kind = u16::from_le_bytes([bytes[6], bytes[7]]);
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if len > MAX_PAYLOAD {
            return Err(WireError::TooLarge {
                len: len.into(),
                max: MAX_PAYLOAD.into(),
            });
        }
        Ok(FrameHeader { kind, len })
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        self.to_bytes_as(FORMAT_VERSION)
    }

    /// The header's bytes stamped with format `version`.
    fn to_bytes_as(self, version: u16) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&version.to_le_bytes());
        out[6..8].copy_from_slice(&self.kind.to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out
    }
}

/// Appends one frame of `kind` around `payload` to `out`.
pub fn encode_frame(kind: u16, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
    encode_frame_as(FORMAT_VERSION, kind, payload, out)
}

/// [`encode_frame`] stamped with format `version` instead of [`FORMAT_VERSION`], checksum
/// and all: what an older or newer peer would send, for tests of how a reader refuses it.
pub fn encode_frame_as(
    version: u16,
    kind: u16,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let len = payload_len(payload.len())?;
    let start = out.len();
    out.reserve(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&FrameHeader { kind, len }.to_bytes_as(version));
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// `len` as a frame length, if it is within [`MAX_PAYLOAD`].
fn payload_len(len: usize) -> Result<u32, WireError> {
    match u32::try_from(len) {
        Ok(l) if l <= MAX_PAYLOAD => Ok(l),
        _ => Err(WireError::TooLarge {
            len: len as u64,
            max: MAX_PAYLOAD.into(),
        }),
    }
}

/// The CRC-32 a frame's trailer carries: over its header and payload.
fn frame_checksum(header: &[u8; HEADER_LEN], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// Checks the trailer of a frame against its header and payload.
pub fn verify_checksum(
    header: &[u8; HEADER_LEN],
    payload: &[u8],
    trailer: &[u8; TRAILER_LEN],
) -> Result<(), WireError> {
    let computed = frame_checksum(header, payload);
    let found = u32::from_le_bytes(*trailer);
    if found != computed {
        return Err(WireError::BadChecksum { found, computed });
    }
    Ok(())
}

/// Splits one checked frame off the front of `bytes`: its kind, its payload and the bytes
/// it took.
pub fn decode_frame(bytes: &[u8]) -> Result<(u16, &[u8], usize), WireError> {
    let header: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Truncated {
            what: "a frame header",
            needed: HEADER_LEN,
            got: bytes.len(),
        })?;
    let h = FrameHeader::parse(header)?;
    let end = HEADER_LEN + h.len as usize;
    let total = end + TRAILER_LEN;
    if bytes.len() < total {
        return Err(WireError::Truncated {
            what: "a frame's payload and checksum",
            needed: total - HEADER_LEN,
            got: bytes.len() - HEADER_LEN,
        });
    }
    let payload = &bytes[HEADER_LEN..end];
    let trailer: &[u8; TRAILER_LEN] = bytes[end..total].try_into().map_err(|_| {
        WireError::Malformed("frame trailer is not four bytes".to_string()) // unreachable
    })?;
    verify_checksum(header, payload, trailer)?;
    Ok((h.kind, payload, total))
}

/// Reads one checked frame: its kind and payload. Reads exactly the frame's bytes.
pub fn read_frame<R: Read + ?Sized>(r: &mut R) -> Result<(u16, Vec<u8>), WireError> {
    let mut header = [0; HEADER_LEN];
    read_full(r, &mut header, "a frame header")?;
    let h = FrameHeader::parse(&header)?;
    // Bounded by MAX_PAYLOAD above; a peer that lies about the length only gets Truncated.
    let mut payload = vec![0; h.len as usize];
    read_full(r, &mut payload, "a frame payload")?;
    let mut trailer = [0; TRAILER_LEN];
    read_full(r, &mut trailer, "a frame checksum")?;
    verify_checksum(&header, &payload, &trailer)?;
    Ok((h.kind, payload))
}

/// Fills `buf` from `r`, reporting how far it got if the stream ends.
fn read_full<R: Read + ?Sized>(
    r: &mut R,
    buf: &mut [u8],
    what: &'static str,
) -> Result<(), WireError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(WireError::Truncated {
                    what,
                    needed: buf.len(),
                    got,
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    Ok(())
}

/// Reads one message (exactly its frame's bytes).
pub fn read_message<R: Read + ?Sized>(r: &mut R) -> Result<Message, WireError> {
    let (kind, payload) = read_frame(r)?;
    Message::from_payload(kind, payload)
}

/// Writes one message as one `write_all`.
pub fn write_message<W: Write + ?Sized>(w: &mut W, msg: &Message) -> Result<(), WireError> {
    w.write_all(&msg.encode()?)?;
    Ok(())
}
