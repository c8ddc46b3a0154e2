//! Fatal events: CPU exceptions, panics and exits. Each prints one report line on the serial
//! console and ends the VM through the debug-exit port with the status from [`crate::status`].
//!
//! The decoding and wording are plain functions, unit-tested on the host.

use core::fmt;

/// The double-fault vector (#DF), which runs on its own stack (IST1).
pub const DOUBLE_FAULT: u64 = 8;
/// The page-fault vector (#PF), the one with CR2.
pub const PAGE_FAULT: u64 = 14;
/// The segment-not-present vector (#NP): what a vector without a gate turns into.
pub const SEGMENT_NOT_PRESENT: u64 = 11;

/// A CPU exception as the entry stub saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exception {
    /// Vector number (0-31).
    pub vector: u64,
    /// Error code (0 for vectors that push none).
    pub error_code: u64,
    /// Faulting (or, for traps, next) instruction.
    pub rip: u64,
    /// Stack pointer at the exception.
    pub rsp: u64,
    /// RFLAGS at the exception.
    pub rflags: u64,
    /// Code segment at the exception.
    pub cs: u64,
    /// Stack segment at the exception.
    pub ss: u64,
    /// CR2 (page faults only): the address that faulted.
    pub cr2: Option<u64>,
    /// A double fault whose stack pointer is at the app stack's lower guard: an overflow.
    pub stack_overflow: bool,
}

/// The SDM's name for exception vector `vector`.
pub fn name(vector: u64) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "non-maskable interrupt",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range exceeded",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        9 => "coprocessor segment overrun",
        10 => "invalid TSS",
        11 => "segment not present",
        12 => "stack-segment fault",
        13 => "general protection fault",
        14 => "page fault",
        16 => "x87 floating-point error",
        17 => "alignment check",
        18 => "machine check",
        19 => "SIMD floating-point exception",
        20 => "virtualization exception",
        21 => "control protection exception",
        28 => "hypervisor injection exception",
        29 => "VMM communication exception",
        30 => "security exception",
        _ => "reserved vector",
    }
}

/// An error code decoded for the report.
pub struct ErrorCode {
    vector: u64,
    code: u64,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.code;
        write!(f, "{code:#x}")?;
        match self.vector {
            PAGE_FAULT => {
                let access = if code & (1 << 4) != 0 {
                    "instruction fetch"
                } else if code & (1 << 1) != 0 {
                    "write"
                } else {
                    "read"
                };
                let cause = if code & 1 != 0 {
                    "protection violation"
                } else {
                    "not-present page"
                };
                let mode = if code & (1 << 2) != 0 {
                    "user"
                } else {
                    "kernel"
                };
                write!(f, " ({access}, {cause}, {mode} mode")?;
                if code & (1 << 3) != 0 {
                    write!(f, ", reserved bit set")?;
                }
                write!(f, ")")
            }
            10..=13 if code != 0 => {
                let index = (code >> 3) & 0x1FFF;
                let external = if code & 1 != 0 {
                    ", external event"
                } else {
                    ""
                };
                if code & (1 << 1) != 0 {
                    let what = if self.vector == SEGMENT_NOT_PRESENT {
                        ": no handler installed"
                    } else {
                        ""
                    };
                    write!(f, " (IDT vector {index}{what}{external})")
                } else if code & (1 << 2) != 0 {
                    write!(f, " (LDT selector {:#x}{external})", index << 3)
                } else {
                    write!(f, " (GDT selector {:#x}{external})", index << 3)
                }
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Exception {
    /// The one-line report (without the "roam: " prefix and newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CPU exception: vector {} ({}) at RIP={:#x}, error code={}",
            self.vector,
            name(self.vector),
            self.rip,
            ErrorCode {
                vector: self.vector,
                code: self.error_code
            },
        )?;
        if let Some(cr2) = self.cr2 {
            write!(f, ", CR2={cr2:#x}")?;
        }
        write!(
            f,
            ", RSP={:#x}, RFLAGS={:#x}, CS={:#x}, SS={:#x}",
            self.rsp, self.rflags, self.cs, self.ss
        )?;
        if self.stack_overflow {
            write!(f, " (stack overflow: the 2 MiB app stack is exhausted)")?;
        }
        Ok(())
    }
}

/// A report line built without `core::fmt`, for a fault taken while reporting another: the
/// formatting machinery (or the stack or memory it uses) may be what faulted.
pub struct RawLine {
    buf: [u8; 160],
    len: usize,
}

impl RawLine {
    /// "roam: CPU exception N at RIP=... [CR2=...] while reporting exception N at RIP=...",
    /// in hex; `first` is the exception being reported, `None` for a panic.
    pub fn nested(now: &Exception, first: Option<(u64, u64)>) -> RawLine {
        let mut line = RawLine {
            buf: [0; 160],
            len: 0,
        };
        line.text(b"roam: CPU exception ");
        line.hex(now.vector);
        line.text(b" at RIP=");
        line.hex(now.rip);
        if let Some(cr2) = now.cr2 {
            line.text(b" CR2=");
            line.hex(cr2);
        }
        line.text(b" RSP=");
        line.hex(now.rsp);
        match first {
            Some((vector, rip)) => {
                line.text(b" while reporting exception ");
                line.hex(vector);
                line.text(b" at RIP=");
                line.hex(rip);
            }
            None => line.text(b" while reporting a panic"),
        }
        line.text(b"\n");
        line
    }

