//! `cargo xtask`: the only build, run, benchmark and test entry point of Roam.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::Command;
use xtask::artifacts::{self, GUEST_PROFILE, GUEST_TARGET};
use xtask::net::{self, Site, Topology, Wan};
use xtask::vm::{Boot, Vmm};
use xtask::{bench, image_path, prereq, proc, root, skip};

/// Roam's build, run, benchmark and test commands.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build guest images into target/images/<name>.elf.
    ///
    /// A crate under images/ is either a `no_std` image (it links the `kernel` crate) or a std
    /// program (`[package.metadata.roam]` with `std = true` in its Cargo.toml): an ordinary
    /// Rust program, built with std for Hermit's OS (-Zbuild-std) and linked with Roam's
    /// kernel. `--path` builds a std program that lives anywhere.
    Image {
        /// Images to build (directories under images/).
        #[arg(required_unless_present_any = ["all", "path"], conflicts_with_all = ["all", "path"])]
        names: Vec<String>,
        /// Build every image.
        #[arg(long, conflicts_with = "path")]
        all: bool,
        /// A std program's crate directory (with its Cargo.toml and one binary), anywhere;
        /// the image is target/images/<binary>.elf.
        #[arg(long, value_name = "DIR")]
        path: Option<std::path::PathBuf>,
    },
    /// Build an image and boot it under host-vmm; exits with the guest's status.
    Run {
        /// The image to boot.
        name: String,
        /// Wire the guest into the test network (`cargo xtask net up`, done if needed): host-vmm
        /// runs in the host namespace on its TAP, and the guest gets the test address.
        #[arg(long)]
        net: bool,
        /// Kernel command line (appended to the network settings with --net).
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Extra host-vmm `run` flags, after `--` (e.g. `-- --mem 256M`).
        #[arg(last = true)]
        host_vmm_args: Vec<String>,
    },
    /// Create or remove the test network (namespaces, bridges, veths, TAPs; 198.18.0.0/15).
    Net {
        #[command(subcommand)]
        action: NetCmd,
        /// Name prefix of the namespaces.
        #[arg(long, default_value = "roam", global = true)]
        prefix: String,
    },
    /// Build an image and boot it under stock QEMU (-M microvm, PVH); exits with the guest's status.
    Qemu {
        /// The image to boot.
        name: String,
        /// Guest RAM in MiB.
        #[arg(long, default_value_t = 128)]
        mem: u32,
        /// Kernel command line (e.g. `log=info`).
        #[arg(long, default_value = "")]
        cmdline: String,
    },
    /// Where a guest's instructions and time go, per function: boots the image under
    /// host-vmm with nested KVM's instruction trace recorded by perf (the `kvm:kvm_emulate_insn`
    /// tracepoint; every CPL0 guest instruction on these machines) and symbolizes it. Needs
    /// root. docs/measuring.md says how to read it.
    Profile {
        /// The image to boot.
        name: String,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Boot on a fresh test network and ping the guest N times, 50 ms apart, while tracing.
        #[arg(long, value_name = "N")]
        ping: Option<u32>,
        /// Stop the guest after this many seconds if it has not exited.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// With --ping: a `host-vmm ctl` command to send once the guest's agent answers
        /// (e.g. "agent prepare"), repeatable, 300 ms apart; the guest gets a VF and an API
        /// socket.
        #[arg(long, value_name = "WORDS", requires = "ping")]
        ctl: Vec<String>,
        /// Analyse this recording instead of booting the image again.
        #[arg(long, value_name = "FILE")]
        data: Option<std::path::PathBuf>,
        /// Also list, for every entry into a function whose name contains this, the
        /// instructions until the next one in --until's (e.g. an agent step until the
        /// network is served again).
        #[arg(long, value_name = "NAME", requires = "until")]
        each: Option<String>,
        /// See --each.
        #[arg(long, value_name = "NAME", requires = "each")]
        until: Option<String>,
        /// Count from the first instruction in a function whose name contains this.
        #[arg(long, value_name = "NAME")]
        from: Option<String>,
        /// Count up to the first instruction after that in a function whose name contains this.
        #[arg(long, value_name = "NAME")]
        to: Option<String>,
        /// Per entry into a function whose name contains this (a frame, a request): figures
        /// between the first and last entry, divided by their number.
        #[arg(long, value_name = "NAME")]
        per: Option<String>,
        /// Functions to list.
        #[arg(long, default_value_t = 30)]
        top: usize,
    },
    /// Benchmarks, printed as tables (or JSON) with ratios against a peer run.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
    /// The demo: build host-vmm and netecho, start two host-vmm on two hosts of a test network,
    /// move a pinged guest between them (pre-copy, then zero-copy), print pause and downtime.
    Demo,
    /// Run a fuzz target (fuzz/, libFuzzer with AddressSanitizer), installing cargo-fuzz if
    /// needed; crashing inputs go to target/fuzz/artifacts/<target>/ (docs/fuzzing.md).
    Fuzz {
        /// The target (see --list).
        #[arg(required_unless_present_any = ["list", "all"], conflicts_with_all = ["list", "all"])]
        target: Option<String>,
        /// How long to run it (each target with --all).
        #[arg(long, default_value_t = 300)]
        seconds: u64,
        /// List the targets and what each fuzzes.
        #[arg(long, conflicts_with = "all")]
        list: bool,
        /// Run every target in turn, one line each (what `cargo xtask test` does for 10 s).
        #[arg(long)]
        all: bool,
    },
    /// Move kv back and forth between two host-vmm (pre-copy and zero-copy in turn) with a kv
    /// client checking every reply; report host-vmm's memory and open fds every 10 moves and
    /// fail if a move fails or either keeps growing (docs/measuring.md).
    Soak {
        /// Number of moves.
        #[arg(long, default_value_t = 100)]
        moves: u32,
        /// Print one JSON object: moves, failures, rss_growth_kib, fd_growth.
        #[arg(long)]
        json: bool,
    },
    /// Everything CI runs: formatting, lints, unit tests, then the KVM and QEMU integration tests.
    ///
    /// Needs root and a usable /dev/kvm, and stops at once when either is missing. The last
    /// line counts every test: `xtask: N passed, M failed, K skipped`.
    Test {
        /// For a machine without KVM: run what can run and skip (and count) the tests that
        /// need KVM, each printing `skipped: TEST: REASON`. Without this flag a missing or
        /// unusable /dev/kvm fails the run, and every test that needs KVM fails.
        #[arg(long)]
        no_kvm: bool,
    },
    /// Make a certificate directory for moves over TCP (mutual TLS): a CA, and signed by it
    /// a server certificate (the destination's, `host-vmm receive --tls-dir DIR`) and a
    /// client certificate (the source's, `host-vmm ctl ... migrate tcp:... --tls-dir DIR`),
    /// in the layout of Cloud Hypervisor and QEMU: ca-cert.pem, server-cert.pem,
    /// server-key.pem, client-cert.pem, client-key.pem (keys 0600). Copy the directory to
    /// both hosts; keep the CA's key out of it (it is not written at all).
    Certs {
        /// Where to write the five files (created if missing; existing files replaced).
        dir: std::path::PathBuf,
        /// An address the destination receives on (an IP SAN of the server certificate;
        /// the source checks the address of `tcp:ADDR:PORT` against these). Repeat for
        /// more; a name instead of an address becomes a DNS SAN.
        #[arg(long = "ip", value_name = "IP", default_values_t = ["127.0.0.1".to_string()])]
        ips: Vec<String>,
    },
    /// Formatting and clippy for host and guest crates.
    Lint,
}

