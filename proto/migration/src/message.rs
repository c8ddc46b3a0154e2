//! The messages, their payloads, and the page-batch encoder.

use super::{
    FrameHeader, HEADER_LEN, MAX_PAYLOAD, PROTOCOL_VERSION, TRAILER_LEN, WireError, decode_frame,
    encode_frame, kind, payload_len,
};
use crate::frames::{Frames, decode_forwarded, encode_forwarded};
use std::io::Write;

/// The guest page size pages travel in.
pub const PAGE_SIZE: usize = 4096;
/// Bytes of a [`Pages`] payload before the pfn list (the count).
const PAGES_PREFIX: usize = 4;
/// The most pages one [`Pages`] batch can carry within [`MAX_PAYLOAD`].
pub const MAX_BATCH_PAGES: usize = (MAX_PAYLOAD as usize - PAGES_PREFIX) / (8 + PAGE_SIZE);
/// Bytes of a [`Hello`] payload.
const HELLO_LEN: usize = 4 + 1 + 8 + 4;

/// How the guest's memory moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pages are copied over the stream, then re-sent as the guest dirties them.
    PreCopy,
    /// The destination maps the source's memfd; no page crosses the stream.
    ZeroCopy,
}

/// The source's first message: what it speaks and what it is about to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The source's protocol version ([`PROTOCOL_VERSION`]).
    pub protocol: u32,
    /// How memory moves.
    pub mode: Mode,
    /// Guest RAM size in bytes (the destination must give the guest the same).
    pub ram_size: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
}

impl Hello {
    /// A hello for this host-vmm's protocol version.
    pub fn new(mode: Mode, ram_size: u64, vcpus: u32) -> Self {
        Hello {
            protocol: PROTOCOL_VERSION,
            mode,
            ram_size,
            vcpus,
        }
    }

    fn encode(&self, out: &mut [u8; HELLO_LEN]) {
        out[0..4].copy_from_slice(&self.protocol.to_le_bytes());
        out[4] = match self.mode {
            Mode::PreCopy => 0,
            Mode::ZeroCopy => 1,
        };
        out[5..13].copy_from_slice(&self.ram_size.to_le_bytes());
        out[13..17].copy_from_slice(&self.vcpus.to_le_bytes());
    }

    /// The protocol version comes first and is checked first: a peer of another version may
    /// lay out the rest differently, and the error must name both versions, not a symptom.
    fn decode(p: &[u8]) -> Result<Self, WireError> {
        let protocol = p
            .get(0..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| WireError::Malformed("Hello is shorter than its version".into()))?;
        if protocol != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedProtocol {
                got: protocol,
                supported: PROTOCOL_VERSION,
            });
        }
        let p: &[u8; HELLO_LEN] = p.try_into().map_err(|_| {
            WireError::Malformed(format!("Hello has {} bytes, expected {HELLO_LEN}", p.len()))
        })?;
        let mode = match p[4] {
            0 => Mode::PreCopy,
            1 => Mode::ZeroCopy,
            m => return Err(WireError::Malformed(format!("unknown migration mode {m}"))),
        };
        let mut ram = [0; 8];
        ram.copy_from_slice(&p[5..13]);
        Ok(Hello {
            protocol,
            mode,
            ram_size: u64::from_le_bytes(ram),
            vcpus: u32::from_le_bytes([p[13], p[14], p[15], p[16]]),
        })
    }
}

