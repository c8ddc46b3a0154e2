//! `cargo xtask profile`: where a guest's instructions and time go, per function.
//!
//! On the development machines KVM runs nested without EPT and emulates every instruction
//! the guest executes at CPL0 (docs/kvm.md), which is all of Roam: L1's KVM reports each one
//! through the `kvm:kvm_emulate_insn` tracepoint with its RIP. Recorded with `perf`, that is
//! an exact instruction trace of the guest with a timestamp per instruction, symbolized here
//! against the image's own symbol table. Where KVM runs guest code natively (bare metal, or
//! nested with EPT) the trace is empty and this says so: `bench net`'s instruction counts
//! under QEMU TCG are the portable figure.
//!
//! Time is charged to the instruction before the next one, so it includes the exits
//! (port and MMIO I/O, page faults) that instruction caused and any time the vCPU thread was
//! not running.

use crate::net::{self, Topology, TopologyGuard};
use crate::{prereq, proc, target_dir};
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One emulated guest instruction: when (ns since the trace's clock origin) and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Timestamp in nanoseconds.
    pub ns: u64,
    /// Guest RIP.
    pub rip: u64,
}

/// The tracepoint `perf record -e` takes.
pub const TRACEPOINT: &str = "kvm:kvm_emulate_insn";

/// The instructions in `perf script` output (lines of other events are skipped).
///
/// A line reads `host-vmm 15015 [001] 48307.298090: kvm:kvm_emulate_insn: 0:10006e:0f 31
/// (prot64)`: the timestamp before the event name, then `CS base:RIP:bytes`.
pub fn parse_trace(text: &str) -> Vec<Step> {
    let marker = format!("{TRACEPOINT}: ");
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(&marker)?;
            let ts = before.trim_end().strip_suffix(':')?.rsplit(' ').next()?;
            let (secs, frac) = ts.split_once('.')?;
            let frac_ns = format!("{frac:0<9}");
            let ns = secs.parse::<u64>().ok()? * 1_000_000_000
                + frac_ns.get(..9)?.parse::<u64>().ok()?;
            let rip = after.split(':').nth(1)?;
            Some(Step {
                ns,
                rip: u64::from_str_radix(rip, 16).ok()?,
            })
        })
        .collect()
}

/// An image's functions by start address, from `nm -n -C`.
#[derive(Debug, Default)]
pub struct Symbols {
    starts: Vec<u64>,
    names: Vec<String>,
}

impl Symbols {
    /// Text symbols (`t`, `T`, `w`, `W`) of `nm -n -C` output, in address order.
    pub fn parse_nm(text: &str) -> Symbols {
        let mut symbols = Symbols::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            if let Ok(addr) = u64::from_str_radix(addr, 16) {
                symbols.starts.push(addr);
                symbols.names.push(name.to_string());
            }
        }
        symbols
    }

    /// The function `rip` falls in (the last symbol at or below it), or `?`.
    pub fn name(&self, rip: u64) -> &str {
        match self.starts.partition_point(|&s| s <= rip) {
            0 => "?",
            i => &self.names[i - 1],
        }
    }

    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}

/// What part of the trace to count.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Start at the first instruction in a function whose name contains this.
    pub from: Option<String>,
    /// Stop at the first instruction after the start in a function whose name contains this.
    pub to: Option<String>,
    /// Divide by the number of entries into functions whose name contains this (a frame
    /// received, a request handled), counted from the first entry to the last.
    pub per: Option<String>,
}

/// One function's share.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Demangled name.
    pub name: String,
    /// Instructions executed in it.
    pub instructions: u64,
    /// Time charged to it, ns.
    pub ns: u64,
}

/// The profile of a window.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Functions, most instructions first.
    pub rows: Vec<Row>,
    /// Instructions in the window.
    pub instructions: u64,
    /// Time from the window's first instruction to its end, ns.
    pub ns: u64,
    /// With [`Window::per`]: how many entries the figures are divided by.
    pub units: Option<u64>,
}

