//! A tiny bounded JSON scanner: just enough to read the top-level members of the objects an
//! iperf3 client sends (its parameters and its results).
//!
//! It checks the whole text is one well-formed JSON object and hands each top-level member
//! to a callback as a key (raw bytes between the quotes, escapes left as they are) and a
//! [`Value`] that keeps only booleans and integers; nested objects, arrays, strings, `null`
//! and non-integer numbers are checked and skipped. Nesting deeper than [`MAX_DEPTH`] is an
//! error, so the scanner's recursion is bounded whatever the peer sends. Pure logic: tested
//! on the host.

use core::fmt;

/// Deepest nesting of objects and arrays accepted.
pub const MAX_DEPTH: usize = 16;

/// A top-level member's value, as far as the server cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits an `i64` (no fraction, no exponent).
    Int(i64),
    /// Anything else: a string, `null`, an object, an array, another number.
    Other,
}

/// Why a text is not a JSON object the scanner accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The text ended in the middle of a value.
    Truncated,
    /// An unexpected byte at this offset.
    Syntax(usize),
    /// Objects or arrays nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("JSON ends early"),
            Error::Syntax(at) => write!(f, "JSON syntax error at byte {at}"),
            Error::TooDeep => write!(f, "JSON nested deeper than {MAX_DEPTH}"),
        }
    }
}

/// Scans `text`, one JSON object, calling `member` for each of its top-level members.
pub fn members(text: &[u8], mut member: impl FnMut(&[u8], Value)) -> Result<(), Error> {
    let mut s = Scanner { text, pos: 0 };
    s.skip_ws();
    s.expect(b'{')?;
    s.skip_ws();
    if s.peek()? == b'}' {
        s.pos += 1;
    } else {
        loop {
            s.skip_ws();
            let key = s.string()?;
            s.skip_ws();
            s.expect(b':')?;
            s.skip_ws();
            let value = s.value(1)?;
            member(key, value);
            s.skip_ws();
            match s.next()? {
                b',' => {}
                b'}' => break,
                _ => return Err(Error::Syntax(s.pos - 1)),
            }
        }
    }
    s.skip_ws();
    if s.pos != text.len() {
        return Err(Error::Syntax(s.pos));
    }
    Ok(())
}

struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Result<u8, Error> {
        self.text.get(self.pos).copied().ok_or(Error::Truncated)
    }

    fn next(&mut self) -> Result<u8, Error> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn expect(&mut self, want: u8) -> Result<(), Error> {
        if self.next()? == want {
            Ok(())
        } else {
            Err(Error::Syntax(self.pos - 1))
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    /// A string's raw contents (the scanner is at its opening quote).
    fn string(&mut self) -> Result<&'a [u8], Error> {
        self.expect(b'"')?;
        let start = self.pos;
        loop {
            match self.next()? {
                b'"' => return Ok(&self.text[start..self.pos - 1]),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        for _ in 0..4 {
                            if !self.next()?.is_ascii_hexdigit() {
                                return Err(Error::Syntax(self.pos - 1));
                            }
                        }
                    }
                    _ => return Err(Error::Syntax(self.pos - 1)),
                },
                0..=0x1f => return Err(Error::Syntax(self.pos - 1)),
                _ => {}
            }
        }
    }

    /// One value at nesting `depth` (1 for the top-level object's members).
    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        match self.peek()? {
            b'"' => self.string().map(|_| Value::Other),
            b'{' => self.nested(depth, b'}', true),
            b'[' => self.nested(depth, b']', false),
            b't' => self.literal(b"true", Value::Bool(true)),
            b'f' => self.literal(b"false", Value::Bool(false)),
            b'n' => self.literal(b"null", Value::Other),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(Error::Syntax(self.pos)),
        }
    }

    fn literal(&mut self, word: &[u8], value: Value) -> Result<Value, Error> {
        for &want in word {
            self.expect(want)?;
        }
        Ok(value)
    }

    /// An object (`keyed`) or array, checked and skipped.
    fn nested(&mut self, depth: usize, close: u8, keyed: bool) -> Result<Value, Error> {
        if depth >= MAX_DEPTH {
            return Err(Error::TooDeep);
        }
        self.pos += 1;
        self.skip_ws();
        if self.peek()? == close {
            self.pos += 1;
            return Ok(Value::Other);
        }
        loop {
            self.skip_ws();
            if keyed {
                self.string()?;
                self.skip_ws();
                self.expect(b':')?;
                self.skip_ws();
            }
            self.value(depth + 1)?;
            self.skip_ws();
            match self.next()? {
                b',' => {}
                b if b == close => return Ok(Value::Other),
                _ => return Err(Error::Syntax(self.pos - 1)),
            }
        }
    }

    /// A number; integers that fit an `i64` are kept.
    fn number(&mut self) -> Result<Value, Error> {
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let digits = self.digits()?;
        let int = &self.text[digits.0..digits.1];
        if int.len() > 1 && int[0] == b'0' {
            return Err(Error::Syntax(digits.0));
        }
        let mut integral = true;
        if self.text.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            self.digits()?;
            integral = false;
        }
        if let Some(b'e' | b'E') = self.text.get(self.pos) {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.text.get(self.pos) {
                self.pos += 1;
            }
            self.digits()?;
            integral = false;
        }
        if !integral {
            return Ok(Value::Other);
        }
        let mut n: i64 = 0;
        for &d in int {
            let d = i64::from(d - b'0');
            n = match n.checked_mul(10).and_then(|n| {
                if negative {
                    n.checked_sub(d)
                } else {
                    n.checked_add(d)
                }
            }) {
                Some(n) => n,
                None => return Ok(Value::Other),
            };
        }
        Ok(Value::Int(n))
    }

    /// One or more digits: their range in the text.
    fn digits(&mut self) -> Result<(usize, usize), Error> {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.text.get(self.pos) {
            self.pos += 1;
        }
        if self.pos == start {
            return if self.pos == self.text.len() {
                Err(Error::Truncated)
            } else {
                Err(Error::Syntax(self.pos))
            };
        }
        Ok((start, self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn scan(text: &str) -> Result<Vec<(String, Value)>, Error> {
        let mut out = Vec::new();
        members(text.as_bytes(), |k, v| {
            out.push((String::from_utf8(k.to_vec()).unwrap(), v))
        })?;
        Ok(out)
    }

    #[test]
    fn reads_the_members_of_real_client_parameters() {
        let got = scan(
            r#"{"tcp":true,"omit":0,"time":5,"num":0,"blockcount":0,"parallel":4,"reverse":true,"len":131072,"pacing_timer":1000,"client_version":"3.12"}"#,
        )
        .unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(got[0], ("tcp".into(), Value::Bool(true)));
        assert_eq!(got[5], ("parallel".into(), Value::Int(4)));
        assert_eq!(got[7], ("len".into(), Value::Int(131072)));
        assert_eq!(got[9], ("client_version".into(), Value::Other));
    }

    #[test]
    fn skips_nested_values_strings_and_floats() {
        let got = scan(
            " {\n \"a\" : [1, {\"x\": [true, null]}, \"s\\\"\\u00e9\"], \"b\":-12, \"c\":1.5e-3, \
             \"d\": {}, \"e\": [], \"f\": false, \"g\": 99999999999999999999 } \n",
        )
        .unwrap();
        let want = [
            ("a", Value::Other),
            ("b", Value::Int(-12)),
            ("c", Value::Other),
            ("d", Value::Other),
            ("e", Value::Other),
            ("f", Value::Bool(false)),
            ("g", Value::Other),
        ];
        assert_eq!(got.len(), want.len());
        for ((k, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!((k.as_str(), *v), (wk, wv));
        }
        assert_eq!(scan("{}").unwrap(), []);
        assert_eq!(
            scan(r#"{"min":-9223372036854775808}"#).unwrap()[0].1,
            Value::Int(i64::MIN)
        );
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in [
            "",
            "[]",
            "{",
            "{\"a\"",
            "{\"a\":",
            "{\"a\":1",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{a:1}",
            "{\"a\":tru}",
            "{\"a\":01}",
            "{\"a\":-}",
            "{\"a\":1.}",
            "{\"a\":\"x}",
            "{\"a\":1} x",
            "{\"a\":[1,]}",
            "{\"a\":\"\\q\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":\"\u{1}\"}",
            "{\"a\":1}}",
            "\u{0}",
        ] {
            assert!(scan(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(scan(&deep), Err(Error::TooDeep));
        let ok = format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(scan(&ok).unwrap()[0].1, Value::Other);
    }
}
