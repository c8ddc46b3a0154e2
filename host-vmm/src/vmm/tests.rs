//! The run loop on real KVM with tiny guests, and how stops are reported.

use super::*;

#[test]
fn stops_are_reported_on_one_line_with_rip() {
    let stop = GuestStop {
        exit: VcpuExit::Shutdown,
        regs: Some(StopRegisters {
            rip: 0x10_0042,
            rsp: 0x1c_2068,
            rflags: 0x10446,
        }),
    };
    assert_eq!(
        stop.to_string(),
        "the guest stopped without an exit status: triple fault (KVM_EXIT_SHUTDOWN) at RIP \
         0x100042 (RSP 0x1c2068, RFLAGS 0x10446)"
    );
    let stop = GuestStop {
        exit: VcpuExit::InternalError {
            suberror: 1,
            data: vec![0x10, 0x20],
        },
        regs: None,
    };
    let text = stop.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("suberror 1 (emulation failure)"), "{text}");
    assert!(text.contains("RIP unknown"), "{text}");
}

#[test]
fn exit_statuses_follow_architecture_md() {
    assert_eq!(Outcome::GuestExit(7).exit_status(), 7);
    let stop = GuestStop {
        exit: VcpuExit::Shutdown,
        regs: None,
    };
    assert_eq!(Outcome::GuestStopped(stop).exit_status(), 124);
}

/// Tiny guests run on real KVM: each is raw 64-bit code at 1 MiB (assembly in comments).
mod kvm {
    use super::*;
    use crate::config::{Cmdline, MemSize};
    use crate::test_utils::{Captured, TempFile, kvm_available, tiny_guest};

    /// Writes "H\n" to COM1, then 0x12A to the debug-exit port (status 0x2A: low byte).
    const HELLO: &[u8] = &[
        0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xB0, 0x48, // mov al, 'H'
        0xEE, // out dx, al
        0xB0, 0x0A, // mov al, '\n'
        0xEE, // out dx, al
        0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
        0xB8, 0x2A, 0x01, 0x00, 0x00, // mov eax, 0x12a
        0xEF, // out dx, eax
        0xF4, // hlt (not reached)
    ];

    /// `ud2` with no IDT: #UD, #DF, then a triple fault.
    const UD2: &[u8] = &[0x0F, 0x0B];

    /// Maps 512 MiB (outside 16 MiB of RAM) with a 2 MiB page, reads and writes it (MMIO),
    /// reads port 0x80 (nothing there), exits with mmio_value + port_value: 0xFE (254) iff
    /// both read as all-ones.
    const MMIO: &[u8] = &[
        0xB8, 0x83, 0x00, 0x00, 0x20, // mov eax, 0x20000083
        0x48, 0x89, 0x04, 0x25, 0x00, 0xB8, 0x00, 0x00, // mov [0xb800], rax (PD[256])
        0xBB, 0x00, 0x00, 0x00, 0x20, // mov ebx, 0x20000000
        0x8B, 0x0B, // mov ecx, [rbx]
        0xC7, 0x03, 0x78, 0x56, 0x34, 0x12, // mov dword [rbx], 0x12345678
        0x66, 0xBA, 0x80, 0x00, // mov dx, 0x80
        0xEC, // in al, dx
        0x0F, 0xB6, 0xC0, // movzx eax, al
        0x01, 0xC8, // add eax, ecx
        0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
        0xEF, // out dx, eax
        0xF4, // hlt
    ];

    /// `rep outsb` of "Hi\n" to COM1 (one exit, three 1-byte accesses), then status 0.
    const REP_OUTSB: &[u8] = &[
        0x48, 0x8D, 0x35, 0x13, 0x00, 0x00, 0x00, // lea rsi, [rip + msg]
        0xB9, 0x03, 0x00, 0x00, 0x00, // mov ecx, 3
        0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xF3, 0x6E, // rep outsb
        0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
        0x31, 0xC0, // xor eax, eax
        0xEF, // out dx, eax
        0xF4, // hlt
        b'H', b'i', b'\n', // msg
    ];

    /// Prints the command line found through RDI's hvm_start_info, then exits with
    /// (magic - 0x336ec578) + (memory map size in MiB).
    const BOOT_INFO: &[u8] = &[
        0x48, 0x8B, 0x77, 0x18, // mov rsi, [rdi + 24] (cmdline_paddr)
        0x66, 0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xAC, // 1: lodsb
        0x84, 0xC0, // test al, al
        0x74, 0x03, // jz 2f
        0xEE, // out dx, al
        0xEB, 0xF8, // jmp 1b
        0x8B, 0x07, // 2: mov eax, [rdi] (magic)
        0x2D, 0x78, 0xC5, 0x6E, 0x33, // sub eax, 0x336ec578
        0x48, 0x8B, 0x5F, 0x28, // mov rbx, [rdi + 40] (memmap_paddr)
        0x48, 0x8B, 0x4B, 0x08, // mov rcx, [rbx + 8] (size of entry 0)
        0x48, 0xC1, 0xE9, 0x14, // shr rcx, 20
        0x01, 0xC8, // add eax, ecx
        0x66, 0xBA, 0xF4, 0x00, // mov dx, 0xf4
        0xEF, // out dx, eax
        0xF4, // hlt
    ];

