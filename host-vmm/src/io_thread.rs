//! The I/O thread: one epoll loop that runs device work off the vCPU thread.
//!
//! Devices hand it [`IoHandler`]s: each names the descriptors it waits on (queue-kick
//! eventfds, a TAP, an interrupt resample fd) and is called with the index of the one that
//! became ready. Handlers lock their own device, so the vCPU thread (MMIO) and this thread
//! take turns on a device's state and never block each other for longer than one batch.
//!
//! The thread exists only when a device needs it (`host-vmm run` without `--net` starts
//! none). It stops when its [`IoThread`] is dropped.
//!
//! Migration quiesces it with [`IoThread::pause`]: a control eventfd, watched like the stop
//! one, makes the loop finish the batch it is in (so no edge-triggered readiness already
//! taken from epoll is lost) and park on a condition variable; `pause` returns once it is
//! parked, and from then until [`IoThread::resume`] no handler runs, so no device state
//! changes and no guest memory is written from this thread. Both are idempotent and bounded
//! ([`PAUSE_TIMEOUT`]). While paused nothing reads the backends: frames arriving on a TAP
//! stay queued in the kernel's TAP queue (up to its `txqueuelen`, 1000 frames by default;
//! beyond that the kernel drops, as a busy NIC would), and epoll keeps their readiness, so
//! after a rollback `resume` serves them in order and nothing already queued is lost. On a
//! successful move the source's TAP and its queue go away with the source.

use crate::pause::{Pause, PauseError};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// A descriptor to wait on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    /// The descriptor (owned by the handler, open for as long as the handler lives).
    pub fd: RawFd,
    /// Edge-triggered: reported once per new readiness, so the handler must drain it.
    pub edge: bool,
}

impl Interest {
    /// Level-triggered readability (eventfds the handler reads every time).
    pub fn level(fd: RawFd) -> Self {
        Interest { fd, edge: false }
    }

    /// Edge-triggered readability (a backend drained until it would block).
    pub fn edge(fd: RawFd) -> Self {
        Interest { fd, edge: true }
    }
}

/// Work the I/O thread runs.
pub trait IoHandler: Send {
    /// What to wait on; asked once, when the thread starts.
    fn interests(&self) -> Vec<Interest>;
    /// Interest number `index` is ready.
    fn handle(&mut self, index: usize);
}

/// Token of the stop eventfd (handler tokens are `handler << 32 | index`).
const STOP: u64 = u64::MAX;
/// Token of the pause eventfd.
const PAUSE: u64 = u64::MAX - 1;
/// The longest [`IoThread::pause`] waits for the loop to park (one batch of handlers; a
/// handler moves at most a ring's worth of frames).
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the owner and the loop share to pause it.
#[derive(Debug, Default)]
struct Control {
    state: Mutex<PauseState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PauseState {
    /// The owner wants the loop parked.
    requested: bool,
    /// The loop is parked (or has exited): it touches no device.
    parked: bool,
    /// The loop returned (stop, or epoll failed).
    exited: bool,
    /// The owner is dropping the thread.
    stopping: bool,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running I/O thread; dropping it stops and joins the thread (also while paused).
#[derive(Debug)]
pub struct IoThread {
    stop: EventFd,
    pause: EventFd,
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts a thread serving `handlers`.
    pub fn spawn(handlers: Vec<Box<dyn IoHandler>>) -> io::Result<IoThread> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let pause = EventFd::new(libc::EFD_NONBLOCK)?;
        for (fd, token) in [(stop.as_raw_fd(), STOP), (pause.as_raw_fd(), PAUSE)] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        for (h, handler) in handlers.iter().enumerate() {
            for (i, interest) in handler.interests().into_iter().enumerate() {
                let mut events = EventSet::IN;
                if interest.edge {
                    events |= EventSet::EDGE_TRIGGERED;
                }
                let token = ((h as u64) << 32) | i as u64;
                epoll.ctl(
                    ControlOperation::Add,
                    interest.fd,
                    EpollEvent::new(events, token),
                )?;
            }
        }
        let control = Arc::new(Control::default());
        let pause_evt = pause.try_clone()?;
        let shared = control.clone();
        let thread = std::thread::Builder::new()
            .name("io".into())
            .spawn(move || {
                run(epoll, handlers, &pause_evt, &shared);
                let mut s = shared.lock();
                s.exited = true;
                s.parked = true;
                shared.changed.notify_all();
            })?;
        Ok(IoThread {
            stop,
            pause,
            control,
            thread: Some(thread),
        })
    }

    /// Whether the loop is parked now (or has exited).
    pub fn is_paused(&self) -> bool {
        self.control.lock().parked
    }
}

impl Pause for IoThread {
    /// Parks the loop between batches and returns once no handler runs (at once if it is
    /// paused already or has exited). Until [`IoThread::resume`], devices served here are
    /// untouched by this thread and guest memory is not written from it.
    fn pause(&self) -> Result<(), PauseError> {
        let mut s = self.control.lock();
        s.requested = true;
        if s.parked {
            return Ok(());
        }
        drop(s);
        self.pause.write(1).map_err(|e| PauseError::Failed {
            what: "I/O thread",
            reason: format!("cannot signal it: {e}"),
        })?;
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut s = self.control.lock();
        while !s.parked {
            let now = Instant::now();
            if now >= deadline {
                // Left requested: the loop parks when the stuck handler returns, and a
                // later resume() undoes it.
                return Err(PauseError::Timeout {
                    what: "I/O thread",
                    bound: PAUSE_TIMEOUT,
                });
            }
            s = self
                .control
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Lets a paused loop serve its handlers again; a no-op when it is not paused. Readiness
    /// that arrived meanwhile (a TAP frame, a queue kick) is served right away.
    fn resume(&self) {
        let mut s = self.control.lock();
        s.requested = false;
        self.control.changed.notify_all();
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        {
            let mut s = self.control.lock();
            s.stopping = true;
            self.control.changed.notify_all();
        }
        if let Err(e) = self.stop.write(1) {
            log::warn!("io thread: cannot signal stop: {e}");
            return;
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::warn!("io thread: it panicked");
        }
    }
}

/// Parks until resumed or stopped; returns `false` when the thread should stop.
fn park(control: &Control) -> bool {
    let mut s = control.lock();
    if !s.requested || s.stopping {
        return !s.stopping;
    }
    s.parked = true;
    control.changed.notify_all();
    while s.requested && !s.stopping {
        s = control
            .changed
            .wait(s)
            .unwrap_or_else(PoisonError::into_inner);
    }
    s.parked = false;
    !s.stopping
}

fn run(epoll: Epoll, mut handlers: Vec<Box<dyn IoHandler>>, pause: &EventFd, control: &Control) {
    let mut events = vec![EpollEvent::default(); 32];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("io thread: epoll_wait failed: {e}; device I/O stops");
                return;
            }
        };
        let mut pause_asked = false;
        for event in &events[..n] {
            let token = event.data();
            if token == STOP {
                return;
            }
            if token == PAUSE {
                // Parked after the batch: the readiness epoll already handed over for the
                // other descriptors (edge-triggered ones come only once) is served first.
                let _ = pause.read();
                pause_asked = true;
                continue;
            }
            let (h, i) = ((token >> 32) as usize, (token & 0xFFFF_FFFF) as usize);
            if let Some(handler) = handlers.get_mut(h) {
                handler.handle(i);
            }
        }
        if pause_asked && !park(control) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    struct Echo {
        evt: EventFd,
        seen: mpsc::Sender<usize>,
    }

