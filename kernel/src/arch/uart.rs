//! COM1, a 16550 UART at port 0x3F8: just enough to transmit.
//!
//! Virtual UARTs need no baud-rate setup. Each register access is a VM exit, so callers
//! check [`transmitter_empty`] once and then send up to [`FIFO_DEPTH`] bytes.

use super::port;

const COM1: u16 = 0x3F8;
const FCR: u16 = COM1 + 2;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;
/// FIFO enable, clear receive and transmit FIFOs.
const FCR_ENABLE_AND_CLEAR: u8 = 0b111;

/// Bytes the transmit FIFO holds once it is empty.
pub const FIFO_DEPTH: usize = 16;

/// Turns the FIFOs on, so [`FIFO_DEPTH`] bytes can follow each empty check.
pub fn enable_fifo() {
    // SAFETY: the FIFO control register of COM1 has no memory effects.
    unsafe { port::outb(FCR, FCR_ENABLE_AND_CLEAR) };
}

/// Whether the transmit FIFO is empty (a missing UART reads as all ones: "empty").
pub fn transmitter_empty() -> bool {
    port::inb(LSR) & LSR_THR_EMPTY != 0
}

/// Queues one byte for transmission.
pub fn send(byte: u8) {
    // SAFETY: COM1's transmit register has no memory effects.
    unsafe { port::outb(COM1, byte) };
}
