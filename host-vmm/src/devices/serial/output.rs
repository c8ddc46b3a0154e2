//! COM1's way to stdout: a bounded buffer the vCPU writes into without ever waiting, and a
//! writer thread that drains it.
//!
//! The vCPU thread takes a VM exit per byte (or per `rep outsb` page) and must never stall
//! on a slow or stuck reader of host-vmm's stdout (a pipe nobody reads fills in 64 KiB).
//! [`SerialOutput::write`] appends to a buffer of [`OUTPUT_CAPACITY`] bytes and wakes the
//! writer; bytes that do not fit are dropped and counted ([`OutputCounters::dropped`]).
//! The writer thread writes and flushes what it takes, so a reader still sees a line as
//! soon as the guest finishes it. If stdout goes away (`EPIPE`) or fails, later output is
//! discarded (not counted as dropped) and the guest keeps running.
//!
//! Dropping the [`SerialOutput`] (the VM goes away) lets the writer finish what is
//! buffered, waiting at most [`DRAIN_AT_CLOSE`] for it, and logs how many bytes were
//! dropped, if any.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Guest output buffered for stdout at most (a few seconds of a chatty log).
pub const OUTPUT_CAPACITY: usize = 64 * 1024;
/// The longest a closing [`SerialOutput`] waits for the writer to empty the buffer.
pub const DRAIN_AT_CLOSE: Duration = Duration::from_secs(1);
/// Most bytes the writer takes per write(2).
const CHUNK: usize = 16 * 1024;

/// What happened to the guest's serial output so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputCounters {
    /// Bytes the guest sent.
    pub bytes: u64,
    /// Bytes written to stdout.
    pub written: u64,
    /// Bytes dropped because the buffer was full (stdout did not keep up).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct State {
    buf: VecDeque<u8>,
    counters: OutputCounters,
    /// The writer is writing a chunk it took out of `buf`.
    writing: bool,
    /// No more bytes will come: the writer ends once `buf` is empty.
    closed: bool,
    /// stdout failed: the writer discards from now on.
    broken: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Bytes arrived, or closed.
    ready: Condvar,
    /// The writer finished a chunk or found the buffer empty.
    progressed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits at most `bound` for the writer to write everything buffered (or give up on a
    /// broken stdout); false if bytes are still unwritten.
    fn wait_written(&self, bound: Duration) -> bool {
        let unwritten = |s: &mut State| (!s.buf.is_empty() || s.writing) && !s.broken;
        let (mut s, _) = self
            .progressed
            .wait_timeout_while(self.lock(), bound, unwritten)
            .unwrap_or_else(PoisonError::into_inner);
        !unwritten(&mut s)
    }
}

/// The vCPU's end: writes never block and never fail.
#[derive(Debug)]
pub struct SerialOutput {
    shared: Arc<Shared>,
    capacity: usize,
}

/// A reader of an output's counters (for the API), valid after the output is gone.
#[derive(Clone, Debug)]
pub struct OutputStats(Arc<Shared>);

impl OutputStats {
    /// The counters now.
    pub fn get(&self) -> OutputCounters {
        self.0.lock().counters
    }

    /// Waits at most `bound` until what the guest sent so far is on stdout: a guest's last
    /// words (a crash report) must be out before host-vmm exits, and the output itself may
    /// outlive the run (its device is shared). False if bytes are still unwritten.
    pub fn wait_written(&self, bound: Duration) -> bool {
        self.0.wait_written(bound)
    }
}

impl SerialOutput {
    /// Starts a writer thread draining into `out` (host-vmm's stdout).
    pub fn spawn(out: Box<dyn Write + Send>) -> io::Result<SerialOutput> {
        SerialOutput::with_capacity(out, OUTPUT_CAPACITY)
    }

    /// [`SerialOutput::spawn`] with another buffer size (tests).
    pub fn with_capacity(out: Box<dyn Write + Send>, capacity: usize) -> io::Result<SerialOutput> {
        let shared = Arc::new(Shared::default());
        let writer = shared.clone();
        // Detached: a writer stuck in write(2) on a stuck pipe must not hold up the VM's
        // teardown; it ends with the buffer drained and closed, or with the process.
        std::thread::Builder::new()
            .name("serial-out".into())
            .spawn(move || drain(&writer, out))?;
        Ok(SerialOutput { shared, capacity })
    }

    /// A reader of the counters.
    pub fn stats(&self) -> OutputStats {
        OutputStats(self.shared.clone())
    }
}

