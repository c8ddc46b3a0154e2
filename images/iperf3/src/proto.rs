//! The iperf3 control protocol, server side: the client's parameters, the cookie that ties
//! data streams to a test, the state bytes and the results the client expects.
//!
//! ```text
//! client                                   server
//! cookie (36 chars + NUL)          ->
//!                                  <-      PARAM_EXCHANGE (9)
//! u32 BE length + parameters JSON  ->
//!                                  <-      CREATE_STREAMS (10)
//! each data stream: connect, cookie ->     (a wrong cookie gets ACCESS_DENIED and is closed)
//!                                  <-      TEST_START (1), TEST_RUNNING (2)
//! data on the streams (the server sends it instead with "reverse")
//! TEST_END (4)                     ->
//!                                  <-      EXCHANGE_RESULTS (13)
//! u32 BE length + results JSON     ->
//!                                  <-      u32 BE length + results JSON, DISPLAY_RESULTS (14)
//! IPERF_DONE (16)                  ->
//! ```
//!
//! [`Control`] is that sequence as a state machine over the control connection's bytes;
//! the socket loop (`main.rs`) owns the sockets, counts the data and tells it when the
//! streams are all there. JSON blobs longer than [`MAX_JSON`] are refused. Pure logic:
//! tested on the host.

extern crate alloc;

use crate::json::{self, Value};
use alloc::vec::Vec;
use core::fmt::{self, Write};

/// The cookie: 36 printable characters and a NUL.
pub const COOKIE_LEN: usize = 37;
/// Longest JSON blob accepted from a client.
pub const MAX_JSON: usize = 8 * 1024;
/// Most parallel streams one test may ask for.
pub const MAX_STREAMS: u32 = 8;

/// Test states: the single (signed) byte each side sends on the control connection.
// The whole table, for reading the wire: the server never sends some of these.
#[allow(dead_code)]
pub mod state {
    /// The streams are all there.
    pub const TEST_START: i8 = 1;
    /// Data flows.
    pub const TEST_RUNNING: i8 = 2;
    /// The client ends the test.
    pub const TEST_END: i8 = 4;
    /// The client should send its parameters.
    pub const PARAM_EXCHANGE: i8 = 9;
    /// The client should connect its data streams.
    pub const CREATE_STREAMS: i8 = 10;
    /// The server is going away.
    pub const SERVER_TERMINATE: i8 = 11;
    /// The client is going away (Ctrl-C).
    pub const CLIENT_TERMINATE: i8 = 12;
    /// Both sides send their results.
    pub const EXCHANGE_RESULTS: i8 = 13;
    /// The client may print its report.
    pub const DISPLAY_RESULTS: i8 = 14;
    /// The client is done.
    pub const IPERF_DONE: i8 = 16;
    /// The server is busy (or the cookie is wrong).
    pub const ACCESS_DENIED: i8 = -1;
    /// The server failed: two u32 BE follow, iperf3's `i_errno` and the system errno.
    pub const SERVER_ERROR: i8 = -2;
}

/// iperf3's `IEUNIMP` ("an option you are trying to set is not implemented yet"), sent with
/// `SERVER_ERROR` for tests this server does not run.
pub const IE_UNIMPLEMENTED: u32 = 13;

/// The byte on the wire for a state.
pub fn byte(state: i8) -> u8 {
    state as u8
}

/// A test's cookie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie([u8; COOKIE_LEN]);

impl Cookie {
    /// The cookie in `bytes` (exactly [`COOKIE_LEN`]): 36 printable ASCII characters and a
    /// NUL, which is what iperf3 clients send; anything else is garbage.
    pub fn parse(bytes: &[u8]) -> Option<Cookie> {
        let cookie: [u8; COOKIE_LEN] = bytes.try_into().ok()?;
        let (text, nul) = cookie.split_at(COOKIE_LEN - 1);
        (nul == [0] && text.iter().all(|b| b.is_ascii_graphic())).then_some(Cookie(cookie))
    }
}

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Number of data streams.
    pub parallel: u32,
    /// The server sends (`-R`).
    pub reverse: bool,
    /// Test length in seconds (0: ended by a byte or block count).
    pub time: u32,
    /// Seconds the client leaves out of its report.
    pub omit: u32,
}