#[derive(Subcommand)]
enum NetCmd {
    /// Create it (idempotent): client, switch and host namespaces, as drawn in xtask/src/net.rs;
    /// with --wan the wide-area topology (home agent, WAN router, sites) instead.
    #[command(after_long_help = net::wan::HELP)]
    Up {
        /// The wide-area topology instead (see the table below).
        #[arg(long)]
        wan: bool,
        /// One-way delay of the WAN router in ms, applied to every packet it forwards by a
        /// user-space delay line (0: plain forwarding).
        #[arg(long, requires = "wan", default_value_t = 0,
              value_parser = clap::value_parser!(u32).range(0..=i64::from(net::wan::MAX_DELAY_MS)))]
        wan_delay_ms: u32,
    },
    /// Remove it (idempotent); with --wan the wide-area topology and its delay line.
    #[command(after_long_help = net::wan::HELP)]
    Down {
        /// The wide-area topology (see the table below).
        #[arg(long)]
        wan: bool,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// host-vmm's HTTP API: vmm.ping and vm.info latency (median, p99 of 1,000 requests on
    /// one keep-alive connection; vmm.ping through curl too) and the pause of moves driven
    /// through the API against moves by the CLI path, same run.
    Api {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Wide-area moves: restore time (destination resume -> first reply at the
    /// correspondent, pinged every 2 ms), longest ping gap, lost pings and a kv session's
    /// connection, for the same-subnet move (l2), Mobile IPv4 (mip) and network paging
    /// (nat) at a WAN one-way delay of 0, 5 and 25 ms; goals: restore <= one WAN round trip
    /// + 5 ms, gap <= l2's + one round trip, nothing lost.
    Widearea {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Process spawn -> app ready and -> exit, host-vmm vs QEMU microvm, same hello ELF;
    /// then network-ready: spawn -> first ping reply from netecho (pinged every 2 ms) and
    /// the guest's own network_init time, host-vmm vs QEMU microvm (virtio-net on
    /// virtio-mmio), same ELF; then what std costs: spawn -> app ready of std-hello against hello
    /// on both VMMs, taking turns. Needs root (test network namespaces).
    Boot {
        /// Boots per VMM.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Ping RTT (100 per run) and iperf3 throughput both ways, host-vmm vs QEMU microvm
    /// (virtio-net-device on virtio-mmio, no vhost), same image, each on its own test network; the VMMs take
    /// turns run by run; min/median/max and the ratio of the medians. Then the guest's
    /// instructions per ICMP echo and per received TCP segment, counted in one boot under
    /// QEMU TCG with `-icount shift=0`. Then what std costs:
    /// ping RTT and 1 MiB TCP echo throughput of std-echo against netecho under host-vmm,
    /// taking turns, `--runs` each.
    Net {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Runs per VMM (each a fresh boot), alternating host-vmm and QEMU.
        #[arg(long, default_value_t = bench::net::DEFAULT_RUNS)]
        runs: u32,
    },
    /// Switching between the emulated 82599 VF and virtio-net under load: per switch, lost
    /// pings and the longest reply gap (ping -D every 10 ms), iperf3's 100 ms throughput
    /// around it, and VF vs virtio-net throughput in the same run.
    Switch {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Switches per phase, about 1 s apart.
        #[arg(long, default_value_t = bench::switch::DEFAULT_SWITCHES)]
        switches: u32,
    },
    /// Live migration: pause (source vCPU stop -> destination running, one definition for
    /// both VMMs), network gap (ping -D every 10 ms), total time and bytes per move, pre-copy
    /// and zero-copy at 64 MiB, 256 MiB and 1 GiB, stock QEMU as the peer; min/median/max per
    /// case; writes an SVG of ping RTT around each case's first move. Then the memtouch
    /// cases: one pre-copy move of a guest with 256 MiB or 1 GiB populated that dirties
    /// 32 MiB/s over a migration link capped at 200 Mbit/s, where plain pre-copy cannot
    /// converge: host-vmm (auto-converge), QEMU plain, QEMU with auto-converge.
    Migrate {
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Moves per case (back and forth); the table gives min/median/max.
        #[arg(long, default_value_t = bench::migrate::DEFAULT_MOVES)]
        moves: u32,
        /// Only these guest sizes in MiB (of 64, 256, 1024), comma-separated; for the memtouch
        /// cases, the populated sizes (of 256, 1024).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<u32>,
        /// Only the memtouch cases (pre-copy of a guest dirtying memory under load).
        #[arg(long, conflicts_with = "no_memtouch")]
        memtouch_only: bool,
        /// Without the memtouch cases.
        #[arg(long)]
        no_memtouch: bool,
        /// Where to write the SVG plot.
        #[arg(long, default_value = "target/bench/migrate-ping.svg")]
        svg: std::path::PathBuf,
        /// Instead of the VMM comparison, what mutual TLS costs: a pre-copy move of a
        /// 1 GiB guest with 512 MiB populated over TLS and over plain TCP, alternating,
        /// --moves each: throughput (first pass and overall), pause, TLS / plain.
        #[arg(long)]
        tls: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Image {
            path: Some(dir), ..
        } => xtask::stdimage::build(&dir.join("Cargo.toml")).map(|_| ()),
        Cmd::Image { names, .. } => artifacts::build_images(&names),
        Cmd::Run {
            name,
            net,
            cmdline,
            host_vmm_args,
        } => {
            prereq::ensure_kvm()?;
            artifacts::build_host_vmm()?;
            artifacts::build_images(std::slice::from_ref(&name))?;
            let mut cmd = if net {
                prereq::ensure_packages(&prereq::NET_TOOLS)?;
                let topology = Topology::named("roam")?.verbose();
                topology.up()?;
                let mut cmd = Topology::exec_in(&topology.host_ns(1), xtask::host_vmm_path());
                cmd.args(["run", "--net", &format!("tap={}", net::TAP)]);
                let line = format!("{} {cmdline}", net::guest_cmdline());
                cmd.args(["--cmdline", line.trim()]);
                eprintln!(
                    "guest {} on the test network; reach it from the client namespace, e.g.\n  ip netns exec {} ping {}",
                    net::GUEST_IP,
                    topology.client_ns(),
                    net::GUEST_IP
                );
                cmd
            } else {
                let mut cmd = Command::new(xtask::host_vmm_path());
                cmd.arg("run");
                if !cmdline.is_empty() {
                    cmd.args(["--cmdline", &cmdline]);
                }
                cmd
            };
            cmd.arg(image_path(&name)).args(&host_vmm_args);
            exit_with(&mut cmd, Vmm::HostVmm)
        }
        Cmd::Net { action, prefix } => {
            prereq::ensure_packages(&prereq::NET_TOOLS)?;
            let topology = Topology::named(&prefix)?.verbose();
            match action {
                NetCmd::Up {
                    wan: true,
                    wan_delay_ms,
                } => wan_up(&prefix, wan_delay_ms),
                NetCmd::Down { wan: true } => {
                    Wan::named(&prefix)?.verbose().down()?;
                    println!("wide-area test network `{prefix}` is down");
                    Ok(())
                }
                NetCmd::Up { .. } => {
                    topology.up()?;
                    println!(
                        "test network `{prefix}` is up: client {} in namespace {}, gateway {} in {}, guests attach to {} (virtio-net) and {} (VF) in {} and use {}",
                        net::CLIENT_IP,
                        topology.client_ns(),
                        net::GATEWAY_IP,
                        topology.switch_ns(),
                        net::TAP,
                        net::VF_TAP,
                        topology.host_ns(1),
                        net::guest_cmdline()
                    );
                    Ok(())
                }
                NetCmd::Down { .. } => {
                    if Wan::named(&prefix)?.router_ns_exists() {
                        anyhow::bail!(
                            "`{prefix}` is a wide-area test network: take it down with `cargo xtask net down --wan --prefix {prefix}`"
                        );
                    }
                    topology.down()?;
                    println!("test network `{prefix}` is down");
                    Ok(())
                }
            }
        }
        Cmd::Profile {
            name,
            cmdline,
            ping,
            seconds,
            ctl,
            data,
            each,
            until,
            from,
            to,
            per,
            top,
        } => {
            use xtask::profile;
            if seconds == 0 {
                anyhow::bail!("--seconds must be at least 1");
            }
            let image = image_path(&name);
            let data = match data {
                Some(data) => data,
                None => {
                    artifacts::build_host_vmm()?;
                    artifacts::build_images(std::slice::from_ref(&name))?;
                    profile::record(&profile::Run {
                        image: &image,
                        cmdline: &cmdline,
                        ping,
                        seconds,
                        ctl: &ctl,
                    })?
                }
            };
            let (steps, symbols) = profile::load(&data, &image)?;
            let window = profile::Window { from, to, per };
            let p = profile::profile(&steps, &symbols, &window)?;
            print!("{}", profile::render(&p, top));
            if let (Some(each), Some(until)) = (each, until) {
                let spans = profile::spans(&steps, &symbols, &each, &until);
                println!(
                    "{} entries into `{each}`, instructions until `{until}`: {:?} (longest {})",
                    spans.len(),
                    spans,
                    spans.iter().max().copied().unwrap_or(0)
                );
            }
            eprintln!("recording: {}", data.display());
            Ok(())
        }
        Cmd::Qemu { name, mem, cmdline } => {
            prereq::ensure_kvm()?;
            prereq::ensure_packages(&[prereq::QEMU])?;
            artifacts::build_images(std::slice::from_ref(&name))?;
            let image = image_path(&name);
            let boot = Boot {
                mem_mib: mem,
                cmdline: &cmdline,
                ..Boot::new(&image)
            };
            exit_with(&mut Vmm::QemuMicrovm.command(&boot), Vmm::QemuMicrovm)
        }
        Cmd::Bench {
            which: BenchCmd::Boot { runs, json },
        } => {
            prepare_boot_bench()?;
            print_boot_bench(runs, json)
        }
        Cmd::Bench {
            which: BenchCmd::Net { json, runs },
        } => {
            prereq::ensure_kvm()?;
            let mut packages = vec![prereq::QEMU];
            packages.extend(prereq::NET_TOOLS);
            prereq::ensure_packages(&packages)?;
            artifacts::build_host_vmm()?;
            let mut images = vec![bench::net::IMAGE.to_string()];
            images.extend(bench::stdapps::NET_IMAGES.map(String::from));
            artifacts::build_images(&images)?;
            artifacts::build_netprobe()?;
            let figures = bench::net::run(&image_path(bench::net::IMAGE), runs)?;
            let instructions = bench::net::instructions(&image_path(bench::net::IMAGE))?;
            let std_images = bench::stdapps::NET_IMAGES.map(image_path);
            let std = bench::stdapps::net(
                [&std_images[0], &std_images[1]],
                &xtask::netprobe_path(),
                runs,
            )?;
            if json {
                let net = bench::net::json(&figures, &instructions);
                let net = net.strip_suffix('}').unwrap_or(&net);
                println!("{net},{}}}", bench::stdapps::net_json(&std));
            } else {
                print!("{}", bench::net::table(&figures, &instructions));
                print!("{}", bench::stdapps::net_table(&std, runs));
            }
            Ok(())
        }
        Cmd::Bench {
            which: BenchCmd::Widearea { json },
        } => {
            prereq::ensure_kvm()?;
            prereq::ensure_packages(&prereq::NET_TOOLS)?;
            artifacts::build_host_vmm()?;
            artifacts::build_delayline()?;
            artifacts::build_netprobe()?;
            artifacts::build_images(&[bench::widearea::IMAGE.to_string()])?;
            let cases = bench::widearea::run(&image_path(bench::widearea::IMAGE))?;
            if json {
                println!("{}", bench::widearea::json(&cases));
            } else {
                print!("{}", bench::widearea::table(&cases));
            }
            Ok(())
        }
        Cmd::Bench {
            which: BenchCmd::Api { json },
        } => {
            prereq::ensure_kvm()?;
            prereq::ensure_packages(&prereq::NET_TOOLS)?;
            artifacts::build_host_vmm()?;
            artifacts::build_images(&[bench::api::IMAGE.to_string()])?;
            let figures = bench::api::run(&image_path(bench::api::IMAGE))?;
            if json {
                println!("{}", bench::api::json(&figures));
            } else {
                print!("{}", bench::api::table(&figures));
            }
            Ok(())
        }
        Cmd::Bench {
            which: BenchCmd::Switch { json, switches },
        } => {
            prereq::ensure_kvm()?;
            prereq::ensure_packages(&prereq::NET_TOOLS)?;
            artifacts::build_host_vmm()?;
            artifacts::build_images(&[bench::switch::IMAGE.to_string()])?;
            let figures = bench::switch::run(&image_path(bench::switch::IMAGE), switches)?;
            if json {
                println!("{}", bench::switch::json(&figures));
            } else {
                print!("{}", bench::switch::table(&figures));
            }
            Ok(())
        }
        Cmd::Bench {
            which:
                BenchCmd::Migrate {
                    json,
                    moves,
                    sizes,
                    svg,
                    tls: false,
                    memtouch_only,
                    no_memtouch,
                },
        } => bench_migrate(json, moves, &sizes, &svg, memtouch_only, no_memtouch),
        Cmd::Bench {
            which:
                BenchCmd::Migrate {
                    json,
                    moves,
                    tls: true,
                    ..
                },
        } => bench_migrate_tls(json, moves),
        Cmd::Demo => demo(),
        Cmd::Fuzz { list: true, .. } => {
            print!("{}", xtask::fuzz::list()?);
            Ok(())
        }
        Cmd::Fuzz {
            all: true, seconds, ..
        } => {
            let mut counts = proc::TestCounts::default();
            let result = fuzz_smoke(&mut counts, seconds);
            println!("xtask fuzz: {}", counts.summary());
            result
        }
        Cmd::Fuzz {
            target, seconds, ..
        } => xtask::fuzz::run_one(target.as_deref().unwrap_or_default(), seconds),
        Cmd::Soak { moves, json } => soak(moves, json),
        Cmd::Test { no_kvm } => test(no_kvm),
        Cmd::Certs { dir, ips } => {
            xtask::certs::make(&dir, &ips)?;
            println!(
                "xtask: certificates for {} in {}",
                ips.join(", "),
                dir.display()
            );
            Ok(())
        }
        Cmd::Lint => lint(),
    }
}

/// `cargo xtask net up --wan`: builds the wide-area topology and leaves it up, its delay line
/// (if any) running detached until `net down --wan`.
fn wan_up(prefix: &str, delay_ms: u32) -> Result<()> {
    if delay_ms > 0 {
        // Always, so an edited delay line is rebuilt; cheap when it is up to date.
        artifacts::build_delayline()?;
    }
    let wan = Wan::named(prefix)?
        .with_delay_ms(delay_ms)
        .verbose()
        .keep()
        .up()?;
    println!(
        "wide-area test network `{prefix}` is up: correspondent {} in {}, home agent {} (home link) / {} (WAN) in {}, sites A {} in {} and B {} in {}, home host {} with {} and {} ({}), WAN delay {delay_ms} ms one way{}",
        net::wan::CN_IP,
        wan.correspondent_ns(),
        net::wan::HA_HOME_IP,
        net::wan::HA_WAN_IP,
        wan.home_agent_ns(),
        Site::A.care_of(),
        wan.ns(Site::A),
        Site::B.care_of(),
        wan.ns(Site::B),
        wan.home_host_ns(),
        net::TAP,
        net::VF_TAP,
        net::guest_cmdline(),
        match (wan.delayline_pid(), wan.delayline_log()) {
            (Some(pid), Some(log)) => format!(" (delay line PID {pid}, log {})", log.display()),
            _ => String::new(),
        }
    );
    Ok(())
}

/// `cargo xtask bench migrate`.
fn bench_migrate(
    json: bool,
    moves: u32,
    sizes: &[u32],
    svg: &std::path::Path,
    memtouch_only: bool,
    no_memtouch: bool,
) -> Result<()> {
    use bench::migrate_load;
    prereq::ensure_kvm()?;
    let mut packages = vec![prereq::QEMU];
    packages.extend(prereq::NET_TOOLS);
    prereq::ensure_packages(&packages)?;
    // host-vmm's Mover runs the release build, like every other bench.
    artifacts::build_host_vmm()?;
    artifacts::build_images(&[
        bench::migrate::IMAGE.to_string(),
        migrate_load::IMAGE.to_string(),
    ])?;
    let figures = if memtouch_only {
        Vec::new()
    } else {
        bench::migrate::run(&image_path(bench::migrate::IMAGE), moves, sizes)?
    };
    // --sizes picks the memtouch cases by what they populate; sizes of none skip them all.
    let load_sizes: Vec<u32> = sizes
        .iter()
        .copied()
        .filter(|s| migrate_load::POPULATED_MIB.contains(s))
        .collect();
    let load = if no_memtouch || (!sizes.is_empty() && load_sizes.is_empty()) {
        Vec::new()
    } else {
        migrate_load::run(&image_path(migrate_load::IMAGE), &load_sizes)?
    };
    let svg = root().join(svg);
    if !figures.is_empty() {
        if let Some(dir) = svg.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&svg, bench::migrate::svg(&figures))?;
    }
    if json {
        let mut v: serde_json::Value =
            serde_json::from_str(&bench::migrate::json(&figures, moves))?;
        v["memtouch"] = migrate_load::json(&load);
        println!("{v}");
    } else {
        if !figures.is_empty() {
            print!("{}", bench::migrate::table(&figures, moves, Some(&svg)));
        }
        if !load.is_empty() {
            print!("{}", migrate_load::table(&load));
        }
    }
    Ok(())
}

fn bench_migrate_tls(json: bool, moves: u32) -> Result<()> {
    prereq::ensure_kvm()?;
    prereq::ensure_packages(&prereq::NET_TOOLS)?;
    artifacts::build_host_vmm()?;
    artifacts::build_images(&[bench::migrate::IMAGE.to_string()])?;
    let figures = bench::migrate_tls::run(&image_path(bench::migrate::IMAGE), moves)?;
    if json {
        println!("{}", bench::migrate_tls::json(&figures, moves));
    } else {
        print!("{}", bench::migrate_tls::table(&figures, moves));
    }
    Ok(())
}

/// Runs a VMM with the terminal attached and exits with the guest's status.
fn exit_with(cmd: &mut Command, vmm: Vmm) -> Result<()> {
    let (status, stderr) = proc::run_tee_stderr(cmd)?;
    let code = vmm.guest_status(status, &stderr)?;
    std::process::exit(code);
}

fn prepare_boot_bench() -> Result<()> {
    prereq::ensure_kvm()?;
    prereq::ensure_root("the network-ready figure makes network namespaces")?;
    prereq::ensure_packages(&[prereq::QEMU])?;
    artifacts::build_host_vmm()?;
    let mut images = vec!["hello".to_string(), "netecho".to_string()];
    images.extend(bench::stdapps::BOOT_IMAGES.map(String::from));
    artifacts::build_images(&images)
}

fn print_boot_bench(runs: usize, json: bool) -> Result<()> {
    let image = image_path("hello");
    let figures = bench::boot::run(&image, runs)?;
    let netecho = image_path("netecho");
    let net = bench::boot::net_ready(&netecho, runs)?;
    let std_images = bench::stdapps::BOOT_IMAGES.map(image_path);
    let std = bench::stdapps::boot([&std_images[0], &std_images[1]], runs)?;
    if json {
        let boot = bench::boot::json(&figures, runs);
        let boot = boot.strip_suffix('}').unwrap_or(&boot);
        println!(
            "{boot},{},{}}}",
            bench::boot::net_json(&net),
            bench::stdapps::boot_json(&std)
        );
    } else {
        print!("{}", bench::boot::table(&figures, runs, &image));
        print!("{}", bench::boot::net_table(&net, runs, &netecho));
        print!("{}", bench::stdapps::boot_table(&std, runs));
    }
    Ok(())
}

fn demo() -> Result<()> {
    prereq::ensure_kvm()?;
    prereq::ensure_root("the demo makes network namespaces")?;
    prereq::ensure_packages(&prereq::NET_TOOLS)?;
    artifacts::build_host_vmm()?;
    artifacts::build_images(&["netecho".to_string()])?;
    xtask::demo::run(&image_path("netecho"))
}

fn cargo() -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root());
    cmd
}

/// Moves in the soak `cargo xtask test` runs.
const SMOKE_SOAK_MOVES: u32 = 6;

/// `cargo xtask soak`: builds what it needs, runs, prints the report, fails on a failure or
/// growth.
fn soak(moves: u32, json: bool) -> Result<()> {
    prereq::ensure_kvm()?;
    prereq::ensure_root("the soak makes network namespaces")?;
    prereq::ensure_packages(&prereq::NET_TOOLS)?;
    if moves == 0 {
        anyhow::bail!("--moves must be at least 1");
    }
    artifacts::build_host_vmm()?;
    artifacts::build_netprobe()?;
    artifacts::build_images(&[xtask::soak::IMAGE.to_string()])?;
    let report = xtask::soak::run(&image_path(xtask::soak::IMAGE), moves)?;
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", xtask::soak::table(&report));
    }
    report.verdict()
}

