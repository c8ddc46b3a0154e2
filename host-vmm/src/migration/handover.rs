//! The hand-over window: from the moment the source has sent the final state until the
//! destination runs the guest and has announced it, frames for the guest keep reaching the
//! source's port (the L2 still sends them there). Nothing may be lost in between:
//!
//! - the source ([`Forwarder`]) reads its port and sends what arrives as `Frames` from
//!   Done on, until the destination's `Announced`, then sends `Forwarded` with the count;
//!   it keeps a copy of what it forwarded before `Running`, which it delivers to the guest
//!   itself if the move rolls back (the destination never delivered those);
//! - the destination ([`Handover`]) announces the guest, says `Announced`, and delivers
//!   every forwarded frame to the guest in order, after the frames the state carried;
//! - a destination that gives up after it has the state sends the source what it read for
//!   the guest (`Frames`, before its `Failed`), which the source delivers after the
//!   rollback ([`send_back`]).
//!
//! Everything is bounded: at most [`MAX_FORWARDED`] frames each way per move (more are
//! read and dropped, and counted), at most [`port::MAX_INBOX`] waiting for the guest, and
//! every wait has a deadline. Frames from the peer are checked by the wire format
//! (envelope, checksum, count and lengths) before they are queued.
//!
//! [`port::MAX_INBOX`]: crate::device_manager::port::MAX_INBOX

use super::target::Stream;
use crate::device_manager::DeviceManager;
use migration_wire::{
    Frames, MAX_FRAME_LEN, MAX_FRAMES_PER_MESSAGE, Message, WireError, kind, read_message,
};
use std::io::Write;
use std::time::{Duration, Instant};

/// Most frames forwarded each way in one move.
pub const MAX_FORWARDED: usize = 1024;
/// How long the source forwards after Running at most, waiting for Announced (and the
/// destination waits for Forwarded).
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the source looks at its port while it waits for the destination.
const POLL: Duration = Duration::from_millis(1);
/// Batches of frames the source reads from its port at most per look.
const PUMP_BATCHES: usize = 4;

/// Where the hand-over window reads and delivers the guest's frames: virtio-net's port
/// ([`DeviceManager`]).
pub trait GuestFrames {
    /// The frames waiting for the guest, oldest first, at most `max` (never blocks).
    fn take(&self, max: usize) -> Vec<Vec<u8>>;
    /// Queues `frames` for the guest after those queued before; returns how many were
    /// dropped.
    fn deliver(&self, frames: Vec<Vec<u8>>) -> u64;
}

impl GuestFrames for DeviceManager {
    fn take(&self, max: usize) -> Vec<Vec<u8>> {
        self.take_net_frames(max)
    }

    fn deliver(&self, frames: Vec<Vec<u8>>) -> u64 {
        self.deliver_net_frames(frames)
    }
}

/// What the hand-over window moved, on one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames forwarded (source) or delivered to the guest (destination).
    pub frames: u64,
    /// Frames dropped: beyond [`MAX_FORWARDED`], or a full inbox.
    pub dropped: u64,
}

/// The source's side: forwards what its port receives while it waits for the destination.
pub struct Forwarder<'a> {
    devices: &'a dyn GuestFrames,
    /// Whether Done went out: from then on what arrives for the guest is forwarded.
    open: bool,
    /// Copies of what went before Running (delivered here after a rollback).
    kept: Vec<Vec<u8>>,
    /// Whether Running came (the copies are the destination's now).
    committed: bool,
    /// What the destination sent back before its Failed.
    returned: Vec<Vec<u8>>,
    counts: Counts,
    /// Bytes written to the stream.
    bytes: u64,
}

impl<'a> Forwarder<'a> {
    /// A forwarder on `devices` (virtio-net's port), closed until [`Forwarder::open`].
    pub fn new(devices: &'a dyn GuestFrames) -> Self {
        Forwarder {
            devices,
            open: false,
            kept: Vec::new(),
            committed: false,
            returned: Vec::new(),
            counts: Counts::default(),
            bytes: 0,
        }
    }

    /// The final state and Done are sent: forward from now on.
    pub fn open(&mut self) {
        self.open = true;
    }

