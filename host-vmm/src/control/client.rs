//! `host-vmm ctl PATH COMMAND...`: sends one command to a running host-vmm's control socket
//! and returns what it printed.

use super::AGENT_TIMEOUT;
use super::agent::Wait;
use super::command::Command;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the client waits for the answer: the guest agent's timeout and a margin.
pub const TIMEOUT: Duration = AGENT_TIMEOUT.saturating_add(Duration::from_secs(5));
/// Largest answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// Why a command failed, in the words `host-vmm ctl` prints.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket file.
    #[error("no control socket at {0}: is host-vmm running with --control {0}?")]
    NoSocket(String),
    /// The path is not a socket.
    #[error("{0} is not a socket: give the --control PATH of a running host-vmm")]
    NotASocket(String),
    /// The file is there but nobody listens.
    #[error("nothing is listening on {0} (host-vmm exited?); start host-vmm with --control {0}")]
    Refused(String),
    /// Any other connection failure.
    #[error("cannot connect to {path}: {error}")]
    Connect {
        /// The socket.
        path: String,
        /// What failed.
        error: io::Error,
    },
    /// No answer in time.
    #[error("host-vmm at {path} did not answer within {waited}")]
    NoAnswer {
        /// The socket.
        path: String,
        /// How long we waited.
        waited: Wait,
    },
    /// The connection failed midway.
    #[error("lost the connection to host-vmm at {path}: {error}")]
    Io {
        /// The socket.
        path: String,
        /// What failed.
        error: io::Error,
    },
    /// Not the server's format.
    #[error("unexpected answer from {path}: `{answer}`")]
    BadAnswer {
        /// The socket.
        path: String,
        /// The first line.
        answer: String,
    },
    /// The command failed; the server's message.
    #[error("{0}")]
    Failed(String),
}

/// Sends `command` to the server at `path` and returns its output (lines ending in `\n`);
/// waits at most `timeout` for the answer.
pub fn request(path: &Path, command: &Command, timeout: Duration) -> Result<String, ClientError> {
    request_with_progress(path, command, timeout, &mut |_| {})
}

/// [`request`], handing each progress line (a migration's) to `on_progress` as it arrives.
pub fn request_with_progress(
    path: &Path,
    command: &Command,
    timeout: Duration,
    on_progress: &mut dyn FnMut(&str),
) -> Result<String, ClientError> {
    let shown = path.display().to_string();
    let mut conn = UnixStream::connect(path).map_err(|error| match error.kind() {
        io::ErrorKind::NotFound => ClientError::NoSocket(shown.clone()),
        io::ErrorKind::ConnectionRefused if !is_socket(path) => {
            ClientError::NotASocket(shown.clone())
        }
        io::ErrorKind::ConnectionRefused => ClientError::Refused(shown.clone()),
        _ => ClientError::Connect {
            path: shown.clone(),
            error,
        },
    })?;
    let io_error = |error: io::Error| match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::NoAnswer {
            path: shown.clone(),
            waited: Wait(timeout),
        },
        _ => ClientError::Io {
            path: shown.clone(),
            error,
        },
    };
    conn.set_read_timeout(Some(timeout)).map_err(io_error)?;
    conn.set_write_timeout(Some(timeout)).map_err(io_error)?;
    conn.write_all(format!("{command}\n").as_bytes())
        .map_err(io_error)?;
    conn.shutdown(std::net::Shutdown::Write).map_err(io_error)?;
    // `progress: ` lines (a migration's) come first and are handed on as they arrive;
    // the answer proper follows. Each read waits at most `timeout`.
    let mut answer = String::new();
    let mut reader = std::io::BufReader::new(conn.take(MAX_ANSWER));
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).map_err(io_error)?;
        if n == 0 {
            break;
        }
        match line.strip_prefix("progress: ") {
            Some(p) if answer.is_empty() => on_progress(p.trim_end()),
            _ => answer.push_str(&line),
        }
    }
    if let Some(out) = answer.strip_prefix("ok\n") {
        return Ok(out.to_owned());
    }
    if let Some(message) = answer.strip_prefix("error: ") {
        return Err(ClientError::Failed(message.trim_end().to_owned()));
    }
    Err(ClientError::BadAnswer {
        path: shown,
        answer: answer
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(80)
            .collect(),
    })
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}
