//! The exit port as the guest writes it: 1-, 2- and 4-byte statuses, the first request
//! winning, odd writes ignored and reads all ones.

use super::*;

#[test]
fn a_32_bit_write_requests_that_status() {
    let req = ExitRequest::default();
    let mut dev = DebugExit::new(req.clone());
    assert_eq!(req.status(), None);
    dev.write(0, &101u32.to_le_bytes());
    assert_eq!(req.status(), Some(101));
}

#[test]
fn status_0_is_a_request_too() {
    let req = ExitRequest::default();
    DebugExit::new(req.clone()).write(0, &0u32.to_le_bytes());
    assert_eq!(req.status(), Some(0));
}

#[test]
fn large_statuses_keep_their_low_byte() {
    let req = ExitRequest::default();
    DebugExit::new(req.clone()).write(0, &0x1_0203u32.to_le_bytes());
    assert_eq!(req.status(), Some(3));
}

#[test]
fn narrow_writes_work_and_odd_ones_are_ignored() {
    let req = ExitRequest::default();
    let mut dev = DebugExit::new(req.clone());
    dev.write(1, &[7]);
    dev.write(0, &[1, 2, 3]);
    assert_eq!(req.status(), None);
    dev.write(0, &[42]);
    assert_eq!(req.status(), Some(42));
    dev.write(0, &[43]);
    assert_eq!(req.status(), Some(42), "the first request wins");
}

#[test]
fn reads_are_all_ones() {
    let mut b = [0u8; 4];
    DebugExit::new(ExitRequest::default()).read(0, &mut b);
    assert_eq!(b, [0xFF; 4]);
}
