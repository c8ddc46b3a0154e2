//! host-vmm's HTTP API as a user drives it: a host-vmm started with only `--api-socket` (and
//! `--event-monitor`) in a host namespace, and stock `curl --unix-socket` for every call.

use crate::proc::Background;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long one curl call may take (a guest-agent request has 5 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long host-vmm may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One API call with curl: `method` on `/api/v1/<endpoint>` with an optional JSON body;
/// returns the HTTP status and the parsed JSON body (`Value::Null` when there is none).
pub fn curl(
    socket: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let mut cmd = Command::new("curl");
    cmd.arg("--silent")
        .arg("--show-error")
        .arg("--max-time")
        .arg(CALL_TIMEOUT.as_secs().to_string())
        .arg("--unix-socket")
        .arg(socket)
        .args(["-X", method])
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json"])
            .args(["--data-binary", &b.to_string()]);
    }
    cmd.arg(format!("http://localhost/api/v1/{endpoint}"));
    let out = cmd
        .output()
        .context("running curl (apt-get install curl)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "curl {method} {endpoint} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (body, code) = text
        .rsplit_once('\n')
        .with_context(|| format!("curl {method} {endpoint}: no status in {text:?}"))?;
    let code: u16 = code
        .trim()
        .parse()
        .with_context(|| format!("curl {method} {endpoint}: status {code:?}"))?;
    let json = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body)
            .with_context(|| format!("curl {method} {endpoint}: body is not JSON: {body}"))?
    };
    Ok((code, json))
}

/// A host-vmm serving only its API, in `netns`; killed (by PID) when dropped.
pub struct ApiVmm {
    /// The process.
    pub vm: Background,
    socket: PathBuf,
    events: PathBuf,
}

impl ApiVmm {
    /// Starts `host-vmm --api-socket ... --event-monitor ...` in `netns` (its TAPs live
    /// there); returns once the socket answers `vmm.ping`.
    pub fn start(netns: &str, tag: &str) -> Result<ApiVmm> {
        let base = std::env::temp_dir().join(format!("roam-api-{tag}-{}", std::process::id()));
        let socket = base.with_extension("sock");
        let events = base.with_extension("events");
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&events);
        let mut cmd = crate::net::Topology::exec_in(netns, crate::host_vmm_path());
        cmd.arg("--api-socket")
            .arg(&socket)
            .arg("--event-monitor")
            .arg(&events)
            .env("RUST_LOG", "info");
        let vm = Background::spawn(&mut cmd)?;
        let api = ApiVmm { vm, socket, events };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if api.socket.exists()
                && let Ok((200, _)) = api.call("GET", "vmm.ping", None)
            {
                return Ok(api);
            }
            if Instant::now() >= deadline {
                bail!(
                    "host-vmm --api-socket did not answer vmm.ping:\n{}",
                    api.vm.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// One call (see [`curl`]).
    pub fn call(&self, method: &str, endpoint: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        curl(&self.socket, method, endpoint, body)
    }

    /// A call that must succeed (2xx); returns its body.
    pub fn ok(&self, method: &str, endpoint: &str, body: Option<&Value>) -> Result<Value> {
        let (code, json) = self.call(method, endpoint, body)?;
        if !(200..300).contains(&code) {
            bail!("{method} {endpoint}: HTTP {code}: {json}");
        }
        Ok(json)
    }

    /// `vm.info`'s state.
    pub fn state(&self) -> Result<String> {
        let info = self.ok("GET", "vm.info", None)?;
        Ok(info["state"].as_str().unwrap_or_default().to_owned())
    }

    /// Polls `vm.migration-progress` every 20 ms until the move ends or `bound`; returns
    /// the last answer and every distinct phase seen.
    pub fn wait_migration(&self, bound: Duration) -> Result<(Value, Vec<String>)> {
        let deadline = Instant::now() + bound;
        let mut phases: Vec<String> = Vec::new();
        loop {
            let p = self.ok("GET", "vm.migration-progress", None)?;
            if let Some(phase) = p["phase"].as_str()
                && phases.last().map(String::as_str) != Some(phase)
            {
                phases.push(phase.to_owned());
            }
            if p["state"] != "running" && p["state"] != "none" {
                return Ok((p, phases));
            }
            if Instant::now() >= deadline {
                bail!("the migration did not end within {bound:?}: {p}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The events written so far, one JSON object each.
    pub fn events(&self) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.events).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("event line {l:?}")))
            .collect()
    }

    /// Asks `vmm.shutdown` and waits (bounded) for the process to exit; returns its status.
    pub fn shutdown(&mut self) -> Result<std::process::ExitStatus> {
        self.ok("PUT", "vmm.shutdown", None)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.vm.exit_status() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "host-vmm did not exit after vmm.shutdown:\n{}",
            self.vm.output()
        )
    }
}

impl Drop for ApiVmm {
    fn drop(&mut self) {
        // The Background kills the process; the files are ours.
        let _ = std::fs::remove_file(&self.events);
    }
}