/// Why parameters were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// Not JSON, or not an object.
    Json(json::Error),
    /// UDP or SCTP: only TCP is served.
    NotTcp,
    /// `--bidir` is not served.
    Bidirectional,
    /// No streams, or more than [`MAX_STREAMS`].
    Parallel(i64),
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Json(e) => write!(f, "parameters: {e}"),
            ParamError::NotTcp => f.write_str("only TCP tests are served"),
            ParamError::Bidirectional => f.write_str("--bidir is not served"),
            ParamError::Parallel(n) => write!(f, "{n} streams (1 to {MAX_STREAMS} are served)"),
        }
    }
}

impl Params {
    /// Reads the parameters JSON; unknown members are ignored.
    pub fn parse(text: &[u8]) -> Result<Params, ParamError> {
        let mut p = Params {
            parallel: 1,
            reverse: false,
            time: 0,
            omit: 0,
        };
        let (mut tcp, mut other_protocol, mut bidir) = (false, false, false);
        let mut parallel = 1;
        let seconds = |v: i64| u32::try_from(v).unwrap_or(0);
        json::members(text, |key, value| match (key, value) {
            (b"tcp", Value::Bool(on)) => tcp = on,
            (b"udp" | b"sctp", Value::Bool(on)) => other_protocol |= on,
            (b"parallel", Value::Int(n)) => parallel = n,
            (b"parallel", _) => parallel = 0,
            (b"reverse", Value::Bool(on)) => p.reverse = on,
            (b"bidirectional", Value::Bool(on)) => bidir = on,
            (b"time", Value::Int(n)) => p.time = seconds(n),
            (b"omit", Value::Int(n)) => p.omit = seconds(n),
            _ => {}
        })
        .map_err(ParamError::Json)?;
        if !tcp || other_protocol {
            return Err(ParamError::NotTcp);
        }
        if bidir {
            return Err(ParamError::Bidirectional);
        }
        p.parallel = match u32::try_from(parallel) {
            Ok(n @ 1..=MAX_STREAMS) => n,
            _ => return Err(ParamError::Parallel(parallel)),
        };
        Ok(p)
    }
}

/// The id iperf3 gives the stream at `index` (in connection order): 1, then 3, 4, 5...
/// (its `iperf_add_stream` skips 2; client and server number alike, and the results match
/// streams by id).
pub fn stream_id(index: usize) -> u32 {
    match index {
        0 => 1,
        n => u32::try_from(n).unwrap_or(u32::MAX - 2) + 2,
    }
}

/// The server's results JSON: bytes per stream in stream order, over `elapsed_us`.
/// `sender` says whether the server sent the data (reverse mode); it counts no
/// retransmissions either way.
pub fn results_json(stream_bytes: &[u64], sender: bool, elapsed_us: u64) -> Vec<u8> {
    let mut out = Text(Vec::with_capacity(128 + 140 * stream_bytes.len()));
    let has_retransmits = if sender { 0 } else { -1 };
    let _ = write!(
        out,
        "{{\"cpu_util_total\":0,\"cpu_util_user\":0,\"cpu_util_system\":0,\
         \"sender_has_retransmits\":{has_retransmits},\"streams\":["
    );
    for (i, bytes) in stream_bytes.iter().enumerate() {
        let comma = if i == 0 { "" } else { "," };
        let _ = write!(
            out,
            "{comma}{{\"id\":{},\"bytes\":{bytes},\"retransmits\":-1,\"jitter\":0,\"errors\":0,\
             \"packets\":0,\"start_time\":0,\"end_time\":{}.{:06}}}",
            stream_id(i),
            elapsed_us / 1_000_000,
            elapsed_us % 1_000_000
        );
    }
    out.0.extend_from_slice(b"]}");
    out.0
}

struct Text(Vec<u8>);

impl Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Where the control connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the cookie.
    Cookie,
    /// Waiting for the parameters' length.
    ParamLen,
    /// Waiting for this many bytes of parameters.
    Params(usize),
    /// Waiting for the data streams (the socket loop calls [`Control::start`]).
    Streams,
    /// Data flows until the client sends `TEST_END`.
    Running,
    /// The test ended; waiting for [`Control::finish`] with the server's results.
    Ended,
    /// Waiting for the length of the client's results.
    ResultsLen,
    /// Waiting for this many bytes of the client's results.
    Results(usize),
    /// Results sent; waiting for `IPERF_DONE`.
    Display,
    /// The test is over.
    Done,
}