    /// What was forwarded so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Bytes it wrote to the stream so far (frames and Forwarded).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes
    }

    fn send(&mut self, stream: &mut Stream, msg: &Message) -> Result<(), WireError> {
        let bytes = msg.encode()?;
        stream.write_all(&bytes)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Sends what waits on the port, up to the cap (beyond it, read and dropped); a few
    /// batches at most a call, so a flood cannot hold the caller past its deadline.
    fn pump(&mut self, stream: &mut Stream) -> Result<(), WireError> {
        for _ in 0..PUMP_BATCHES {
            let frames = self.devices.take(MAX_FRAMES_PER_MESSAGE);
            if frames.is_empty() {
                return Ok(());
            }
            let room = MAX_FORWARDED.saturating_sub(self.counts.frames as usize);
            let n = frames.len();
            // A frame the wire cannot carry is dropped, not a reason to fail the move.
            let frames: Vec<Vec<u8>> = frames
                .into_iter()
                .filter(|f| (1..=MAX_FRAME_LEN).contains(&f.len()))
                .take(room)
                .collect();
            self.counts.dropped += (n - frames.len()) as u64;
            if frames.is_empty() {
                continue;
            }
            if !self.committed {
                self.kept.extend(frames.iter().cloned());
            }
            self.counts.frames += frames.len() as u64;
            self.send(stream, &Message::Frames(Frames::new(frames)?))?;
        }
        Ok(())
    }

    /// The destination's next message other than `Frames` (which are kept for a
    /// rollback), within `timeout`; while waiting, once open, forwards what the port
    /// receives every millisecond.
    pub fn next_message(
        &mut self,
        stream: &mut Stream,
        timeout: Duration,
    ) -> Result<Message, WireError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.open {
                self.pump(stream)?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WireError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the destination did not answer within {timeout:?}"),
                )));
            }
            let slice = if self.open { POLL.min(left) } else { left };
            if !stream.wait_readable(slice)? {
                continue;
            }
            match read_message(stream)? {
                Message::Frames(f) => self.take_returned(f),
                other => return Ok(other),
            }
        }
    }

    /// Keeps frames the destination sent back, up to the cap.
    fn take_returned(&mut self, f: Frames) {
        let room = MAX_FORWARDED.saturating_sub(self.returned.len());
        let n = f.len();
        self.returned.extend(f.into_frames().into_iter().take(room));
        self.counts.dropped += n.saturating_sub(room) as u64;
    }

    /// After an error: reads what the destination still says for up to `timeout`, keeping
    /// its `Frames`; returns its `Failed` reason if one comes.
    pub fn last_words(&mut self, stream: &mut Stream, timeout: Duration) -> Option<String> {
        let _ = stream.set_read_timeout(Some(timeout));
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // What is left to send is not sent first: the write just failed.
            match read_message(&mut stream.read_only()) {
                Ok(Message::Frames(f)) => self.take_returned(f),
                Ok(Message::Failed(reason)) => return Some(reason),
                _ => return None,
            }
        }
        None
    }

    /// Running came: what was forwarded is the destination's to deliver.
    pub fn commit(&mut self) {
        self.committed = true;
        self.kept = Vec::new();
    }

    /// After Running: forwards until the destination's Announced (at most
    /// [`HANDOVER_TIMEOUT`]), then what is left on the port, then Forwarded with the count.
    /// The move is committed: a failure here only ends the forwarding.
    pub fn until_announced(&mut self, stream: &mut Stream) -> Result<Counts, WireError> {
        match self.next_message(stream, HANDOVER_TIMEOUT)? {
            Message::Announced => {}
            other => {
                return Err(WireError::Unexpected {
                    got: other.name(),
                    expected: migration_wire::kind_name(kind::ANNOUNCED),
                });
            }
        }
        // The L2 sends the guest's frames to the destination now; what it sent here before
        // is on the port already (up to the cap: a few looks).
        for _ in 0..=MAX_FORWARDED / (PUMP_BATCHES * MAX_FRAMES_PER_MESSAGE) {
            self.pump(stream)?;
        }
        self.send(stream, &Message::Forwarded(self.counts.frames))?;
        stream.flush()?;
        Ok(self.counts)
    }

    /// After a rollback (device I/O parked still): delivers to the guest here what was
    /// forwarded before Running and what the destination sent back, in that order.
    /// Returns how many frames were given back and how many of those were dropped.
    pub fn give_back(&mut self) -> Counts {
        let frames: Vec<Vec<u8>> = std::mem::take(&mut self.kept)
            .into_iter()
            .chain(std::mem::take(&mut self.returned))
            .collect();
        let n = frames.len() as u64;
        if n == 0 {
            return Counts::default();
        }
        Counts {
            frames: n,
            dropped: self.devices.deliver(frames),
        }
    }
}

/// The destination's side, once it has sent Running: the stream, until the source's
/// Forwarded.
#[derive(Debug)]
pub struct Handover {
    stream: Stream,
}

impl Handover {
    /// The stream of a move whose Running went out.
    pub fn new(stream: Stream) -> Self {
        Handover { stream }
    }

    /// Call once the guest's announcement went out: says Announced, then delivers every
    /// frame the source forwards to the guest (through `devices`, after those the state
    /// carried) until its Forwarded, at most [`HANDOVER_TIMEOUT`]. Returns what was
    /// delivered and dropped; an error says why it stopped early (the guest runs anyway).
    pub fn finish(mut self, devices: &dyn GuestFrames) -> Result<Counts, (Counts, WireError)> {
        let mut counts = Counts::default();
        let r = self.deliver(devices, &mut counts);
        self.stream.shutdown();
        r.map(|()| counts).map_err(|e| (counts, e))
    }

