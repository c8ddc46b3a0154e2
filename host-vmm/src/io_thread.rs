//! The I/O thread: one epoll loop that runs device work off the vCPU thread.
//!
//! Devices hand it [`IoHandler`]s: each names the descriptors it waits on (queue-kick
//! eventfds, a TAP, an interrupt resample fd) and is called with the index of the one that
//! became ready. Handlers lock their own device, so the vCPU thread (MMIO) and this thread
//! take turns on a device's state and never block each other for longer than one batch.
//!
//! The thread exists only when a device needs it (`host-vmm run` without `--net` starts
//! none). It stops when its [`IoThread`] is dropped. A later pause for migration belongs
//! here too: a second control eventfd, checked like the stop one, that parks the loop
//! between batches so device state can be saved.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;
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

/// A running I/O thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct IoThread {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts a thread serving `handlers`.
    pub fn spawn(handlers: Vec<Box<dyn IoHandler>>) -> io::Result<IoThread> {
        let epoll = Epoll::new()?;
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
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
        let thread = std::thread::Builder::new()
            .name("io".into())
            .spawn(move || run(epoll, handlers))?;
        Ok(IoThread {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
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

fn run(epoll: Epoll, mut handlers: Vec<Box<dyn IoHandler>>) {
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
        for event in &events[..n] {
            let token = event.data();
            if token == STOP {
                return;
            }
            let (h, i) = ((token >> 32) as usize, (token & 0xFFFF_FFFF) as usize);
            if let Some(handler) = handlers.get_mut(h) {
                handler.handle(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

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
}