/// What the socket loop has to do after [`Control::feed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing until more bytes arrive.
    Wait,
    /// The parameters are accepted and `CREATE_STREAMS` is queued: accept this many
    /// streams with the test's cookie, then call [`Control::start`].
    CreateStreams(Params),
    /// The client ended the test: stop counting, then call [`Control::finish`].
    TestEnd,
    /// The test is over: close everything.
    Done,
}

/// Why a test is dropped. Whatever the client sends ends in one of these, never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The first 37 bytes are not a cookie.
    BadCookie,
    /// A JSON blob longer than [`MAX_JSON`].
    TooLong(u32),
    /// Parameters refused (`SERVER_ERROR` is queued for the client).
    Params(ParamError),
    /// The client's results are not a JSON object.
    Results(json::Error),
    /// A state byte that does not belong in this phase.
    Unexpected(Phase, u8),
    /// The client sent `CLIENT_TERMINATE`.
    ClientTerminated,
    /// The control connection closed in this phase.
    Closed(Phase),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadCookie => f.write_str("not an iperf3 cookie"),
            Error::TooLong(n) => write!(f, "JSON of {n} bytes (at most {MAX_JSON})"),
            Error::Params(e) => write!(f, "{e}"),
            Error::Results(e) => write!(f, "client results: {e}"),
            Error::Unexpected(p, b) => write!(f, "unexpected byte {b} in phase {p:?}"),
            Error::ClientTerminated => f.write_str("the client terminated the test"),
            Error::Closed(p) => write!(f, "the client closed the connection in phase {p:?}"),
        }
    }
}

/// One test's control connection, server side.
#[derive(Debug)]
pub struct Control {
    phase: Phase,
    cookie: Option<Cookie>,
    results: Vec<u8>,
}

impl Default for Control {
    fn default() -> Self {
        Control::new()
    }
}

impl Control {
    /// A fresh connection, waiting for the cookie.
    pub fn new() -> Control {
        Control {
            phase: Phase::Cookie,
            cookie: None,
            results: Vec::new(),
        }
    }

    /// Where the test is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The test's cookie, once it arrived.
    pub fn cookie(&self) -> Option<Cookie> {
        self.cookie
    }

