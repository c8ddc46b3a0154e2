//! Waiting for the real source: every connection gets a thread of its own that
//! authenticates the peer (TLS handshake, or its user on `unix:`) and reads its Hello, all
//! within [`ADMISSION_TIMEOUT`]. The first peer whose Hello passes the caller's check is the
//! source; any other is dropped (told why, when it got as far as a stream) and the
//! destination keeps listening. A peer that fails authentication, sends garbage or stays
//! silent costs one slot for at most that long; at most [`MAX_PENDING`] wait at once (a
//! newer one shuts the oldest out).

use super::target::{Closer, Listening, Stream};
use migration_wire::{Hello, Message, WireError, read_message, write_message};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use std::os::fd::OwnedFd;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// From accept to a Hello that passes the check: handshake and Hello, at most this long.
pub const ADMISSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections being admitted at once.
pub const MAX_PENDING: usize = 16;
/// Longest wait between two looks at the admissions' deadlines (a connection or a finished
/// admission ends the wait at once).
const POLL: Duration = Duration::from_millis(20);

/// The source, admitted: its stream and its Hello.
#[derive(Debug)]
pub struct Admitted {
    /// The stream, authenticated.
    pub stream: Stream,
    /// Its Hello, checked.
    pub hello: Hello,
    /// Who it is, for logs.
    pub peer: String,
}

/// Why a peer was not admitted.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// Authentication failed (TLS, or the peer's user).
    #[error("{0}")]
    Auth(String),
    /// The stream broke or is not a migration stream.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The Hello was read and refused.
    #[error("{0}")]
    Hello(String),
}

struct Pending {
    id: u64,
    since: Instant,
    closer: Closer,
    closed: bool,
}

/// Waits on `listening` until a peer authenticates and sends a Hello that `check` accepts
/// (its error is sent back as Failed). Errors only if the listener itself fails.
pub fn admit(
    listening: &Listening,
    check: impl Fn(&Hello) -> Result<(), String> + Clone + Send + 'static,
) -> std::io::Result<Admitted> {
    let (tx, rx) = mpsc::channel();
    // Rung by each admission thread after it sent its result: the wait below ends on a
    // connection or a result, whichever comes first (the source's connect is on a move's
    // clock; a fixed poll interval added up to its length to every move).
    let bell = Arc::new(Bell::new()?);
    let mut pending: Vec<Pending> = Vec::new();
    let mut next_id = 0u64;
    loop {
        bell.clear();
        while let Some((incoming, peer)) = listening.try_accept()? {
            let closer = match incoming
                .set_timeouts(ADMISSION_TIMEOUT)
                .and_then(|()| incoming.closer())
            {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("migration: dropped {peer}: {e}");
                    continue;
                }
            };
            if pending.len() >= MAX_PENDING {
                // The oldest has waited longest: it makes room.
                let oldest = pending.remove(0);
                oldest.closer.close();
                log::warn!(
                    "migration: {MAX_PENDING} connections are being admitted; the oldest is dropped"
                );
            }
            let id = next_id;
            next_id += 1;
            let tx = tx.clone();
            let rung = bell.clone();
            let check = check.clone();
            let who = peer.clone();
            // One instant for both sides of the deadline: the thread tells a peer this loop
            // shut at the deadline from one that failed by itself.
            let since = Instant::now();
            let spawned = std::thread::Builder::new()
                .name("admission".into())
                .spawn(move || {
                    let r = admit_one(incoming, &check, since);
                    let _ = tx.send((id, who, r));
                    rung.ring();
                });
            match spawned {
                Ok(_) => pending.push(Pending {
                    id,
                    since,
                    closer,
                    closed: false,
                }),
                Err(e) => {
                    closer.close();
                    log::warn!("migration: dropped {peer}: cannot start its thread: {e}");
                }
            }
        }
        while let Ok((id, peer, result)) = rx.try_recv() {
            match result {
                Ok((stream, hello)) => {
                    for p in pending.iter().filter(|p| p.id != id) {
                        p.closer.close();
                    }
                    log::info!("migration: the source is {peer} ({})", listening.security());
                    return Ok(Admitted {
                        stream,
                        hello,
                        peer,
                    });
                }
                Err(refusal) => {
                    pending.retain(|p| p.id != id);
                    log::warn!(
                        "migration: dropped {peer}: {refusal}; still waiting for the source on {}",
                        listening.local()
                    );
                }
            }
        }
        for p in pending.iter_mut() {
            if !p.closed && p.since.elapsed() > ADMISSION_TIMEOUT {
                // Its thread's next read fails at once and reports it.
                p.closer.close();
                p.closed = true;
            }
        }
        // Cleared before the looks above: what came since rings it, and the wait ends at once.
        bell.wait(listening, POLL)?;
    }
}

/// An eventfd the admission threads ring, waited on together with the listener.
struct Bell(OwnedFd);

