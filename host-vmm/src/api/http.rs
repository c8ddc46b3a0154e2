//! Just enough HTTP/1.1 for the API: an incremental request parser ([`RequestReader`]),
//! the response writer ([`Response`]), and the response-head parser the client uses.
//!
//! What it takes (RFC 9112, the subset a local control API needs):
//! - `METHOD SP target SP HTTP/1.x`, target in origin form (`/api/v1/...`, a `?query` is
//!   split off) or absolute form (`http://localhost/api/v1/...`); HTTP/1.0 and 1.1,
//!   another `HTTP/d.d` is 505;
//! - lines end in CRLF or a bare LF; a few empty lines before a request are skipped;
//! - header fields `name: value` (no line folding), at most [`Limits::max_head`] bytes for
//!   the request line and fields together and [`MAX_HEADERS`] fields (431 past either);
//! - a body only with `Content-Length` (at most [`Limits::max_body`], 413 past it);
//!   `Transfer-Encoding` (chunked) is refused with 501; without `Content-Length` the body
//!   is absent (`Request::body` is `None`);
//! - `Expect: 100-continue` is answered (curl sends it for bodies over 1 KiB);
//! - keep-alive: HTTP/1.1 keeps the connection unless `Connection: close`, HTTP/1.0 closes
//!   it unless `Connection: keep-alive`. Pipelined requests are read in order.
//!
//! Nothing here panics on any input (proptests in `proptests.rs`).

use std::fmt::Write as _;

/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;
/// Most blank-line bytes skipped before a request line.
const MAX_LEADING_BLANK: usize = 16;

/// Size caps for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Request line and header fields together, in bytes (431 past it).
    pub max_head: usize,
    /// Body bytes (413 past it).
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 * 1024,
            max_body: 64 * 1024,
        }
    }
}

/// The protocol version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: the connection closes after each answer unless asked otherwise.
    Http10,
    /// HTTP/1.1: the connection stays open unless asked otherwise.
    Http11,
}

impl Version {
    /// As on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// One parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (methods are case-sensitive).
    pub method: String,
    /// The path, without a query (`/api/v1/vm.info`).
    pub path: String,
    /// What followed `?`, if anything (the API uses none).
    pub query: Option<String>,
    /// HTTP/1.0 or 1.1.
    pub version: Version,
    /// Header fields in order, as sent (names compare case-insensitively).
    pub headers: Vec<(String, String)>,
    /// The body: `None` without `Content-Length`, else exactly that many bytes.
    pub body: Option<Vec<u8>>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Whether the connection may carry another request after this one.
    pub fn keep_alive(&self) -> bool {
        let has = |token: &str| {
            self.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, v)| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        };
        match self.version {
            Version::Http11 => !has("close"),
            Version::Http10 => has("keep-alive") && !has("close"),
        }
    }

    /// The request as bytes on the wire: the request line, the headers as they are (give
    /// `Content-Length` among them for a body), a blank line, the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("{} {}", self.method, self.path);
        if let Some(q) = &self.query {
            head.push('?');
            head.push_str(q);
        }
        let _ = write!(head, " {}\r\n", self.version.as_str());
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(body) = &self.body {
            bytes.extend_from_slice(body);
        }
        bytes
    }
}

/// The first value of header `name` in `headers` (case-insensitive).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Why a request could not be read; each maps to an HTTP status, and the connection closes
/// after the answer (where the next request would start is unknown).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not HTTP as this parser takes it (400).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The request line and headers are too long, or too many (431).
    #[error("the request's header section is over {max} bytes or {MAX_HEADERS} fields")]
    HeadTooLarge {
        /// The byte limit.
        max: usize,
    },
    /// `Content-Length` is over the cap (413).
    #[error("the body is {length} bytes; at most {max} are accepted")]
    BodyTooLarge {
        /// What the client announced (saturated).
        length: u64,
        /// The cap.
        max: usize,
    },
    /// An HTTP version other than 1.0 and 1.1 (505).
    #[error("HTTP version `{0}` is not supported: use HTTP/1.1 (or HTTP/1.0)")]
    Version(String),
    /// `Transfer-Encoding` (chunked bodies) (501).
    #[error(
        "Transfer-Encoding `{0}` is not supported: send the body in one piece with a \
         Content-Length header"
    )]
    TransferEncoding(String),
}