/// Runs each fuzz target for `seconds`, each counted as a test; a crash fails the run.
fn fuzz_smoke(counts: &mut proc::TestCounts, seconds: u64) -> Result<()> {
    let runs = xtask::fuzz::smoke(seconds)?;
    let failed: Vec<_> = runs
        .iter()
        .filter(|r| !r.ok)
        .map(|r| r.name.as_str())
        .collect();
    counts.passed += (runs.len() - failed.len()) as u64;
    counts.failed += failed.len() as u64;
    if !failed.is_empty() {
        anyhow::bail!("fuzz targets found crashes: {}", failed.join(", "));
    }
    Ok(())
}

/// Guest crates: the kernel, every image and the libraries images share.
fn guest_packages() -> Result<Vec<String>> {
    let mut packages = vec!["kernel".to_string()];
    packages.extend(artifacts::guest_crates()?);
    Ok(packages)
}

fn lint() -> Result<()> {
    proc::run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The fuzz crate sits outside the workspace (it builds with libFuzzer's flags); its
    // formatting is checked here, its code by `cargo xtask fuzz`'s build.
    proc::run(cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))?;
    // Host side: every workspace member, so a crate added later is linted without a change
    // here. Guest crates build on the host too (the kernel's pure logic and its unit tests;
    // the images as stubs), so nothing needs excluding.
    proc::run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Guest side: the kernel and every crate under images/, for the guest target. Their
    // workspace dependencies (drivers, netstack, migration-client) are linted with them.
    let mut guest = cargo();
    guest.args([
        "clippy",
        "--target",
        GUEST_TARGET,
        "--profile",
        GUEST_PROFILE,
    ]);
    for p in guest_packages()? {
        guest.args(["-p", &p]);
    }
    proc::run(guest.args(["--", "-D", "warnings"]))
}

