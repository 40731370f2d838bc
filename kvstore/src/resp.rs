//! RESP2, the Redis serialization protocol, as far as the key-value service
//! speaks it (docs/kvstore.md, "Protocol").
//!
//! Requests: an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`),
//! which is what `redis-cli` and `redis-benchmark` send, or an inline
//! command (`GET k\r\n`, words split on spaces) as typed into `nc`.
//! [`decode`] is incremental: given the bytes received so far it returns
//! one request and how many bytes it used, `Ok(None)` when the request is
//! not complete yet, or a [`DecodeError`] as soon as the input can no longer
//! become a valid request within the [`Limits`]. It never panics and never
//! reads past what it was given.
//!
//! Replies: [`Reply`] and its encoder.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Hard limits on one request; exceeding any is a [`DecodeError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Arguments in one request, the command name included.
    pub max_args: usize,
    /// Bytes in one bulk string (one key or value).
    pub max_bulk: usize,
    /// Bytes of one whole request as sent, framing included.
    pub max_request: usize,
}

impl Limits {
    /// What the guest's server uses: values up to 64 KiB.
    pub const DEFAULT: Limits = Limits { max_args: 1024, max_bulk: 64 * 1024, max_request: 128 * 1024 };
}

/// Longest header line (`*<n>` or `$<n>`) accepted: 20 digits and a sign.
const MAX_HEADER_LINE: usize = 32;

/// Why a request was refused. The connection that sent it is closed after
/// the error reply, because the rest of its input cannot be framed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// `*<n>` with n above `max_args`, or an inline line with too many words.
    TooManyArgs,
    /// `$<n>` with n above `max_bulk` or negative.
    BadBulkLength,
    /// The request is (or would become) larger than `max_request`.
    RequestTooLarge,
    /// A header line that is not `*<integer>` / `$<integer>`.
    BadLength,
    /// Something other than `$` where a bulk string must start.
    ExpectedBulk(u8),
    /// A bulk string not followed by `\r\n`.
    MissingCrlf,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooManyArgs => f.write_str("Protocol error: too many arguments"),
            DecodeError::BadBulkLength => f.write_str("Protocol error: invalid bulk length"),
            DecodeError::RequestTooLarge => f.write_str("Protocol error: request too large"),
            DecodeError::BadLength => f.write_str("Protocol error: invalid multibulk length"),
            DecodeError::ExpectedBulk(b) if b.is_ascii_graphic() => write!(f, "Protocol error: expected '$', got '{}'", *b as char),
            DecodeError::ExpectedBulk(b) => write!(f, "Protocol error: expected '$', got byte {b:#04x}"),
            DecodeError::MissingCrlf => f.write_str("Protocol error: bulk string not followed by CRLF"),
        }
    }
}

/// One decoded request: its arguments, the command name first. May be
/// empty (an empty inline line, `*0`): the caller skips it.
pub type Request = Vec<Vec<u8>>;

/// Decode one request from the front of `buf`: `Ok(Some((request, used)))`,
/// `Ok(None)` if more bytes are needed, or the error that ends the
/// connection.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, DecodeError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => decode_array(buf, limits),
        Some(_) => decode_inline(buf, limits),
    }
}

/// The line that starts at `from`, without its `\r\n`, and the offset just
/// after it; `Ok(None)` if no full line is there yet and it may still fit
/// in `max` bytes.
fn header_line(buf: &[u8], from: usize, max: usize) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let rest = buf.get(from..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\n') {
        Some(nl) if nl <= max && nl > 0 && rest[nl - 1] == b'\r' => Ok(Some((&rest[..nl - 1], from + nl + 1))),
        Some(_) => Err(DecodeError::BadLength),
        None if rest.len() > max => Err(DecodeError::BadLength),
        None => Ok(None),
    }
}

