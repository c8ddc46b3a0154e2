//! Reading and writing descriptors: stdout and stderr go to the serial console; sockets go
//! to the socket layer (`read` is `recv`, `write` is `send`). There are no files.

use super::{fail, socket};
use crate::serial;
use hermit_abi::{EBADF, EFAULT, EINVAL, STDERR_FILENO, STDOUT_FILENO};

fn is_console(fd: i32) -> bool {
    fd == STDOUT_FILENO || fd == STDERR_FILENO
}

/// Writes `len` bytes from `buf` to fd 1 or 2 (the console) or to a socket; other fds get
/// `-EBADF`.
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes (or `len` must be 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_write(fd: i32, buf: *const u8, len: usize) -> isize {
    if !is_console(fd) {
        if socket::is_socket(fd) {
            // SAFETY: forwarded from the caller.
            return unsafe { socket::send(fd, buf.cast(), len, None) };
        }
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

/// Reads up to `len` bytes from a socket into `buf` (`recv`); other fds, the console
/// included, get `-EBADF`: there is no input.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes (or `len` must be 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_read(fd: i32, buf: *mut u8, len: usize) -> isize {
    if !socket::is_socket(fd) {
        return fail(EBADF) as isize;
    }
    // SAFETY: forwarded from the caller.
    unsafe { socket::recv(fd, buf, len) }
}
