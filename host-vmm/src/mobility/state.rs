//! `--state FILE`: the binding list and the Identification high-water marks on disk, so a
//! restarted home agent keeps every binding and still refuses replayed registrations.
//!
//! JSON, one object: `{"version":1,"bindings":[...],"identifications":[...]}`; deadlines
//! are Unix milliseconds. Written whole on every change to `FILE.tmp`, flushed to disk, then
//! renamed over `FILE`: a crash leaves the old or the new file, never half of one.

use super::binding::{Binding, BindingList};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The layout written; a file of another version is refused.
pub const STATE_VERSION: u32 = 1;

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing it failed.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        error: io::Error,
    },
    /// It is not a state file of this version.
    #[error("{}: not a home-agent state file: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
struct File1 {
    version: u32,
    bindings: Vec<BindingRecord>,
    identifications: Vec<MarkRecord>,
}

#[derive(Serialize, Deserialize)]
struct BindingRecord {
    home: Ipv4Addr,
    care_of: Ipv4Addr,
    lifetime: u16,
    expires_unix_ms: u64,
    identification: u64,
    spi: u32,
    reverse_tunnel: bool,
}

#[derive(Serialize, Deserialize)]
struct MarkRecord {
    home: Ipv4Addr,
    identification: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes `list` to `path` atomically (temp file, fsync, rename, fsync of the directory).
pub fn save(list: &BindingList, path: &Path) -> Result<(), StateError> {
    let file = File1 {
        version: STATE_VERSION,
        bindings: list
            .bindings()
            .map(|b| BindingRecord {
                home: b.home,
                care_of: b.care_of,
                lifetime: b.lifetime,
                expires_unix_ms: unix_ms(b.expires),
                identification: b.identification,
                spi: b.spi,
                reverse_tunnel: b.reverse,
            })
            .collect(),
        identifications: list
            .identifications()
            .map(|(home, identification)| MarkRecord {
                home,
                identification,
            })
            .collect(),
    };
    let mut text = serde_json::to_vec_pretty(&file).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io_error = |error| StateError::Io {
        path: path.to_owned(),
        error,
    };
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself survives a crash once the directory is on disk too.
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error(e)
    })
}

/// Reads `path` as it was written, expired bindings included (the caller removes what they
/// left configured). A missing file is an empty list: the first start.
pub fn load(path: &Path) -> Result<BindingList, StateError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BindingList::new()),
        Err(error) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                error,
            });
        }
    };
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let file: File1 = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if file.version != STATE_VERSION {
        return Err(corrupt(format!(
            "version {} (this home agent reads {STATE_VERSION})",
            file.version
        )));
    }
    let mut list = BindingList::new();
    for mark in file.identifications {
        list.accept_identification(mark.home, mark.identification);
    }
    for b in file.bindings {
        list.restore(Binding {
            home: b.home,
            care_of: b.care_of,
            lifetime: b.lifetime,
            expires: SystemTime::UNIX_EPOCH + Duration::from_millis(b.expires_unix_ms),
            identification: b.identification,
            spi: b.spi,
            reverse: b.reverse_tunnel,
        });
    }
    Ok(list)
}

/// The bindings of `list` still alive at `now`, one line each, for `home-agent status`:
/// `HOME care-of=COA lifetime-left=Ns identification=0x... spi=N reverse=yes|no`.
pub fn status_lines(list: &BindingList, now: SystemTime) -> Vec<String> {
    list.bindings()
        .filter(|b| b.expires > now)
        .map(|b| {
            format!(
                "{} care-of={} lifetime-left={}s identification={:#018x} spi={} reverse={}",
                b.home,
                b.care_of,
                b.left(now).as_secs(),
                b.identification,
                b.spi,
                if b.reverse { "yes" } else { "no" }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hv-ha-state-{tag}-{}.json", std::process::id()))
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn sample() -> BindingList {
        let mut list = BindingList::new();
        list.bind(Binding {
            home: Ipv4Addr::new(198, 18, 0, 10),
            care_of: Ipv4Addr::new(198, 18, 21, 2),
            lifetime: 300,
            expires: at(300) + Duration::from_millis(250),
            identification: 0xE000_0000_1234_5678,
            spi: 256,
            reverse: true,
        });
        // A home address with no binding left still has its mark.
        list.accept_identification(Ipv4Addr::new(198, 18, 0, 11), u64::MAX - 1);
        list
    }

    #[test]
    fn a_saved_list_reads_back_the_same() {
        let path = temp("roundtrip");
        let list = sample();
        save(&list, &path).unwrap();
        assert_eq!(load(&path).unwrap(), list);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        assert!(
            !PathBuf::from(tmp).exists(),
            "the temp file is renamed away"
        );
        // Saving again replaces the file whole.
        let mut changed = list.clone();
        changed.expire(at(1000));
        save(&changed, &path).unwrap();
        assert_eq!(load(&path).unwrap(), changed);
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_missing_file_is_an_empty_list_and_a_bad_one_is_refused() {
        let path = temp("missing");
        let _ = fs::remove_file(&path);
        assert_eq!(load(&path).unwrap(), BindingList::new());
        fs::write(&path, b"{\"version\":1}").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("not a home-agent state file"), "{e}");
        fs::write(
            &path,
            b"{\"version\":9,\"bindings\":[],\"identifications\":[]}",
        )
        .unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn status_shows_live_bindings_only() {
        let list = sample();
        assert_eq!(
            status_lines(&list, at(100)),
            vec![
                "198.18.0.10 care-of=198.18.21.2 lifetime-left=200s \
                 identification=0xe000000012345678 spi=256 reverse=yes"
                    .to_string()
            ]
        );
        assert!(status_lines(&list, at(301)).is_empty());
    }
}