    /// Consumes what it can of `input` (bytes from the client), queues replies on `out`,
    /// and stops at the first [`Event`] the socket loop must act on. Call it again until it
    /// returns [`Event::Wait`]. On an error the test is over; `out` may hold a last message
    /// for the client (`SERVER_ERROR`).
    pub fn feed(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<Event, Error> {
        loop {
            match self.phase {
                Phase::Cookie => {
                    let Some(bytes) = input.get(..COOKIE_LEN) else {
                        return Ok(Event::Wait);
                    };
                    self.cookie = Some(Cookie::parse(bytes).ok_or(Error::BadCookie)?);
                    input.drain(..COOKIE_LEN);
                    out.push(byte(state::PARAM_EXCHANGE));
                    self.phase = Phase::ParamLen;
                }
                Phase::ParamLen => match take_len(input)? {
                    Some(n) => self.phase = Phase::Params(n),
                    None => return Ok(Event::Wait),
                },
                Phase::Params(n) => {
                    let Some(text) = input.get(..n) else {
                        return Ok(Event::Wait);
                    };
                    let params = Params::parse(text);
                    input.drain(..n);
                    return match params {
                        Ok(p) => {
                            out.push(byte(state::CREATE_STREAMS));
                            self.phase = Phase::Streams;
                            Ok(Event::CreateStreams(p))
                        }
                        Err(e) => {
                            out.push(byte(state::SERVER_ERROR));
                            out.extend_from_slice(&IE_UNIMPLEMENTED.to_be_bytes());
                            out.extend_from_slice(&0u32.to_be_bytes());
                            self.phase = Phase::Done;
                            Err(Error::Params(e))
                        }
                    };
                }
                Phase::Running => match take_state(input)? {
                    Some(state::TEST_END) => {
                        self.phase = Phase::Ended;
                        return Ok(Event::TestEnd);
                    }
                    Some(s) => return Err(Error::Unexpected(self.phase, byte(s))),
                    None => return Ok(Event::Wait),
                },
                Phase::ResultsLen => match take_len(input)? {
                    Some(n) => self.phase = Phase::Results(n),
                    None => return Ok(Event::Wait),
                },
                Phase::Results(n) => {
                    let Some(text) = input.get(..n) else {
                        return Ok(Event::Wait);
                    };
                    json::members(text, |_, _| {}).map_err(Error::Results)?;
                    input.drain(..n);
                    let len = u32::try_from(self.results.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_be_bytes());
                    out.append(&mut self.results);
                    out.push(byte(state::DISPLAY_RESULTS));
                    self.phase = Phase::Display;
                }
                Phase::Display => match take_state(input)? {
                    Some(state::IPERF_DONE) => {
                        self.phase = Phase::Done;
                        return Ok(Event::Done);
                    }
                    Some(s) => return Err(Error::Unexpected(self.phase, byte(s))),
                    None => return Ok(Event::Wait),
                },
                // The client has nothing to say here: anything but Ctrl-C is garbage.
                Phase::Streams | Phase::Ended | Phase::Done => {
                    return match take_state(input)? {
                        Some(s) => Err(Error::Unexpected(self.phase, byte(s))),
                        None => Ok(Event::Wait),
                    };
                }
            }
        }
    }

    /// All streams are connected: queues `TEST_START` and `TEST_RUNNING`.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if self.phase == Phase::Streams {
            out.push(byte(state::TEST_START));
            out.push(byte(state::TEST_RUNNING));
            self.phase = Phase::Running;
        }
    }

    /// After [`Event::TestEnd`]: queues `EXCHANGE_RESULTS` and keeps the server's
    /// `results` (from [`results_json`]) to send once the client's have arrived.
    pub fn finish(&mut self, results: Vec<u8>, out: &mut Vec<u8>) {
        if self.phase == Phase::Ended {
            self.results = results;
            out.push(byte(state::EXCHANGE_RESULTS));
            self.phase = Phase::ResultsLen;
        }
    }

    /// The client closed the control connection: fine once the results are out.
    pub fn closed(&self) -> Result<Event, Error> {
        match self.phase {
            Phase::Display | Phase::Done => Ok(Event::Done),
            p => Err(Error::Closed(p)),
        }
    }
}

/// A JSON length prefix, if all four bytes are there.
fn take_len(input: &mut Vec<u8>) -> Result<Option<usize>, Error> {
    let Some(bytes) = input.get(..4) else {
        return Ok(None);
    };
    let n = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if n as usize > MAX_JSON {
        return Err(Error::TooLong(n));
    }
    input.drain(..4);
    Ok(Some(n as usize))
}

