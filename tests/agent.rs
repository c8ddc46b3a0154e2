//! The guest agent's move steps on a real guest, without a move: `agent prepare` (traffic to
//! virtio-net, the VF released and left alone) and `agent resumed` (the VF re-probed and
//! brought up again, traffic back on it, an announcement), each twice, through host-vmm's
//! control socket, while ping every 10 ms from the client namespace loses nothing. This is
//! also what a rolled-back move does on the source. Every wait is bounded.

use roam_tests::{image, kvm_present, say};
use std::time::Duration;
use xtask::ctl::{self, Control, Nic, Status};
use xtask::net::{self, GUEST_IP, Nics};
use xtask::pingd::Pinger;
use xtask::vm::Vmm;

/// Bound for the guest to settle (links up, VF active).
const REACT: Duration = Duration::from_secs(10);
/// Longer than the VF watchdog's re-probe period (500 ms): a released VF must stay released.
const HOLD: Duration = Duration::from_millis(1500);

/// The last lines of the guest's console.
fn console(guest: &net::NetGuest) -> String {
    let out = guest.vm.output();
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Runs a debug agent command; returns its first line and the status lines after it.
fn agent(guest: &net::NetGuest, ctl: &Control, step: &str) -> (String, Status) {
    let out = ctl
        .call(&["agent", step])
        .unwrap_or_else(|e| panic!("agent {step}: {e:#}\n--- console ---\n{}", console(guest)));
    let (first, rest) = out.split_once('\n').unwrap_or((&out, ""));
    let status =
        ctl::parse_status(rest).unwrap_or_else(|e| panic!("agent {step} answered {out:?}: {e:#}"));
    (first.to_owned(), status)
}

#[test]
fn prepare_releases_the_vf_and_resumed_brings_it_back_while_ping_loses_nothing() {
    if !kvm_present("prepare_releases_the_vf_and_resumed_brings_it_back_while_ping_loses_nothing") {
        return;
    }
    roam_tests::host_vmm();
    let guest = net::NetGuest::start_with(
        Vmm::HostVmm,
        &image("netecho"),
        "ag",
        "log=info",
        Nics::Both,
        true,
    )
    .unwrap_or_else(|e| panic!("starting netecho with both NICs: {e:#}"));
    let ctl = guest.ctl().expect("booted with --control");
    let up = ctl
        .wait_for("both NICs up, VF active", REACT, |s| {
            s.vf.link_up && s.virtio.link_up && s.active == Some(Nic::Vf)
        })
        .unwrap_or_else(|e| panic!("{e:#}\n--- console ---\n{}", console(&guest)));
    let mut pinger = Pinger::start(
        guest.client("ping"),
        GUEST_IP,
        Duration::from_millis(10),
        6000,
    )
    .expect("starting ping");
    std::thread::sleep(Duration::from_millis(500));

    let (first, prepared) = agent(&guest, ctl, "prepare");
    assert_eq!(first, "released_vf=yes");
    assert_eq!(prepared.active, Some(Nic::Virtio));
    assert!(!prepared.vf.present, "{prepared:?}");
    std::thread::sleep(HOLD);
    let held = ctl.status().expect("status");
    assert!(
        !held.vf.present && held.active == Some(Nic::Virtio),
        "the released VF came back on its own: {held:?}\n--- console ---\n{}",
        console(&guest)
    );
    let (first, again) = agent(&guest, ctl, "prepare");
    assert_eq!(first, "released_vf=no", "a retried PREPARE");
    assert_eq!((again.active, again.switches), (held.active, held.switches));

    let (first, resumed) = agent(&guest, ctl, "resumed");
    assert_eq!(first, "vf_attached=yes announced=yes");
    assert!(resumed.vf.present, "{resumed:?}");
    let back = ctl
        .wait_for("traffic back on the VF", REACT, |s| {
            s.active == Some(Nic::Vf)
        })
        .unwrap_or_else(|e| panic!("{e:#}\n--- console ---\n{}", console(&guest)));
    let (first, _) = agent(&guest, ctl, "resumed");
    assert_eq!(first, "vf_attached=yes announced=yes", "a retried RESUMED");
    // PREPARE waited out its drain and RESUMED found and brought up the VF in steps, the
    // network served in between; the retries had nothing to wait for.
    let service = ctl
        .service()
        .expect("status")
        .expect("the agent reports its service figures");
    assert_eq!(service.deferred, 2, "{service:?}");
    assert!(service.steps >= 6, "{service:?}");
    say(&format!(
        "agent: longest step {} us over {} steps",
        service.longest_step_ns / 1000,
        service.steps
    ));
    std::thread::sleep(Duration::from_millis(500));
    let after = ctl.status().expect("status");
    assert_eq!(after.active, Some(Nic::Vf));
    assert_eq!(after.switches, back.switches, "the retry switched nothing");
    assert!(
        after.vf.tx > 0 && after.vf.rx > 0,
        "the new VF carries traffic: {after:?}"
    );
    assert!(pinger.running(), "ping ended early");
    let log = pinger.stop().expect("stopping ping");
    say(&format!(
        "prepare/resumed: {} pings, {} lost, longest gap {:.1} ms, switches {} -> {}",
        log.replies.len(),
        log.lost().len(),
        log.longest_gap().map_or(f64::NAN, |g| g.secs() * 1e3),
        up.switches,
        after.switches
    ));
    assert!(
        log.replies.len() > 100,
        "too few replies: {}",
        log.replies.len()
    );
    assert!(
        log.lost().is_empty(),
        "{} pings lost\n--- console ---\n{}",
        log.lost().len(),
        console(&guest)
    );
}