/// A signed decimal integer, digits only (an optional leading `-`).
pub(crate) fn parse_int(digits: &[u8]) -> Option<i64> {
    let (negative, body) = match digits.split_first() {
        Some((b'-', body)) => (true, body),
        _ => (false, digits),
    };
    if body.is_empty() {
        return None;
    }
    let mut value: i64 = 0;
    for &d in body {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

fn decode_array(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, DecodeError> {
    let Some((line, mut pos)) = header_line(buf, 1, MAX_HEADER_LINE)? else { return Ok(None) };
    let count = parse_int(line).ok_or(DecodeError::BadLength)?;
    if count <= 0 {
        return Ok(Some((Vec::new(), pos)));
    }
    if count as u64 > limits.max_args as u64 {
        return Err(DecodeError::TooManyArgs);
    }
    let mut args = Vec::with_capacity(count as usize);
    for _ in 0..count {
        match buf.get(pos) {
            None => return check_size(pos, limits),
            Some(b'$') => {}
            Some(&other) => return Err(DecodeError::ExpectedBulk(other)),
        }
        let Some((line, data)) = header_line(buf, pos + 1, MAX_HEADER_LINE)? else { return check_size(buf.len(), limits) };
        let len = parse_int(line).ok_or(DecodeError::BadBulkLength)?;
        if len < 0 || len as u64 > limits.max_bulk as u64 {
            return Err(DecodeError::BadBulkLength);
        }
        let end = data + len as usize;
        if end + 2 > limits.max_request {
            return Err(DecodeError::RequestTooLarge);
        }
        let (Some(value), Some(crlf)) = (buf.get(data..end), buf.get(end..end + 2)) else { return Ok(None) };
        if crlf != b"\r\n" {
            return Err(DecodeError::MissingCrlf);
        }
        args.push(value.to_vec());
        pos = end + 2;
    }
    Ok(Some((args, pos)))
}

/// `Ok(None)` (wait for more) unless `seen` bytes already exceed the limit.
fn check_size(seen: usize, limits: &Limits) -> Result<Option<(Request, usize)>, DecodeError> {
    if seen > limits.max_request {
        Err(DecodeError::RequestTooLarge)
    } else {
        Ok(None)
    }
}

/// An inline command: one line, words separated by spaces or tabs.
fn decode_inline(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, DecodeError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else { return check_size(buf.len(), limits) };
    if nl + 1 > limits.max_request {
        return Err(DecodeError::RequestTooLarge);
    }
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let mut args = Vec::new();
    for word in line.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty()) {
        if args.len() == limits.max_args {
            return Err(DecodeError::TooManyArgs);
        }
        if word.len() > limits.max_bulk {
            return Err(DecodeError::BadBulkLength);
        }
        args.push(word.to_vec());
    }
    Ok(Some((args, nl + 1)))
}

/// A reply, as RESP2 encodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(&'static str),
    /// `-ERR ...`: the text includes the error prefix (`ERR`, `WRONGTYPE`).
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(Vec<u8>),
    /// `$-1`: no such key.
    Null,
    /// `*n` followed by the elements.
    Array(Vec<Reply>),
}

impl Reply {
    /// An `ERR` error with this message.
    pub fn err(message: impl fmt::Display) -> Reply {
        Reply::Error(alloc::format!("ERR {message}"))
    }

    /// Append the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => line(out, b'-', s.as_bytes()),
            Reply::Integer(n) => line(out, b':', alloc::format!("{n}").as_bytes()),
            Reply::Bulk(data) => {
                line(out, b'$', alloc::format!("{}", data.len()).as_bytes());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', alloc::format!("{}", items.len()).as_bytes());
                for item in items {
                    item.encode(out);
                }
            }
        }
    }
}

/// `<tag><text>\r\n`; a CR or LF inside the text (which would end the line
/// early and desynchronise the client) becomes a space.
fn line(out: &mut Vec<u8>, tag: u8, text: &[u8]) {
    out.push(tag);
    out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const L: Limits = Limits { max_args: 4, max_bulk: 8, max_request: 64 };

    fn args(words: &[&str]) -> Request {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn array_of_bulk_strings_and_every_prefix_waits() {
        let wire = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nrest";
        let full = wire.len() - 4;
        assert_eq!(decode(wire, &L), Ok(Some((args(&["GET", "k"]), full))));
        for cut in 0..full {
            assert_eq!(decode(&wire[..cut], &L), Ok(None), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn inline_commands() {
        assert_eq!(decode(b"SET  k\tv\r\n", &L), Ok(Some((args(&["SET", "k", "v"]), 10))));
        assert_eq!(decode(b"PING\n", &L), Ok(Some((args(&["PING"]), 5))));
        assert_eq!(decode(b"\r\n", &L), Ok(Some((vec![], 2))));
        assert_eq!(decode(b"PIN", &L), Ok(None));
    }

    #[test]
    fn empty_and_null_arrays_are_skipped() {
        assert_eq!(decode(b"*0\r\n", &L), Ok(Some((vec![], 4))));
        assert_eq!(decode(b"*-1\r\n", &L), Ok(Some((vec![], 5))));
    }

    #[test]
    fn limits_are_enforced_before_the_data_arrives() {
        assert_eq!(decode(b"*5\r\n", &L), Err(DecodeError::TooManyArgs));
        assert_eq!(decode(b"*1\r\n$9\r\n", &L), Err(DecodeError::BadBulkLength));
        assert_eq!(decode(b"*1\r\n$-1\r\n", &L), Err(DecodeError::BadBulkLength));
        let big = Limits { max_args: 100, max_bulk: 100, max_request: 64 };
        assert_eq!(decode(b"*2\r\n$60\r\n", &big), Err(DecodeError::RequestTooLarge));
        assert_eq!(decode(&[b'x'; 65], &L), Err(DecodeError::RequestTooLarge));
        assert_eq!(decode(b"a b c d e\n", &L), Err(DecodeError::TooManyArgs));
    }

    #[test]
    fn malformed_framing() {
        assert_eq!(decode(b"*x\r\n", &L), Err(DecodeError::BadLength));
        assert_eq!(decode(b"*1\n", &L), Err(DecodeError::BadLength));
        assert_eq!(decode(b"*99999999999999999999999\r\n", &L), Err(DecodeError::BadLength));
        assert_eq!(decode(b"*1\r\n:1\r\n", &L), Err(DecodeError::ExpectedBulk(b':')));
        assert_eq!(decode(b"*1\r\n$1\r\nab\r\n", &L), Err(DecodeError::MissingCrlf));
        assert_eq!(decode(b"*1\r\n$+1\r\na\r\n", &L), Err(DecodeError::BadBulkLength));
        assert_eq!(decode(&[b'*'; 40], &L), Err(DecodeError::BadLength));
    }

    #[test]
    fn replies_encode_as_resp2() {
        let mut out = Vec::new();
        Reply::Array(vec![Reply::Simple("OK"), Reply::err("no\r\nway"), Reply::Integer(-3), Reply::Bulk(b"a\r\nb".to_vec()), Reply::Null])
            .encode(&mut out);
        assert_eq!(out, b"*5\r\n+OK\r\n-ERR no  way\r\n:-3\r\n$4\r\na\r\nb\r\n$-1\r\n");
    }

    #[test]
    fn integers_parse_strictly() {
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"1 "), None);
    }
}