/// A batch of guest pages: page frame numbers and their contents, kept in their wire form
/// (count, pfns, pages) so a received batch is never copied before it lands in guest RAM.
#[derive(Clone, PartialEq, Eq)]
pub struct Pages {
    count: usize,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The page bytes would drown everything else.
        f.debug_struct("Pages")
            .field("pfns", &self.pfns().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Pages {
    /// A batch of `pfns.len()` pages whose contents are `data`, one [`PAGE_SIZE`] after the
    /// other.
    pub fn new(pfns: &[u64], data: &[u8]) -> Result<Self, WireError> {
        check_batch_size(pfns.len())?;
        if data.len() != pfns.len() * PAGE_SIZE {
            return Err(WireError::Malformed(format!(
                "{} pfns need {} bytes of pages, got {}",
                pfns.len(),
                pfns.len() * PAGE_SIZE,
                data.len()
            )));
        }
        let mut payload = Vec::with_capacity(pages_payload_len(pfns.len()));
        payload.extend_from_slice(&(pfns.len() as u32).to_le_bytes());
        for pfn in pfns {
            payload.extend_from_slice(&pfn.to_le_bytes());
        }
        payload.extend_from_slice(data);
        Ok(Pages {
            count: pfns.len(),
            payload,
        })
    }

    /// Takes a received payload after checking that its count, pfn list and page bytes agree.
    fn from_payload(payload: Vec<u8>) -> Result<Self, WireError> {
        let count = payload
            .get(..PAGES_PREFIX)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| WireError::Malformed("Pages is shorter than its count".into()))?;
        if count > MAX_BATCH_PAGES {
            return Err(WireError::Malformed(format!(
                "Pages claims {count} pages, more than the {MAX_BATCH_PAGES} a frame can hold"
            )));
        }
        let expected = pages_payload_len(count);
        if payload.len() != expected {
            return Err(WireError::Malformed(format!(
                "Pages of {count} pages has {} bytes, expected {expected}",
                payload.len()
            )));
        }
        Ok(Pages { count, payload })
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch carries no page.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The page frame numbers, in order.
    pub fn pfns(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.payload[PAGES_PREFIX..PAGES_PREFIX + self.count * 8]
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    /// All page bytes, one [`PAGE_SIZE`] per pfn in order.
    pub fn data(&self) -> &[u8] {
        &self.payload[PAGES_PREFIX + self.count * 8..]
    }

    /// Each page with its frame number.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (u64, &[u8])> + '_ {
        self.pfns().zip(self.data().chunks_exact(PAGE_SIZE))
    }

    /// Checks the batch against guest RAM of `ram_size` bytes: every page lies wholly inside
    /// RAM and the pfns are strictly increasing (so no page comes twice and the order in which
    /// pages are written cannot matter). Call before writing a received batch.
    pub fn validate(&self, ram_size: u64) -> Result<(), WireError> {
        let ram_pages = ram_size / PAGE_SIZE as u64;
        let mut prev: Option<u64> = None;
        for pfn in self.pfns() {
            if pfn >= ram_pages {
                return Err(WireError::Malformed(format!(
                    "page frame {pfn:#x} lies outside guest RAM of {ram_size} bytes \
                     ({ram_pages} pages)"
                )));
            }
            if prev.is_some_and(|p| pfn <= p) {
                return Err(WireError::Malformed(format!(
                    "page frames out of order or repeated: {pfn:#x} after {:#x}",
                    prev.unwrap_or_default()
                )));
            }
            prev = Some(pfn);
        }
        Ok(())
    }
}

fn pages_payload_len(count: usize) -> usize {
    PAGES_PREFIX + count * (8 + PAGE_SIZE)
}

fn check_batch_size(count: usize) -> Result<(), WireError> {
    if count > MAX_BATCH_PAGES {
        return Err(WireError::TooLarge {
            len: pages_payload_len(count) as u64,
            max: MAX_PAYLOAD.into(),
        });
    }
    Ok(())
}

/// Builds a whole Pages frame in `out` (replacing its contents), asking `fill` to write each
/// page's bytes straight into the frame: one copy from guest memory, none after. `pfns` must
/// be strictly increasing (what the receiver's [`Pages::validate`] demands). Reusing `out`
/// across batches of one size costs no allocation and no zeroing.
///
/// `fill(pfn, dst)` gets a [`PAGE_SIZE`] slice, e.g. `mem.read_slice(dst, GuestAddress(pfn *
/// 4096))`; its error type only has to take a [`WireError`].
pub fn encode_pages<E, F>(out: &mut Vec<u8>, pfns: &[u64], mut fill: F) -> Result<(), E>
where
    E: From<WireError>,
    F: FnMut(u64, &mut [u8]) -> Result<(), E>,
{
    check_batch_size(pfns.len())?;
    if let Some(w) = pfns.windows(2).find(|w| w[1] <= w[0]) {
        return Err(WireError::Malformed(format!(
            "page frames out of order or repeated: {:#x} after {:#x}",
            w[1], w[0]
        ))
        .into());
    }
    let len = pages_payload_len(pfns.len());
    let plen = payload_len(len)?;
    // Grows (zeroing only the new tail) or shrinks; bytes left from the last batch are
    // overwritten below.
    out.resize(HEADER_LEN + len + TRAILER_LEN, 0);
    let (header, rest) = out.split_at_mut(HEADER_LEN);
    header.copy_from_slice(
        &FrameHeader {
            kind: kind::PAGES,
            len: plen,
        }
        .to_bytes(),
    );
    let payload = &mut rest[..len];
    let (prefix, data) = payload.split_at_mut(PAGES_PREFIX + pfns.len() * 8);
    prefix[..PAGES_PREFIX].copy_from_slice(&(pfns.len() as u32).to_le_bytes());
    for (slot, pfn) in prefix[PAGES_PREFIX..].chunks_exact_mut(8).zip(pfns) {
        slot.copy_from_slice(&pfn.to_le_bytes());
    }
    for (dst, &pfn) in data.chunks_exact_mut(PAGE_SIZE).zip(pfns) {
        fill(pfn, dst)?;
    }
    let crc = crc32fast::hash(&out[..HEADER_LEN + len]);
    out[HEADER_LEN + len..].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// [`encode_pages`] with the pages taken from `ram`, a byte image of guest RAM from address 0.
pub fn encode_pages_from_slice(
    out: &mut Vec<u8>,
    pfns: &[u64],
    ram: &[u8],
) -> Result<(), WireError> {
    encode_pages(out, pfns, |pfn, dst| {
        let src = usize::try_from(pfn)
            .ok()
            .and_then(|p| p.checked_mul(PAGE_SIZE))
            .and_then(|start| ram.get(start..start.checked_add(PAGE_SIZE)?))
            .ok_or_else(|| {
                WireError::Malformed(format!(
                    "page frame {pfn:#x} lies outside the {} bytes given",
                    ram.len()
                ))
            })?;
        dst.copy_from_slice(src);
        Ok(())
    })
}

/// [`encode_pages`] into `buf`, then one `write_all` of the frame to `w`.
pub fn write_pages<W, E, F>(w: &mut W, buf: &mut Vec<u8>, pfns: &[u64], fill: F) -> Result<(), E>
where
    W: Write + ?Sized,
    E: From<WireError>,
    F: FnMut(u64, &mut [u8]) -> Result<(), E>,
{
    encode_pages(buf, pfns, fill)?;
    w.write_all(buf).map_err(WireError::Io)?;
    Ok(())
}

/// One message of the migration stream (see the module docs for who sends which).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Source → destination, first: protocol version, mode, guest shape.
    Hello(Hello),
    /// Destination → source: the hello is acceptable, go on.
    Accept,
    /// Source → destination: a batch of guest pages.
    Pages(Pages),
    /// Source → destination: the machine state ([`crate::encode_state`]'s bytes).
    State(Vec<u8>),
    /// Source → destination: nothing more follows; start the guest.
    Done,
    /// Destination → source (zero-copy): memfd mapped, VM and devices prepared.
    Ready,
    /// Destination → source: the guest runs there; the source may release everything.
    Running,
    /// Destination → source: the destination gave up, and why.
    Failed(String),
    /// Source → destination: the source rolled back, and why.
    Abort(String),
    /// Source → destination (pre-copy, before the pause): answer once everything before
    /// this has arrived, so the pause carries only what is sent in it.
    Sync,
    /// Destination → source: the answer to [`Message::Sync`].
    Synced,
    /// Either way, in the hand-over window: guest frames one end's TAP received. Source →
    /// destination from Done until Forwarded (delivered there after the frames the state
    /// carried); destination → source before its Failed, once it has the state (delivered
    /// at the source after the rollback).
    Frames(Frames),
    /// Destination → source (after Running): the guest runs here and its announcement went
    /// out; stop forwarding.
    Announced,
    /// Source → destination (after Announced): the last forwarded frame has gone; how many
    /// frames were forwarded in all.
    Forwarded(u64),
}

impl Message {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Accept => "Accept",
            Message::Pages(_) => "Pages",
            Message::State(_) => "State",
            Message::Done => "Done",
            Message::Ready => "Ready",
            Message::Running => "Running",
            Message::Failed(_) => "Failed",
            Message::Abort(_) => "Abort",
            Message::Sync => "Sync",
            Message::Synced => "Synced",
            Message::Frames(_) => "Frames",
            Message::Announced => "Announced",
            Message::Forwarded(_) => "Forwarded",
        }
    }