impl HttpError {
    /// The status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge { .. } => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::Version(_) => 505,
            HttpError::TransferEncoding(_) => 501,
        }
    }
}

/// What [`RequestReader::poll`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poll {
    /// A whole request (more may follow in the buffer).
    Ready(Request),
    /// Bytes are missing; `send_continue` is set once per request when the client waits
    /// for `100 Continue` before sending its body.
    NeedMore {
        /// Answer `HTTP/1.1 100 Continue` now.
        send_continue: bool,
    },
}

/// A request whose head is parsed, waiting for its body.
#[derive(Debug)]
struct Pending {
    request: Request,
    head_len: usize,
    body_len: Option<usize>,
    continue_sent: bool,
}

/// Turns a connection's bytes, in whatever pieces they arrive, into requests.
#[derive(Debug, Default)]
pub struct RequestReader {
    limits: Limits,
    buf: Vec<u8>,
    /// Where the next unscanned head line starts.
    scan: usize,
    /// Blank-line bytes skipped before this request.
    skipped: usize,
    pending: Option<Pending>,
}

impl RequestReader {
    /// A reader with these caps.
    pub fn new(limits: Limits) -> RequestReader {
        RequestReader {
            limits,
            ..RequestReader::default()
        }
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether part of a request has arrived (so the client is in the middle of one).
    pub fn in_request(&self) -> bool {
        !self.buf.is_empty() || self.pending.is_some()
    }

    /// Looks for the next whole request in what has arrived.
    pub fn poll(&mut self) -> Result<Poll, HttpError> {
        if self.pending.is_none() {
            self.skip_blank_lines()?;
            let Some(head_len) = self.find_head_end()? else {
                return Ok(Poll::NeedMore {
                    send_continue: false,
                });
            };
            let (request, body_len) = parse_head(&self.buf[..head_len], self.limits)?;
            self.pending = Some(Pending {
                request,
                head_len,
                body_len,
                continue_sent: false,
            });
            self.scan = 0;
        }
        let Some(pending) = self.pending.as_mut() else {
            return Ok(Poll::NeedMore {
                send_continue: false,
            });
        };
        let end = pending.head_len + pending.body_len.unwrap_or(0);
        if self.buf.len() < end {
            let send_continue = !pending.continue_sent
                && pending.request.version == Version::Http11
                && pending
                    .request
                    .header("expect")
                    .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
            pending.continue_sent |= send_continue;
            return Ok(Poll::NeedMore { send_continue });
        }
        let Some(mut pending) = self.pending.take() else {
            return Ok(Poll::NeedMore {
                send_continue: false,
            });
        };
        if pending.body_len.is_some() {
            pending.request.body = Some(self.buf[pending.head_len..end].to_vec());
        }
        self.buf.drain(..end);
        self.skipped = 0;
        Ok(Poll::Ready(pending.request))
    }

    /// Drops CRLFs a client left before a request line (RFC 9112 §2.2), a few at most.
    fn skip_blank_lines(&mut self) -> Result<(), HttpError> {
        if self.scan != 0 {
            return Ok(());
        }
        let n = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        // Keep a lone trailing CR: it may be the start of a CRLF still on its way.
        let n = if n > 0 && self.buf.get(n - 1) == Some(&b'\r') {
            n - 1
        } else {
            n
        };
        self.skipped += n;
        if self.skipped > MAX_LEADING_BLANK {
            return Err(HttpError::Malformed(
                "blank lines instead of a request line".into(),
            ));
        }
        self.buf.drain(..n);
        Ok(())
    }

    /// The length of the head (through its blank line), once it has all arrived.
    fn find_head_end(&mut self) -> Result<Option<usize>, HttpError> {
        let too_large = HttpError::HeadTooLarge {
            max: self.limits.max_head,
        };
        loop {
            let Some(nl) = self.buf[self.scan..].iter().position(|&b| b == b'\n') else {
                if self.buf.len() > self.limits.max_head {
                    return Err(too_large);
                }
                return Ok(None);
            };
            let line_end = self.scan + nl;
            let line = &self.buf[self.scan..line_end];
            let next = line_end + 1;
            if next > self.limits.max_head {
                return Err(too_large);
            }
            if self.scan > 0 && (line.is_empty() || line == b"\r") {
                return Ok(Some(next));
            }
            self.scan = next;
        }
    }
}

/// The head's lines, each without its CRLF or LF; the last (blank) line is left out.
fn head_lines(head: &[u8]) -> Result<Vec<&str>, HttpError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| HttpError::Malformed("the request line or a header is not UTF-8".into()))?;
    let mut lines = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.bytes().any(|b| b == b'\r' || b == 0) {
            return Err(HttpError::Malformed(
                "a stray CR or NUL in the request's head".into(),
            ));
        }
        lines.push(line);
    }
    Ok(lines)
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Client text quoted back in an error, cut short and with control characters escaped.
fn quote(text: &str) -> String {
    let mut q: String = text.chars().take(60).flat_map(char::escape_debug).collect();
    if text.chars().count() > 60 {
        q.push_str("...");
    }
    q
}

