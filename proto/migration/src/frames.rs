//! The hand-over window's payloads: guest frames forwarded between the two ends
//! ([`Frames`], kind 12) and the count that closes the forwarding ([`forwarded`], kind 14).
//!
//! A `Frames` payload is a count `u32`, then that many frames, each a length `u32` and its
//! bytes. Decoding checks the count against [`MAX_FRAMES_PER_MESSAGE`], every length
//! against 1..=[`MAX_FRAME_LEN`] and the bytes against the payload's end before it copies
//! anything, so a hostile peer costs at most one bounded frame (the envelope's checksum
//! was checked before).

use super::WireError;

/// Most guest frames one [`Frames`] message carries.
pub const MAX_FRAMES_PER_MESSAGE: usize = 64;
/// Longest guest frame forwarded: a 64 KiB IP packet and its Ethernet header (virtio-net's
/// largest).
pub const MAX_FRAME_LEN: usize = 65550;
/// Bytes before the frames (the count), and before each frame (its length).
const COUNT_LEN: usize = 4;

/// Guest frames read from one end's TAP during the hand-over window, oldest first.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Frames(Vec<Vec<u8>>);

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<usize> = self.0.iter().map(Vec::len).collect();
        f.debug_tuple("Frames").field(&lens).finish()
    }
}

impl Frames {
    /// A message of `frames`: 1..=[`MAX_FRAMES_PER_MESSAGE`] frames of
    /// 1..=[`MAX_FRAME_LEN`] bytes each.
    pub fn new(frames: Vec<Vec<u8>>) -> Result<Frames, WireError> {
        check_count(frames.len())?;
        for (i, f) in frames.iter().enumerate() {
            check_len(i, f.len())?;
        }
        Ok(Frames(frames))
    }

    /// The frames, oldest first.
    pub fn frames(&self) -> &[Vec<u8>] {
        &self.0
    }

    /// The frames, taken.
    pub fn into_frames(self) -> Vec<Vec<u8>> {
        self.0
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none (never, for a checked message).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The payload bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let len = COUNT_LEN + self.0.iter().map(|f| COUNT_LEN + f.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for f in &self.0 {
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    /// Checks and splits a received payload.
    pub(crate) fn decode(payload: &[u8]) -> Result<Frames, WireError> {
        let (count, mut rest) = take_u32(payload, "Frames is shorter than its count")?;
        check_count(count as usize)?;
        let mut frames = Vec::with_capacity(count as usize);
        for i in 0..count as usize {
            let (len, after) = take_u32(rest, "Frames ends inside a frame's length")?;
            check_len(i, len as usize)?;
            let frame = after.get(..len as usize).ok_or_else(|| {
                WireError::Malformed(format!(
                    "Frames: frame {i} claims {len} bytes, only {} remain",
                    after.len()
                ))
            })?;
            frames.push(frame.to_vec());
            rest = &after[len as usize..];
        }
        if !rest.is_empty() {
            return Err(WireError::Malformed(format!(
                "Frames: {} bytes after its {count} frames",
                rest.len()
            )));
        }
        Ok(Frames(frames))
    }
}

fn take_u32<'a>(p: &'a [u8], short: &str) -> Result<(u32, &'a [u8]), WireError> {
    let b = p
        .get(..COUNT_LEN)
        .ok_or_else(|| WireError::Malformed(short.into()))?;
    Ok((
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        &p[COUNT_LEN..],
    ))
}

fn check_count(count: usize) -> Result<(), WireError> {
    if count == 0 || count > MAX_FRAMES_PER_MESSAGE {
        return Err(WireError::Malformed(format!(
            "Frames carries {count} frames; 1..={MAX_FRAMES_PER_MESSAGE} expected"
        )));
    }
    Ok(())
}

fn check_len(i: usize, len: usize) -> Result<(), WireError> {
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(WireError::Malformed(format!(
            "Frames: frame {i} has {len} bytes; 1..={MAX_FRAME_LEN} expected"
        )));
    }
    Ok(())
}

/// The payload of [`crate::Message::Forwarded`]: how many frames the source forwarded.
pub(crate) fn encode_forwarded(count: u64) -> [u8; 8] {
    count.to_le_bytes()
}

/// Checks and reads a [`crate::Message::Forwarded`] payload.
pub(crate) fn decode_forwarded(p: &[u8]) -> Result<u64, WireError> {
    let b: [u8; 8] = p.try_into().map_err(|_| {
        WireError::Malformed(format!("Forwarded has {} bytes, expected 8", p.len()))
    })?;
    Ok(u64::from_le_bytes(b))
}