    fn deliver(&mut self, devices: &dyn GuestFrames, counts: &mut Counts) -> Result<(), WireError> {
        let s = &mut self.stream;
        s.set_read_timeout(Some(HANDOVER_TIMEOUT))?;
        s.write_all(&Message::Announced.encode()?)?;
        s.flush()?;
        let deadline = Instant::now() + HANDOVER_TIMEOUT;
        let mut received = 0u64;
        loop {
            if Instant::now() >= deadline {
                return Err(WireError::Malformed(format!(
                    "no Forwarded within {HANDOVER_TIMEOUT:?} of Announced"
                )));
            }
            match read_message(s)?.into_result()? {
                Message::Frames(f) => {
                    received += f.len() as u64;
                    if received > MAX_FORWARDED as u64 {
                        return Err(WireError::Malformed(format!(
                            "the source forwarded more than {MAX_FORWARDED} frames"
                        )));
                    }
                    let n = f.len() as u64;
                    let dropped = devices.deliver(f.into_frames());
                    counts.frames += n - dropped;
                    counts.dropped += dropped;
                }
                Message::Forwarded(sent) if sent == received => return Ok(()),
                Message::Forwarded(sent) => {
                    return Err(WireError::Malformed(format!(
                        "the source says it forwarded {sent} frames; {received} arrived"
                    )));
                }
                other => {
                    return Err(WireError::Unexpected {
                        got: other.name(),
                        expected: "Frames or Forwarded",
                    });
                }
            }
        }
    }
}