/// `HTTP/1.1` or `HTTP/1.0`; another `HTTP/d.d` is 505, anything else 400.
fn parse_version(v: &str) -> Result<Version, HttpError> {
    match v {
        "HTTP/1.1" => Ok(Version::Http11),
        "HTTP/1.0" => Ok(Version::Http10),
        _ => {
            let b = v.as_bytes();
            let shaped = b.len() == 8
                && v.starts_with("HTTP/")
                && b[5].is_ascii_digit()
                && b[6] == b'.'
                && b[7].is_ascii_digit();
            // HTTP/2 and /3 prefaces are `HTTP/2.0`; a lone digit is common too.
            let short = b.len() == 6 && v.starts_with("HTTP/") && b[5].is_ascii_digit();
            if shaped || short {
                Err(HttpError::Version(v.to_owned()))
            } else {
                Err(HttpError::Malformed(format!(
                    "`{}` is not an HTTP version",
                    quote(v)
                )))
            }
        }
    }
}

/// Parses a request head (request line and fields, with its blank line) into a request
/// without its body, and the body's length.
fn parse_head(head: &[u8], limits: Limits) -> Result<(Request, Option<usize>), HttpError> {
    let lines = head_lines(head)?;
    let Some((request_line, fields)) = lines.split_first() else {
        return Err(HttpError::Malformed("no request line".into()));
    };
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(HttpError::Malformed(format!(
            "request line `{}` is not `METHOD PATH HTTP/1.1`",
            quote(request_line)
        )));
    };
    let version = parse_version(version)?;
    if !is_token(method) {
        return Err(HttpError::Malformed(format!(
            "`{}` is not a method",
            quote(method)
        )));
    }
    let (path, query) = parse_target(target)?;
    if fields.len() > MAX_HEADERS {
        return Err(HttpError::HeadTooLarge {
            max: limits.max_head,
        });
    }
    let mut headers = Vec::with_capacity(fields.len());
    for field in fields {
        if field.starts_with([' ', '\t']) {
            return Err(HttpError::Malformed(
                "a header line starts with whitespace (line folding is not supported)".into(),
            ));
        }
        let Some((name, value)) = field.split_once(':') else {
            return Err(HttpError::Malformed(format!(
                "header line `{}` has no `:`",
                quote(field)
            )));
        };
        if !is_token(name) {
            return Err(HttpError::Malformed(format!(
                "`{}` is not a header name",
                quote(name)
            )));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(HttpError::Malformed(format!(
                "header `{name}` has a control character"
            )));
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    if let Some(te) = header(&headers, "transfer-encoding") {
        return Err(HttpError::TransferEncoding(quote(te)));
    }
    let body_len = content_length(&headers, limits)?;
    Ok((
        Request {
            method: (*method).to_owned(),
            path,
            query,
            version,
            headers,
            body: None,
        },
        body_len,
    ))
}

/// Origin form `/path?query`, or absolute form `http://host/path?query` (RFC 9112 §3.2).
fn parse_target(target: &str) -> Result<(String, Option<String>), HttpError> {
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HttpError::Malformed(format!(
            "request target `{}` has characters a URL cannot",
            quote(target)
        )));
    }
    let origin = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        rest.find(['/', '?']).map_or("/", |i| &rest[i..])
    } else {
        return Err(HttpError::Malformed(format!(
            "request target `{}` is not a path (/api/v1/...)",
            quote(target)
        )));
    };
    let (path, query) = match origin.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (origin, None),
    };
    // `http://host?x` has an empty path; it means `/`.
    let path = if path.is_empty() { "/" } else { path };
    Ok((path.to_owned(), query))
}

