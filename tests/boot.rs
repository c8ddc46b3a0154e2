//! The same ELFs boot under host-vmm and under stock QEMU (microvm, PVH), with real KVM.

use roam_tests::{Boot, GuestRun, Vmm, boot, boot_with, image, kvm_present};

const APP_READY: &str = "Hello from Roam";
/// host-vmm and our QEMU mapping: the guest's exit statuses (docs/boot-abi.md).
const STATUS_PANIC: i32 = 101;
const STATUS_CPU_EXCEPTION: i32 = 102;

fn transcript(run: &GuestRun) -> String {
    format!(
        "status {}\n--- stdout ---\n{}--- stderr ---\n{}",
        run.status, run.watched.stdout, run.watched.stderr
    )
}

fn hello_passes(vmm: Vmm) {
    let run = boot(vmm, "hello", "", APP_READY);
    assert_eq!(
        run.status,
        0,
        "hello failed under {}:\n{}",
        vmm.key(),
        transcript(&run)
    );
    let first = run.watched.stdout.lines().next().unwrap_or_default();
    assert_eq!(
        first,
        APP_READY,
        "the app's greeting is not the first line (the kernel logs nothing at the default level):\n{}",
        transcript(&run)
    );
}

#[test]
fn hello_boots_and_exits_0_on_host_vmm() {
    if kvm_present("hello_boots_and_exits_0_on_host_vmm") {
        hello_passes(Vmm::HostVmm);
    }
}

#[test]
fn hello_boots_and_exits_0_on_qemu_microvm() {
    if kvm_present("hello_boots_and_exits_0_on_qemu_microvm") {
        hello_passes(Vmm::QemuMicrovm);
    }
}

/// `log=` on the kernel command line sets the serial log level.
fn log_level_follows_cmdline(vmm: Vmm) {
    let quiet = boot(vmm, "hello", "log=off", APP_READY);
    let chatty = boot(vmm, "hello", "log=debug", APP_READY);
    assert_eq!(quiet.status, 0, "{}", transcript(&quiet));
    assert_eq!(chatty.status, 0, "{}", transcript(&chatty));
    let kernel_lines = |run: &GuestRun| {
        run.watched
            .stdout
            .lines()
            .filter(|l| l.contains("DEBUG") || l.contains("INFO"))
            .count()
    };
    assert_eq!(
        kernel_lines(&quiet),
        0,
        "log=off still logged:\n{}",
        transcript(&quiet)
    );
    assert!(
        kernel_lines(&chatty) > 0,
        "log=debug logged nothing:\n{}",
        transcript(&chatty)
    );
}

#[test]
fn log_level_follows_cmdline_on_host_vmm() {
    if kvm_present("log_level_follows_cmdline_on_host_vmm") {
        log_level_follows_cmdline(Vmm::HostVmm);
    }
}

#[test]
fn log_level_follows_cmdline_on_qemu_microvm() {
    if kvm_present("log_level_follows_cmdline_on_qemu_microvm") {
        log_level_follows_cmdline(Vmm::QemuMicrovm);
    }
}

fn page_fault_is_reported(vmm: Vmm) {
    let run = boot(vmm, "crash-pagefault", "", "never printed");
    let out = &run.watched.stdout;
    assert_eq!(run.status, STATUS_CPU_EXCEPTION, "{}", transcript(&run));
    // The image announces the address it reads; the report's CR2 must be that address.
    let addr = out
        .split("reading ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| {
            panic!(
                "crash-pagefault did not say what it reads:\n{}",
                transcript(&run)
            )
        });
    let cr2 = format!("CR2={addr}");
    for needle in [
        "vector 14 (page fault)",
        "RIP=0x",
        "error code=",
        cr2.as_str(),
    ] {
        assert!(
            out.contains(needle),
            "fault report lacks `{needle}`:\n{}",
            transcript(&run)
        );
    }
    assert_eq!(
        out.matches("CPU exception").count(),
        1,
        "expected exactly one report:\n{}",
        transcript(&run)
    );
}

#[test]
fn page_fault_is_reported_on_host_vmm() {
    if kvm_present("page_fault_is_reported_on_host_vmm") {
        page_fault_is_reported(Vmm::HostVmm);
    }
}

#[test]
fn page_fault_is_reported_on_qemu_microvm() {
    if kvm_present("page_fault_is_reported_on_qemu_microvm") {
        page_fault_is_reported(Vmm::QemuMicrovm);
    }
}

fn panic_is_reported(vmm: Vmm) {
    let run = boot(vmm, "crash-panic", "", "never printed");
    let out = &run.watched.stdout;
    assert_eq!(run.status, STATUS_PANIC, "{}", transcript(&run));
    for needle in ["panicked", "crash-panic", "main.rs"] {
        assert!(
            out.contains(needle),
            "panic report lacks `{needle}`:\n{}",
            transcript(&run)
        );
    }
}

#[test]
fn panic_is_reported_on_host_vmm() {
    if kvm_present("panic_is_reported_on_host_vmm") {
        panic_is_reported(Vmm::HostVmm);
    }
}

#[test]
fn panic_is_reported_on_qemu_microvm() {
    if kvm_present("panic_is_reported_on_qemu_microvm") {
        panic_is_reported(Vmm::QemuMicrovm);
    }
}

/// Every hermit-abi call links; the unimplemented ones fail with ENOSYS instead of crashing.
#[test]
fn every_hermit_abi_call_links_and_fails_cleanly() {
    if !kvm_present("every_hermit_abi_call_links_and_fails_cleanly") {
        return;
    }
    let run = boot(Vmm::HostVmm, "abi-check", "", "abi-check:");
    assert_eq!(run.status, 0, "{}", transcript(&run));
    assert!(
        run.watched.stdout.contains(", 0 failed"),
        "{}",
        transcript(&run)
    );
}

/// Without the TSC frequency leaf the kernel calibrates the TSC against the PIT, and the
/// clock it gets still passes hello's 10 ms sleep check.
#[test]
fn tsc_is_calibrated_against_the_pit_without_the_frequency_leaf() {
    if !kvm_present("tsc_is_calibrated_against_the_pit_without_the_frequency_leaf") {
        return;
    }
    let hello = image("hello");
    let b = Boot {
        cmdline: "log=info",
        qemu_tsc_leaf: false,
        ..Boot::new(&hello)
    };
    let run = boot_with(Vmm::QemuMicrovm, &b, APP_READY);
    assert_eq!(run.status, 0, "{}", transcript(&run));
    assert!(
        run.watched.stdout.contains("(from Pit)"),
        "the kernel did not calibrate against the PIT:\n{}",
        transcript(&run)
    );
}
