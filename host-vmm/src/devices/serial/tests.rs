//! COM1 through its ports: transmitted bytes reach the output, wide accesses, a closed
//! stdout, and the saved state's round trip and refusals.

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