/// The body length from `Content-Length` fields: all equal if repeated, digits only.
fn content_length(
    headers: &[(String, String)],
    limits: Limits,
) -> Result<Option<usize>, HttpError> {
    let mut length: Option<u64> = None;
    for value in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .flat_map(|(_, v)| v.split(','))
    {
        let value = value.trim_matches([' ', '\t']);
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HttpError::Malformed(format!(
                "Content-Length `{}` is not a number",
                quote(value)
            )));
        }
        // All digits: only an overflow fails, and that is over any cap.
        let n = value.parse::<u64>().unwrap_or(u64::MAX);
        if length.is_some_and(|l| l != n) {
            return Err(HttpError::Malformed(
                "Content-Length is given twice with different values".into(),
            ));
        }
        length = Some(n);
    }
    match length {
        Some(n) if n > limits.max_body as u64 => Err(HttpError::BodyTooLarge {
            length: n,
            max: limits.max_body,
        }),
        Some(n) => Ok(Some(n as usize)),
        None => Ok(None),
    }
}

/// The reason phrase for the statuses the API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// An answer: status, extra header fields, JSON body (none for 204).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Fields beyond Content-Type, Content-Length and Connection (e.g. `Allow`).
    pub headers: Vec<(String, String)>,
    /// The JSON body (empty for 204).
    pub body: Vec<u8>,
}

impl Response {
    /// 200 with `value` as the body.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
        }
    }

    /// 204 No Content.
    pub fn no_content() -> Response {
        Response {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// An error answer: `status` and `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The answer as bytes on the wire; `keep_alive` says whether the connection stays
    /// open, `version` is the request's (an HTTP/1.0 client is told keep-alive explicitly).
    pub fn to_bytes(&self, keep_alive: bool, version: Version) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        // 204 and 1xx carry no body and no Content-Length (RFC 9110 §8.6).
        if self.status != 204 && self.status >= 200 {
            if !self.body.is_empty() {
                head.push_str("Content-Type: application/json\r\n");
            }
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        } else if version == Version::Http10 {
            head.push_str("Connection: keep-alive\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if self.status != 204 && self.status >= 200 {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// A response's status line and fields, as the client reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
}

/// Where a head ends in `buf` (the index after its blank line), if it has all arrived.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        if start > 0 && (line.is_empty() || line == b"\r") {
            return Some(start + nl + 1);
        }
        start += nl + 1;
    }
    None
}

