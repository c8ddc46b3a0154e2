//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` (cargo-fuzz's layout, libFuzzer), built
//! and run on the pinned stable toolchain (docs/fuzzing.md).
//!
//! cargo-fuzz is installed from crates.io when missing. Its instrumentation flags
//! (`-Zsanitizer=address`, sanitizer coverage) are nightly-only, so the fuzz build alone runs
//! with `RUSTC_BOOTSTRAP=1`: the pinned 1.95.0 compiler accepts them, AddressSanitizer stays
//! on, and nothing else is built that way. Builds go to `<target>/fuzz`, the growing corpus
//! to `<target>/fuzz/corpus/<name>` (the committed seeds in `fuzz/seeds/<name>` are read
//! alongside), crashing inputs to `<target>/fuzz/artifacts/<name>/`.

use crate::{proc, root, target_dir};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds each target runs in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 10;
/// Longest a single input may run before libFuzzer calls it a hang (a crash).
const INPUT_TIMEOUT_S: u64 = 10;
/// Memory a target may use before libFuzzer calls it a leak or a blow-up (a crash).
const RSS_LIMIT_MB: u64 = 2048;
/// Time past `--seconds` a run may take (start-up, loading the corpus) before it is killed.
const GRACE: Duration = Duration::from_secs(120);
/// The host triple cargo-fuzz builds for.
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// A fuzz target: its name and the first line of its doc comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// As `fuzz/fuzz_targets/<name>.rs` names it.
    pub name: String,
    /// What it fuzzes.
    pub about: String,
}

/// `fuzz/` in the repository.
fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// Where builds, the corpus and crashes go.
fn work_dir() -> PathBuf {
    target_dir().join("fuzz")
}

/// Every target, sorted by name (one file per target under `fuzz/fuzz_targets/`).
pub fn targets() -> Result<Vec<Target>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".rs"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        let about = text
            .lines()
            .find_map(|l| l.strip_prefix("//! "))
            .unwrap_or("")
            .to_string();
        out.push(Target {
            name: name.to_string(),
            about,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The target called `name`, or an error listing them.
pub fn target(name: &str) -> Result<Target> {
    let all = targets()?;
    all.iter().find(|t| t.name == name).cloned().with_context(|| {
        let names: Vec<_> = all.iter().map(|t| t.name.as_str()).collect();
        format!(
            "no fuzz target `{name}`; the targets are: {} (`cargo xtask fuzz --list` says what each fuzzes)",
            names.join(", ")
        )
    })
}

/// `cargo fuzz`, installing cargo-fuzz from crates.io if it is missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new(env!("CARGO"))
        .args(["fuzz", "--version"])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if installed {
        return Ok(());
    }
    eprintln!("xtask fuzz: cargo-fuzz is missing; installing it from crates.io (a few minutes)");
    proc::run(Command::new(env!("CARGO")).current_dir(root()).args([
        "install",
        "--locked",
        "cargo-fuzz",
    ]))
    .context("installing cargo-fuzz (`cargo install --locked cargo-fuzz`)")
}

/// Builds `targets` (all when empty) with libFuzzer and AddressSanitizer.
pub fn build(targets: &[Target]) -> Result<()> {
    ensure_cargo_fuzz()?;
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root())
        .args(["fuzz", "build", "--target-dir"])
        .arg(work_dir())
        // Sixteen units build several times faster on two cores, for a few percent of speed.
        .args(["--codegen-units", "16"])
        // The sanitizer flags are nightly-only; this build alone may use them (module docs).
        .env("RUSTC_BOOTSTRAP", "1");
    if let [one] = targets {
        cmd.arg(&one.name);
    }
    eprintln!("xtask fuzz: building the fuzz targets (the first build takes several minutes)");
    proc::run(&mut cmd)
}

/// The command that runs `target` for `seconds`, reading the seeds and past crashes.
fn command(target: &Target, seconds: u64) -> Result<Command> {
    let binary = work_dir().join(TRIPLE).join("release").join(&target.name);
    if !binary.is_file() {
        bail!("{} is not built", binary.display());
    }
    let corpus = work_dir().join("corpus").join(&target.name);
    let artifacts = work_dir().join("artifacts").join(&target.name);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let mut cmd = Command::new(binary);
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg(&corpus);
    for extra in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(extra).join(&target.name);
        if dir.is_dir() {
            cmd.arg(dir);
        }
    }
    Ok(cmd)
}

