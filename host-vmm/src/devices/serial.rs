//! COM1: a 16550 UART (vm-superio's model) whose transmitter writes to host-vmm's stdout.
//!
//! Each byte is written and flushed at once, so whoever reads stdout sees a line the moment
//! the guest finishes it. The guest already pays a VM exit per byte, so a `write(2)` per byte
//! adds little. If stdout goes away (`EPIPE`) or fails, output is dropped and the guest keeps
//! running: its exit status still matters.

use super::BusDevice;
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

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A writer that never fails: after the first error it drops everything.
#[derive(Debug)]
pub struct ConsoleWriter<W: Write> {
    out: W,
    broken: bool,
}

impl<W: Write> ConsoleWriter<W> {
    /// Wraps `out`.
    pub fn new(out: W) -> Self {
        ConsoleWriter { out, broken: false }
    }

    /// The wrapped writer.
    pub fn inner(&self) -> &W {
        &self.out
    }
}

impl<W: Write> Write for ConsoleWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Ok(buf.len());
        }
        if let Err(e) = self.out.write_all(buf).and_then(|()| self.out.flush()) {
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
    pub fn output(&self) -> &W {
        self.uart.writer().inner()
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
        assert_eq!(s.output(), b"Hello\n");
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
        assert!(s.output().is_empty());
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
        assert_eq!(w.inner().0, 1, "no retries after the pipe broke");
    }
}