impl Bell {
    fn new() -> std::io::Result<Bell> {
        let fd = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Bell(fd))
    }

    fn ring(&self) {
        // Only fails when the counter would overflow: it is rung anyway.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    fn clear(&self) {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut count);
    }

    /// Waits until a connection waits on `listening`, the bell rings or `bound` passes.
    fn wait(&self, listening: &Listening, bound: Duration) -> std::io::Result<()> {
        let timeout = Timespec {
            tv_sec: bound.as_secs() as _,
            tv_nsec: bound.subsec_nanos() as _,
        };
        let listener = listening.fd();
        let mut fds = [
            PollFd::new(&listener, PollFlags::IN),
            PollFd::new(&self.0, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// One connection, accepted at `start`: authenticated, its Hello read and checked; a refused
/// Hello (or a stream that is not a migration stream) is answered with Failed.
fn admit_one(
    incoming: super::target::Incoming,
    check: &impl Fn(&Hello) -> Result<(), String>,
    start: Instant,
) -> Result<(Stream, Hello), Refusal> {
    let late = |what: &str| {
        Refusal::Auth(format!(
            "no {what} within {} s",
            ADMISSION_TIMEOUT.as_secs()
        ))
    };
    let mut stream = incoming.authenticate().map_err(|e| {
        if start.elapsed() >= ADMISSION_TIMEOUT {
            late("TLS handshake")
        } else {
            Refusal::Auth(e)
        }
    })?;
    let refused = match read_message(&mut stream) {
        Ok(Message::Hello(h)) => match check(&h) {
            Ok(()) => return Ok((stream, h)),
            Err(why) => Refusal::Hello(why),
        },
        Ok(other) => Refusal::Hello(format!(
            "the stream starts with {} instead of a hello",
            other.name()
        )),
        // Silent (its reads timed out, or the deadline shut it): nothing to tell it.
        Err(_) if start.elapsed() >= ADMISSION_TIMEOUT => return Err(late("Hello")),
        Err(WireError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(late("Hello"));
        }
        Err(e) => Refusal::Wire(e),
    };
    // Authenticated: tell it why (best effort; it may be gone).
    if !matches!(refused, Refusal::Wire(WireError::PeerAborted(_))) {
        let _ = write_message(&mut stream, &Message::Failed(refused.to_string()));
        let _ = std::io::Write::flush(&mut stream);
    }
    stream.shutdown();
    Err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::target::{Address, Role, Security};
    use migration_wire::{Mode, kind};
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;

    const RAM: u64 = 64 << 20;

    fn hello(ram: u64) -> Vec<u8> {
        Message::Hello(Hello::new(Mode::PreCopy, ram, 1))
            .encode()
            .unwrap()
    }

    fn check(h: &Hello) -> Result<(), String> {
        if h.ram_size > RAM {
            Err(format!("{} bytes is more than --max-mem", h.ram_size))
        } else {
            Ok(())
        }
    }

    /// The kinds of the frames a refused peer was answered with.
    fn answer(r: &mut impl Read) -> Vec<(u16, String)> {
        let mut frames = Vec::new();
        while let Ok(m) = read_message(r) {
            let text = match &m {
                Message::Failed(why) => why.clone(),
                _ => String::new(),
            };
            frames.push((m.kind(), text));
        }
        frames
    }

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("roam-admit-{tag}-{}", std::process::id()))
    }

    /// The admission loop's wait ends on a connection or a ring, not at its bound: with a
    /// minute's bound, each wait here returns long before.
    #[test]
    fn the_wait_ends_on_a_connection_or_a_ring() {
        const BOUND: Duration = Duration::from_secs(60);
        let path = temp("bell.sock");
        let _ = std::fs::remove_file(&path);
        let listening = Address::Unix(path.clone())
            .listen(Security::PeerCredentials)
            .unwrap();
        let bell = Arc::new(Bell::new().unwrap());

        let ringer = bell.clone();
        let ringing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            ringer.ring();
        });
        let start = Instant::now();
        bell.wait(&listening, BOUND).unwrap();
        assert!(start.elapsed() < BOUND / 2, "{:?}", start.elapsed());
        ringing.join().unwrap();

        bell.clear();
        let connecting = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            UnixStream::connect(&path).unwrap()
        });
        let start = Instant::now();
        bell.wait(&listening, BOUND).unwrap();
        assert!(start.elapsed() < BOUND / 2, "{:?}", start.elapsed());
        let _peer = connecting.join().unwrap();
        assert!(listening.try_accept().unwrap().is_some());

        // Cleared and nobody waiting: the wait runs to its bound.
        bell.clear();
        let start = Instant::now();
        bell.wait(&listening, Duration::from_millis(30)).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn garbage_and_silence_on_unix_are_dropped_and_the_source_gets_in() {
        let path = temp("unix.sock");
        let _ = std::fs::remove_file(&path);
        let listening = Address::Unix(path.clone())
            .listen(Security::PeerCredentials)
            .unwrap();
        let waiting = std::thread::spawn(move || {
            let a = admit(&listening, check);
            drop(listening);
            a
        });
        let start = Instant::now();
        let _silent = UnixStream::connect(&path).unwrap();
        let mut garbage = UnixStream::connect(&path).unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let said = answer(&mut garbage);
        assert_eq!(said.len(), 1, "{said:?}");
        assert_eq!(said[0].0, kind::FAILED);
        assert!(
            said[0].1.contains("not a Roam migration stream"),
            "{said:?}"
        );
        let mut big = UnixStream::connect(&path).unwrap();
        big.write_all(&hello(RAM * 2)).unwrap();
        let said = answer(&mut big);
        assert!(said[0].1.contains("--max-mem"), "{said:?}");
        let mut source = UnixStream::connect(&path).unwrap();
        source.write_all(&hello(RAM)).unwrap();
        let admitted = waiting.join().unwrap().unwrap();
        assert_eq!(admitted.hello.ram_size, RAM);
        // The silent peer did not hold the source up.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn over_tls_only_a_peer_with_a_certificate_from_the_ca_gets_in() {
        let ours = temp("ours");
        let theirs = temp("theirs");
        for d in [&ours, &theirs] {
            migration_wire::tls::generate(&["127.0.0.1".into()])
                .unwrap()
                .write(d)
                .unwrap();
        }
        let l = TcpListenerPort::new(&ours);
        let address: Address = format!("tcp:127.0.0.1:{}", l.port).parse().unwrap();
        let listening = l.listening;
        let waiting = std::thread::spawn(move || admit(&listening, check));
        let start = Instant::now();
        // Silent: connects, never says a word.
        let _silent = TcpStream::connect(("127.0.0.1", l.port)).unwrap();
        // Garbage where a TLS ClientHello should be: dropped without a Failed (no stream).
        let mut garbage = TcpStream::connect(("127.0.0.1", l.port)).unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        garbage
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut rest = Vec::new();
        let _ = garbage.read_to_end(&mut rest);
        assert!(
            !rest.windows(4).any(|w| w == b"RMIG"),
            "garbage got a migration frame"
        );
        // A client certificate from another CA (same CA name): the handshake fails.
        let stranger = Security::new(&address, Role::Source, Some(&theirs), false).unwrap();
        let e = address.connect(&stranger, Duration::from_secs(5));
        if let Ok(mut s) = e {
            // TLS 1.3: the client's side may end before the server has checked it; the
            // refusal comes with the first read.
            let _ = s.write_all(&hello(RAM));
            assert!(read_message(&mut s).is_err(), "a stranger was answered");
        }
        // A source with the CA's client certificate gets in.
        let ok = Security::new(&address, Role::Source, Some(&ours), false).unwrap();
        let mut source = address.connect(&ok, Duration::from_secs(5)).unwrap();
        source.write_all(&hello(RAM)).unwrap();
        let admitted = waiting.join().unwrap().unwrap();
        assert_eq!(admitted.hello.ram_size, RAM);
        assert!(matches!(admitted.stream, Stream::TlsServer(_)));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // The stream works both ways.
        let mut s = admitted.stream;
        write_message(&mut s, &Message::Accept).unwrap();
        assert_eq!(read_message(&mut source).unwrap(), Message::Accept);
        for d in [&ours, &theirs] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn a_silent_peer_alone_is_dropped_at_the_deadline() {
        // Shortened view of the deadline: the thread of a peer shut by the main loop
        // reports "no Hello"; here the socket's own timeout is what ends it.
        let path = temp("silent.sock");
        let _ = std::fs::remove_file(&path);
        let listening = Address::Unix(path.clone())
            .listen(Security::PeerCredentials)
            .unwrap();
        let _peer = UnixStream::connect(&path).unwrap();
        let (incoming, _) = loop {
            if let Some(x) = listening.try_accept().unwrap() {
                break x;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        incoming.set_timeouts(Duration::from_millis(200)).unwrap();
        let e = admit_one(incoming, &check, Instant::now()).unwrap_err();
        assert!(e.to_string().contains("no Hello"), "{e}");
    }

    /// A TLS listener on a free loopback port.
    struct TcpListenerPort {
        listening: Listening,
        port: u16,
    }

    impl TcpListenerPort {
        fn new(dir: &std::path::Path) -> TcpListenerPort {
            let any: Address = "tcp:127.0.0.1:0".parse().unwrap();
            let security = Security::new(&any, Role::Destination, Some(dir), false).unwrap();
            let listening = any.listen(security).unwrap();
            let port = listening
                .local()
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok())
                .unwrap();
            TcpListenerPort { listening, port }
        }
    }
}
