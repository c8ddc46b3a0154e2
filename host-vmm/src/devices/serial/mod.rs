//! COM1: a 16550 UART (vm-superio's model) whose transmitter writes to host-vmm's stdout.
//!
//! Each byte is written and flushed at once, so whoever reads stdout sees a line the moment
//! the guest finishes it. The guest already pays a VM exit per byte, so a `write(2)` per byte
//! adds little. If stdout goes away (`EPIPE`) or fails, output is dropped and the guest keeps
//! running: its exit status still matters.
//!
//! Migration state ([`SerialState`]): vm-superio's register file (divisor latch, IER, IIR,
//! LCR, LSR, MCR, MSR, scratch) and the receive FIFO (always empty here: the guest gets no
//! input). The interrupt "line" is an irqfd pulse on GSI 4, so it has no level to save
//! between accesses; an interrupt the guest has not taken yet is in the irqchip state the
//! VM saves, and the IIR says which cause is pending. Restoring pulses the line again when
//! the IIR has an enabled cause pending (vm-superio's rule), which a driver tolerates as it
//! reads the IIR first.

use super::{BusDevice, DeviceStateError, Persist};
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use vm_superio::{Serial, Trigger, serial::NoEvents};
use vmm_sys_util::eventfd::EventFd;

/// Bytes the 16550's receive FIFO holds.
const FIFO_SIZE: usize = 64;
/// IIR bits vm-superio keeps (no interrupt, THR empty, data available).
const IIR_BITS: u8 = 0b111;

/// COM1's first port.
pub const COM1_BASE: u64 = 0x3F8;
/// Number of 16550 registers.
pub const COM1_LEN: u64 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// An interrupt line raised by writing to an eventfd (an irqfd on the VM side).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    /// Never fails: an eventfd write fails only when its counter is about to overflow, and
    /// the line is then raised anyway.
    fn trigger(&self) -> io::Result<()> {
        if let Err(e) = self.0.write(1) {
            log::debug!("serial: cannot raise the interrupt: {e}");
        }
        Ok(())
    }
}

/// A writer that never fails: after the first error it drops everything.
#[derive(Debug)]
pub struct ConsoleWriter<W: Write> {
    /// `None` only while a restore moves the writer into a new UART.
    out: Option<W>,
    broken: bool,
}

impl<W: Write> ConsoleWriter<W> {
    /// Wraps `out`.
    pub fn new(out: W) -> Self {
        ConsoleWriter {
            out: Some(out),
            broken: false,
        }
    }

    /// The wrapped writer.
    pub fn inner(&self) -> Option<&W> {
        self.out.as_ref()
    }
}

impl<W: Write> Write for ConsoleWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(out) = self.out.as_mut().filter(|_| !self.broken) else {
            return Ok(buf.len());
        };
        if let Err(e) = out.write_all(buf).and_then(|()| out.flush()) {
            self.broken = true;
            if e.kind() == io::ErrorKind::BrokenPipe {
                log::debug!("serial: stdout closed; dropping guest output from now on");
            } else {
                log::warn!("serial: cannot write to stdout ({e}); dropping guest output");
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The UART model on the port bus.
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<EventFdTrigger, NoEvents, ConsoleWriter<W>>,
}

impl<W: Write + Send> SerialDevice<W> {
    /// A UART that raises `irq` and transmits to `out`.
    pub fn new(irq: EventFd, out: W) -> Self {
        SerialDevice {
            uart: Serial::new(EventFdTrigger(irq), ConsoleWriter::new(out)),
        }
    }

    /// Where transmitted bytes went (for tests).
    pub fn output(&self) -> Option<&W> {
        self.uart.writer().inner()
    }
}

impl<W: Write + Send> Persist for SerialDevice<W> {
    type State = SerialState;

    /// The UART's registers and FIFO for migration.
    fn save(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Applies a saved state; the output and the interrupt line stay this device's. An
    /// invalid state changes nothing.
    fn restore(&mut self, state: SerialState) -> Result<(), DeviceStateError> {
        const DEV: &str = "serial";
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(DeviceStateError::invalid(
                DEV,
                "receive FIFO",
                format!(
                    "{} bytes, the FIFO holds {FIFO_SIZE}",
                    state.in_buffer.len()
                ),
            ));
        }
        let iir = state.interrupt_identification;
        if iir & !IIR_BITS != 0 || iir == 0 {
            return Err(DeviceStateError::invalid(
                DEV,
                "IIR",
                format!("{iir:#04x} is not a state of this UART"),
            ));
        }
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| DeviceStateError::invalid(DEV, "interrupt line", e.to_string()))?;
        let placeholder = ConsoleWriter {
            out: None,
            broken: false,
        };
        let old = std::mem::replace(
            &mut self.uart,
            Serial::new(
                EventFdTrigger(irq.try_clone().map_err(|e| {
                    DeviceStateError::invalid(DEV, "interrupt line", e.to_string())
                })?),
                placeholder,
            ),
        );
        let writer = old.into_writer();
        let s = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: iir,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer,
        };
        // Cannot fail: the FIFO was checked and the trigger never fails.
        match Serial::from_state(&s, EventFdTrigger(irq), NoEvents, writer) {
            Ok(uart) => {
                self.uart = uart;
                Ok(())
            }
            Err(e) => Err(DeviceStateError::invalid(
                DEV,
                "registers",
                format!("{e:?}"),
            )),
        }
    }
}

