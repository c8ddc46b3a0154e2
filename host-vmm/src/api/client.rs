//! A minimal HTTP/1.1 client for the API socket: one request per connection
//! (`Connection: close`), JSON in and out. `host-vmm ctl` and xtask use it.

use super::http::{self, Version};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Largest answer read (head and body).
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Why a call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket file.
    #[error("no API socket at {0}: is host-vmm running with --api-socket {0}?")]
    NoSocket(String),
    /// The path is not a socket.
    #[error("{0} is not a socket: give the --api-socket PATH of a running host-vmm")]
    NotASocket(String),
    /// The file is there but nobody listens.
    #[error("nothing is listening on {0} (host-vmm exited?); start host-vmm with --api-socket {0}")]
    Refused(String),
    /// The socket file is another user's (it is mode 0600).
    #[error(
        "permission denied on the API socket {0}: it is its operator's only; run this as the \
         user host-vmm runs as, or as root"
    )]
    Denied(String),
    /// Any other connection failure.
    #[error("cannot connect to the API socket {path}: {error}")]
    Connect {
        /// The socket.
        path: String,
        /// What failed.
        error: io::Error,
    },
    /// No (whole) answer in time.
    #[error("host-vmm at {path} did not answer within {} ms", waited.as_millis())]
    Timeout {
        /// The socket.
        path: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The connection failed midway.
    #[error("lost the connection to host-vmm at {path}: {error}")]
    Io {
        /// The socket.
        path: String,
        /// What failed.
        error: io::Error,
    },
    /// Not an HTTP answer with a JSON body.
    #[error("unexpected answer from {path}: {reason}")]
    BadAnswer {
        /// The socket.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request could not be written as HTTP (a method or path with spaces, ...).
    #[error("cannot send `{0}`: not a valid HTTP method and path")]
    BadRequest(String),
    /// The server answered with an error status ([`call_ok`] only).
    #[error("{message} (HTTP {status})")]
    Failed {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
}

/// Sends one request and returns the status and the JSON body, if any.
///
/// `path` is the full path (`/api/v1/vm.info`) or just the endpoint's name (`vm.info`).
/// `timeout` bounds the whole call, connect to last byte. Error statuses are answers too:
/// the body is then `{"error": "..."}` (see [`call_ok`]).
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, Option<serde_json::Value>), ClientError> {
    let shown = socket.display().to_string();
    let full_path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{}{path}", super::routes::PREFIX)
    };
    let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !valid(method) || !valid(&full_path) {
        return Err(ClientError::BadRequest(format!("{method} {full_path}")));
    }
    let body = body.map(|b| b.to_string().into_bytes());
    let mut headers = vec![
        ("Host".to_owned(), "localhost".to_owned()),
        ("Accept".to_owned(), "application/json".to_owned()),
        ("Connection".to_owned(), "close".to_owned()),
    ];
    if let Some(b) = &body {
        headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
        headers.push(("Content-Length".to_owned(), b.len().to_string()));
    }
    let request = http::Request {
        method: method.to_owned(),
        path: full_path,
        query: None,
        version: Version::Http11,
        headers,
        body,
    };

    let deadline = Instant::now() + timeout;
    let conn = connect(socket, &shown)?;
    let io_error = |error: io::Error| match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
            path: shown.clone(),
            waited: timeout,
        },
        _ => ClientError::Io {
            path: shown.clone(),
            error,
        },
    };
    set_timeouts(&conn, deadline).map_err(io_error)?;
    // A server that refuses early (413) may close before taking the whole request: its
    // answer is still there to read, so a failed write is reported only without one.
    let written = (&conn).write_all(&request.to_bytes());
    match read_answer(&conn, deadline, &shown, &io_error) {
        Ok(answer) => Ok(answer),
        Err(e) => match written {
            Err(w) => Err(io_error(w)),
            Ok(()) => Err(e),
        },
    }
}

/// [`call`], with an error status turned into [`ClientError::Failed`] carrying the
/// server's message.
pub fn call_ok(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Option<serde_json::Value>, ClientError> {
    let (status, body) = call(socket, method, path, body, timeout)?;
    if status < 400 {
        return Ok(body);
    }
    let message = body
        .as_ref()
        .and_then(|b| b.get("error"))
        .and_then(|m| m.as_str())
        .map_or_else(
            || format!("{} (no message)", http::reason(status)),
            str::to_owned,
        );
    Err(ClientError::Failed { status, message })
}

fn connect(socket: &Path, shown: &str) -> Result<UnixStream, ClientError> {
    UnixStream::connect(socket).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket(shown.to_owned()),
        io::ErrorKind::ConnectionRefused if !is_socket(socket) => {
            ClientError::NotASocket(shown.to_owned())
        }
        io::ErrorKind::ConnectionRefused => ClientError::Refused(shown.to_owned()),
        io::ErrorKind::PermissionDenied => ClientError::Denied(shown.to_owned()),
        _ => ClientError::Connect {
            path: shown.to_owned(),
            error,
        },
    })
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Bounds the next read or write by what is left until `deadline`.
fn set_timeouts(conn: &UnixStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    conn.set_read_timeout(Some(left))?;
    conn.set_write_timeout(Some(left))
}

fn read_answer(
    conn: &UnixStream,
    deadline: Instant,
    shown: &str,
    io_error: &dyn Fn(io::Error) -> ClientError,
) -> Result<(u16, Option<serde_json::Value>), ClientError> {
    let bad = |reason: String| ClientError::BadAnswer {
        path: shown.to_owned(),
        reason,
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut eof = false;
    // Interim 1xx answers (100 Continue) are skipped.
    let (head, head_len) = loop {
        if let Some(end) = http::find_head_end(&buf) {
            let head = http::parse_response_head(&buf[..end]).map_err(|e| bad(e.to_string()))?;
            if head.status < 200 {
                buf.drain(..end);
                continue;
            }
            break (head, end);
        }
        if eof {
            return Err(bad(if buf.is_empty() {
                "the connection closed without an answer".into()
            } else {
                "the connection closed in the middle of the answer's head".into()
            }));
        }
        if buf.len() > 64 * 1024 {
            return Err(bad("the answer's head is too long".into()));
        }
        eof = read_some(conn, deadline, &mut buf, &mut chunk).map_err(io_error)?;
    };
    let length = match http::header(&head.headers, "content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|&n| n <= MAX_ANSWER)
                .ok_or_else(|| bad(format!("Content-Length `{v}`")))?,
        ),
        None if head.status == 204 || head.status == 304 => Some(0),
        // Without a length the body ends with the connection.
        None => None,
    };
    loop {
        let have = buf.len() - head_len;
        match length {
            Some(n) if have >= n => {
                buf.truncate(head_len + n);
                break;
            }
            _ if eof => {
                if length.is_some() {
                    return Err(bad("the connection closed in the middle of the body".into()));
                }
                break;
            }
            _ if have > MAX_ANSWER => {
                return Err(bad("the answer is too long".into()));
            }
            _ => eof = read_some(conn, deadline, &mut buf, &mut chunk).map_err(io_error)?,
        }
    }
    let body = &buf[head_len..];
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((head.status, None));
    }
    let value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    Ok((head.status, Some(value)))
}

/// Reads what is there into `buf`; true at end of stream.
fn read_some(
    conn: &UnixStream,
    deadline: Instant,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> io::Result<bool> {
    loop {
        set_timeouts(conn, deadline)?;
        match (&*conn).read(chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(false);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The server closed with our request partly unread: what it sent is read.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}