    /// The line's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn text(&mut self, text: &[u8]) {
        for &b in text {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn hex(&mut self, value: u64) {
        self.text(b"0x");
        let digits = (64 - value.leading_zeros()).div_ceil(4).max(1);
        for k in (0..digits).rev() {
            let nibble = ((value >> (k * 4)) & 0xF) as u8;
            let c = if nibble < 10 {
                b'0' + nibble
            } else {
                b'a' + nibble - 10
            };
            self.text(&[c]);
        }
    }
}

#[cfg(target_os = "none")]
mod report {
    use super::{Exception, RawLine};
    use crate::arch::cpu;
    use crate::{serial, status};
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// Set by the first fatal report: a fault or panic while reporting exits at once.
    static REPORTING: AtomicBool = AtomicBool::new(false);
    /// The exception being reported, for a fault taken while formatting its report
    /// ([`PANICKING`] while a panic is).
    static FIRST_VECTOR: AtomicU64 = AtomicU64::new(PANICKING);
    static FIRST_RIP: AtomicU64 = AtomicU64::new(0);
    /// No exception vector: the report under way is a panic's.
    const PANICKING: u64 = u64::MAX;

    /// Reports a CPU exception and exits with [`status::CPU_EXCEPTION`]. A fault while
    /// reporting one gets a line built without `core::fmt`, naming both.
    pub fn exception(e: &Exception) -> ! {
        if !REPORTING.swap(true, Ordering::Relaxed) {
            FIRST_VECTOR.store(e.vector, Ordering::Relaxed);
            FIRST_RIP.store(e.rip, Ordering::Relaxed);
            serial::print(format_args!("roam: {e}\n"));
        } else {
            let first = Some(FIRST_VECTOR.load(Ordering::Relaxed))
                .filter(|&v| v != PANICKING)
                .map(|v| (v, FIRST_RIP.load(Ordering::Relaxed)));
            serial::write(RawLine::nested(e, first).bytes());
        }
        exit(status::CPU_EXCEPTION)
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        // An app thread panics with interrupts on: a tick must not switch it out halfway
        // through its report (exceptions arrive with them off already).
        cpu::disable_interrupts();
        if !REPORTING.swap(true, Ordering::Relaxed) {
            match info.location() {
                Some(at) => {
                    serial::print(format_args!("roam: panicked at {at}: {}\n", info.message()))
                }
                None => serial::print(format_args!("roam: panicked: {}\n", info.message())),
            }
        }
        exit(status::PANIC)
    }

    /// Ends the VM with `status` through the debug-exit port. Without that device (a VMM
    /// that lacks it), says so and halts for good.
    pub fn exit(status: u32) -> ! {
        cpu::debug_exit(status);
        serial::print(format_args!(
            "roam: exit status {status}: no debug-exit device at port {:#x}; halting\n",
            cpu::DEBUG_EXIT_PORT
        ));
        cpu::halt_forever()
    }
}

#[cfg(target_os = "none")]
pub use report::{exception, exit};

#[cfg(test)]
mod tests {
    use super::*;