    impl IoHandler for Echo {
        fn interests(&self) -> Vec<Interest> {
            vec![Interest::level(self.evt.as_raw_fd())]
        }
        fn handle(&mut self, index: usize) {
            let _ = self.evt.read();
            let _ = self.seen.send(index);
        }
    }

    #[test]
    fn handlers_run_on_the_thread_and_it_stops_on_drop() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = evt.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        let thread = IoThread::spawn(vec![Box::new(Echo { evt, seen: tx })]).unwrap();
        kick.write(1).unwrap();
        let got = rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(got, 0);
        drop(thread);
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(10))
                .is_err(),
            "the handler (and its sender) went away with the thread"
        );
    }

    fn echo_thread() -> (IoThread, EventFd, mpsc::Receiver<usize>) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = evt.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        let thread = IoThread::spawn(vec![Box::new(Echo { evt, seen: tx })]).unwrap();
        (thread, kick, rx)
    }

    #[test]
    fn pause_stops_handler_calls_and_resume_serves_what_arrived_meanwhile() {
        let (thread, kick, rx) = echo_thread();
        kick.write(1).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(!thread.is_paused());
        thread.pause().unwrap();
        assert!(thread.is_paused());
        // Repeated pauses return at once.
        thread.pause().unwrap();
        kick.write(1).unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "no handler runs while paused"
        );
        thread.resume();
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the kick that came during the pause is served after resume");
        thread.resume(); // a second resume is a no-op
        kick.write(1).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn pause_and_resume_cycles_and_drop_while_paused() {
        let (thread, kick, rx) = echo_thread();
        for _ in 0..50 {
            thread.pause().unwrap();
            thread.resume();
        }
        kick.write(1).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        thread.pause().unwrap();
        let start = Instant::now();
        drop(thread);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "drop does not hang"
        );
    }

    /// A handler that takes a while: pause waits for it to return.
    struct Slow {
        evt: EventFd,
        busy: Arc<Mutex<bool>>,
    }

    impl IoHandler for Slow {
        fn interests(&self) -> Vec<Interest> {
            vec![Interest::level(self.evt.as_raw_fd())]
        }
        fn handle(&mut self, _index: usize) {
            let _ = self.evt.read();
            *self.busy.lock().unwrap() = true;
            std::thread::sleep(Duration::from_millis(50));
            *self.busy.lock().unwrap() = false;
        }
    }

    #[test]
    fn pause_waits_for_the_running_handler() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = evt.try_clone().unwrap();
        let busy = Arc::new(Mutex::new(false));
        let thread = IoThread::spawn(vec![Box::new(Slow {
            evt,
            busy: busy.clone(),
        })])
        .unwrap();
        kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !*busy.lock().unwrap() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        thread.pause().unwrap();
        assert!(
            !*busy.lock().unwrap(),
            "pause returned while the handler ran"
        );
        thread.resume();
    }
}