/// The next state byte, if any; `CLIENT_TERMINATE` is an error in every phase.
fn take_state(input: &mut Vec<u8>) -> Result<Option<i8>, Error> {
    if input.is_empty() {
        return Ok(None);
    }
    let s = input.remove(0) as i8;
    if s == state::CLIENT_TERMINATE {
        return Err(Error::ClientTerminated);
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    const COOKIE: &[u8; COOKIE_LEN] = b"abcdefghijklmnopqrstuvwxyz234567abcd\0";
    const PARAMS: &str = r#"{"tcp":true,"omit":0,"time":5,"num":0,"blockcount":0,"parallel":4,"reverse":true,"len":131072,"pacing_timer":1000,"client_version":"3.12"}"#;

    fn blob(json: &str) -> Vec<u8> {
        let mut v = (json.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v
    }

    fn feed(c: &mut Control, bytes: &[u8], out: &mut Vec<u8>) -> Result<Event, Error> {
        let mut input = bytes.to_vec();
        let event = c.feed(&mut input, out);
        if event == Ok(Event::Wait) {
            assert!(input.is_empty(), "left over: {input:?}");
        }
        event
    }

    #[test]
    fn cookies_are_36_printable_characters_and_a_nul() {
        assert!(Cookie::parse(COOKIE).is_some());
        assert!(Cookie::parse(&COOKIE[..36]).is_none());
        let mut bad = *COOKIE;
        bad[36] = b'x';
        assert!(Cookie::parse(&bad).is_none());
        bad = *COOKIE;
        bad[3] = b' ';
        assert!(Cookie::parse(&bad).is_none());
        assert!(Cookie::parse(&[0; COOKIE_LEN]).is_none());
    }

    #[test]
    fn parses_what_the_3_12_client_sends() {
        let p = Params::parse(PARAMS.as_bytes()).unwrap();
        assert_eq!(
            p,
            Params {
                parallel: 4,
                reverse: true,
                time: 5,
                omit: 0
            }
        );
        let p = Params::parse(br#"{"tcp":true,"time":10,"omit":2}"#).unwrap();
        assert_eq!((p.parallel, p.reverse, p.time, p.omit), (1, false, 10, 2));
    }

    #[test]
    fn refuses_tests_it_does_not_run() {
        use ParamError::*;
        let cases: [(&str, ParamError); 8] = [
            (r#"{"udp":true,"parallel":1}"#, NotTcp),
            (r#"{"parallel":1}"#, NotTcp),
            (r#"{"tcp":true,"sctp":true}"#, NotTcp),
            (r#"{"tcp":true,"bidirectional":true}"#, Bidirectional),
            (r#"{"tcp":true,"parallel":0}"#, Parallel(0)),
            (r#"{"tcp":true,"parallel":9}"#, Parallel(9)),
            (r#"{"tcp":true,"parallel":-1}"#, Parallel(-1)),
            (r#"{"tcp":true,"parallel":"4"}"#, Parallel(0)),
        ];
        for (text, want) in cases {
            assert_eq!(Params::parse(text.as_bytes()), Err(want), "{text}");
        }
        assert!(matches!(Params::parse(b"{\"tcp\":true"), Err(Json(_))));
    }

    #[test]
    fn stream_ids_skip_two_like_iperf3() {
        let ids: Vec<u32> = (0..5).map(stream_id).collect();
        assert_eq!(ids, [1, 3, 4, 5, 6]);
    }

    #[test]
    fn results_have_every_member_the_client_requires() {
        let r = results_json(&[100, 20], false, 5_000_123);
        let text = core::str::from_utf8(&r).unwrap();
        assert_eq!(
            text,
            "{\"cpu_util_total\":0,\"cpu_util_user\":0,\"cpu_util_system\":0,\
             \"sender_has_retransmits\":-1,\"streams\":[\
             {\"id\":1,\"bytes\":100,\"retransmits\":-1,\"jitter\":0,\"errors\":0,\"packets\":0,\
             \"start_time\":0,\"end_time\":5.000123},\
             {\"id\":3,\"bytes\":20,\"retransmits\":-1,\"jitter\":0,\"errors\":0,\"packets\":0,\
             \"start_time\":0,\"end_time\":5.000123}]}"
        );
        let r = results_json(&[u64::MAX], true, 42);
        let text = core::str::from_utf8(&r).unwrap();
        assert!(text.contains("\"sender_has_retransmits\":0,"));
        assert!(text.contains("\"bytes\":18446744073709551615,"));
        assert!(text.contains("\"end_time\":0.000042}"));
        json::members(&r, |_, _| {}).unwrap();
    }

    #[test]
    fn a_whole_test_in_one_go() {
        let mut c = Control::new();
        let mut out = Vec::new();
        // An unfinished cookie stays in the caller's buffer.
        let mut input = COOKIE[..10].to_vec();
        assert_eq!(c.feed(&mut input, &mut out), Ok(Event::Wait));
        assert_eq!((c.phase(), input.len()), (Phase::Cookie, 10));
        input.extend_from_slice(&COOKIE[10..]);
        input.extend_from_slice(&blob(PARAMS)[..3]);
        assert_eq!(c.feed(&mut input, &mut out), Ok(Event::Wait));
        assert_eq!(out, [9]);
        assert_eq!(c.cookie(), Cookie::parse(COOKIE));
        input.extend_from_slice(&blob(PARAMS)[3..]);
        let Ok(Event::CreateStreams(p)) = c.feed(&mut input, &mut out) else {
            panic!("no CreateStreams");
        };
        assert_eq!(p.parallel, 4);
        assert_eq!(out, [9, 10]);
        assert_eq!(c.feed(&mut input, &mut out), Ok(Event::Wait));
        c.start(&mut out);
        assert_eq!(out, [9, 10, 1, 2]);
        assert_eq!(c.phase(), Phase::Running);
        assert_eq!(feed(&mut c, &[4], &mut out), Ok(Event::TestEnd));
        assert_eq!(c.phase(), Phase::Ended);
        out.clear();
        let results = results_json(&[7], true, 1_000_000);
        c.finish(results.clone(), &mut out);
        assert_eq!(out, [13]);
        let client = r#"{"cpu_util_total":1.5,"streams":[{"id":1,"bytes":7}]}"#;
        assert_eq!(feed(&mut c, &blob(client), &mut out), Ok(Event::Wait));
        let mut want = vec![13];
        want.extend_from_slice(&(results.len() as u32).to_be_bytes());
        want.extend_from_slice(&results);
        want.push(14);
        assert_eq!(out, want);
        assert_eq!(c.closed(), Ok(Event::Done));
        assert_eq!(feed(&mut c, &[16], &mut out), Ok(Event::Done));
        assert_eq!(c.phase(), Phase::Done);
    }

    #[test]
    fn bad_parameters_get_server_error() {
        let mut c = Control::new();
        let mut out = Vec::new();
        let mut input = COOKIE.to_vec();
        input.extend_from_slice(&blob(r#"{"udp":true}"#));
        assert_eq!(
            c.feed(&mut input, &mut out),
            Err(Error::Params(ParamError::NotTcp))
        );
        assert_eq!(out, [9, 0xfe, 0, 0, 0, 13, 0, 0, 0, 0]);
    }

    #[test]
    fn garbage_and_hangups_are_errors_not_panics() {
        let mut out = Vec::new();
        // Garbage instead of a cookie.
        let garbage = [b'x'; 64];
        assert_eq!(
            feed(&mut Control::new(), &garbage, &mut out),
            Err(Error::BadCookie)
        );
        // An oversize blob is refused from its length alone.
        let mut input = COOKIE.to_vec();
        input.extend_from_slice(&(MAX_JSON as u32 + 1).to_be_bytes());
        assert_eq!(
            Control::new().feed(&mut input, &mut out),
            Err(Error::TooLong(MAX_JSON as u32 + 1))
        );
        let mut input = COOKIE.to_vec();
        input.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Control::new().feed(&mut input, &mut out).is_err());
        // Parameters that are not JSON.
        let mut input = COOKIE.to_vec();
        input.extend_from_slice(&blob("{not json"));
        assert!(matches!(
            Control::new().feed(&mut input, &mut out),
            Err(Error::Params(ParamError::Json(_)))
        ));
        // State bytes out of place, Ctrl-C, closing early.
        let mut c = Control::new();
        let mut input = COOKIE.to_vec();
        input.extend_from_slice(&blob(PARAMS));
        assert!(matches!(
            c.feed(&mut input, &mut out),
            Ok(Event::CreateStreams(_))
        ));
        assert_eq!(c.closed(), Err(Error::Closed(Phase::Streams)));
        assert_eq!(
            feed(&mut c, &[4], &mut out),
            Err(Error::Unexpected(Phase::Streams, 4))
        );
        c.start(&mut out);
        assert_eq!(feed(&mut c, &[12], &mut out), Err(Error::ClientTerminated));
        assert_eq!(
            feed(&mut c, &[99], &mut out),
            Err(Error::Unexpected(Phase::Running, 99))
        );
        assert_eq!(feed(&mut c, &[4], &mut out), Ok(Event::TestEnd));
        c.finish(results_json(&[1], false, 1), &mut out);
        assert!(matches!(
            feed(&mut c, &blob("[1,2]"), &mut out),
            Err(Error::Results(_))
        ));
    }

    #[test]
    fn start_and_finish_only_act_in_their_phase() {
        let mut c = Control::new();
        let mut out = Vec::new();
        c.start(&mut out);
        c.finish(Vec::new(), &mut out);
        assert!(out.is_empty());
        assert_eq!(c.phase(), Phase::Cookie);
    }
}