    fn exception(vector: u64, error_code: u64, cr2: Option<u64>) -> Exception {
        Exception {
            vector,
            error_code,
            rip: 0x10_2345,
            rsp: 0x14_0000,
            rflags: 0x10002,
            cs: 8,
            ss: 0x10,
            cr2,
            stack_overflow: false,
        }
    }

    #[test]
    fn page_fault_report_names_vector_rip_error_code_and_cr2() {
        let line = exception(14, 0, Some(0xdead_0000_0000)).to_string();
        assert_eq!(
            line,
            "CPU exception: vector 14 (page fault) at RIP=0x102345, error code=0x0 (read, \
             not-present page, kernel mode), CR2=0xdead00000000, RSP=0x140000, RFLAGS=0x10002, \
             CS=0x8, SS=0x10"
        );
    }

    #[test]
    fn page_fault_error_bits_are_decoded() {
        let text = ErrorCode {
            vector: 14,
            code: 0b1_1011,
        }
        .to_string();
        assert_eq!(
            text,
            "0x1b (instruction fetch, protection violation, kernel mode, reserved bit set)"
        );
        assert_eq!(
            ErrorCode {
                vector: 14,
                code: 0b110
            }
            .to_string(),
            "0x6 (write, not-present page, user mode)"
        );
    }

    #[test]
    fn a_vector_without_a_gate_is_named_from_the_np_error_code() {
        // #NP for vector 0x40 delivered from outside (EXT) through the IDT (IDT bit).
        let text = ErrorCode {
            vector: 11,
            code: (0x40 << 3) | 0b11,
        }
        .to_string();
        assert_eq!(
            text,
            "0x203 (IDT vector 64: no handler installed, external event)"
        );
    }

    #[test]
    fn selector_error_codes() {
        assert_eq!(
            ErrorCode {
                vector: 13,
                code: 0x18
            }
            .to_string(),
            "0x18 (GDT selector 0x18)"
        );
        assert_eq!(
            ErrorCode {
                vector: 13,
                code: 0x1c
            }
            .to_string(),
            "0x1c (LDT selector 0x18)"
        );
        assert_eq!(
            ErrorCode {
                vector: 13,
                code: 0
            }
            .to_string(),
            "0x0"
        );
    }

    #[test]
    fn other_exceptions_have_no_cr2() {
        let line = exception(6, 0, None).to_string();
        assert!(
            line.starts_with("CPU exception: vector 6 (invalid opcode) at RIP=0x102345"),
            "{line}"
        );
        assert!(!line.contains("CR2"));
    }

    #[test]
    fn a_stack_overflow_says_so() {
        let e = Exception {
            stack_overflow: true,
            ..exception(8, 0, None)
        };
        assert!(
            e.to_string()
                .ends_with("(stack overflow: the 2 MiB app stack is exhausted)"),
            "{e}"
        );
    }

    #[test]
    fn a_fault_while_reporting_gets_a_raw_line_naming_both() {
        let now = exception(14, 2, Some(0xfee0_0000));
        let line = RawLine::nested(&now, Some((13, 0xab_cdef)));
        assert_eq!(
            core::str::from_utf8(line.bytes()).unwrap(),
            "roam: CPU exception 0xe at RIP=0x102345 CR2=0xfee00000 RSP=0x140000 while \
             reporting exception 0xd at RIP=0xabcdef\n"
        );
        let zero = RawLine::nested(&exception(0, 0, None), Some((0, u64::MAX)));
        assert_eq!(
            core::str::from_utf8(zero.bytes()).unwrap(),
            "roam: CPU exception 0x0 at RIP=0x102345 RSP=0x140000 while reporting exception \
             0x0 at RIP=0xffffffffffffffff\n"
        );
        let panic = RawLine::nested(&exception(6, 0, None), None);
        assert!(
            panic.bytes().ends_with(b" while reporting a panic\n"),
            "{:?}",
            core::str::from_utf8(panic.bytes())
        );
    }

    #[test]
    fn every_vector_has_a_name() {
        assert_eq!(name(8), "double fault");
        assert_eq!(name(15), "reserved vector");
        assert_eq!(name(200), "reserved vector");
    }
}