/// Parses a response head (`HTTP/1.x CODE REASON` and fields, with its blank line).
pub fn parse_response_head(head: &[u8]) -> Result<ResponseHead, HttpError> {
    let lines = head_lines(head)?;
    let Some((status_line, fields)) = lines.split_first() else {
        return Err(HttpError::Malformed("no status line".into()));
    };
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!(
            "`{}` is not an HTTP/1 status line",
            quote(status_line)
        )));
    }
    let status = parts
        .next()
        .filter(|c| c.len() == 3)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| {
            HttpError::Malformed(format!("`{}` has no status code", quote(status_line)))
        })?;
    let mut headers = Vec::new();
    for field in fields {
        let Some((name, value)) = field.split_once(':') else {
            return Err(HttpError::Malformed(format!(
                "header line `{}` has no `:`",
                quote(field)
            )));
        };
        headers.push((
            name.trim().to_owned(),
            value.trim_matches([' ', '\t']).to_owned(),
        ));
    }
    Ok(ResponseHead { status, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Poll, HttpError> {
        let mut r = RequestReader::new(Limits::default());
        r.push(bytes);
        r.poll()
    }

    fn ready(bytes: &[u8]) -> Request {
        match one(bytes) {
            Ok(Poll::Ready(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_simple_get_and_a_put_with_a_body() {
        let r = ready(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/v1/vmm.ping");
        assert_eq!(r.version, Version::Http11);
        assert_eq!(r.header("HOST"), Some("localhost"));
        assert_eq!(r.body, None);
        assert!(r.keep_alive());
        let r = ready(b"PUT /api/v1/roam.vf?x=1 HTTP/1.0\nContent-Length: 4\n\nabcdEXTRA");
        assert_eq!(r.query.as_deref(), Some("x=1"));
        assert_eq!(r.body.as_deref(), Some(&b"abcd"[..]));
        assert!(!r.keep_alive());
    }

    #[test]
    fn absolute_form_targets_keep_only_the_path() {
        let r = ready(b"GET http://localhost/api/v1/vm.info HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/api/v1/vm.info");
        let r = ready(b"GET http://localhost HTTP/1.1\r\n\r\n");
        assert_eq!(r.path, "/");
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let r = ready(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!r.keep_alive());
        let r = ready(b"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n");
        assert!(r.keep_alive());
    }

    #[test]
    fn errors_map_to_their_statuses() {
        let status = |b: &[u8]| one(b).map_err(|e| e.status());
        assert_eq!(status(b"GET / HTTP/2.0\r\n\r\n"), Err(505));
        assert_eq!(status(b"GET / HTTP/3\r\n\r\n"), Err(505));
        assert_eq!(status(b"GET / FTP/1.0\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET  / HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET nopath HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status(b"G(T / HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), Err(400));
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n"),
            Err(400)
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n"), Err(400));
        assert_eq!(status(b"GET /\xff HTTP/1.1\r\n\r\n"), Err(400));
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(400)
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"),
            Err(413)
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            Err(413)
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(501)
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(status(&big), Err(431));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(status(&many), Err(431));
        assert_eq!(status(&[b'\n'; 40]), Err(400));
    }

    #[test]
    fn repeated_equal_content_lengths_are_one() {
        let r = ready(b"PUT / HTTP/1.1\r\nContent-Length: 2, 2\r\ncontent-length: 2\r\n\r\nhi");
        assert_eq!(r.body.as_deref(), Some(&b"hi"[..]));
    }

    #[test]
    fn bytes_arrive_one_at_a_time_and_pipelined_requests_come_in_order() {
        let wire = b"\r\nGET /a HTTP/1.1\r\n\r\nPUT /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\n\r\n";
        let mut r = RequestReader::new(Limits::default());
        let mut got = Vec::new();
        for b in wire {
            r.push(std::slice::from_ref(b));
            while let Poll::Ready(req) = r.poll().unwrap() {
                got.push((req.path, req.body));
            }
        }
        assert_eq!(
            got,
            [
                ("/a".to_string(), None),
                ("/b".to_string(), Some(b"xyz".to_vec())),
                ("/c".to_string(), None)
            ]
        );
        assert!(!r.in_request());
    }

    #[test]
    fn expect_100_continue_is_asked_for_once() {
        let mut r = RequestReader::new(Limits::default());
        r.push(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(
            r.poll(),
            Ok(Poll::NeedMore {
                send_continue: true
            })
        );
        assert_eq!(
            r.poll(),
            Ok(Poll::NeedMore {
                send_continue: false
            })
        );
        r.push(b"{}");
        assert!(matches!(r.poll(), Ok(Poll::Ready(_))));
    }

    #[test]
    fn responses_are_written_and_read_back() {
        let ok = Response::json(200, &serde_json::json!({"a": 1}));
        let bytes = ok.to_bytes(true, Version::Http11);
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        );
        let end = find_head_end(&bytes).unwrap();
        let head = parse_response_head(&bytes[..end]).unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(header(&head.headers, "content-length"), Some("7"));
        let nc = Response::no_content().to_bytes(false, Version::Http11);
        assert_eq!(nc, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        let e = Response::error(405, "no")
            .with_header("Allow", "GET")
            .to_bytes(true, Version::Http10);
        let text = String::from_utf8(e).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"));
        assert!(text.contains("Connection: keep-alive\r\n"));
        assert!(text.ends_with("{\"error\":\"no\"}"));
        assert!(parse_response_head(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
        assert!(parse_response_head(b"SSH-2.0\r\n\r\n").is_err());
    }
}