/// A destination that gives up after it has the state: sends the source what its port
/// holds for the guest (at most [`MAX_FORWARDED`]), before its Failed. Best effort.
pub fn send_back(stream: &mut Stream, frames: Vec<Vec<u8>>) {
    let n = frames.len();
    let mut frames = frames.into_iter().take(MAX_FORWARDED).peekable();
    while frames.peek().is_some() {
        let chunk: Vec<Vec<u8>> = frames.by_ref().take(MAX_FRAMES_PER_MESSAGE).collect();
        let sent = Frames::new(chunk)
            .and_then(|f| Message::Frames(f).encode())
            .and_then(|b| stream.write_all(&b).map_err(WireError::Io));
        if let Err(e) = sent {
            log::warn!("migration: cannot send the guest's frames back to the source: {e}");
            return;
        }
    }
    if n > 0 {
        log::info!(
            "migration: {} frames for the guest sent back to the source",
            n.min(MAX_FORWARDED)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration_wire::write_message;
    use std::collections::VecDeque;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    /// virtio-net's port as the window sees it: frames waiting, frames delivered.
    #[derive(Default)]
    struct Port {
        waiting: Mutex<VecDeque<Vec<u8>>>,
        delivered: Mutex<Vec<Vec<u8>>>,
    }

    impl Port {
        fn arrive(&self, tags: impl IntoIterator<Item = u8>) {
            let mut w = self.waiting.lock().unwrap();
            w.extend(tags.into_iter().map(|t| vec![t; 60]));
        }

        fn delivered_tags(&self) -> Vec<u8> {
            self.delivered
                .lock()
                .unwrap()
                .iter()
                .map(|f| f[0])
                .collect()
        }
    }

    impl GuestFrames for Port {
        fn take(&self, max: usize) -> Vec<Vec<u8>> {
            let mut w = self.waiting.lock().unwrap();
            let n = w.len().min(max);
            w.drain(..n).collect()
        }

        fn deliver(&self, frames: Vec<Vec<u8>>) -> u64 {
            self.delivered.lock().unwrap().extend(frames);
            0
        }
    }

    fn pair() -> (Stream, Stream) {
        let (a, b) = UnixStream::pair().unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        (Stream::Unix(a), Stream::Unix(b))
    }

    /// The source's side of a move that succeeds: forwards from `port` from Done on, waits
    /// for Running, then until the destination announced the guest; its counts.
    fn source_until_announced(port: &Port, stream: &mut Stream) -> Counts {
        let mut f = Forwarder::new(port);
        f.open();
        let m = f.next_message(stream, Duration::from_secs(5)).unwrap();
        assert_eq!(m, Message::Running);
        f.commit();
        f.until_announced(stream).unwrap()
    }

    #[test]
    fn forwarded_frames_reach_the_guest_in_order_and_are_counted() {
        let (src_port, dst_port) = (Port::default(), Port::default());
        let (mut src, mut dst) = pair();
        src_port.arrive([1, 2, 3]);
        std::thread::scope(|s| {
            let source = s.spawn(|| source_until_announced(&src_port, &mut src));
            // More arrive while the destination restores, then after its Running.
            std::thread::sleep(Duration::from_millis(20));
            src_port.arrive([4]);
            std::thread::sleep(Duration::from_millis(20));
            write_message(&mut dst, &Message::Running).unwrap();
            src_port.arrive([5, 6]);
            let got = Handover::new(dst).finish(&dst_port).unwrap();
            assert_eq!(
                got,
                Counts {
                    frames: 6,
                    dropped: 0
                }
            );
            assert_eq!(
                source.join().unwrap(),
                Counts {
                    frames: 6,
                    dropped: 0
                }
            );
        });
        assert_eq!(dst_port.delivered_tags(), [1, 2, 3, 4, 5, 6]);
        assert!(src_port.delivered_tags().is_empty());
    }

    #[test]
    fn the_source_forwards_at_most_its_cap_and_counts_the_rest() {
        let (src_port, dst_port) = (Port::default(), Port::default());
        let (mut src, mut dst) = pair();
        src_port.arrive((0..MAX_FORWARDED + 10).map(|i| i as u8));
        std::thread::scope(|s| {
            let source = s.spawn(|| source_until_announced(&src_port, &mut src));
            std::thread::sleep(Duration::from_millis(20));
            write_message(&mut dst, &Message::Running).unwrap();
            let got = Handover::new(dst).finish(&dst_port).unwrap();
            let sent = source.join().unwrap();
            assert_eq!(
                sent,
                Counts {
                    frames: MAX_FORWARDED as u64,
                    dropped: 10
                }
            );
            assert_eq!(got.frames, MAX_FORWARDED as u64);
        });
    }

    #[test]
    fn after_a_failure_the_forwarded_copies_and_the_frames_sent_back_reach_the_guest_here() {
        let (src_port, dst_port) = (Port::default(), Port::default());
        let (mut src, mut dst) = pair();
        src_port.arrive([1, 2]);
        dst_port.arrive([9]);
        std::thread::scope(|s| {
            let source = s.spawn(|| {
                let mut f = Forwarder::new(&src_port);
                f.open();
                let e = f.next_message(&mut src, Duration::from_secs(5));
                let e = e.and_then(|m| m.into_result()).unwrap_err();
                assert!(matches!(&e, WireError::PeerFailed(r) if r == "no"), "{e}");
                f.give_back()
            });
            // The destination fails once the source forwarded: its own frames go back.
            let first = read_message(&mut dst).unwrap();
            assert!(matches!(first, Message::Frames(_)), "{first:?}");
            send_back(&mut dst, dst_port.take(MAX_FORWARDED));
            write_message(&mut dst, &Message::Failed("no".into())).unwrap();
            assert_eq!(
                source.join().unwrap(),
                Counts {
                    frames: 3,
                    dropped: 0
                }
            );
        });
        assert_eq!(src_port.delivered_tags(), [1, 2, 9]);
    }

    /// A source that lies or sends garbage ends the forwarding with an error, never a panic
    /// or more than the cap delivered.
    #[test]
    fn a_hostile_source_gets_an_error() {
        let frames = |n: usize| {
            Message::Frames(Frames::new(vec![vec![7; 60]; n]).unwrap())
                .encode()
                .unwrap()
        };
        let mut corrupt = frames(2);
        corrupt[20] ^= 1;
        let too_many: Vec<u8> = (0..MAX_FORWARDED / MAX_FRAMES_PER_MESSAGE + 1)
            .flat_map(|_| frames(MAX_FRAMES_PER_MESSAGE))
            .collect();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "a wrong count",
                [frames(2), Message::Forwarded(3).encode().unwrap()].concat(),
                "forwarded 3 frames; 2 arrived",
            ),
            ("a corrupt frame", corrupt, "checksum"),
            ("more than the cap", too_many, "more than 1024 frames"),
            (
                "a message out of place",
                Message::Done.encode().unwrap(),
                "unexpected",
            ),
            ("the stream cut", frames(1)[..30].to_vec(), "ended early"),
        ];
        for (what, bytes, says) in cases {
            let port = Port::default();
            let (mut src, dst) = UnixStream::pair().unwrap();
            src.write_all(&bytes).unwrap();
            src.shutdown(std::net::Shutdown::Write).unwrap();
            let r = Handover::new(Stream::Unix(dst)).finish(&port);
            let (counts, e) = r.expect_err(what);
            assert!(counts.frames <= MAX_FORWARDED as u64, "{what}: {counts:?}");
            assert!(
                port.delivered.lock().unwrap().len() <= MAX_FORWARDED,
                "{what}"
            );
            assert!(e.to_string().contains(says), "{what}: {e}");
            // It said Announced first.
            let said = read_message(&mut Stream::Unix(src)).unwrap();
            assert_eq!(said, Message::Announced, "{what}");
        }
    }
}
