//! Running child processes: printed before they run, bounded in time, ended by PID.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Shows a command the way a shell would, for transparency.
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"') {
            line.push_str(&format!(" '{arg}'"));
        } else {
            line.push(' ');
            line.push_str(&arg);
        }
    }
    line
}

/// Prints and runs a command with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("==> {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
    if !status.success() {
        bail!("`{}` failed with {status}", display(cmd));
    }
    Ok(())
}

/// What a watched run saw.
#[derive(Debug)]
pub struct Watched {
    /// Time from spawn to the first stdout line containing the awaited text, if it came.
    pub ready: Option<Duration>,
    /// Time from spawn to process exit.
    pub exited: Duration,
    /// The process's exit status.
    pub status: ExitStatus,
    /// Everything the process printed on stdout.
    pub stdout: String,
    /// Everything the process printed on stderr.
    pub stderr: String,
}

enum Event {
    Line(Instant, String),
    StdoutClosed,
}

/// Spawns `cmd`, timestamps the first stdout line containing `ready_text`, and waits for exit.
///
/// A process still running after `timeout` is killed (by its PID, which only this function
/// holds) and reported as an error with what it printed so far.
pub fn watch(cmd: &mut Command, ready_text: &str, timeout: Duration) -> Result<Watched> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let reader = thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut buf = Vec::new();
        // Lines are read as bytes: a guest may print anything.
        while matches!(lines.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf).into_owned();
            if tx.send(Event::Line(Instant::now(), line)).is_err() {
                break;
            }
            buf.clear();
        }
        let _ = tx.send(Event::StdoutClosed);
    });
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    let deadline = start + timeout;
    let mut ready = None;
    let mut stdout = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Line(at, line)) => {
                if ready.is_none() && line.contains(ready_text) {
                    ready = Some(at - start);
                }
                stdout.push_str(&line);
            }
            Ok(Event::StdoutClosed) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill(&mut child);
                let _ = reader.join();
                let stderr = stderr_reader.join().unwrap_or_default();
                bail!(
                    "`{}` did not finish within {timeout:?}; stopped it.\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
                    display(cmd)
                );
            }
        }
    }
    let status = wait_until(&mut child, deadline)
        .with_context(|| format!("`{}` closed stdout but did not exit", display(cmd)))?;
    let exited = start.elapsed();
    let _ = reader.join();
    let stderr = stderr_reader.join().unwrap_or_default();
    Ok(Watched {
        ready,
        exited,
        status,
        stdout,
        stderr,
    })
}

/// Waits for `child` until `deadline`, killing it if it is still running then.
fn wait_until(child: &mut Child, deadline: Instant) -> Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            kill(child);
            bail!("timed out");
        }
        // Short naps keep the measured exit time within ~0.1 ms.
        thread::sleep(Duration::from_micros(100));
    }
}

/// Ends a child we started and reaps it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `cmd` with stdout on the terminal and stderr both shown and kept.
pub fn run_tee_stderr(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    eprintln!("==> {}", display(cmd));
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let _ = std::io::Write::write_all(&mut std::io::stderr(), &chunk[..n]);
                kept.extend_from_slice(&chunk[..n]);
            }
        }
    }
    let status = child.wait()?;
    Ok((status, String::from_utf8_lossy(&kept).into_owned()))
}

/// Test counts over every test binary of a run: libtest's `test result:` lines, and the
/// `skipped: TEST: REASON` lines skipped tests print (`crate::skip`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestCounts {
    /// Tests libtest counted as passed; a skipped test is among them (it returned).
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Tests that printed a skip line.
    pub skipped: u64,
}

impl TestCounts {
    /// Adds the counts of one `test result: ok. 3 passed; 0 failed; ...` line, if it is one.
    pub fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }

    /// Counts one line of the tests' stderr if it is a skip line.
    pub fn add_stderr_line(&mut self, line: &str) {
        if crate::skip::skipped_test(line).is_some() {
            self.skipped += 1;
        }
    }

    /// The closing figures: `N passed, M failed, K skipped`, a skipped test not counted as
    /// passed.
    pub fn summary(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed.saturating_sub(self.skipped),
            self.failed,
            self.skipped
        )
    }
}

/// Like [`run`], for `cargo test`: stdout and stderr are shown as they come, and the results
/// and skip lines are counted.
pub fn run_tests(cmd: &mut Command, counts: &mut TestCounts) -> Result<()> {
    eprintln!("==> {}", display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", cmd.get_program().to_string_lossy()))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    let skips = thread::spawn(move || {
        let mut seen = TestCounts::default();
        let mut lines = BufReader::new(stderr);
        let mut buf = Vec::new();
        while matches!(lines.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let line = String::from_utf8_lossy(&buf);
            eprint!("{line}");
            seen.add_stderr_line(&line);
            buf.clear();
        }
        seen.skipped
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        println!("{line}");
        counts.add_line(&line);
    }
    let status = child.wait()?;
    counts.skipped += skips.join().unwrap_or(0);
    if !status.success() {
        bail!("`{}` failed with {status}", display(cmd));
    }
    Ok(())
}

