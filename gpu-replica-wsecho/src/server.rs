//! The echo server: one thread per connection, HTTP/1.1 keep-alive. A WebSocket upgrade
//! echoes messages; any other request gets its own head back as the body, so a test can see
//! which headers a proxy let through; `/big?bytes=N` serves N bytes for download tests.

use std::io::{self, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::frame::{self, Frame, Header};
use crate::handshake::accept_key;
use crate::http::{self, has_token, header};

/// Size of the chunks a `/big` body is written in.
const CHUNK: usize = 64 * 1024;
/// The `/big` body's repeating line; its length divides `CHUNK`, so chunks join seamlessly.
const PATTERN: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n";

/// Serves connections from `listener` until the process ends.
pub fn run(listener: TcpListener) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                thread::spawn(move || {
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    if let Err(e) = handle(stream) {
                        eprintln!("connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors, say: wait rather than spin, and keep serving.
                eprintln!("accept: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Answers requests on one connection until the client leaves or asks to close.
fn handle(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    while let Some(raw) = http::read_head(&mut reader)? {
        let head = String::from_utf8_lossy(&raw);
        let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
        let (method, target, version) = (
            request_line.next(),
            request_line.next().unwrap_or_default(),
            request_line.next(),
        );
        let upgrade = has_token(header(&head, "upgrade"), "websocket")
            && has_token(header(&head, "connection"), "upgrade");
        if let (true, Some(key)) = (upgrade, header(&head, "sec-websocket-key")) {
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_key(key)
            );
            writer.write_all(answer.as_bytes())?;
            return echo_websocket(&mut reader, &mut writer);
        }
        // Bodies are read and dropped so the next request on the connection parses;
        // chunked request bodies are not supported.
        if let Some(length) = header(&head, "content-length") {
            let length: u64 = length.parse().map_err(|_| invalid("bad Content-Length"))?;
            io::copy(&mut io::Read::take(&mut reader, length), &mut io::sink())?;
        }
        let connection = header(&head, "connection");
        let keep_alive = if version == Some("HTTP/1.0") {
            has_token(connection, "keep-alive")
        } else {
            !has_token(connection, "close")
        };
        let close = if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        let with_body = method != Some("HEAD");
        match big_download_size(target) {
            Some(size) => {
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {size}\r\n{close}\r\n"
                );
                writer.write_all(answer.as_bytes())?;
                if with_body {
                    write_pattern(&mut writer, size)?;
                }
            }
            None => {
                let mut answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
                     Content-Length: {}\r\n{close}\r\n",
                    raw.len()
                )
                .into_bytes();
                if with_body {
                    answer.extend_from_slice(&raw);
                }
                writer.write_all(&answer)?;
            }
        }
        if !keep_alive {
            break;
        }
    }
    Ok(())
}

/// Echoes messages until the client closes, reassembling fragmented ones and answering pings.
fn echo_websocket(reader: &mut impl io::Read, writer: &mut impl Write) -> io::Result<()> {
    // The opcode and bytes so far of a message whose last fragment has not arrived.
    let mut partial: Option<(u8, Vec<u8>)> = None;
    loop {
        let header = Header::read_from(reader)?;
        let buffered = partial.as_ref().map_or(0, |(_, bytes)| bytes.len() as u64);
        if header.len.saturating_add(buffered) > frame::MAX_MESSAGE {
            return close(writer, 1009);
        }
        let payload = header.read_payload(reader)?;
        let message = match (header.opcode, partial.take()) {
            (frame::TEXT | frame::BINARY, None) => (header.opcode, payload),
            (frame::CONTINUATION, Some((opcode, mut bytes))) => {
                bytes.extend_from_slice(&payload);
                (opcode, bytes)
            }
            (frame::PING, held) => {
                partial = held;
                Frame::new(frame::PONG, &payload).write_to(writer, None)?;
                continue;
            }
            (frame::PONG, held) => {
                partial = held;
                continue;
            }
            (frame::CLOSE, _) => {
                // Echo the status code (RFC 6455 §5.5.1) and end the connection.
                let code = payload.get(..2).unwrap_or_default();
                return Frame::new(frame::CLOSE, code).write_to(writer, None);
            }
            // A new message inside a fragmented one, a stray continuation, an unknown opcode.
            _ => return close(writer, 1002),
        };
        if header.fin {
            Frame::new(message.0, &message.1).write_to(writer, None)?;
        } else {
            partial = Some(message);
        }
    }
}

/// Sends a close frame with status `code`, the server's last word on the connection.
fn close(writer: &mut impl Write, code: u16) -> io::Result<()> {
    Frame::new(frame::CLOSE, &code.to_be_bytes()).write_to(writer, None)
}

/// The N of a `/big?bytes=N` request target (under any prefix: a proxy may keep its own).
fn big_download_size(target: &str) -> Option<u64> {
    let (path, query) = target.split_once('?')?;
    let size = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("bytes="))?;
    if path == "/big" || path.ends_with("/big") {
        size.parse().ok()
    } else {
        None
    }
}

/// Writes `size` bytes of the repeating pattern, a chunk at a time.
fn write_pattern(writer: &mut impl Write, mut size: u64) -> io::Result<()> {
    let chunk: Vec<u8> = PATTERN.iter().cycle().take(CHUNK).copied().collect();
    while size > 0 {
        let n = size.min(CHUNK as u64) as usize;
        writer.write_all(&chunk[..n])?;
        size -= n as u64;
    }
    Ok(())
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}
