//! The server over a real Unix socket with a fake backend: every error status, keep-alive,
//! concurrency and slow clients, the socket file's life; and the bodies' checks.

use super::client::{self, ClientError};
use super::http;
use super::server::{ApiServer, BindError, ServerConfig, bind};
use super::types::*;
use super::{ApiError, ApiRequest, Backend, Endpoint};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(5);

/// Answers like a VMM would, and records what it was asked.
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<ApiRequest>>,
    answered: Mutex<Vec<(Endpoint, u16)>>,
    /// Set to let `vm.migration-progress` answer.
    gate: (Mutex<bool>, std::sync::Condvar),
}

impl Fake {
    fn release(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }
}

impl Backend for Fake {
    fn handle(&self, request: ApiRequest) -> Result<Option<Value>, ApiError> {
        self.seen.lock().unwrap().push(request.clone());
        match request {
            ApiRequest::VmmPing => Ok(Some(
                serde_json::to_value(VmmPingResponse::current(&["test"])).unwrap(),
            )),
            ApiRequest::VmInfo => Err(ApiError::not_found("the VM is not created")),
            ApiRequest::VmPause => Err(ApiError::conflict("the VM is not running")),
            ApiRequest::VmResume => Err(ApiError::new(200, "not an error status")),
            ApiRequest::VmShutdown => panic!("the fake backend panics on vm.shutdown"),
            ApiRequest::RoamNic(_) => Ok(Some(
                serde_json::to_value(NicAnswer::from(Status {
                    active: Some(Nic::Vf),
                    switches: 1,
                    ..Status::default()
                }))
                .unwrap(),
            )),
            ApiRequest::VmMigrationProgress => {
                // A slow backend call (a guest-agent round trip): held until released.
                let (released, cv) = &self.gate;
                let guard = released.lock().unwrap();
                let _unused = cv.wait_timeout_while(guard, T, |r| !*r).unwrap();
                Ok(Some(
                    serde_json::to_value(MigrationProgress::default()).unwrap(),
                ))
            }
            _ => Ok(None),
        }
    }

    fn answered(&self, endpoint: Endpoint, status: u16) {
        self.answered.lock().unwrap().push((endpoint, status));
    }
}

/// A unique socket path in the temp directory, removed on drop.
struct SocketPath(PathBuf);

impl SocketPath {
    fn new(tag: &str) -> SocketPath {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        SocketPath(
            std::env::temp_dir().join(format!("hv-api-{tag}-{}-{n}.sock", std::process::id())),
        )
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Setup {
    path: SocketPath,
    server: Option<ApiServer>,
    backend: Arc<Fake>,
}

impl Setup {
    fn p(&self) -> &Path {
        &self.path.0
    }

    fn connect(&self) -> UnixStream {
        let c = UnixStream::connect(self.p()).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        c
    }

    fn seen(&self) -> Vec<ApiRequest> {
        self.backend.seen.lock().unwrap().clone()
    }
}

fn start_with(tag: &str, config: ServerConfig) -> Setup {
    let path = SocketPath::new(tag);
    let backend = Arc::new(Fake::default());
    let listener = bind(&path.0).unwrap();
    let server = ApiServer::start_with(listener, path.0.clone(), backend.clone(), config).unwrap();
    assert_eq!(server.path(), path.0);
    Setup {
        path,
        server: Some(server),
        backend,
    }
}

fn start(tag: &str) -> Setup {
    start_with(tag, ServerConfig::default())
}

/// A test config with short timeouts.
fn quick() -> ServerConfig {
    ServerConfig {
        request_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    }
}

/// An answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<Value>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        http::header(&self.headers, name)
    }

    fn error(&self) -> &str {
        self.body
            .as_ref()
            .and_then(|b| b["error"].as_str())
            .unwrap_or_else(|| panic!("no error body in {self:?}"))
    }
}

/// Reads one answer (head and Content-Length body) from `conn`; `pending` holds bytes
/// read past the previous answer.
fn read_answer(conn: &mut UnixStream, pending: &mut Vec<u8>) -> Answer {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = http::find_head_end(pending) {
            break end;
        }
        let n = conn.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "EOF before an answer; got {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    };
    let head = http::parse_response_head(&pending[..end]).unwrap();
    let len: usize =
        http::header(&head.headers, "content-length").map_or(0, |v| v.parse().unwrap());
    while pending.len() < end + len {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "EOF in a body");
        pending.extend_from_slice(&chunk[..n]);
    }
    let body = &pending[end..end + len];
    let body = (!body.is_empty()).then(|| serde_json::from_slice(body).unwrap());
    pending.drain(..end + len);
    Answer {
        status: head.status,
        headers: head.headers,
        body,
    }
}