/// Counts instructions and time per function in `window` of `steps`.
pub fn profile(steps: &[Step], symbols: &Symbols, window: &Window) -> Result<Profile> {
    let names: Vec<&str> = steps.iter().map(|s| symbols.name(s.rip)).collect();
    let find = |needle: &str, from: usize| (from..names.len()).find(|&i| names[i].contains(needle));
    let mut start = 0;
    if let Some(from) = &window.from {
        start = find(from, 0)
            .with_context(|| format!("no instruction in a function matching `{from}`"))?;
    }
    let mut end = names.len().saturating_sub(1);
    if let Some(to) = &window.to {
        end = find(to, start + 1).with_context(|| {
            format!("no instruction in a function matching `{to}` after the start")
        })?;
    }
    let mut units = None;
    if let Some(per) = &window.per {
        let entries: Vec<usize> = (start.max(1)..end)
            .filter(|&i| names[i].contains(per.as_str()) && !names[i - 1].contains(per.as_str()))
            .collect();
        if entries.len() < 2 {
            bail!("fewer than two entries into a function matching `{per}` in the window");
        }
        start = entries[0];
        end = entries[entries.len() - 1];
        units = Some(entries.len() as u64 - 1);
    }
    if end <= start {
        bail!("the window holds no instruction");
    }
    let mut by_name: HashMap<&str, (u64, u64)> = HashMap::new();
    for i in start..end {
        let entry = by_name.entry(names[i]).or_default();
        entry.0 += 1;
        entry.1 += steps[i + 1].ns.saturating_sub(steps[i].ns);
    }
    let mut rows: Vec<Row> = by_name
        .into_iter()
        .map(|(name, (instructions, ns))| Row {
            name: name.to_string(),
            instructions,
            ns,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.instructions
            .cmp(&a.instructions)
            .then(a.name.cmp(&b.name))
    });
    Ok(Profile {
        rows,
        instructions: (end - start) as u64,
        ns: steps[end].ns.saturating_sub(steps[start].ns),
        units,
    })
}

/// The table `cargo xtask profile` prints: the `top` functions.
pub fn render(profile: &Profile, top: usize) -> String {
    let units = profile.units.unwrap_or(1).max(1) as f64;
    let mut out = match profile.units {
        Some(n) => format!(
            "{} instructions in {:.2} ms over {n} units: {:.0} instructions and {:.3} ms per unit\n",
            profile.instructions,
            profile.ns as f64 / 1e6,
            profile.instructions as f64 / units,
            profile.ns as f64 / 1e6 / units
        ),
        None => format!(
            "{} instructions in {:.2} ms\n",
            profile.instructions,
            profile.ns as f64 / 1e6
        ),
    };
    let per = if profile.units.is_some() {
        " per unit"
    } else {
        ""
    };
    out.push_str(&format!(
        "{:>12} {:>10}  function{per}\n",
        "instructions", "ms"
    ));
    for row in profile.rows.iter().take(top) {
        out.push_str(&format!(
            "{:>12.1} {:>10.3}  {}\n",
            row.instructions as f64 / units,
            row.ns as f64 / 1e6 / units,
            row.name
        ));
    }
    out
}

/// Debian's `perf`.
pub const PERF: prereq::Package = prereq::Package {
    name: "linux-perf",
    program: "perf",
};

/// Where the tracepoint's control files are, once tracefs is mounted.
const TRACEPOINT_DIR: &str = "/sys/kernel/tracing/events/kvm/kvm_emulate_insn";

/// How `cargo xtask profile` runs the guest.
#[derive(Clone, Debug)]
pub struct Run<'a> {
    /// The image.
    pub image: &'a Path,
    /// Its command line (after the network settings with `ping`).
    pub cmdline: &'a str,
    /// Boot on a fresh test network and ping the guest this many times, 50 ms apart.
    pub ping: Option<u32>,
    /// The guest is stopped after this long if it has not exited.
    pub seconds: u32,
    /// With `ping`: `host-vmm ctl` commands (e.g. `agent prepare`) sent one after another,
    /// 300 ms apart, once the guest's agent answers; the guest then also has a VF and an
    /// API socket.
    pub ctl: &'a [String],
}

