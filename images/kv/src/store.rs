//! The key-value protocol: one request per line, one reply per line.
//!
//! ```text
//! SET <key> <value>   -> OK            (the value is the rest of the line, spaces included)
//! GET <key>           -> VALUE <value> | NOT_FOUND
//! DEL <key>           -> OK | NOT_FOUND
//! COUNT               -> COUNT <n>
//! anything else       -> ERROR <why>
//! ```
//!
//! Keys and values are bytes without newlines; lines end in `\n` (a `\r` before it is
//! dropped). Pure logic: tested on the host.

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// Longest request line accepted (longer ones get `ERROR line too long`).
pub const MAX_LINE: usize = 1024;

/// The store: state lives in guest memory and moves with the guest.
#[derive(Default)]
pub struct Store {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Store {
    /// Executes every complete line in `input` (removing it) and appends the replies to
    /// `out`. An unfinished line longer than [`MAX_LINE`] is dropped with an error reply.
    pub fn feed(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>) {
        let mut start = 0;
        while let Some(len) = input[start..].iter().position(|&b| b == b'\n') {
            self.execute(&input[start..start + len], out);
            start += len + 1;
        }
        input.drain(..start);
        if input.len() > MAX_LINE {
            out.extend_from_slice(b"ERROR line too long\n");
            input.clear();
        }
    }

    /// Executes one request line (without its `\n`) and appends the reply line to `out`.
    pub fn execute(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (cmd, rest) = split_word(line);
        match (cmd, rest) {
            (b"SET", Some(rest)) => match split_word(rest) {
                (key, Some(value)) if !key.is_empty() => {
                    self.map.insert(key.to_vec(), value.to_vec());
                    out.extend_from_slice(b"OK\n");
                }
                _ => out.extend_from_slice(b"ERROR usage: SET <key> <value>\n"),
            },
            (b"GET", Some(key)) if !key.is_empty() => match self.map.get(key) {
                Some(value) => {
                    out.extend_from_slice(b"VALUE ");
                    out.extend_from_slice(value);
                    out.push(b'\n');
                }
                None => out.extend_from_slice(b"NOT_FOUND\n"),
            },
            (b"DEL", Some(key)) if !key.is_empty() => match self.map.remove(key) {
                Some(_) => out.extend_from_slice(b"OK\n"),
                None => out.extend_from_slice(b"NOT_FOUND\n"),
            },
            (b"COUNT", None) => {
                out.extend_from_slice(b"COUNT ");
                push_decimal(out, self.map.len());
                out.push(b'\n');
            }
            (b"SET" | b"GET" | b"DEL" | b"COUNT", _) => {
                out.extend_from_slice(b"ERROR wrong arguments\n")
            }
            _ => out.extend_from_slice(b"ERROR unknown command (SET, GET, DEL, COUNT)\n"),
        }
    }
}

/// Splits off the first space-separated word; `None` when nothing follows it.
fn split_word(s: &[u8]) -> (&[u8], Option<&[u8]>) {
    match s.iter().position(|&b| b == b' ') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(store: &mut Store, line: &str) -> String {
        let mut out = Vec::new();
        store.execute(line.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn set_get_del_count() {
        let mut s = Store::default();
        assert_eq!(run(&mut s, "COUNT"), "COUNT 0\n");
        assert_eq!(run(&mut s, "SET a hello world"), "OK\n");
        assert_eq!(run(&mut s, "GET a"), "VALUE hello world\n");
        assert_eq!(run(&mut s, "SET a x\r"), "OK\n");
        assert_eq!(run(&mut s, "GET a"), "VALUE x\n");
        assert_eq!(run(&mut s, "SET b "), "OK\n");
        assert_eq!(run(&mut s, "GET b"), "VALUE \n");
        assert_eq!(run(&mut s, "COUNT"), "COUNT 2\n");
        assert_eq!(run(&mut s, "DEL a"), "OK\n");
        assert_eq!(run(&mut s, "DEL a"), "NOT_FOUND\n");
        assert_eq!(run(&mut s, "GET a"), "NOT_FOUND\n");
        assert_eq!(run(&mut s, "COUNT"), "COUNT 1\n");
    }

    #[test]
    fn bad_requests_get_errors_not_panics() {
        let mut s = Store::default();
        for bad in [
            "", "SET", "SET k", "SET  v", "GET", "GET ", "DEL", "COUNT x", "PING", "\u{0}",
        ] {
            let reply = run(&mut s, bad);
            assert!(reply.starts_with("ERROR "), "{bad:?} -> {reply:?}");
            assert!(reply.ends_with('\n') && reply.matches('\n').count() == 1);
        }
        assert_eq!(run(&mut s, "COUNT"), "COUNT 0\n");
    }

    #[test]
    fn feed_splits_lines_and_keeps_the_unfinished_one() {
        let mut s = Store::default();
        let (mut input, mut out) = (b"SET a 1\nGET a\nGET".to_vec(), Vec::new());
        s.feed(&mut input, &mut out);
        assert_eq!(out, b"OK\nVALUE 1\n");
        assert_eq!(input, b"GET");
        input.extend_from_slice(b" a\n");
        out.clear();
        s.feed(&mut input, &mut out);
        assert_eq!(out, b"VALUE 1\n");
        assert!(input.is_empty());
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut s = Store::default();
        let mut input = vec![b'x'; MAX_LINE + 1];
        let mut out = Vec::new();
        s.feed(&mut input, &mut out);
        assert_eq!(out, b"ERROR line too long\n");
        assert!(input.is_empty());
    }

    #[test]
    fn counts_have_all_digits() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 1000, usize::MAX] {
            out.clear();
            push_decimal(&mut out, n);
            assert_eq!(String::from_utf8(out.clone()).unwrap(), n.to_string());
        }
    }
}
