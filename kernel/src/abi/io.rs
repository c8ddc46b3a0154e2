//! Reading and writing descriptors: stdout and stderr go to the serial console; sockets go
//! to the socket layer (`read` is `recv`, `write` is `send`). There are no files. The
//! vectored calls (`readv`, `writev`, behind std's `read_vectored`/`write_vectored`) are
//! built on the plain ones.

use super::{fail, socket};
use crate::serial;
use hermit_abi::{EBADF, EFAULT, EINVAL, STDERR_FILENO, STDOUT_FILENO, iovec};

/// Most buffers one vectored call takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

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

/// The `iovcnt` buffers at `iov` as a slice, after checking the count and the total length;
/// `-errno` as the error.
///
/// # Safety
/// `iov` must be valid for reads of `iovcnt` entries (or `iovcnt` must be 0).
unsafe fn buffers<'a>(iov: *const iovec, iovcnt: usize) -> Result<&'a [iovec], isize> {
    if iovcnt == 0 {
        return Ok(&[]);
    }
    if iovcnt > IOV_MAX {
        return Err(fail(EINVAL) as isize);
    }
    if iov.is_null() {
        return Err(fail(EFAULT) as isize);
    }
    // SAFETY: the caller guarantees `iov` is valid for `iovcnt` entries; it is non-null.
    let bufs = unsafe { core::slice::from_raw_parts(iov, iovcnt) };
    let total = bufs
        .iter()
        .try_fold(0usize, |sum, b| sum.checked_add(b.iov_len));
    match total {
        Some(total) if isize::try_from(total).is_ok() => Ok(bufs),
        _ => Err(fail(EINVAL) as isize),
    }
}

/// Writes the buffers in order, as `sys_write` each; stops at the first short write or error
/// (an error after some bytes returns their count).
///
/// # Safety
/// `iov` must be valid for reads of `iovcnt` entries, each describing readable memory.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_writev(fd: i32, iov: *const iovec, iovcnt: usize) -> isize {
    // SAFETY: forwarded from the caller.
    let bufs = match unsafe { buffers(iov, iovcnt) } {
        Ok(bufs) => bufs,
        Err(e) => return e,
    };
    let mut done = 0isize;
    for b in bufs.iter().filter(|b| b.iov_len > 0) {
        // SAFETY: the caller guarantees each buffer is readable for its length.
        let n = unsafe { sys_write(fd, b.iov_base.cast(), b.iov_len) };
        if n < 0 {
            return if done > 0 { done } else { n };
        }
        done += n;
        if n.unsigned_abs() < b.iov_len {
            break;
        }
    }
    done
}

/// Reads into the first non-empty buffer, as `sys_read` (a short read, which the caller
/// must expect anyway): a second read could block after data already arrived.
///
/// # Safety
/// `iov` must be valid for reads of `iovcnt` entries, each describing writable memory.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_readv(fd: i32, iov: *const iovec, iovcnt: usize) -> isize {
    // SAFETY: forwarded from the caller.
    let bufs = match unsafe { buffers(iov, iovcnt) } {
        Ok(bufs) => bufs,
        Err(e) => return e,
    };
    match bufs.iter().find(|b| b.iov_len > 0) {
        // SAFETY: the caller guarantees the buffer is writable for its length.
        Some(b) => unsafe { sys_read(fd, b.iov_base.cast(), b.iov_len) },
        // Nothing to read into: 0 for a socket (without waiting for data), else the error
        // `sys_read` gives every other descriptor.
        None if socket::is_socket(fd) => 0,
        None => fail(EBADF) as isize,
    }
}