    /// Its kind on the wire.
    pub fn kind(&self) -> u16 {
        match self {
            Message::Hello(_) => kind::HELLO,
            Message::Accept => kind::ACCEPT,
            Message::Pages(_) => kind::PAGES,
            Message::State(_) => kind::STATE,
            Message::Done => kind::DONE,
            Message::Ready => kind::READY,
            Message::Running => kind::RUNNING,
            Message::Failed(_) => kind::FAILED,
            Message::Abort(_) => kind::ABORT,
            Message::Sync => kind::SYNC,
            Message::Synced => kind::SYNCED,
            Message::Frames(_) => kind::FRAMES,
            Message::Announced => kind::ANNOUNCED,
            Message::Forwarded(_) => kind::FORWARDED,
        }
    }

    /// Appends its frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let mut hello = [0; HELLO_LEN];
        let frames;
        let forwarded;
        let payload: &[u8] = match self {
            Message::Frames(f) => {
                frames = f.encode();
                &frames
            }
            Message::Forwarded(n) => {
                forwarded = encode_forwarded(*n);
                &forwarded
            }
            Message::Hello(h) => {
                h.encode(&mut hello);
                &hello
            }
            Message::Pages(p) => &p.payload,
            Message::State(s) => s,
            Message::Failed(s) | Message::Abort(s) => s.as_bytes(),
            Message::Accept
            | Message::Done
            | Message::Ready
            | Message::Running
            | Message::Sync
            | Message::Synced
            | Message::Announced => &[],
        };
        encode_frame(self.kind(), payload, out)
    }

    /// Its frame.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes the frame at the start of `bytes`: the message and the bytes it took. Never
    /// panics, whatever `bytes` holds (the entry point for fuzzing).
    pub fn decode(bytes: &[u8]) -> Result<(Message, usize), WireError> {
        let (kind, payload, used) = decode_frame(bytes)?;
        Ok((Message::from_payload(kind, payload.to_vec())?, used))
    }

    /// The message of a checked frame's `kind` and `payload`.
    pub fn from_payload(kind: u16, payload: Vec<u8>) -> Result<Message, WireError> {
        let empty = |m: Message| {
            if payload.is_empty() {
                Ok(m)
            } else {
                Err(WireError::Malformed(format!(
                    "{} carries no payload, got {} bytes",
                    m.name(),
                    payload.len()
                )))
            }
        };
        match kind {
            kind::HELLO => Ok(Message::Hello(Hello::decode(&payload)?)),
            kind::ACCEPT => empty(Message::Accept),
            kind::PAGES => Ok(Message::Pages(Pages::from_payload(payload)?)),
            kind::STATE => Ok(Message::State(payload)),
            kind::DONE => empty(Message::Done),
            kind::READY => empty(Message::Ready),
            kind::RUNNING => empty(Message::Running),
            kind::FAILED => Ok(Message::Failed(text("Failed", payload)?)),
            kind::ABORT => Ok(Message::Abort(text("Abort", payload)?)),
            kind::SYNC => empty(Message::Sync),
            kind::SYNCED => empty(Message::Synced),
            kind::FRAMES => Ok(Message::Frames(Frames::decode(&payload)?)),
            kind::ANNOUNCED => empty(Message::Announced),
            kind::FORWARDED => Ok(Message::Forwarded(decode_forwarded(&payload)?)),
            kind::MEMFD => Err(WireError::Malformed(
                "the memfd message arrived through a plain read (it must be received with \
                 migration::fd::recv_fd, which takes its file descriptor)"
                    .into(),
            )),
            k => Err(WireError::UnknownKind(k)),
        }
    }

    /// `Ok(self)` unless it is the peer's `Failed` or `Abort`, which become
    /// [`WireError::PeerFailed`] / [`WireError::PeerAborted`]: one `?` for "the peer gave up".
    pub fn into_result(self) -> Result<Message, WireError> {
        match self {
            Message::Failed(why) => Err(WireError::PeerFailed(why)),
            Message::Abort(why) => Err(WireError::PeerAborted(why)),
            m => Ok(m),
        }
    }

    /// Errors with [`WireError::Unexpected`] naming `expected` (after
    /// [`Message::into_result`]) unless this message is `expected`'s kind.
    pub fn expect(self, expected: u16) -> Result<Message, WireError> {
        let m = self.into_result()?;
        if m.kind() == expected {
            Ok(m)
        } else {
            Err(WireError::Unexpected {
                got: m.name(),
                expected: kind_name(expected),
            })
        }
    }
}

/// The name of a message `kind`.
pub fn kind_name(k: u16) -> &'static str {
    match k {
        kind::HELLO => "Hello",
        kind::ACCEPT => "Accept",
        kind::PAGES => "Pages",
        kind::STATE => "State",
        kind::DONE => "Done",
        kind::READY => "Ready",
        kind::RUNNING => "Running",
        kind::FAILED => "Failed",
        kind::ABORT => "Abort",
        kind::SYNC => "Sync",
        kind::SYNCED => "Synced",
        kind::FRAMES => "Frames",
        kind::ANNOUNCED => "Announced",
        kind::FORWARDED => "Forwarded",
        kind::MEMFD => "memfd",
        _ => "an unknown message",
    }
}

fn text(name: &str, payload: Vec<u8>) -> Result<String, WireError> {
    String::from_utf8(payload)
        .map_err(|_| WireError::Malformed(format!("the reason in {name} is not UTF-8")))
}
