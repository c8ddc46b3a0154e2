//! COM1's saved state as plain data: vm-superio's register file and receive FIFO
//! ([`SerialState`]), and the checks a saved one must pass before it is applied
//! ([`SerialState::check`]).

use crate::devices::DeviceStateError;
use serde::{Deserialize, Serialize};

/// Bytes the 16550's receive FIFO holds.
const FIFO_SIZE: usize = 64;
/// IIR bits vm-superio keeps (no interrupt, THR empty, data available).
const IIR_BITS: u8 = 0b111;

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

impl SerialState {
    /// Whether this is a state the UART can be in: a FIFO of at most 64 bytes and an IIR
    /// vm-superio can hold. Checked before a restore changes anything.
    pub fn check(&self) -> Result<(), DeviceStateError> {
        const DEV: &str = "serial";
        if self.in_buffer.len() > FIFO_SIZE {
            return Err(DeviceStateError::invalid(
                DEV,
                "receive FIFO",
                format!("{} bytes, the FIFO holds {FIFO_SIZE}", self.in_buffer.len()),
            ));
        }
        let iir = self.interrupt_identification;
        if iir & !IIR_BITS != 0 || iir == 0 {
            return Err(DeviceStateError::invalid(
                DEV,
                "IIR",
                format!("{iir:#04x} is not a state of this UART"),
            ));
        }
        Ok(())
    }
}
