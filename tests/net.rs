//! The network path end to end: a guest on a TAP in a host namespace, stock `ping` and our
//! `netprobe` from the client namespace (xtask/src/net.rs draws the topology). Every test makes
//! its own uniquely named topology and removes it, and its VM, also when it fails.

use roam_tests::{Vmm, image, kvm_present};
use std::process::{Command, Output};
use std::time::Duration;
use xtask::net::{self, GUEST_MAC};

/// A guest on its own test network (xtask's), with test-friendly helpers around it.
struct NetGuest(net::NetGuest);

impl std::ops::Deref for NetGuest {
    type Target = net::NetGuest;
    fn deref(&self) -> &net::NetGuest {
        &self.0
    }
}

impl NetGuest {
    /// Boots `image_name` under `vmm` (kernel log at info) and waits until it answers ping.
    fn start(vmm: Vmm, image_name: &str, tag: &str) -> NetGuest {
        let guest = net::NetGuest::start(vmm, &image(image_name), tag, "log=info")
            .unwrap_or_else(|e| panic!("starting {image_name} under {}: {e:#}", vmm.key()));
        NetGuest(guest)
    }

    /// Runs a client command and returns its output, with the guest's console on failure.
    fn run_client(&mut self, cmd: &mut Command) -> Output {
        let out = cmd.output().expect("client command runs");
        if !out.status.success() {
            panic!(
                "client command failed ({}):\n{}{}\n--- guest console ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.0.vm.output()
            );
        }
        assert!(self.0.vm.running(), "the VMM died:\n{}", self.0.vm.output());
        out
    }