impl Write for SerialOutput {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut s = self.shared.lock();
        s.counters.bytes += bytes.len() as u64;
        if s.broken {
            return Ok(bytes.len());
        }
        let take = bytes.len().min(self.capacity.saturating_sub(s.buf.len()));
        s.buf.extend(&bytes[..take]);
        s.counters.dropped += (bytes.len() - take) as u64;
        drop(s);
        if take > 0 {
            self.shared.ready.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SerialOutput {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.closed = true;
        self.shared.ready.notify_one();
        drop(s);
        let written = self.shared.wait_written(DRAIN_AT_CLOSE);
        let s = self.shared.lock();
        if !written {
            log::warn!(
                "serial: stdout is not being read; {} bytes of guest output left unwritten",
                s.buf.len()
            );
        }
        let c = s.counters;
        if c.dropped > 0 {
            log::warn!(
                "serial: {} of {} bytes of guest output were dropped: stdout did not keep up",
                c.dropped,
                c.bytes
            );
        }
    }
}

/// The writer thread: takes chunks out of the buffer and writes them, until closed and
/// empty.
fn drain(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        {
            let mut s = shared.lock();
            s.writing = false;
            shared.progressed.notify_all();
            while s.buf.is_empty() && !s.closed {
                s = shared.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            if s.buf.is_empty() {
                return;
            }
            let n = s.buf.len().min(CHUNK);
            chunk.clear();
            chunk.extend(s.buf.drain(..n));
            s.writing = true;
        }
        let result = out.write_all(&chunk).and_then(|()| out.flush());
        let mut s = shared.lock();
        match result {
            Ok(()) => s.counters.written += chunk.len() as u64,
            Err(e) => {
                s.broken = true;
                s.buf.clear();
                if e.kind() == io::ErrorKind::BrokenPipe {
                    log::debug!("serial: stdout closed; dropping guest output from now on");
                } else {
                    log::warn!("serial: cannot write to stdout ({e}); dropping guest output");
                }
                s.writing = false;
                shared.progressed.notify_all();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A stdout that records, and blocks while `gate` holds no permit.
    #[derive(Clone, Default)]
    struct Recorder {
        bytes: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Recorder {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.bytes.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A stdout nobody reads: every write waits until the test lets it go.
    struct Stuck(mpsc::Receiver<()>, Recorder);

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            self.1.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_reach_stdout_in_order_and_closing_flushes_them() {
        let rec = Recorder::default();
        let mut out = SerialOutput::spawn(Box::new(rec.clone())).unwrap();
        let stats = out.stats();
        for line in ["first line\n", "second\n", "third\n"] {
            out.write_all(line.as_bytes()).unwrap();
        }
        drop(out);
        assert_eq!(&*rec.bytes.lock().unwrap(), b"first line\nsecond\nthird\n");
        let c = stats.get();
        assert_eq!((c.bytes, c.written, c.dropped), (24, 24, 0));
    }

    #[test]
    fn a_stuck_stdout_never_blocks_the_writer_and_excess_is_counted() {
        let (release, gate) = mpsc::channel();
        let rec = Recorder::default();
        let mut out =
            SerialOutput::with_capacity(Box::new(Stuck(gate, rec.clone())), 1024).unwrap();
        let stats = out.stats();
        let started = Instant::now();
        // 100 KiB into a 1 KiB buffer whose reader is stuck: every write returns at once.
        for _ in 0..100 {
            assert_eq!(out.write(&[b'x'; 1024]).unwrap(), 1024);
        }
        assert!(started.elapsed() < Duration::from_secs(2), "writes waited");
        let c = stats.get();
        assert_eq!(c.bytes, 100 * 1024);
        // What the buffer holds, plus at most the chunk the writer took before it got stuck.
        assert!(c.dropped >= 100 * 1024 - 2 * 1024, "{c:?}");
        // Let the writer go: what was kept reaches stdout, in order, on close.
        for _ in 0..4 {
            let _ = release.send(());
        }
        drop(out);
        let c = stats.get();
        assert_eq!(c.written + c.dropped, c.bytes, "{c:?}");
        assert_eq!(rec.bytes.lock().unwrap().len() as u64, c.written);
    }

    #[test]
    fn closing_does_not_wait_for_a_stuck_stdout_for_long() {
        let (_release, gate) = mpsc::channel();
        let mut out =
            SerialOutput::with_capacity(Box::new(Stuck(gate, Recorder::default())), 64).unwrap();
        out.write_all(b"never read").unwrap();
        let started = Instant::now();
        drop(out);
        let took = started.elapsed();
        assert!(
            took >= DRAIN_AT_CLOSE / 2 && took < DRAIN_AT_CLOSE * 3,
            "{took:?}"
        );
    }

    #[test]
    fn waiting_for_the_output_returns_once_it_is_on_stdout_while_it_stays_open() {
        let (release, gate) = mpsc::channel();
        let rec = Recorder::default();
        let mut out = SerialOutput::spawn(Box::new(Stuck(gate, rec.clone()))).unwrap();
        let stats = out.stats();
        out.write_all(b"roam: CPU exception\n").unwrap();
        assert!(
            !stats.wait_written(Duration::from_millis(50)),
            "stdout is stuck"
        );
        release.send(()).unwrap();
        assert!(stats.wait_written(Duration::from_secs(10)));
        assert_eq!(&*rec.bytes.lock().unwrap(), b"roam: CPU exception\n");
        // Still open: later bytes go out too.
        out.write_all(b"more").unwrap();
        release.send(()).unwrap();
        assert!(stats.wait_written(Duration::from_secs(10)));
        assert_eq!(stats.get().written, 24);
    }

    /// Fails like a closed pipe.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stdout_discards_without_counting_drops() {
        let mut out = SerialOutput::spawn(Box::new(ClosedPipe)).unwrap();
        let stats = out.stats();
        out.write_all(b"lost").unwrap();
        drop(out);
        let c = stats.get();
        assert_eq!((c.bytes, c.written, c.dropped), (4, 0, 0));
    }
}
