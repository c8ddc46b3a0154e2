//! A small client for QEMU's machine protocol (QMP): one JSON object per line over a Unix
//! socket, to drive and time a stock QEMU's migration.
//!
//! QEMU greets with `{"QMP": ...}`, waits for `qmp_capabilities`, then answers each
//! `{"execute": ...}` with `{"return": ...}` or `{"error": {"class", "desc"}}`; events
//! (`{"event": ...}`) may arrive between them at any time and are kept aside. Each event
//! carries `"timestamp": {"seconds", "microseconds"}`, QEMU's wall clock (CLOCK_REALTIME)
//! when it was raised.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long one command may take to be answered.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A QMP session in command mode.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received so far, in order.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects to the QMP socket at `path` (retrying until QEMU has created it, up to
    /// `bound`) and enters command mode.
    pub fn connect(path: &Path, bound: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + bound;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("connecting to QMP at {} within {bound:?}", path.display())
                    });
                }
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("QMP at {} did not greet: {greeting}", path.display());
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("reading from QMP")?;
        if n == 0 {
            bail!("QEMU closed its QMP socket");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent bad JSON: {line:?}"))
    }

    /// Runs `command` with `arguments` and returns its `return` value; an `error` reply is an
    /// error carrying QEMU's description.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .with_context(|| format!("sending `{command}` to QMP"))?;
        loop {
            let msg = self
                .read_message()
                .with_context(|| format!("waiting for the reply to `{command}`"))?;
            if msg.get("event").is_some() {
                self.events.push(msg);
                continue;
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                bail!(
                    "QMP `{command}` failed: {} ({})",
                    err["desc"].as_str().unwrap_or("no description"),
                    err["class"].as_str().unwrap_or("no class")
                );
            }
            bail!("QMP sent neither return nor error for `{command}`: {msg}");
        }
    }

    /// Turns migration capabilities on or off (`migrate-set-capabilities`).
    pub fn set_capabilities(&mut self, caps: &[(&str, bool)]) -> Result<()> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(name, on)| json!({ "capability": name, "state": on }))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )?;
        Ok(())
    }

    /// Sets migration parameters (`migrate-set-parameters`), e.g. `{"max-bandwidth": N}`.
    pub fn set_parameters(&mut self, params: Value) -> Result<()> {
        self.execute("migrate-set-parameters", Some(params))?;
        Ok(())
    }

    /// Starts sending the guest to `uri` (`tcp:HOST:PORT`, `unix:PATH`); returns at once.
    pub fn migrate(&mut self, uri: &str) -> Result<()> {
        self.execute("migrate", Some(json!({ "uri": uri })))?;
        Ok(())
    }

    /// Makes a QEMU started with `-incoming defer` listen on `uri`.
    pub fn migrate_incoming(&mut self, uri: &str) -> Result<()> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))?;
        Ok(())
    }

    /// `query-migrate`, parsed.
    pub fn query_migrate(&mut self) -> Result<MigrationInfo> {
        Ok(MigrationInfo::from_json(
            &self.execute("query-migrate", None)?,
        ))
    }

    /// Polls `query-migrate` every `every` until the migration has completed (its final
    /// figures) or failed, or `bound` has passed.
    pub fn wait_for_migration(
        &mut self,
        every: Duration,
        bound: Duration,
    ) -> Result<MigrationInfo> {
        let deadline = Instant::now() + bound;
        let mut throttle = None;
        loop {
            let mut info = self.query_migrate()?;
            throttle = throttle.max(info.cpu_throttle_percentage);
            info.cpu_throttle_percentage = throttle;
            match info.status.as_str() {
                "completed" => return Ok(info),
                "failed" | "cancelled" => bail!(
                    "QEMU migration {}: {}",
                    info.status,
                    info.error.as_deref().unwrap_or("no reason given")
                ),
                _ => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU migration still `{}` after {bound:?} ({} bytes sent)",
                    info.status,
                    info.transferred_bytes.unwrap_or(0)
                );
            }
            std::thread::sleep(every);
        }
    }

    /// The timestamp (seconds since the epoch) of the last event `name` raised at or after
    /// `after`, polling QEMU (`query-status`, which lets queued events through) until one
    /// has come or `bound` has passed.
    pub fn wait_for_event(&mut self, name: &str, after: f64, bound: Duration) -> Result<f64> {
        let deadline = Instant::now() + bound;
        loop {
            let found = self
                .events
                .iter()
                .rev()
                .filter(|e| e["event"] == name)
                .filter_map(event_time)
                .find(|&t| t >= after);
            if let Some(t) = found {
                return Ok(t);
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU raised no {name} event within {bound:?} (events seen: {})",
                    self.events
                        .iter()
                        .filter_map(|e| e["event"].as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            self.execute("query-status", None)?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The guest's run state (`query-status`): `running`, `inmigrate`, `postmigrate`, ...
    pub fn run_state(&mut self) -> Result<String> {
        let ret = self.execute("query-status", None)?;
        ret["status"]
            .as_str()
            .map(str::to_string)
            .context("query-status without status")
    }
}

/// An event's timestamp, seconds since the epoch.
pub fn event_time(event: &Value) -> Option<f64> {
    let t = &event["timestamp"];
    Some(t["seconds"].as_u64()? as f64 + t["microseconds"].as_u64()? as f64 / 1e6)
}

/// What `query-migrate` reports (QEMU's `MigrationInfo`); absent fields are `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `device`, `completed`, `failed`, ...
    pub status: String,
    /// Whole migration, ms (`total-time`; while active, the time so far).
    pub total_time_ms: Option<u64>,
    /// The pause: guest stopped on the source until the end of the stream, ms (`downtime`).
    pub downtime_ms: Option<u64>,
    /// Set-up time before the first page left, ms (`setup-time`).
    pub setup_time_ms: Option<u64>,
    /// Bytes sent on the wire for RAM (`ram.transferred`).
    pub transferred_bytes: Option<u64>,
    /// Bytes of RAM pages sent in full (`ram.normal-bytes`).
    pub normal_bytes: Option<u64>,
    /// Pages sent as "all zero" markers (`ram.duplicate`).
    pub zero_pages: Option<u64>,
    /// Guest RAM in the migration, bytes (`ram.total`; shared RAM is left out under
    /// `x-ignore-shared`).
    pub ram_total_bytes: Option<u64>,
    /// Dirty-page passes over RAM (`ram.dirty-sync-count`).
    pub dirty_sync_count: Option<u64>,
    /// RAM still to send, bytes (`ram.remaining`).
    pub remaining_bytes: Option<u64>,
    /// QEMU's reason on failure (`error-desc`).
    pub error: Option<String>,
    /// The vCPU throttle auto-converge applies, percent (`cpu-throttle-percentage`, while
    /// active); [`Qmp::wait_for_migration`] keeps the highest it saw.
    pub cpu_throttle_percentage: Option<u64>,
}

impl MigrationInfo {
    /// Reads the fields of a `query-migrate` return value.
    pub fn from_json(v: &Value) -> MigrationInfo {
        let ram = &v["ram"];
        MigrationInfo {
            status: v["status"].as_str().unwrap_or("none").to_string(),
            total_time_ms: v["total-time"].as_u64(),
            downtime_ms: v["downtime"].as_u64(),
            setup_time_ms: v["setup-time"].as_u64(),
            transferred_bytes: ram["transferred"].as_u64(),
            normal_bytes: ram["normal-bytes"].as_u64(),
            zero_pages: ram["duplicate"].as_u64(),
            ram_total_bytes: ram["total"].as_u64(),
            dirty_sync_count: ram["dirty-sync-count"].as_u64(),
            remaining_bytes: ram["remaining"].as_u64(),
            error: v["error-desc"].as_str().map(str::to_string),
            cpu_throttle_percentage: v["cpu-throttle-percentage"].as_u64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn query_migrate_fields_are_read() {
        let v: Value = serde_json::from_str(
            r#"{"status":"completed","total-time":812,"downtime":35,"setup-time":2,
                "ram":{"transferred":4521987,"normal-bytes":4096000,"duplicate":65000,
                       "total":268566528,"dirty-sync-count":3}}"#,
        )
        .unwrap();
        let i = MigrationInfo::from_json(&v);
        assert_eq!(i.status, "completed");
        assert_eq!(i.total_time_ms, Some(812));
        assert_eq!(i.downtime_ms, Some(35));
        assert_eq!(i.transferred_bytes, Some(4_521_987));
        assert_eq!(i.ram_total_bytes, Some(268_566_528));
        assert_eq!(i.dirty_sync_count, Some(3));
        let failed = MigrationInfo::from_json(&json!({"status":"failed","error-desc":"boom"}));
        assert_eq!(failed.error.as_deref(), Some("boom"));
        assert_eq!(failed.downtime_ms, None);
    }

    /// A fake QEMU: greets, answers capabilities, sends an event, then answers as scripted.
    #[test]
    fn commands_skip_events_and_errors_carry_the_description() {
        let path = std::env::temp_dir().join(format!("roam-qmp-test-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut out = stream.try_clone().unwrap();
            let mut lines = BufReader::new(stream).lines();
            writeln!(out, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut seen = Vec::new();
            while let Some(Ok(line)) = lines.next() {
                let req: Value = serde_json::from_str(&line).unwrap();
                seen.push(req.clone());
                match req["execute"].as_str().unwrap() {
                    "qmp_capabilities" => writeln!(out, r#"{{"return": {{}}}}"#).unwrap(),
                    "query-status" => {
                        writeln!(
                            out,
                            r#"{{"event": "RESUME", "data": {{}}, "timestamp": {{"seconds": 1796638131, "microseconds": 250000}}}}"#
                        )
                        .unwrap();
                        writeln!(out, r#"{{"return": {{"status": "running"}}}}"#).unwrap();
                    }
                    _ => writeln!(
                        out,
                        r#"{{"error": {{"class": "GenericError", "desc": "no such thing"}}}}"#
                    )
                    .unwrap(),
                }
            }
            seen
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.run_state().unwrap(), "running");
        assert_eq!(qmp.events.len(), 1);
        assert_eq!(event_time(&qmp.events[0]), Some(1_796_638_131.25));
        let t = qmp
            .wait_for_event("RESUME", 1_796_638_131.0, Duration::from_secs(5))
            .unwrap();
        assert_eq!(t, 1_796_638_131.25);
        // A later bound: the next poll brings another RESUME with the same stamp, still too
        // early, until the bound runs out.
        let err = qmp
            .wait_for_event("RESUME", 1_796_638_132.0, Duration::from_millis(50))
            .unwrap_err();
        assert!(format!("{err}").contains("no RESUME event"), "{err}");
        let err = qmp.migrate("tcp:198.19.0.2:4444").unwrap_err();
        assert!(format!("{err:#}").contains("no such thing"), "{err:#}");
        drop(qmp);
        let seen = server.join().unwrap();
        let migrate = seen.iter().find(|r| r["execute"] == "migrate").unwrap();
        assert_eq!(migrate["arguments"]["uri"], "tcp:198.19.0.2:4444");
        let _ = std::fs::remove_file(&path);
    }
}
