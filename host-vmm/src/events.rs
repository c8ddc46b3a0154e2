//! `--event-monitor PATH`: lifecycle events as JSON, one object per line, in Cloud
//! Hypervisor's event-monitor format:
//!
//! ```text
//! {"timestamp":{"secs":0,"nanos":52341},"source":"vm","event":"booted","properties":null}
//! ```
//!
//! `timestamp` is the time since the monitor was opened (at host-vmm's start), as CH's
//! `Duration`; `properties` is an object of strings, or `null` when there are none (as
//! CH). CH pretty-prints each event over several lines; here each is one line, so a reader
//! can split on newlines. The events (source: names): `vm`: `created`, `booted`, `paused`,
//! `resumed`, `shutdown`, `deleted`; `migration`: `started`, one per phase (`preparing`,
//! `first-pass`, `dirty-pass`, `handing-over`, `paused`, `completing`), `succeeded`,
//! `rolled-back`, `cancel-requested`, `receiving`, `receive-failed`, `arrived`; `nic`:
//! `switched`; `vf`: `link-up`, `link-down`, `removed`, `added`; `vmm`: `shutdown`.
//!
//! Writing never fails the VMM: the first write error is logged, later ones are not.

use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where events go: a file, or nowhere ([`EventMonitor::none`]). Clones share the file.
#[derive(Clone, Debug, Default)]
pub struct EventMonitor {
    sink: Option<Arc<Sink>>,
}

#[derive(Debug)]
struct Sink {
    file: Mutex<File>,
    start: Instant,
    path: String,
    failed: AtomicBool,
}

/// One event as written.
#[derive(Serialize)]
struct Event<'a> {
    timestamp: Duration,
    source: &'a str,
    event: &'a str,
    properties: Option<serde_json::Map<String, serde_json::Value>>,
}

impl EventMonitor {
    /// Creates (or truncates) `path` and writes events there. A FIFO must already have a
    /// reader: writes never block the VMM (an event that does not fit is dropped).
    pub fn open(path: &Path) -> io::Result<EventMonitor> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            // A full pipe must cost an event, not stall the thread reporting it.
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                let hint = if e.raw_os_error() == Some(libc::ENXIO) {
                    " (a FIFO with no reader: start the reader first)"
                } else {
                    ""
                };
                io::Error::new(
                    e.kind(),
                    format!("--event-monitor {}: {e}{hint}", path.display()),
                )
            })?;
        Ok(EventMonitor {
            sink: Some(Arc::new(Sink {
                file: Mutex::new(file),
                start: Instant::now(),
                path: path.display().to_string(),
                failed: AtomicBool::new(false),
            })),
        })
    }

    /// A monitor that drops every event.
    pub fn none() -> EventMonitor {
        EventMonitor { sink: None }
    }

    /// Records `event` from `source` (`vm` or `vmm`) with `properties`.
    pub fn emit(&self, source: &str, event: &str, properties: &[(&str, String)]) {
        log::info!("event: {source} {event} {properties:?}");
        let Some(sink) = &self.sink else {
            return;
        };
        let properties = (!properties.is_empty()).then(|| {
            properties
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
                .collect()
        });
        let record = Event {
            timestamp: sink.start.elapsed(),
            source,
            event,
            properties,
        };
        let mut line = match serde_json::to_vec(&record) {
            Ok(line) => line,
            Err(e) => return sink.failed_once(&e),
        };
        line.push(b'\n');
        // One write per event under the lock, so lines from different threads never mix.
        let mut file = sink
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match file.write(&line) {
            Ok(n) if n == line.len() => {}
            Ok(n) => sink.failed_once(&format!("short write ({n} of {} bytes)", line.len())),
            Err(e) => sink.failed_once(&e),
        }
    }
}

impl Sink {
    fn failed_once(&self, error: &dyn std::fmt::Display) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            log::warn!(
                "event monitor {}: cannot write an event: {error}; later failures are not logged",
                self.path
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("hv-events-{tag}-{}.jsonl", std::process::id()))
    }

    #[test]
    fn each_event_is_one_json_line_in_chs_shape() {
        let path = temp("shape");
        let monitor = EventMonitor::open(&path).unwrap();
        monitor.emit("vmm", "starting", &[]);
        let clone = monitor.clone();
        clone.emit(
            "vm",
            "migration-finished",
            &[("pause_ms", "12.5".into()), ("mode", "pre-copy".into())],
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
            assert_eq!(keys.len(), 4, "{line}");
            for k in ["timestamp", "source", "event", "properties"] {
                assert!(v.get(k).is_some(), "{k} missing in {line}");
            }
            assert!(v["timestamp"]["secs"].is_u64(), "{line}");
            assert!(v["timestamp"]["nanos"].is_u64(), "{line}");
        }
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["source"], "vmm");
        assert_eq!(first["event"], "starting");
        assert!(first["properties"].is_null());
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["properties"]["pause_ms"], "12.5");
        assert_eq!(second["properties"]["mode"], "pre-copy");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn threads_never_interleave_lines() {
        let path = temp("threads");
        let monitor = EventMonitor::open(&path).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = monitor.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        m.emit("vm", "tick", &[("n", format!("{t}-{i}"))]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 400);
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn none_and_a_broken_sink_are_quiet() {
        EventMonitor::none().emit("vm", "booted", &[]);
        // /dev/full fails every write: logged once, never fatal.
        let m = EventMonitor::open(Path::new("/dev/full")).unwrap();
        m.emit("vm", "booted", &[]);
        m.emit("vm", "shutdown", &[]);
        assert!(m.sink.as_ref().unwrap().failed.load(Ordering::Relaxed));
        let e = EventMonitor::open(Path::new("/nonexistent-dir/events")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--event-monitor /nonexistent-dir/events: ")
        );
    }
}