    fn boot(code: &[u8], cmdline: &str) -> (Outcome, String) {
        let image = TempFile::new("tiny", &tiny_guest(code));
        let config = RunConfig {
            image: image.0.clone(),
            mem: MemSize::new(16 << 20).unwrap(),
            cmdline: Cmdline::new(cmdline).unwrap(),
            devices: DeviceConfig::default(),
        };
        let console = Captured::default();
        let mut vmm = Vmm::new(&config, Box::new(console.clone())).unwrap();
        let outcome = vmm.run().unwrap();
        // The serial output is flushed when the VM goes.
        drop(vmm);
        (outcome, console.text())
    }

    #[test]
    fn serial_output_and_the_exit_status_reach_the_host() {
        if !kvm_available("serial_output_and_the_exit_status_reach_the_host") {
            return;
        }
        let (outcome, out) = boot(HELLO, "");
        assert_eq!(out, "H\n");
        assert_eq!(outcome, Outcome::GuestExit(0x2A));
    }

    #[test]
    fn the_guest_finds_its_boot_info_through_rdi() {
        if !kvm_available("the_guest_finds_its_boot_info_through_rdi") {
            return;
        }
        let (outcome, out) = boot(BOOT_INFO, "log=debug hello");
        assert_eq!(out, "log=debug hello");
        assert_eq!(outcome, Outcome::GuestExit(16), "magic ok, 16 MiB of RAM");
    }

    #[test]
    fn a_triple_fault_is_a_stop_without_status() {
        if !kvm_available("a_triple_fault_is_a_stop_without_status") {
            return;
        }
        let (outcome, _) = boot(UD2, "");
        let Outcome::GuestStopped(stop) = outcome else {
            panic!("expected a stop, got {outcome:?}");
        };
        assert_eq!(stop.exit, VcpuExit::Shutdown);
        assert!(stop.to_string().contains("triple fault"), "{stop}");
        assert!(stop.regs.is_some());
    }

    #[test]
    fn unhandled_mmio_and_ports_read_as_all_ones() {
        if !kvm_available("unhandled_mmio_and_ports_read_as_all_ones") {
            return;
        }
        assert_eq!(boot(MMIO, "").0, Outcome::GuestExit(0xFE));
    }

    /// Counts forever: `inc qword [0x200000]` in a loop.
    const COUNT: &[u8] = &[
        0x48, 0xC7, 0xC3, 0x00, 0x00, 0x20, 0x00, // mov rbx, 0x200000
        0x48, 0xFF, 0x03, // 1: inc qword [rbx]
        0xEB, 0xFB, // jmp 1b
    ];

    #[test]
    fn a_throttled_vcpu_runs_its_share_and_pauses_at_once() {
        use crate::pause::Pause;
        use std::time::Duration;
        use vm_memory::{Bytes, GuestAddress};
        if !kvm_available("a_throttled_vcpu_runs_its_share_and_pauses_at_once") {
            return;
        }
        let image = TempFile::new("count", &tiny_guest(COUNT));
        let config = RunConfig {
            image: image.0.clone(),
            mem: MemSize::new(16 << 20).unwrap(),
            cmdline: Cmdline::new("").unwrap(),
            devices: DeviceConfig::default(),
        };
        let mut vmm = Vmm::new(&config, Box::new(Captured::default())).unwrap();
        let machine = vmm.machine().clone();
        let runner = std::thread::spawn(move || vmm.run().map(|o| o.exit_status()));
        let count = || {
            machine
                .ram
                .memory()
                .read_obj::<u64>(GuestAddress(0x20_0000))
                .unwrap()
        };
        // Counts over 300 ms, free and then throttled at 90 %.
        let counted = || {
            let before = count();
            std::thread::sleep(Duration::from_millis(300));
            count() - before
        };
        std::thread::sleep(Duration::from_millis(50));
        let free = counted();
        let throttle = machine.gate.throttle().unwrap();
        throttle.set(90);
        std::thread::sleep(Duration::from_millis(120));
        let throttled = counted();
        // A pause is not held up by the throttle's sleep (up to 90 ms a period here).
        let asked = std::time::Instant::now();
        machine.gate.pause().unwrap();
        let pause_took = asked.elapsed();
        machine.gate.resume();
        drop(throttle);
        std::thread::sleep(Duration::from_millis(50));
        let again = counted();
        machine.gate.stop(Stopped::ShutDown);
        assert_eq!(
            runner.join().unwrap().unwrap(),
            Outcome::ShutDown.exit_status()
        );
        assert!(free > 0, "the guest did not count");
        // 10 % of the time, give or take the machine's load: well under half.
        assert!(
            throttled * 3 < free,
            "throttled at 90 % the guest counted {throttled} against {free} free"
        );
        assert!(
            again * 3 > free,
            "after the throttle the guest counted {again} against {free} before"
        );
        assert!(
            pause_took < Duration::from_millis(50),
            "pausing a throttled vCPU took {pause_took:?}"
        );
    }

    #[test]
    fn string_port_io_is_split_into_single_accesses() {
        if !kvm_available("string_port_io_is_split_into_single_accesses") {
            return;
        }
        let (outcome, out) = boot(REP_OUTSB, "");
        assert_eq!(out, "Hi\n");
        assert_eq!(outcome, Outcome::GuestExit(0));
    }
}