/// `cargo xtask fuzz <target> --seconds N`: builds it and runs it with libFuzzer's output on
/// the terminal.
pub fn run_one(name: &str, seconds: u64) -> Result<()> {
    let target = target(name)?;
    build(std::slice::from_ref(&target))?;
    let mut cmd = command(&target, seconds)?;
    eprintln!(
        "xtask fuzz: {} for {seconds} s (corpus {}, crashes into {})",
        target.name,
        work_dir().join("corpus").join(&target.name).display(),
        work_dir().join("artifacts").join(&target.name).display()
    );
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", proc::display(&cmd)))?;
    if !status.success() {
        bail!(
            "fuzz target {} failed ({status}): the crashing input is under {}; fix the bug, \
             then keep the input in fuzz/regressions/{}/ (docs/fuzzing.md)",
            target.name,
            work_dir().join("artifacts").join(&target.name).display(),
            target.name
        );
    }
    Ok(())
}

/// What a short run of one target showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Smoke {
    /// The target.
    pub name: String,
    /// Whether it ran its time without a crash, hang or leak.
    pub ok: bool,
    /// libFuzzer's last status line (runs, coverage, corpus), or what went wrong.
    pub summary: String,
}

/// Builds every target and runs each for `seconds`, printing one line per target as it
/// finishes (libFuzzer's own output goes to a log file, named on failure).
pub fn smoke(seconds: u64) -> Result<Vec<Smoke>> {
    let all = targets()?;
    build(&[])?;
    let logs = work_dir().join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut out = Vec::new();
    for (i, target) in all.iter().enumerate() {
        eprintln!(
            "xtask fuzz: [{}/{}] {} for {seconds} s ...",
            i + 1,
            all.len(),
            target.name
        );
        let log = logs.join(format!("{}.log", target.name));
        let result = run_logged(command(target, seconds)?, &log, seconds)?;
        eprintln!(
            "xtask fuzz: {} {}: {}",
            target.name,
            if result.ok { "ok" } else { "FAILED" },
            result.summary
        );
        out.push(Smoke {
            name: target.name.clone(),
            ..result
        });
    }
    Ok(out)
}

/// Runs `cmd` with its output in `log`, killed (by its PID) if it outlasts `seconds` by more
/// than [`GRACE`].
fn run_logged(mut cmd: Command, log: &Path, seconds: u64) -> Result<Smoke> {
    let file = std::fs::File::create(log)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", proc::display(&cmd)))?;
    let deadline = Instant::now() + Duration::from_secs(seconds) + GRACE;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() > deadline {
            proc::kill(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let last_status = status_line(&text);
    Ok(match status {
        Some(s) if s.success() => Smoke {
            name: String::new(),
            ok: true,
            summary: last_status,
        },
        other => {
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Smoke {
                name: String::new(),
                ok: false,
                summary: format!(
                    "{} (log {}):\n{}",
                    other.map_or("killed after its time".to_string(), |s| s.to_string()),
                    log.display(),
                    tail.join("\n")
                ),
            }
        }
    })
}

/// libFuzzer's last status line (`#RUNS DONE cov: ... corp: ... exec/s: ...`), shortened.
fn status_line(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| {
            l.strip_prefix('#')
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map_or_else(
            || "no status line".to_string(),
            |l| l.split_whitespace().collect::<Vec<_>>().join(" "),
        )
}

/// `cargo xtask fuzz --list`.
pub fn list() -> Result<String> {
    let all = targets()?;
    let width = all.iter().map(|t| t.name.len()).max().unwrap_or(0);
    Ok(all
        .iter()
        .map(|t| format!("{:width$}  {}\n", t.name, t.about))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_listed_with_what_it_fuzzes() {
        let all = targets().unwrap();
        let names: Vec<_> = all.iter().map(|t| t.name.as_str()).collect();
        for want in [
            "migration_stream",
            "machine_state",
            "agent_protocol",
            "http_request",
            "virtio_net",
            "virtio_console",
            "ixgbevf",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(all.iter().all(|t| !t.about.is_empty()), "{all:?}");
        let text = list().unwrap();
        assert_eq!(text.lines().count(), all.len());
        assert!(target("nope").unwrap_err().to_string().contains("ixgbevf"));
        let log = "#1024\tpulse  cov: 10 ft: 20\n#4821\tDONE   cov: 12 ft: 30 corp: 5/1Kb\n\
                   ###### End of recommended dictionary. ######\nDone 4821 runs in 5 second(s)\n";
        assert_eq!(status_line(log), "#4821 DONE cov: 12 ft: 30 corp: 5/1Kb");
        let cargo = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
        for name in names {
            assert!(
                cargo.contains(&format!("name = \"{name}\"")),
                "fuzz/Cargo.toml has no [[bin]] for {name}"
            );
        }
    }
}
