//! The serial console: everything the kernel and the app print goes to COM1.
//!
//! Writes are synchronous and unlocked: there is one CPU, and the only output from interrupt
//! context is a fatal report, which may interleave with a half-written line but never blocks.

use crate::arch::uart;
use core::fmt::{self, Write};

/// Polls of the line status before giving up on a transmitter that never drains (output is
/// then dropped rather than hanging the kernel). Virtual UARTs are always ready at once.
const MAX_POLLS: u32 = 100_000;

/// Prepares the UART. Cheap: one port write.
pub fn init() {
    uart::enable_fifo();
}

/// Writes `bytes`: one status check per [`uart::FIFO_DEPTH`] bytes, not one per byte.
pub fn write(bytes: &[u8]) {
    for chunk in bytes.chunks(uart::FIFO_DEPTH) {
        let mut polls = 0;
        while !uart::transmitter_empty() && polls < MAX_POLLS {
            polls += 1;
        }
        for &byte in chunk {
            uart::send(byte);
        }
    }
}

/// Formats `args` into a small buffer and writes it out in FIFO-sized chunks, so
/// formatting's many small pieces do not each cost a status check.
pub fn print(args: fmt::Arguments<'_>) {
    let mut line = LineBuffer {
        buf: [0; LINE],
        len: 0,
    };
    let _ = line.write_fmt(args);
    line.flush();
}

const LINE: usize = 256;

struct LineBuffer {
    buf: [u8; LINE],
    len: usize,
}

impl LineBuffer {
    fn flush(&mut self) {
        write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for LineBuffer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &byte in s.as_bytes() {
            if self.len == LINE {
                self.flush();
            }
            self.buf[self.len] = byte;
            self.len += 1;
        }
        Ok(())
    }
}
