//! Just enough HTTP/1.1 for both ends: reading a head byte for byte and finding headers in it.

use std::io::{self, BufRead, Read};

/// Largest head accepted; a longer one is an error, not an allocation.
const MAX_HEAD: u64 = 64 * 1024;

/// Reads a request or response head up to and including its empty line, exactly as sent.
/// `Ok(None)` is a connection closed before a new head began (the end of keep-alive).
pub fn read_head(r: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let read = r
            .take(MAX_HEAD - start as u64)
            .read_until(b'\n', &mut head)?;
        let line = &head[start..];
        if read == 0 && head.is_empty() {
            return Ok(None);
        }
        if !line.ends_with(b"\n") {
            let problem = "HTTP head truncated or longer than 64 KiB";
            return Err(io::Error::new(io::ErrorKind::InvalidData, problem));
        }
        if line == b"\r\n" || line == b"\n" {
            // RFC 9112 §2.2: ignore blank lines before a request line.
            if start == 0 {
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
    }
}

/// The value of the first header called `name` (any case) in `head`, trimmed.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// Whether a comma-separated header value lists `token` (any case), as `Connection` does.
pub fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}