/// Sends `bytes` on a new connection and reads one answer.
fn raw(s: &Setup, bytes: &[u8]) -> Answer {
    let mut conn = s.connect();
    conn.write_all(bytes).unwrap();
    read_answer(&mut conn, &mut Vec::new())
}

/// True once the server has closed `conn` (EOF, or a reset).
fn closed(conn: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    matches!(conn.read(&mut b), Ok(0) | Err(_))
}

fn put(path: &str, body: &str) -> Vec<u8> {
    format!(
        "PUT /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

#[test]
fn the_socket_file_is_its_owners_only_and_the_owner_is_served() {
    use std::os::unix::fs::PermissionsExt;
    let s = start("mode");
    let mode = std::fs::metadata(s.p()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, super::server::SOCKET_MODE);
    assert_eq!(mode, 0o600);
    // This process is the socket's owner: its peer credentials pass.
    assert_eq!(raw(&s, &get("vmm.ping")).status, 200);
}

#[test]
fn the_client_pings_and_gets_json() {
    let s = start("ping");
    let (status, body) = client::call(s.p(), "GET", "vmm.ping", None, T).unwrap();
    assert_eq!(status, 200);
    let ping: VmmPingResponse = serde_json::from_value(body.unwrap()).unwrap();
    assert_eq!(ping.pid, i64::from(std::process::id()));
    assert_eq!(ping.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(ping.features, ["test"]);
    // `answered` runs after the write, so it may trail the client a little (and a later
    // connection's could overtake it): wait for each before the next request.
    let answered = |n: usize| {
        let started = Instant::now();
        while s.backend.answered.lock().unwrap().len() < n && started.elapsed() < T {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    answered(1);
    // 204s have no body; the full path works too.
    let (status, body) = client::call(s.p(), "PUT", "/api/v1/vm.boot", None, T).unwrap();
    assert_eq!((status, body), (204, None));
    assert_eq!(s.seen(), [ApiRequest::VmmPing, ApiRequest::VmBoot]);
    answered(2);
    // Told after each answer the backend gave (not for requests refused before it).
    assert_eq!(
        client::call(s.p(), "GET", "vm.nope", None, T).unwrap().0,
        404
    );
    assert_eq!(
        client::call(s.p(), "GET", "vm.info", None, T).unwrap().0,
        404
    );
    answered(3);
    assert_eq!(
        *s.backend.answered.lock().unwrap(),
        [
            (Endpoint::VmmPing, 200),
            (Endpoint::VmBoot, 204),
            (Endpoint::VmInfo, 404)
        ]
    );
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let s = start("route");
    let a = raw(&s, &get("vm.nope"));
    assert_eq!(a.status, 404);
    assert!(a.error().contains("/api/v1/vm.nope"), "{}", a.error());
    assert_eq!(raw(&s, b"GET /vm.info HTTP/1.1\r\n\r\n").status, 404);
    let a = raw(&s, &put("vmm.ping", "{}"));
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("GET"));
    assert_eq!(a.error(), "/api/v1/vmm.ping takes GET, not PUT");
    let a = raw(&s, &get("vm.boot"));
    assert_eq!((a.status, a.header("Allow")), (405, Some("PUT")));
    let a = raw(&s, b"DELETE /api/v1/vm.info HTTP/1.1\r\n\r\n");
    assert_eq!((a.status, a.header("Allow")), (405, Some("GET")));
    assert!(s.seen().is_empty(), "nothing reached the backend");
}

#[test]
fn bad_bodies_are_400_naming_the_field() {
    let s = start("fields");
    let cases = [
        (r#"{"payload":{"kernel":5}}"#, "`payload.kernel`"),
        (r#"{}"#, "missing field `payload`"),
        (r#"{"payload":{}}"#, "missing field `kernel`"),
        (
            r#"{"payload":{"kernel":"/k"},"net":{"tap":"t0"}}"#,
            "`net`: invalid type",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"net":[{"mac":"x"}]}"#,
            "`net[0].tap`: missing",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"memory":{"size":"1G"}}"#,
            "`memory.size`",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"memory":{"size":1}}"#,
            "`memory.size`",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"net":[{"tap":"t0","mac":"01:00:00:00:00:01"}]}"#,
            "`net[0].mac`",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"net":[{"tap":"a"},{"tap":"b"}]}"#,
            "`net`: 2 cards",
        ),
        (
            r#"{"payload":{"kernel":"/k"},"net":[{"tap":"a"}],"vf":{"tap":"a"}}"#,
            "`vf.tap`",
        ),
        (r#"{"payload":{"kernel":"/k"}} trailing"#, "one JSON value"),
        (r#"{"payload":"#, "EOF"),
    ];
    for (body, needle) in cases {
        let a = raw(&s, &put("vm.create", body));
        assert_eq!(a.status, 400, "{body}");
        assert!(a.error().contains(needle), "{body}: {}", a.error());
        assert!(
            a.error().starts_with("invalid vm.create body: "),
            "{}",
            a.error()
        );
    }
    let more = [
        (
            "vm.send-migration",
            r#"{"destination_url":"ftp:x"}"#,
            "`destination_url`",
        ),
        (
            "vm.send-migration",
            r#"{"destination_url":"tcp:h:1","local":true}"#,
            "`local`",
        ),
        (
            "vm.send-migration",
            r#"{"destination_url":"unix:/s","downtime_ms":0}"#,
            "`downtime_ms`",
        ),
        (
            "vm.send-migration",
            r#"{"destination_url":"unix:/s","local":"yes"}"#,
            "`local`",
        ),
        (
            "vm.receive-migration",
            r#"{"receiver_url":7}"#,
            "`receiver_url`",
        ),
        (
            "vm.receive-migration",
            r#"{"receiver_url":"tcp:0.0.0.0:6000","insecure_plain_tcp":true,"vf":{"tap":"bad/name"}}"#,
            "`vf.tap`",
        ),
        ("roam.nic", r#"{"action":"switch"}"#, "`nic`"),
        (
            "roam.nic",
            r#"{"action":"switch","nic":"eth0"}"#,
            "`nic`: unknown variant `eth0`",
        ),
        ("roam.nic", r#"{"action":"reboot"}"#, "`action`"),
        (
            "roam.vf",
            r#"{"action":"link_up"}"#,
            "`action`: unknown variant `link_up`, expected one of `link-up`",
        ),
        ("roam.vf", r#"[]"#, "expected a JSON object"),
        ("roam.vf", r#"  "add""#, "expected a JSON object"),
    ];
    for (endpoint, body, needle) in more {
        let a = raw(&s, &put(endpoint, body));
        assert_eq!(a.status, 400, "{endpoint} {body}");
        assert!(
            a.error().contains(needle),
            "{endpoint} {body}: {}",
            a.error()
        );
    }
    assert!(s.seen().is_empty(), "nothing reached the backend");
}

#[test]
fn unknown_fields_are_ignored_and_defaults_filled() {
    let s = start("lenient");
    let body = json!({
        "cpus": {"boot_vcpus": 1},
        "payload": {"kernel": "/images/netecho.elf", "cmdline": "ip=10.0.0.2/24", "firmware": null},
        "net": [{"tap": "tap0", "num_queues": 2}],
        "serial": {"mode": "Tty"},
    });
    let (status, _) = client::call(s.p(), "PUT", "vm.create", Some(&body), T).unwrap();
    assert_eq!(status, 204);
    let body = json!({"destination_url": "unix:/tmp/m.sock", "compression": "none"});
    let (status, _) = client::call(s.p(), "PUT", "vm.send-migration", Some(&body), T).unwrap();
    assert_eq!(status, 204);
    assert_eq!(
        s.seen(),
        [
            ApiRequest::VmCreate(VmConfig {
                payload: PayloadConfig {
                    kernel: "/images/netecho.elf".into(),
                    cmdline: Some("ip=10.0.0.2/24".into()),
                },
                memory: MemoryConfig { size: 128 << 20 },
                net: vec![NetConfig {
                    tap: "tap0".into(),
                    mip: false,
                    nat: false,
                    mac: None
                }],
                vf: None,
            }),
            ApiRequest::VmSendMigration(SendMigrationData {
                destination_url: "unix:/tmp/m.sock".into(),
                local: false,
                downtime_ms: 300,
                tls_dir: None,
                insecure_plain_tcp: false,
                force: false,
            }),
        ]
    );
}

#[test]
fn a_body_route_without_content_length_is_411_and_an_empty_body_400() {
    let s = start("length");
    let a = raw(&s, b"PUT /api/v1/vm.create HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(a.status, 411);
    assert!(a.error().contains("Content-Length"), "{}", a.error());
    let a = raw(&s, &put("roam.vf", ""));
    assert_eq!(a.status, 400);
    assert!(a.error().contains("needs a JSON body"), "{}", a.error());
    // Routes without a body take one and ignore it.
    assert_eq!(raw(&s, &put("vm.boot", "{\"x\":1}")).status, 204);
}

#[test]
fn oversized_bodies_are_413_and_oversized_heads_431() {
    let s = start("sizes");
    let a = raw(
        &s,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
    );
    assert_eq!(a.status, 413);
    assert_eq!(a.header("connection"), Some("close"));
    assert!(a.error().contains("65537"), "{}", a.error());
    // The client sending a whole big body still reads the answer.
    let big = json!({"payload": {"kernel": "k", "cmdline": "x".repeat(100_000)}});
    let (status, body) = client::call(s.p(), "PUT", "vm.create", Some(&big), T).unwrap();
    assert_eq!(status, 413, "{body:?}");
    let mut head = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 10_000));
    head.extend(b"\r\n\r\n");
    assert_eq!(raw(&s, &head).status, 431);
}

#[test]
fn malformed_requests_are_400_other_versions_505_chunked_501() {
    let s = start("malformed");
    for bytes in [
        &b"GET /api/v1/vmm.ping\r\n\r\n"[..],
        b"GET /api/v1/vmm.ping HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        b"GET /api/v1/vmm.ping HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ] {
        let a = raw(&s, bytes);
        assert_eq!(a.status, 400, "{:?}", String::from_utf8_lossy(bytes));
        assert!(
            a.error().starts_with("malformed request: "),
            "{}",
            a.error()
        );
    }
    let a = raw(&s, b"GET /api/v1/vmm.ping HTTP/2.0\r\n\r\n");
    assert_eq!(a.status, 505);
    assert!(a.error().contains("HTTP/2.0"), "{}", a.error());
    let a = raw(
        &s,
        b"PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(a.status, 501);
    assert!(a.error().contains("Content-Length"), "{}", a.error());
}

#[test]
fn a_client_that_stalls_mid_request_gets_408() {
    let s = start_with("stall", quick());
    for partial in [
        &b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"pay"[..],
        b"GET /api/v1/vmm.pi",
        b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n",
    ] {
        let started = Instant::now();
        let mut conn = s.connect();
        conn.write_all(partial).unwrap();
        let a = read_answer(&mut conn, &mut Vec::new());
        assert_eq!(a.status, 408);
        assert!(a.error().contains("300 ms"), "{}", a.error());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(closed(&mut conn));
    }
    // A client dribbling bytes does not get more time.
    let mut conn = s.connect();
    let started = Instant::now();
    for b in b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if started.elapsed() > Duration::from_millis(700)
            || conn.write_all(std::slice::from_ref(b)).is_err()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read_answer(&mut conn, &mut Vec::new()).status, 408);
}

#[test]
fn keep_alive_carries_many_requests_and_close_is_honoured() {
    let s = start("keepalive");
    let mut conn = s.connect();
    let mut pending = Vec::new();
    for _ in 0..3 {
        conn.write_all(&get("vmm.ping")).unwrap();
        let a = read_answer(&mut conn, &mut pending);
        assert_eq!(a.status, 200);
        assert_eq!(a.header("connection"), None);
    }
    // Pipelined: three requests in one write, three answers in order.
    let mut three = put("vm.boot", "");
    three.extend(get("vm.info"));
    three.extend(put("roam.nic", r#"{"action":"status"}"#));
    conn.write_all(&three).unwrap();
    let statuses: Vec<u16> = (0..3)
        .map(|_| read_answer(&mut conn, &mut pending).status)
        .collect();
    assert_eq!(statuses, [204, 404, 200]);
    // Errors that keep the framing (404, 400 on a body) keep the connection too.
    conn.write_all(&put("roam.vf", "nope")).unwrap();
    assert_eq!(read_answer(&mut conn, &mut pending).status, 400);
    conn.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let a = read_answer(&mut conn, &mut pending);
    assert_eq!((a.status, a.header("Connection")), (200, Some("close")));
    assert!(closed(&mut conn));
    // HTTP/1.0 closes unless asked to keep the connection.
    let mut conn = s.connect();
    conn.write_all(b"GET /api/v1/vmm.ping HTTP/1.0\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut conn, &mut Vec::new()).status, 200);
    assert!(closed(&mut conn));
    let mut conn = s.connect();
    let mut pending = Vec::new();
    for _ in 0..2 {
        conn.write_all(b"GET /api/v1/vmm.ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let a = read_answer(&mut conn, &mut pending);
        assert_eq!(a.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn an_idle_keep_alive_connection_is_closed_without_an_answer() {
    let s = start_with("idle", quick());
    let mut conn = s.connect();
    conn.write_all(&get("vmm.ping")).unwrap();
    let mut pending = Vec::new();
    assert_eq!(read_answer(&mut conn, &mut pending).status, 200);
    let started = Instant::now();
    let mut b = [0u8; 16];
    assert_eq!(conn.read(&mut b).unwrap(), 0, "closed, no 408");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn expect_100_continue_is_answered() {
    let s = start("continue");
    let mut conn = s.connect();
    let body = r#"{"action":"add"}"#;
    conn.write_all(
        format!(
            "PUT /api/v1/roam.vf HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut pending = Vec::new();
    assert_eq!(read_answer(&mut conn, &mut pending).status, 100);
    conn.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut conn, &mut pending).status, 204);
    assert_eq!(
        s.seen(),
        [ApiRequest::RoamVf(VfRequest {
            action: VfAction::Add
        })]
    );
}

#[test]
fn backend_errors_keep_their_status_and_a_panic_is_a_500() {
    let s = start("backend");
    let a = raw(&s, &get("vm.info"));
    assert_eq!((a.status, a.error()), (404, "the VM is not created"));
    let a = raw(&s, &put("vm.pause", ""));
    assert_eq!((a.status, a.error()), (409, "the VM is not running"));
    let a = raw(&s, &put("vm.resume", ""));
    assert_eq!(a.status, 500, "a non-error status becomes 500");
    let a = raw(&s, &put("vm.shutdown", ""));
    assert_eq!(a.status, 500);
    assert!(a.error().contains("vm.shutdown"), "{}", a.error());
    // The server goes on.
    assert_eq!(raw(&s, &get("vmm.ping")).status, 200);
    let e = client::call_ok(s.p(), "PUT", "vm.pause", None, T).unwrap_err();
    assert!(
        matches!(&e, ClientError::Failed { status: 409, message } if message == "the VM is not running"),
        "{e}"
    );
}

#[test]
fn forty_concurrent_clients_are_all_answered() {
    for (max, all_ok) in [(32, false), (64, true)] {
        let s = start_with(
            "forty",
            ServerConfig {
                max_connections: max,
                ..ServerConfig::default()
            },
        );
        let barrier = Arc::new(std::sync::Barrier::new(40));
        let threads: Vec<_> = (0..40)
            .map(|_| {
                let path = s.p().to_owned();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    client::call(&path, "GET", "vmm.ping", None, T)
                })
            })
            .collect();
        let mut ok = 0;
        for t in threads {
            let (status, body) = t.join().unwrap().unwrap();
            match status {
                200 => ok += 1,
                503 => assert!(body.unwrap()["error"].as_str().unwrap().contains("retry")),
                other => panic!("status {other}"),
            }
        }
        if all_ok {
            assert_eq!(ok, 40);
        } else {
            assert!(ok >= 32, "{ok} of 40");
        }
    }
}

#[test]
fn past_the_connection_cap_a_client_gets_503_then_a_place_frees() {
    let s = start_with(
        "cap",
        ServerConfig {
            max_connections: 2,
            ..ServerConfig::default()
        },
    );
    // Two connections, each admitted (answered once) and kept open.
    let mut held: Vec<UnixStream> = (0..2)
        .map(|_| {
            let mut c = s.connect();
            c.write_all(&get("vmm.ping")).unwrap();
            assert_eq!(read_answer(&mut c, &mut Vec::new()).status, 200);
            c
        })
        .collect();
    let a = raw(&s, &get("vmm.ping"));
    assert_eq!(a.status, 503);
    assert_eq!(a.header("connection"), Some("close"));
    drop(held.pop());
    // The freed place is taken back once its thread has seen the close.
    let started = Instant::now();
    loop {
        let a = raw(&s, &get("vmm.ping"));
        if a.status == 200 {
            break;
        }
        assert!(started.elapsed() < T, "the place never freed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn slow_clients_and_slow_calls_do_not_delay_others() {
    let s = start("slow");
    // Connected and silent; and half a request.
    let _silent = s.connect();
    let mut half = s.connect();
    half.write_all(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        .unwrap();
    // A backend call held until released.
    let path = s.p().to_owned();
    let slow =
        std::thread::spawn(move || client::call(&path, "GET", "vm.migration-progress", None, T));
    let started = Instant::now();
    while !s.seen().contains(&ApiRequest::VmMigrationProgress) {
        assert!(
            started.elapsed() < T,
            "the slow call never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // With all three outstanding, another client is served.
    let (status, _) = client::call(s.p(), "GET", "vmm.ping", None, T).unwrap();
    assert_eq!(status, 200);
    assert!(!slow.is_finished(), "the slow call is still under way");
    s.backend.release();
    assert_eq!(slow.join().unwrap().unwrap().0, 200);
}

#[test]
fn the_socket_file_lives_with_the_server() {
    let mut s = start("life");
    // A live server's path is refused, and the probe does not disturb it.
    let e = bind(s.p()).unwrap_err();
    assert!(matches!(e, BindError::InUse(_)), "{e}");
    assert!(e.to_string().contains("--api-socket"), "{e}");
    assert_eq!(raw(&s, &get("vmm.ping")).status, 200);
    // Dropping the server closes open connections and removes the file.
    let mut open = s.connect();
    open.write_all(&get("vmm.ping")).unwrap();
    assert_eq!(read_answer(&mut open, &mut Vec::new()).status, 200);
    let started = Instant::now();
    drop(s.server.take());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(closed(&mut open));
    assert!(!s.p().exists(), "socket removed on drop");
    // A stale socket (bound, never served, its owner gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(s.p()).unwrap());
    assert!(s.p().exists());
    let listener = bind(s.p()).unwrap();
    let server = ApiServer::start(listener, s.p().to_owned(), s.backend.clone()).unwrap();
    assert_eq!(raw(&s, &get("vmm.ping")).status, 200);
    drop(server);
    // A regular file is left alone.
    std::fs::write(s.p(), b"keep me").unwrap();
    let e = bind(s.p()).unwrap_err();
    assert!(matches!(e, BindError::NotASocket(_)), "{e}");
    assert!(e.to_string().contains("--api-socket"), "{e}");
    assert_eq!(std::fs::read(s.p()).unwrap(), b"keep me");
    let e = bind(Path::new("/nonexistent-dir/api.sock")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot listen on --api-socket /nonexistent-dir/api.sock: "),
        "{e}"
    );
}

#[test]
fn the_client_explains_a_missing_dead_or_mute_socket() {
    let path = SocketPath::new("client");
    let e = client::call(&path.0, "GET", "vmm.ping", None, T).unwrap_err();
    assert!(matches!(e, ClientError::NoSocket(_)), "{e}");
    assert!(
        e.to_string()
            .contains("is host-vmm running with --api-socket"),
        "{e}"
    );
    drop(std::os::unix::net::UnixListener::bind(&path.0).unwrap());
    let e = client::call(&path.0, "GET", "vmm.ping", None, T).unwrap_err();
    assert!(matches!(e, ClientError::Refused(_)), "{e}");
    assert!(e.to_string().contains(&path.0.display().to_string()), "{e}");
    let mute_path = SocketPath::new("mute");
    let _mute = std::os::unix::net::UnixListener::bind(&mute_path.0).unwrap();
    let e = client::call(
        &mute_path.0,
        "GET",
        "vmm.ping",
        None,
        Duration::from_millis(100),
    )
    .unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("within 100 ms"), "{e}");
    let e = client::call(&mute_path.0, "GET", "a path", None, T).unwrap_err();
    assert!(matches!(e, ClientError::BadRequest(_)), "{e}");
}

#[test]
fn the_client_reports_a_server_that_is_not_http() {
    let path = SocketPath::new("nothttp");
    let listener = std::os::unix::net::UnixListener::bind(&path.0).unwrap();
    let server = std::thread::spawn(move || {
        for answer in [
            &b"ok\nhello\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nnot",
        ] {
            let (mut c, _) = listener.accept().unwrap();
            let mut b = [0u8; 1024];
            let _ = c.read(&mut b);
            c.write_all(answer).unwrap();
        }
    });
    let e = client::call(&path.0, "GET", "vmm.ping", None, T).unwrap_err();
    assert!(matches!(e, ClientError::BadAnswer { .. }), "{e}");
    let e = client::call(&path.0, "GET", "vmm.ping", None, T).unwrap_err();
    assert!(e.to_string().contains("not JSON"), "{e}");
    server.join().unwrap();
}

// ---------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------

fn parse(endpoint: Endpoint, body: &str) -> Result<ApiRequest, ApiError> {
    ApiRequest::parse(endpoint, Some(body.as_bytes()))
}

#[test]
fn chs_older_kernel_and_cmdline_form_is_folded_into_payload() {
    let r = parse(
        Endpoint::VmCreate,
        r#"{"kernel":{"path":"/k.elf"},"cmdline":{"args":"log=info"},"memory":{"size":67108864}}"#,
    )
    .unwrap();
    let ApiRequest::VmCreate(config) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        config.payload,
        PayloadConfig {
            kernel: "/k.elf".into(),
            cmdline: Some("log=info".into())
        }
    );
    // Only the payload form is written back (vm.info's `config`).
    let written = serde_json::to_value(&config).unwrap();
    assert_eq!(
        written,
        json!({"payload": {"kernel": "/k.elf", "cmdline": "log=info"}, "memory": {"size": 67108864}})
    );
    let back: VmConfig = serde_json::from_value(written).unwrap();
    assert_eq!(back, config);
    let e = parse(
        Endpoint::VmCreate,
        r#"{"kernel":{"path":"/a"},"payload":{"kernel":"/b"}}"#,
    )
    .unwrap_err();
    assert!(e.message.contains("not both"), "{e}");
}

#[test]
fn a_vm_config_becomes_a_run_config_with_the_cli_defaults() {
    let ApiRequest::VmCreate(config) = parse(
        Endpoint::VmCreate,
        r#"{"payload":{"kernel":"/k"},"net":[{"tap":"t0","mac":"52:54:00:00:00:01"}],"vf":{"tap":"t1"}}"#,
    )
    .unwrap() else {
        panic!()
    };
    let run = config.to_run_config().unwrap();
    assert_eq!(run.image, PathBuf::from("/k"));
    assert_eq!(run.mem.bytes(), 128 << 20);
    assert_eq!(run.cmdline.as_bytes(), b"");
    let net = run.devices.net.unwrap();
    assert_eq!(net.mac.to_string(), "52:54:00:00:00:01");
    // The VF shares the card's MAC unless given one, as with --vf.
    assert_eq!(run.devices.vf.unwrap().mac, net.mac);
    assert!(
        run.devices.agent,
        "an API-made VM has the guest agent's channel"
    );
}

#[test]
fn migration_bodies_become_options_and_plans() {
    let ApiRequest::VmSendMigration(data) = parse(
        Endpoint::VmSendMigration,
        r#"{"destination_url":"unix:/tmp/dst.sock","local":true,"downtime_ms":50}"#,
    )
    .unwrap() else {
        panic!()
    };
    let o = data.to_options().unwrap();
    assert!(o.zero_copy);
    assert_eq!(o.downtime, Duration::from_millis(50));
    assert_eq!(o.target.to_string(), "unix:/tmp/dst.sock");
    let ApiRequest::VmReceiveMigration(data) = parse(
        Endpoint::VmReceiveMigration,
        r#"{"receiver_url":"tcp:0.0.0.0:6000","net":[{"tap":"t0"}],"insecure_plain_tcp":true}"#,
    )
    .unwrap() else {
        panic!()
    };
    let plan = data.to_plan().unwrap();
    assert!(plan.protection.insecure_plain_tcp);
    assert_eq!(plan.listen.to_string(), "tcp:0.0.0.0:6000");
    assert_eq!(plan.devices.net.unwrap().tap, "t0");
    assert!(plan.devices.vf.is_none());
    // TCP is TLS unless plain TCP is asked for by name; TLS needs a readable directory;
    // unix: takes neither.
    for (body, field, says) in [
        (
            r#"{"destination_url":"tcp:198.18.0.2:7000"}"#,
            "tls_dir",
            "insecure_plain_tcp",
        ),
        (
            r#"{"destination_url":"tcp:198.18.0.2:7000","tls_dir":"/x","insecure_plain_tcp":true}"#,
            "insecure_plain_tcp",
            "not both",
        ),
        (
            r#"{"destination_url":"unix:/tmp/m","insecure_plain_tcp":true}"#,
            "insecure_plain_tcp",
            "tcp: only",
        ),
    ] {
        let e = parse(Endpoint::VmSendMigration, body).unwrap_err();
        assert!(
            e.message.contains(&format!("`{field}`")) && e.message.contains(says),
            "{body}: {e:?}"
        );
    }
}

#[test]
fn a_receiver_away_from_home_is_routed_with_network_paging() {
    let body = r#"{"receiver_url":"tcp:0.0.0.0:6000","insecure_plain_tcp":true,
        "net":[{"nat":true,"mac":"52:54:00:12:34:56"}],
        "mobility":"nat:edge=198.18.3.1,site=198.18.21.2,home=198.18.0.10/24,loc=198.18.21.10,spi=300,key=@/k"}"#;
    let ApiRequest::VmReceiveMigration(data) = parse(Endpoint::VmReceiveMigration, body).unwrap()
    else {
        panic!()
    };
    let plan = data.to_plan().unwrap();
    let net = plan.devices.net.unwrap();
    assert!(net.nat && !net.mip);
    assert_eq!(net.tap, "nat0", "the default routed TAP");
    assert_eq!(net.mac.to_string(), "52:54:00:12:34:56");
    let mip::Mobility::Nat(setting) = plan.mobility else {
        panic!("{:?}", plan.mobility)
    };
    assert_eq!(setting.location, Some("198.18.21.10".parse().unwrap()));
    // A TAP may be named; mip and nat together are refused, as is a bad nat: setting.
    let named = r#"{"receiver_url":"tcp:0.0.0.0:6000","insecure_plain_tcp":true,"net":[{"nat":true,"tap":"vm3"}]}"#;
    let ApiRequest::VmReceiveMigration(data) = parse(Endpoint::VmReceiveMigration, named).unwrap()
    else {
        panic!()
    };
    assert_eq!(data.to_plan().unwrap().devices.net.unwrap().tap, "vm3");
    for (body, field) in [
        (
            r#"{"receiver_url":"tcp:0.0.0.0:6000","insecure_plain_tcp":true,"net":[{"nat":true,"mip":true}]}"#,
            "net[0].nat",
        ),
        (
            r#"{"receiver_url":"tcp:0.0.0.0:6000","insecure_plain_tcp":true,"mobility":"nat:home=198.18.0.10/24"}"#,
            "mobility",
        ),
    ] {
        let e = parse(Endpoint::VmReceiveMigration, body).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains(&format!("`{field}`")),
            "{body}: {}",
            e.message
        );
    }
}

#[test]
fn requests_know_their_endpoint_and_bodiless_routes_need_no_body() {
    for r in super::ROUTES {
        if !r.endpoint.takes_body() {
            let req = ApiRequest::parse(r.endpoint, None).unwrap();
            assert_eq!(req.endpoint(), r.endpoint);
        } else {
            let e = ApiRequest::parse(r.endpoint, None).unwrap_err();
            assert_eq!(e.status, 411, "{}", r.path);
        }
    }
}

#[test]
fn nic_status_comes_from_the_agents_status() {
    let status = agent_proto::Status {
        active: Some(agent_proto::Nic::Virtio),
        vf: agent_proto::NicStatus {
            present: true,
            link_up: false,
            rx: 1,
            tx: 2,
            rx_errors: 3,
            tx_dropped: 4,
        },
        virtio: agent_proto::NicStatus::default(),
        switches: 7,
    };
    let v = serde_json::to_value(NicAnswer::from(status)).unwrap();
    assert_eq!(
        v,
        json!({
            "active": "virtio",
            "vf": {"present": true, "link_up": false, "rx": 1, "tx": 2, "rx_errors": 3, "tx_dropped": 4},
            "virtio": {"present": false, "link_up": false, "rx": 0, "tx": 0, "rx_errors": 0, "tx_dropped": 0},
            "switches": 7
        })
    );
    let none = NicAnswer::default();
    assert_eq!(serde_json::to_value(none).unwrap()["active"], Value::Null);
    let vf = VfStatus {
        present: true,
        link_up: true,
    };
    assert_eq!(
        serde_json::to_value(vf).unwrap(),
        json!({"present": true, "link_up": true})
    );
}
