//! COM1: a 16550 UART (vm-superio's model) whose transmitter writes to host-vmm's stdout.
//!
//! The vCPU never waits on stdout: the VM's transmitter writes into an [`output`]
//! ([`SerialOutput`]), a bounded buffer a writer thread drains and flushes, so whoever reads
//! stdout still sees a line the moment the guest finishes it, and a stdout nobody reads
//! costs the guest its output (dropped and counted), never its progress. If stdout goes away
//! (`EPIPE`) or fails, output is dropped and the guest keeps running: its exit status still
//! matters.
//!
//! Migration state ([`SerialState`]): vm-superio's register file (divisor latch, IER, IIR,
//! LCR, LSR, MCR, MSR, scratch) and the receive FIFO (always empty here: the guest gets no
//! input). The interrupt "line" is an irqfd pulse on GSI 4, so it has no level to save
//! between accesses; an interrupt the guest has not taken yet is in the irqchip state the
//! VM saves, and the IIR says which cause is pending. Restoring pulses the line again when
//! the IIR has an enabled cause pending (vm-superio's rule), which a driver tolerates as it
//! reads the IIR first.
//!
//! Layout: this file is the UART on the port bus; `output.rs` its way to stdout;
//! `state.rs` holds [`SerialState`] and the checks a saved one passes, and `tests.rs` the
//! unit tests.

pub mod output;
mod state;

#[cfg(test)]
mod tests;

pub use output::{OutputCounters, OutputStats, SerialOutput};
pub use state::SerialState;

use super::{BusDevice, DeviceStateError, Persist};
use std::io::{self, Write};
use vm_superio::{Serial, Trigger, serial::NoEvents};
use vmm_sys_util::eventfd::EventFd;

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
        state.check()?;
        let iir = state.interrupt_identification;
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
