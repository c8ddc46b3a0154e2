//! Output: stdout and stderr both go to the serial console. There is no other file.

use super::fail;
use crate::serial;
use hermit_abi::{EBADF, EFAULT, EINVAL, STDERR_FILENO, STDOUT_FILENO};

fn is_console(fd: i32) -> bool {
    fd == STDOUT_FILENO || fd == STDERR_FILENO
}

/// Writes `len` bytes from `buf` to fd 1 or 2; other fds get `-EBADF`.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes (or `len` must be 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_write(fd: i32, buf: *const u8, len: usize) -> isize {
    if !is_console(fd) {
        return fail(EBADF) as isize;
    }
    if len == 0 {
        return 0;
    }
    if buf.is_null() {
        return fail(EFAULT) as isize;
    }
    let Ok(written) = isize::try_from(len) else {
        return fail(EINVAL) as isize;
    };
    // SAFETY: the caller guarantees `buf` is valid for `len` bytes; it is non-null.
    serial::write(unsafe { core::slice::from_raw_parts(buf, len) });
    written
}