fn test(no_kvm: bool) -> Result<()> {
    match (prereq::kvm_unavailable(), no_kvm) {
        (Some(why), false) => anyhow::bail!(
            "{why}\n  `cargo xtask test` boots guests on KVM; on a machine without KVM, `cargo xtask test --no-kvm` runs the other tests and counts the skipped ones"
        ),
        (Some(why), true) => {
            eprintln!("xtask: --no-kvm: {why}; the tests that need KVM are skipped and counted")
        }
        (None, true) => eprintln!("xtask: --no-kvm: KVM is usable here, so no test skips"),
        (None, false) => {}
    }
    prereq::ensure_root(
        "`cargo xtask test` makes network namespaces, hides /dev/kvm and drops privileges in its tests",
    )?;
    let mut counts = proc::TestCounts::default();
    let result = test_steps(no_kvm, &mut counts);
    // One closing line for people and for CI, over every test binary that ran, also when
    // one failed.
    println!("xtask: {}", counts.summary());
    result
}

/// The steps of `cargo xtask test`, counting into `counts`; stops at the first failure.
fn test_steps(no_kvm: bool, counts: &mut proc::TestCounts) -> Result<()> {
    let mut packages = vec![prereq::QEMU];
    packages.extend(prereq::NET_TOOLS);
    packages.extend(prereq::TEST_TOOLS);
    prereq::ensure_packages(&packages)?;
    lint()?;
    // Only the flag opts out: a stray ROAM_NO_KVM in the caller's environment does not.
    let tests = |args: &[&str]| {
        let mut cmd = cargo();
        cmd.args(args);
        if no_kvm {
            cmd.env(skip::NO_KVM_ENV, "1");
        } else {
            cmd.env_remove(skip::NO_KVM_ENV);
        }
        cmd
    };
    // Host unit tests: what a plain `cargo test` runs, plus the kernel's pure logic.
    proc::run_tests(&mut tests(&["test"]), counts)?;
    proc::run_tests(&mut tests(&["test", "-p", "kernel"]), counts)?;
    artifacts::build_host_vmm()?;
    artifacts::build_images(&[])?;
    // The wide-area tests' delay line: rebuilt so they never run a stale one.
    artifacts::build_delayline()?;
    // Integration tests: real KVM, real QEMU.
    proc::run_tests(&mut tests(&["test", "-p", "roam-tests"]), counts)?;
    // Every fuzz target briefly (one progress line each), counted as one test each.
    fuzz_smoke(counts, xtask::fuzz::SMOKE_SECONDS)?;
    // A short soak (a few moves of kv with a checking client), counted as one test.
    if no_kvm && prereq::kvm_unavailable().is_some() {
        eprintln!("skipped: soak: needs KVM (--no-kvm)");
        counts.passed += 1;
        counts.skipped += 1;
        return Ok(());
    }
    soak(SMOKE_SOAK_MOVES, false)?;
    counts.passed += 1;
    Ok(())
}