/// Boots `run.image` under host-vmm with the instruction trace recorded; returns the
/// recording's path (target/profile/<image>.perf.data).
pub fn record(run: &Run) -> Result<PathBuf> {
    prereq::ensure_root("`cargo xtask profile` records a KVM tracepoint")?;
    prereq::ensure_kvm()?;
    prereq::ensure_packages(&[PERF, prereq::BINUTILS])?;
    if !Path::new(TRACEPOINT_DIR).exists() {
        // tracefs is not always mounted; perf needs it to find the tracepoint.
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
    if !Path::new(TRACEPOINT_DIR).exists() {
        bail!(
            "the {TRACEPOINT} tracepoint is missing ({TRACEPOINT_DIR}): is the kvm module loaded and tracefs mountable at /sys/kernel/tracing?"
        );
    }
    let dir = target_dir().join("profile");
    std::fs::create_dir_all(&dir)?;
    let stem = run.image.file_stem().unwrap_or_default().to_string_lossy();
    let data = dir.join(format!("{stem}.perf.data"));
    let perf = |mut cmd: Command| {
        cmd.args(["record", "-q", "-e", TRACEPOINT, "-o"])
            .arg(&data)
            .args(["--", "timeout", &run.seconds.to_string()])
            .arg(crate::host_vmm_path())
            .arg("run");
        cmd
    };
    match run.ping {
        None => {
            let mut cmd = perf(Command::new("perf"));
            if !run.cmdline.is_empty() {
                cmd.args(["--cmdline", run.cmdline]);
            }
            cmd.arg(run.image);
            // The guest's own exit status does not matter here, nor does timeout's 124.
            eprintln!("==> {}", proc::display(&cmd));
            cmd.status().context("cannot start perf")?;
        }
        Some(count) => {
            prereq::ensure_packages(&prereq::NET_TOOLS)?;
            let topology = TopologyGuard(Topology::unique("pf")?);
            topology.0.up()?;
            let mut cmd = perf(Topology::exec_in(&topology.0.host_ns(1), "perf"));
            let line = format!("{} {}", net::guest_cmdline(), run.cmdline);
            cmd.args([
                "--net",
                &format!("tap={}", net::TAP),
                "--cmdline",
                line.trim(),
            ]);
            let socket = dir.join(format!("{stem}.api.sock"));
            if !run.ctl.is_empty() {
                cmd.args(["--vf", &format!("tap={}", net::VF_TAP), "--api-socket"])
                    .arg(&socket);
            }
            cmd.arg(run.image);
            eprintln!("==> {}", proc::display(&cmd));
            let mut vm = cmd.spawn().context("cannot start perf")?;
            // Pings sent before the guest is up go unanswered; `-c` waits for `count` replies.
            let mut ping = Topology::exec_in(&topology.0.client_ns(), "ping");
            ping.args(["-q", "-c", &count.to_string(), "-i", "0.05", "-w"])
                .arg(run.seconds.to_string())
                .arg(net::GUEST_IP);
            let mut pinging = ping.spawn().context("cannot start ping")?;
            let sent = send_ctl(&socket, run);
            let pinged = pinging.wait().context("waiting for ping")?;
            vm.wait().context("waiting for perf")?;
            sent?;
            if !pinged.success() {
                bail!(
                    "ping got fewer than {count} replies within {} s",
                    run.seconds
                );
            }
        }
    }
    Ok(data)
}

/// Sends `run.ctl`'s commands through the API socket once the guest's agent answers.
fn send_ctl(socket: &Path, run: &Run) -> Result<()> {
    if run.ctl.is_empty() {
        return Ok(());
    }
    let ctl = |words: &str| {
        Command::new(crate::host_vmm_path())
            .arg("ctl")
            .arg(socket)
            .args(words.split_whitespace())
            .output()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(run.seconds.into());
    while !ctl("status").is_ok_and(|o| o.status.success()) {
        if std::time::Instant::now() > deadline {
            bail!("the guest's agent never answered on {}", socket.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for words in run.ctl {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = ctl(words).with_context(|| format!("host-vmm ctl {words}"))?;
        if !out.status.success() {
            bail!(
                "host-vmm ctl {words} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!(
            "ctl {words}: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// For every entry into a function matching `each`: the instructions until the first one
/// after it in a function matching `until` (say, an agent step until the network is served
/// again). In trace order.
pub fn spans(steps: &[Step], symbols: &Symbols, each: &str, until: &str) -> Vec<u64> {
    let names: Vec<&str> = steps.iter().map(|s| symbols.name(s.rip)).collect();
    let mut out = Vec::new();
    let mut i = 1;
    while i < names.len() {
        if names[i].contains(each) && !names[i - 1].contains(each) {
            match (i + 1..names.len()).find(|&j| names[j].contains(until)) {
                Some(end) => {
                    out.push((end - i) as u64);
                    i = end;
                }
                None => break,
            }
        }
        i += 1;
    }
    out
}

/// Reads a recording and the image's symbols.
pub fn load(data: &Path, image: &Path) -> Result<(Vec<Step>, Symbols)> {
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(data)
        .output()
        .context("cannot run perf script")?;
    if !script.status.success() {
        bail!(
            "perf script -i {} failed: {}",
            data.display(),
            String::from_utf8_lossy(&script.stderr)
        );
    }
    let steps = parse_trace(&String::from_utf8_lossy(&script.stdout));
    if steps.len() < 2 {
        bail!(
            "no guest instructions in the trace: this KVM runs guest code natively (bare metal, or nested with EPT), so {TRACEPOINT} never fires; `cargo xtask bench net` counts instructions under QEMU TCG instead"
        );
    }
    let nm = Command::new("nm")
        .args(["-n", "-C"])
        .arg(image)
        .output()
        .context("cannot run nm")?;
    let symbols = Symbols::parse_nm(&String::from_utf8_lossy(&nm.stdout));
    if symbols.is_empty() {
        bail!("{} has no symbol table (built stripped?)", image.display());
    }
    Ok((steps, symbols))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NM: &str = "0000000000100000 T _start\n\
                      0000000000100010 t alpha\n\
                      0000000000100020 d data\n\
                      0000000000100030 t beta::gamma\n";

    fn step(us: u64, rip: u64) -> Step {
        Step { ns: us * 1000, rip }
    }

    #[test]
    fn perf_script_lines_become_steps() {
        let text = "        host-vmm 15015 [001] 48307.298090: kvm:kvm_emulate_insn: 0:10006e:0f 31 (prot64)\n\
                    host-vmm 15015 [001] 48307.298093: kvm:kvm_pio: pio_write at 0xcf8 size 4\n\
                    host-vmm 15015 [001] 48307.2981: kvm:kvm_emulate_insn: 0:100070:48 c1 (prot64)\n";
        assert_eq!(
            parse_trace(text),
            vec![
                Step {
                    ns: 48_307_298_090_000,
                    rip: 0x10006e
                },
                Step {
                    ns: 48_307_298_100_000,
                    rip: 0x100070
                }
            ]
        );
    }

    #[test]
    fn a_rip_belongs_to_the_last_function_at_or_below_it() {
        let s = Symbols::parse_nm(NM);
        assert_eq!(s.name(0x10_0000), "_start");
        assert_eq!(s.name(0x10_0015), "alpha");
        assert_eq!(s.name(0x10_0025), "alpha", "data symbols are not functions");
        assert_eq!(s.name(0x10_0040), "beta::gamma");
        assert_eq!(s.name(0xF_FFFF), "?");
    }

    #[test]
    fn instructions_and_time_are_charged_per_function_in_the_window() {
        let s = Symbols::parse_nm(NM);
        // _start, alpha x2 (the second takes 10 us), beta, alpha, beta.
        let steps = [
            step(0, 0x10_0000),
            step(1, 0x10_0010),
            step(2, 0x10_0012),
            step(12, 0x10_0030),
            step(13, 0x10_0010),
            step(14, 0x10_0030),
        ];
        let all = profile(&steps, &s, &Window::default()).unwrap();
        assert_eq!(all.instructions, 5);
        assert_eq!(all.ns, 14_000);
        assert_eq!(all.rows[0].name, "alpha");
        assert_eq!((all.rows[0].instructions, all.rows[0].ns), (3, 12_000));

        let window = Window {
            from: Some("alpha".into()),
            to: Some("beta".into()),
            per: None,
        };
        let w = profile(&steps, &s, &window).unwrap();
        assert_eq!(
            (w.instructions, w.ns),
            (2, 11_000),
            "alpha's first run only"
        );

        let per = Window {
            per: Some("alpha".into()),
            ..Window::default()
        };
        let p = profile(&steps, &s, &per).unwrap();
        assert_eq!(
            p.units,
            Some(1),
            "two entries into alpha: one unit between them"
        );
        assert_eq!(p.instructions, 3);
        assert!(render(&p, 5).contains("per unit"));
    }

    #[test]
    fn spans_run_from_each_entry_to_the_next_instruction_in_until() {
        let s = Symbols::parse_nm(NM);
        // alpha alpha beta | _start | alpha beta
        let steps = [
            step(0, 0x10_0000),
            step(1, 0x10_0010),
            step(2, 0x10_0012),
            step(3, 0x10_0030),
            step(4, 0x10_0000),
            step(5, 0x10_0010),
            step(6, 0x10_0030),
        ];
        assert_eq!(spans(&steps, &s, "alpha", "beta"), vec![2, 1]);
        assert!(spans(&steps, &s, "beta", "nowhere").is_empty());
    }

    #[test]
    fn an_empty_window_is_an_error() {
        let s = Symbols::parse_nm(NM);
        let steps = [step(0, 0x10_0000), step(1, 0x10_0010)];
        let w = Window {
            from: Some("nowhere".into()),
            ..Window::default()
        };
        assert!(profile(&steps, &s, &w).is_err());
        let per = Window {
            per: Some("beta".into()),
            ..Window::default()
        };
        assert!(profile(&steps, &s, &per).is_err());
    }
}