    fn netprobe(&mut self, args: &[&str]) -> String {
        let mut cmd = self.client(env!("CARGO_BIN_EXE_netprobe"));
        cmd.args(args);
        let out = self.run_client(&mut cmd);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// `count` pings 20 ms apart, every one answered.
fn ping_count(guest: &mut NetGuest, count: u32) {
    let mut cmd = guest.client("ping");
    cmd.args(roam_tests::ping_args(count, 0.02))
        .arg(net::GUEST_IP);
    let out = guest.run_client(&mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    roam_tests::assert_pings_answered("ping", &text, count);
}

fn ping_100(guest: &mut NetGuest) {
    ping_count(guest, 100);
}

fn echo_addr() -> String {
    format!("{}:7", net::GUEST_IP)
}

fn tcp_echo_1_mib(guest: &mut NetGuest) {
    let summary = guest.netprobe(&["tcp-echo", &echo_addr(), "1048576", "20261125"]);
    assert!(summary.contains("1048576 bytes identical"), "{summary}");
}

#[test]
fn ping_100_without_loss_on_host_vmm() {
    if !kvm_present("ping_100_without_loss_on_host_vmm") {
        return;
    }
    ping_100(&mut NetGuest::start(Vmm::HostVmm, "netecho", "p"));
}

#[test]
fn tcp_echo_of_1_mib_is_identical_on_host_vmm() {
    if !kvm_present("tcp_echo_of_1_mib_is_identical_on_host_vmm") {
        return;
    }
    tcp_echo_1_mib(&mut NetGuest::start(Vmm::HostVmm, "netecho", "t"));
}

#[test]
fn udp_echo_of_1000_mixed_datagrams_on_host_vmm() {
    if !kvm_present("udp_echo_of_1000_mixed_datagrams_on_host_vmm") {
        return;
    }
    let mut guest = NetGuest::start(Vmm::HostVmm, "netecho", "u");
    // netprobe fails the run when more than a few datagrams needed resending.
    let summary = guest.netprobe(&["udp-echo", &echo_addr(), "1000", "7"]);
    roam_tests::say(summary.trim());
    assert!(summary.contains("1000 datagrams"), "{summary}");
}

/// The same image on QEMU microvm's virtio-net-device: virtio-mmio, found from the command
/// line QEMU appends to, its line level-triggered through the IOAPIC. Modern transport
/// (virtio 1.x, as `Vmm::QemuMicrovm` boots it), then legacy (QEMU 7.2's default).
#[test]
fn ping_and_tcp_echo_on_qemu_microvm_virtio_mmio() {
    if !kvm_present("ping_and_tcp_echo_on_qemu_microvm_virtio_mmio") {
        return;
    }
    let mut guest = NetGuest::start(Vmm::QemuMicrovm, "netecho", "m");
    assert!(
        guest
            .vm
            .output()
            .contains("virtio-net virtio-mmio, level line"),
        "{}",
        guest.vm.output()
    );
    ping_100(&mut guest);
    tcp_echo_1_mib(&mut guest);
    drop(guest);

    let legacy = net::NetGuest::start_qemu_legacy_virtio(&image("netecho"), "ml", "log=info")
        .unwrap_or_else(|e| panic!("starting netecho on legacy virtio-mmio: {e:#}"));
    let mut guest = NetGuest(legacy);
    ping_count(&mut guest, 20);
    tcp_echo_1_mib(&mut guest);
}

/// The same image on a NIC nobody here wrote: QEMU's own virtio-net-pci (our PCI driver,
/// MSI-X, against QEMU's device: the case microvm cannot make).
#[test]
fn ping_and_tcp_echo_on_qemu_virtio_net() {
    if !kvm_present("ping_and_tcp_echo_on_qemu_virtio_net") {
        return;
    }
    let mut guest = NetGuest::start(Vmm::QemuPc, "netecho", "q");
    ping_100(&mut guest);
    tcp_echo_1_mib(&mut guest);
}

/// CPU time (user + system, all threads) of a process, from /proc/<pid>/stat, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// An idle guest sleeps in HLT with its timer armed, so its VMM uses almost no CPU: a guest
/// (or an I/O thread) that busy-polls would use a whole core.
#[test]
fn idle_netecho_uses_under_5_percent_of_a_core() {
    if !kvm_present("idle_netecho_uses_under_5_percent_of_a_core") {
        return;
    }
    const WINDOW: Duration = Duration::from_secs(10);
    // Linux reports /proc times in USER_HZ ticks, 100 per second on x86_64.
    const TICKS_PER_SEC: f64 = 100.0;
    let guest = NetGuest::start(Vmm::HostVmm, "netecho", "i");
    let pid = guest.vm.pid();
    let before = cpu_ticks(pid);
    std::thread::sleep(WINDOW);
    let used = (cpu_ticks(pid) - before) as f64 / TICKS_PER_SEC;
    let share = 100.0 * used / WINDOW.as_secs_f64();
    roam_tests::say(&format!(
        "idle netecho on host-vmm: {used:.2} s of CPU in {WINDOW:?} = {share:.1} % of a core"
    ));
    assert!(share < 5.0, "idle guest used {share:.1} % of a core");
}

/// 1000 SETs then 1000 GETs over one TCP connection: every reply checked.
#[test]
fn kv_1000_set_then_get_on_host_vmm() {
    if !kvm_present("kv_1000_set_then_get_on_host_vmm") {
        return;
    }
    let mut guest = NetGuest::start(Vmm::HostVmm, "kv", "k");
    let addr = format!("{}:6380", net::GUEST_IP);
    let summary = guest.netprobe(&["kv", &addr, "1000"]);
    assert!(
        summary.contains("kv 1000 SET + 1000 GET + COUNT correct"),
        "{summary}"
    );
}

/// Runts, frames over the MTU, bad IPv4 checksums, truncated TCP headers and 10,000 SYNs from
/// a raw socket in the client namespace: the guest keeps answering and host-vmm keeps running.
#[test]
fn hostile_frames_stop_neither_the_guest_nor_host_vmm() {
    if !kvm_present("hostile_frames_stop_neither_the_guest_nor_host_vmm") {
        return;
    }
    let mut guest = NetGuest::start(Vmm::HostVmm, "netecho", "h");
    // Larger than any guest receive buffer, so oversize frames reach the device model.
    guest.net.0.set_mtu(9000).expect("raising the MTU");
    let summary = guest.netprobe(&["hostile", "eth0", GUEST_MAC, net::GUEST_IP, "10000"]);
    assert!(summary.contains("10000 SYNs"), "{summary}");
    roam_tests::say(&summary);
    // The flood leaves a backlog in the TAP and the ring that the guest works through first
    // (a frame costs it milliseconds here); a ping sent into a full queue is dropped, as a
    // real NIC would drop it. Once the guest answers again, it must answer everything.
    let recovered = (0..10).any(|_| {
        guest
            .client("ping")
            .args(["-c", "1", "-W", "1", net::GUEST_IP])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(
        recovered,
        "the guest did not answer ping within 10 s of the flood"
    );
    ping_count(&mut guest, 10);
    let summary = guest.netprobe(&["tcp-echo", &echo_addr(), "65536", "9"]);
    assert!(summary.contains("65536 bytes identical"), "{summary}");
}

/// Stock `iperf3 -c` (Debian's 3.12) against the guest's iperf3 server: the client's own
/// JSON report is the measurement, and it must show bytes received.
fn iperf3_run(guest: &mut NetGuest, extra: &[&str]) -> f64 {
    let mut cmd = guest.client("timeout");
    cmd.args(["60", "iperf3", "-c", net::GUEST_IP, "-t", "5", "--json"])
        .args(extra);
    let out = guest.run_client(&mut cmd);
    let report = String::from_utf8_lossy(&out.stdout);
    let json = roam_tests::iperf3_report(&format!("iperf3 {extra:?}"), &report);
    let received = json["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    let sent = json["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(
        received > 0.0 && sent > 0.0,
        "iperf3 {extra:?}: no bytes moved:\n{report}"
    );
    roam_tests::say(&format!(
        "iperf3 {extra:?}: {received} bytes received, {:.3} Mbit/s",
        json["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0)
            / 1e6
    ));
    received
}

#[test]
fn iperf3_client_completes_against_the_guest_on_host_vmm() {
    if !kvm_present("iperf3_client_completes_against_the_guest_on_host_vmm") {
        return;
    }
    let mut guest = NetGuest::start(Vmm::HostVmm, "iperf3", "3");
    iperf3_run(&mut guest, &[]);
    iperf3_run(&mut guest, &["-R"]);
    iperf3_run(&mut guest, &["-P", "4"]);
}

/// The socket calls as a client, blocking and non-blocking (images/sockcheck), against an
/// echo peer in the client namespace: every check must hold and the guest must exit 0.
#[test]
fn socket_calls_work_as_a_client_in_both_modes_on_host_vmm() {
    if !kvm_present("socket_calls_work_as_a_client_in_both_modes_on_host_vmm") {
        return;
    }
    let net = net::TopologyGuard(net::Topology::unique("s").expect("topology name"));
    net.0.up().expect("creating the test network");
    let mut peer = xtask::proc::Background::spawn(
        net::Topology::exec_in(&net.0.client_ns(), env!("CARGO_BIN_EXE_netprobe")).args([
            "serve-echo",
            "7007",
            "120",
        ]),
    )
    .expect("starting the echo peer");
    peer.wait_for("serving echo", Duration::from_secs(10))
        .expect("echo peer ready");
    let image = image("sockcheck");
    let host_ns = net.0.host_ns(1);
    let cmdline = net::guest_cmdline();
    let boot = roam_tests::Boot {
        cmdline: &cmdline,
        net: Some(roam_tests::NetAttach::virtio(&host_ns, net::TAP, GUEST_MAC)),
        ..roam_tests::Boot::new(&image)
    };
    let run = roam_tests::boot_with(Vmm::HostVmm, &boot, "sockcheck:");
    assert_eq!(
        run.status, 0,
        "sockcheck failed:\n{}{}",
        run.watched.stdout, run.watched.stderr
    );
    assert!(
        run.watched.stdout.contains(", 0 failed"),
        "{}",
        run.watched.stdout
    );
    roam_tests::say(run.watched.stdout.lines().last().unwrap_or_default());
}

/// Bringing the network up registers each virtio queue's notify ioeventfd once (at
/// DRIVER_OK), however often the guest's probe flips memory decoding or sizes BARs:
/// `KVM_IOEVENTFD` is slow (an SRCU grace period each), and following every flip once cost
/// 116 calls and ~200 ms of `network_init`. virtio-net and the agent's console have two
/// queues each; at most two calls a queue leaves room for one move of a BAR, never churn.
#[test]
fn boot_registers_each_queue_ioeventfd_once_on_host_vmm() {
    if !kvm_present("boot_registers_each_queue_ioeventfd_once_on_host_vmm") {
        return;
    }
    const QUEUES: u64 = 4;
    let guest = net::NetGuest::start_with(
        Vmm::HostVmm,
        &image("netecho"),
        "i",
        "",
        net::Nics::Virtio,
        true,
    )
    .unwrap_or_else(|e| panic!("starting netecho with a control socket: {e:#}"));
    let text = guest
        .ctl()
        .and_then(|c| c.call(&["counters"]))
        .unwrap_or_else(|e| panic!("counters: {e:#}\n{}", guest.vm.output()));
    let counters: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("counters are not JSON ({e}): {text}"));
    let calls = counters["kvm"]["ioeventfd_calls"]
        .as_u64()
        .unwrap_or_else(|| panic!("no kvm.ioeventfd_calls in {text}"));
    assert!(
        (QUEUES..=2 * QUEUES).contains(&calls),
        "{calls} KVM_IOEVENTFD calls for {QUEUES} queues: {text}"
    );
    assert!(
        guest.vm.output().contains("network_init took"),
        "{}",
        guest.vm.output()
    );
}

/// TCP data through each NIC leaves its checksums to the NIC both ways: host-vmm's counters
/// of frames the guest sent with a partial checksum (`tx_csum`) and of frames delivered
/// with a checksum the NIC vouched for (`rx_csum`) grow on the NIC that carried the echo, and
/// every byte comes back intact (the host's TCP checks what the NIC completed).
#[test]
fn tcp_checksums_are_offloaded_on_each_nic_on_host_vmm() {
    if !kvm_present("tcp_checksums_are_offloaded_on_each_nic_on_host_vmm") {
        return;
    }
    for (nics, device, tag) in [
        (net::Nics::Virtio, "virtio-net", "cv"),
        (net::Nics::Vf, "vf", "cf"),
    ] {
        let mut guest = NetGuest(
            net::NetGuest::start_with(Vmm::HostVmm, &image("netecho"), tag, "", nics, true)
                .unwrap_or_else(|e| panic!("starting netecho on {device}: {e:#}")),
        );
        let summary = guest.netprobe(&["tcp-echo", &echo_addr(), "131072", "20261207"]);
        assert!(summary.contains("131072 bytes identical"), "{summary}");
        let text = guest
            .ctl()
            .and_then(|c| c.call(&["counters"]))
            .unwrap_or_else(|e| panic!("counters: {e:#}\n{}", guest.vm.output()));
        let counters: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("counters are not JSON ({e}): {text}"));
        let count = |name: &str| {
            counters[device][name]
                .as_u64()
                .unwrap_or_else(|| panic!("no {device}.{name} in {text}"))
        };
        // 128 KiB each way is ~90 full segments: most of them offloaded, both directions.
        assert!(count("tx_csum") >= 60, "{device}: {text}");
        assert!(count("rx_csum") >= 60, "{device}: {text}");
        if device == "virtio-net" {
            assert_eq!(count("tx_bad_csum"), 0, "{text}");
        }
    }
}