/// How long [`Background::wait_for`] lets the readers of an exited process finish its output.
const PIPE_DRAIN: Duration = Duration::from_secs(1);

/// A process left running while the caller works (a guest serving the network), killed by
/// its PID when dropped, so a failing test still cleans up.
pub struct Background {
    child: Child,
    /// The write end of the child's stdin when it was started with a lifeline.
    lifeline: Option<std::process::ChildStdin>,
    name: String,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Background {
    /// Spawns `cmd`, collecting its stdout and stderr.
    pub fn spawn(cmd: &mut Command) -> Result<Background> {
        Background::start(cmd, false)
    }

    /// Like [`Background::spawn`], with the child's stdin a pipe that only this value holds:
    /// the child sees end of file when [`Background::stop`] closes it, or when this process
    /// dies, so a child that stops on that cannot outlive us.
    pub fn spawn_with_lifeline(cmd: &mut Command) -> Result<Background> {
        Background::start(cmd, true)
    }

    fn start(cmd: &mut Command, lifeline: bool) -> Result<Background> {
        let name = display(cmd);
        let mut child = cmd
            .stdin(if lifeline {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{name}`"))?;
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut readers = Vec::new();
        let pipes: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout is piped")),
            Box::new(child.stderr.take().expect("stderr is piped")),
        ];
        for pipe in pipes {
            let output = output.clone();
            readers.push(thread::spawn(move || {
                let mut lines = BufReader::new(pipe);
                let mut buf = Vec::new();
                while matches!(lines.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                    if let Ok(mut out) = output.lock() {
                        out.push_str(&String::from_utf8_lossy(&buf));
                    }
                    buf.clear();
                }
            }));
        }
        Ok(Background {
            lifeline: child.stdin.take(),
            child,
            name,
            output,
            readers,
        })
    }

    /// Everything printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits until the output contains `text`; fails if the process exits first or time runs out.
    pub fn wait_for(&mut self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(text) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                // Its last lines may still be in the pipes: read them before judging.
                self.drain_pipes(PIPE_DRAIN);
                if self.output().contains(text) {
                    return Ok(());
                }
                bail!(
                    "`{}` exited ({status}) before printing `{text}`:\n{}",
                    self.name,
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` did not print `{text}` within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `bound` for the output readers of an exited process to reach the end of
    /// its pipes (bounded: a child it left behind may hold them open).
    fn drain_pipes(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        while !self.readers.iter().all(|r| r.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended, once it has (`None` while it runs): tells a crash or a
    /// SIGKILL from an orderly exit.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Closes the lifeline (if any) and gives the process `grace` to exit by itself, then
    /// kills it by its PID; returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.lifeline = None;
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    kill(&mut self.child);
                    return self.child.try_wait().ok().flatten();
                }
            }
        }
    }

    /// The process ID (to read /proc/<pid>/stat, for example).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Background(`{}`, PID {})", self.name, self.child.id())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        kill(&mut self.child);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that prints its line last and exits at once: found, though the readers may
    /// still be busy with the bytes before it when the exit is seen (a race seen in CI).
    #[test]
    fn wait_for_reads_the_last_lines_of_a_process_that_exited() {
        for _ in 0..20 {
            let mut cmd = Command::new("sh");
            cmd.args([
                "-c",
                "head -c 200000 /dev/zero | tr '\\0' x; echo; echo done",
            ]);
            let mut bg = Background::spawn(&mut cmd).unwrap();
            while bg.running() {
                thread::sleep(Duration::from_millis(1));
            }
            bg.wait_for("done", Duration::from_secs(5)).unwrap();
        }
        let mut bg = Background::spawn(Command::new("true").arg("quiet")).unwrap();
        let err = bg.wait_for("never", Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("exited"), "{err}");
    }

    #[test]
    fn test_result_lines_are_summed_and_skips_are_not_passes() {
        let mut c = TestCounts::default();
        c.add_line("test result: ok. 61 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.06s");
        c.add_line(
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        c.add_line("test foo ... ok");
        c.add_line("running 3 tests");
        c.add_stderr_line("skipped: boots_hello: /dev/kvm not found: load the KVM module\n");
        c.add_stderr_line("skipped: moves_kv: /dev/kvm not found: load the KVM module");
        c.add_stderr_line("     Running tests/boot.rs (target/debug/deps/boot-0123)");
        c.add_stderr_line("skipped: not a skip line");
        assert_eq!(
            c,
            TestCounts {
                passed: 63,
                failed: 1,
                skipped: 2
            }
        );
        assert_eq!(c.summary(), "61 passed, 1 failed, 2 skipped");
    }
}