/// The 16550's state for migration (vm-superio's `SerialState`, which has no serde).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR (pending causes).
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Receive FIFO (at most 64 bytes).
    pub in_buffer: Vec<u8>,
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The 16550's registers are one byte wide; wider accesses read as nothing there.
        match (data, u8::try_from(offset)) {
            ([byte], Ok(offset)) => *byte = self.uart.read(offset),
            (data, _) => data.fill(0xFF),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let ([byte], Ok(offset)) = (data, u8::try_from(offset)) {
            // Only the interrupt eventfd can fail here (the writer never does).
            if let Err(e) = self.uart.write(offset, *byte) {
                log::debug!("serial: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u64 = 0;
    const LSR: u64 = 5;

    fn uart() -> SerialDevice<Vec<u8>> {
        SerialDevice::new(EventFd::new(libc::EFD_NONBLOCK).unwrap(), Vec::new())
    }

    #[test]
    fn transmitted_bytes_reach_the_output() {
        let mut s = uart();
        for b in b"Hello\n" {
            s.write(THR, &[*b]);
        }
        assert_eq!(s.output().unwrap(), b"Hello\n");
    }

    #[test]
    fn the_transmitter_is_always_ready() {
        let mut s = uart();
        let mut lsr = [0u8];
        s.read(LSR, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let mut s = uart();
        s.write(THR, b"AB");
        assert!(s.output().unwrap().is_empty());
        let mut wide = [0u8; 2];
        s.read(LSR, &mut wide);
        assert_eq!(wide, [0xFF, 0xFF]);
    }

    /// Fails like a closed pipe.
    struct ClosedPipe(usize);

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.0 += 1;
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_stdout_drops_output_without_failing() {
        let mut w = ConsoleWriter::new(ClosedPipe(0));
        assert_eq!(w.write(b"abc").unwrap(), 3);
        assert_eq!(w.write(b"def").unwrap(), 3);
        assert_eq!(w.inner().unwrap().0, 1, "no retries after the pipe broke");
    }

    const IER: u64 = 1;
    const LCR: u64 = 3;
    const SCR: u64 = 7;

    #[test]
    fn state_survives_save_restore_save_and_output_stays_local() {
        let mut s = uart();
        s.write(LCR, &[0x80]); // DLAB: divisor 3
        s.write(0, &[3]);
        s.write(1, &[0]);
        s.write(LCR, &[0x03]);
        s.write(IER, &[0x02]); // THR empty interrupt: pending at once
        s.write(SCR, &[0x5A]);
        s.write(THR, b"x");
        let saved = s.save();
        assert_eq!(saved.scratch, 0x5A);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let line = irq.try_clone().unwrap();
        let mut fresh = SerialDevice::new(irq, Vec::new());
        fresh.restore(saved.clone()).unwrap();
        assert_eq!(fresh.save(), saved);
        assert!(
            line.read().is_ok(),
            "an enabled pending cause pulses the line again"
        );
        let mut b = [0u8];
        fresh.read(SCR, &mut b);
        assert_eq!(b[0], 0x5A);
        fresh.write(THR, b"y");
        assert_eq!(
            fresh.output().unwrap(),
            b"y",
            "the destination's own output"
        );
        let bytes = postcard::to_allocvec(&saved).unwrap();
        assert_eq!(postcard::from_bytes::<SerialState>(&bytes).unwrap(), saved);
    }

    #[test]
    fn invalid_serial_states_are_refused_and_change_nothing() {
        let mut s = uart();
        s.write(SCR, &[7]);
        let before = s.save();
        let mut bad = before.clone();
        bad.in_buffer = vec![0; 65];
        assert!(matches!(
            s.restore(bad),
            Err(DeviceStateError::Invalid { field, .. }) if field == "receive FIFO"
        ));
        for iir in [0u8, 0x08, 0xFF] {
            let mut bad = before.clone();
            bad.interrupt_identification = iir;
            assert!(s.restore(bad).is_err());
        }
        assert_eq!(s.save(), before);
        s.write(THR, b"z");
        assert_eq!(s.output().unwrap(), b"z");
    }
}
