//! Where a migration stream goes: `tcp:ADDR:PORT` or `unix:PATH`, and the one stream type
//! both ends read and write.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A migration endpoint as the operator writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `tcp:ADDR:PORT` (pre-copy between any two hosts).
    Tcp(String),
    /// `unix:PATH` (same machine; required for zero-copy).
    Unix(PathBuf),
}

/// Why an endpoint was refused.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// Neither `tcp:` nor `unix:`.
    #[error("`{0}` is not a migration address: use tcp:ADDR:PORT or unix:PATH")]
    Syntax(String),
    /// A TCP address that does not resolve.
    #[error("`{0}`: {1}")]
    Resolve(String, io::Error),
    /// connect(2) failed.
    #[error("cannot connect to {0}: {1}")]
    Connect(Address, io::Error),
    /// bind(2) or listen(2) failed.
    #[error("cannot listen on {0}: {1}")]
    Listen(Address, io::Error),
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("tcp:") {
            // ADDR:PORT with a port that parses; the address resolves when used.
            let ok = rest
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if ok {
                return Ok(Address::Tcp(rest.to_owned()));
            }
        } else if let Some(path) = s.strip_prefix("unix:")
            && !path.is_empty()
        {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        Err(AddressError::Syntax(s.to_owned()))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "tcp:{a}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connected migration stream.
#[derive(Debug)]
pub enum Stream {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix stream socket (can carry the memfd).
    Unix(UnixStream),
}

impl Address {
    /// Connects, waiting at most `bound` for TCP's handshake.
    pub fn connect(&self, bound: Duration) -> Result<Stream, AddressError> {
        let fail = |e| AddressError::Connect(self.clone(), e);
        match self {
            Address::Tcp(a) => {
                let addr = a
                    .to_socket_addrs()
                    .map_err(|e| AddressError::Resolve(a.clone(), e))?
                    .next()
                    .ok_or_else(|| {
                        AddressError::Resolve(a.clone(), io::Error::other("no address"))
                    })?;
                let s = TcpStream::connect_timeout(&addr, bound).map_err(fail)?;
                // Page batches are large writes; the small replies must not wait.
                s.set_nodelay(true).map_err(fail)?;
                Ok(Stream::Tcp(s))
            }
            Address::Unix(p) => UnixStream::connect(p).map(Stream::Unix).map_err(fail),
        }
    }

    /// Binds and listens (a stale Unix socket file left by a killed receiver is replaced).
    pub fn listen(&self) -> Result<Listening, AddressError> {
        let fail = |e| AddressError::Listen(self.clone(), e);
        match self {
            Address::Tcp(a) => TcpListener::bind(a.as_str())
                .map(Listening::Tcp)
                .map_err(fail),
            Address::Unix(p) => {
                if p.exists() && UnixStream::connect(p).is_err() {
                    let _ = std::fs::remove_file(p);
                }
                UnixListener::bind(p)
                    .map(|l| Listening::Unix(l, p.clone()))
                    .map_err(fail)
            }
        }
    }
}

/// A bound endpoint waiting for the source; a Unix socket file is removed on drop.
#[derive(Debug)]
pub enum Listening {
    /// TCP.
    Tcp(TcpListener),
    /// Unix, with the path to remove.
    Unix(UnixListener, PathBuf),
}

impl Listening {
    /// Waits for the one incoming connection.
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listening::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listening::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }

    /// The local address (the port when TCP port 0 was asked for).
    pub fn local(&self) -> String {
        match self {
            Listening::Tcp(l) => l
                .local_addr()
                .map(|a| format!("tcp:{a}"))
                .unwrap_or_default(),
            Listening::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Listening::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Stream {
    /// Bounds every read (`None`: wait as long as it takes).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// Bounds every write.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }

    /// The Unix stream, for passing the memfd.
    pub fn unix(&self) -> Option<&UnixStream> {
        match self {
            Stream::Unix(s) => Some(s),
            Stream::Tcp(_) => None,
        }
    }

    /// Closes both directions (the peer sees end of stream at once).
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_what_is_expected() {
        assert_eq!(
            "tcp:198.18.0.1:7000".parse::<Address>().unwrap(),
            Address::Tcp("198.18.0.1:7000".into())
        );
        assert_eq!(
            "unix:/tmp/m.sock".parse::<Address>().unwrap(),
            Address::Unix("/tmp/m.sock".into())
        );
        for bad in [
            "",
            "tcp:",
            "tcp:1.2.3.4",
            "tcp::80",
            "tcp:h:99999",
            "unix:",
            "udp:x:1",
        ] {
            let e = bad.parse::<Address>().unwrap_err().to_string();
            assert!(e.contains("tcp:ADDR:PORT or unix:PATH"), "{bad}: {e}");
        }
    }
}
