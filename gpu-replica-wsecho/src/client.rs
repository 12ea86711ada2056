//! The client side: the opening handshake, round-trip timing (`rtt`) and holding a quiet or
//! pinging connection open (`hold`) to see whether something in between cuts it.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::frame::{self, Frame, MAX_MESSAGE};
use crate::handshake::{accept_key, base64};
use crate::http;

/// How long `hold` waits for the echo of its last message.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// A `ws://host[:port][/path]` URL.
#[derive(Debug, Clone)]
pub struct WsUrl {
    host: String,
    port: u16,
    path: String,
}

impl WsUrl {
    /// Parses a `ws://` URL; the port defaults to 80 and the path to `/`.
    pub fn parse(url: &str) -> io::Result<WsUrl> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| other("only ws:// URLs are supported"))?;
        let (authority, path) = rest.find('/').map_or((rest, "/"), |at| rest.split_at(at));
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| other("bad port in URL"))?),
            None => (authority, 80),
        };
        Ok(WsUrl {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// An open WebSocket connection, client side.
pub struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
    rng: Rng,
}

impl Client {
    /// Connects and does the opening handshake, sending `headers` (`Name: value`) as well.
    pub fn connect(url: &WsUrl, headers: &[String]) -> io::Result<Client> {
        // `localhost` is answered here so a static binary needs no resolver for it.
        let stream = if url.host.eq_ignore_ascii_case("localhost") {
            TcpStream::connect((Ipv4Addr::LOCALHOST, url.port))?
        } else {
            TcpStream::connect((url.host.as_str(), url.port))?
        };
        stream.set_nodelay(true)?;
        let mut rng = Rng::seeded();
        let key = base64(&[rng.next().to_le_bytes(), rng.next().to_le_bytes()].concat());
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            url.path, url.host, url.port
        );
        for header in headers {
            request.push_str(&format!("{header}\r\n"));
        }
        request.push_str("\r\n");
        (&stream).write_all(request.as_bytes())?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let raw = http::read_head(&mut reader)?
            .ok_or_else(|| other("the server closed the connection instead of answering"))?;
        let head = String::from_utf8_lossy(&raw);
        let status = head.lines().next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("101") {
            return Err(other(&format!("handshake refused:\n{}", head.trim_end())));
        }
        if http::header(&head, "sec-websocket-accept") != Some(accept_key(&key).as_str()) {
            return Err(other(&format!(
                "wrong Sec-WebSocket-Accept:\n{}",
                head.trim_end()
            )));
        }
        Ok(Client {
            reader,
            stream,
            rng,
        })
    }

    /// Sends one frame, masked as RFC 6455 requires of clients.
    pub fn send_frame(&mut self, frame: &Frame) -> io::Result<()> {
        let mask = (self.rng.next() as u32).to_be_bytes();
        frame.write_to(&mut self.stream, Some(mask))
    }

    /// Sends an unfragmented message or control frame.
    pub fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.send_frame(&Frame::new(opcode, payload))
    }

    /// Reads the next frame.
    pub fn read_frame(&mut self) -> io::Result<Frame> {
        Frame::read_from(&mut self.reader, MAX_MESSAGE)
    }

    /// Reads the next whole message, reassembling fragments, answering pings, skipping pongs.
    pub fn read_message(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let mut message: Option<(u8, Vec<u8>)> = None;
        loop {
            let frame = self.read_frame()?;
            match frame.opcode {
                frame::PING => self.send(frame::PONG, &frame.payload)?,
                frame::PONG => {}
                frame::CLOSE => return Err(other("the server closed the WebSocket")),
                opcode => {
                    let (_, bytes) = message.get_or_insert((opcode, Vec::new()));
                    bytes.extend_from_slice(&frame.payload);
                    if frame.fin {
                        return message.ok_or_else(|| other("empty message"));
                    }
                }
            }
        }
    }

    /// Waits up to `timeout` for bytes to arrive: `Ok(false)` if none did, an error if the
    /// connection ended. Nothing is consumed, so a frame is never split by a timeout.
    fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let waited = match self.reader.fill_buf() {
            Ok([]) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => Ok(true),
            Err(e) if is_timeout(&e) => Ok(false),
            Err(e) => Err(e),
        };
        self.stream.set_read_timeout(None)?;
        waited
    }
}

/// Sends `count` text messages of `size` bytes one at a time and returns each round trip.
pub fn rtt(
    url: &WsUrl,
    headers: &[String],
    count: usize,
    size: usize,
    interval: Option<Duration>,
) -> io::Result<Vec<Duration>> {
    let mut client = Client::connect(url, headers)?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        if let (true, Some(pause)) = (i > 0, interval) {
            thread::sleep(pause);
        }
        // Each message differs, so an echo of the wrong message is caught.
        let message: Vec<u8> = (0..size).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        let sent = Instant::now();
        client.send(frame::TEXT, &message)?;
        let (opcode, echo) = client.read_message()?;
        samples.push(sent.elapsed());
        if opcode != frame::TEXT || echo != message {
            let got = format!("opcode {opcode}, {} bytes for {size}", echo.len());
            return Err(other(&format!("message {i}: the echo differs ({got})")));
        }
    }
    // A polite close, so a proxy in between logs a clean end; its answer is not awaited.
    client.send(frame::CLOSE, &1000u16.to_be_bytes())?;
    Ok(samples)
}

/// The one-line summary `rtt` prints: percentiles, maximum and mean in microseconds.
pub fn rtt_summary(samples: &[Duration]) -> String {
    let mut micros: Vec<u128> = samples.iter().map(Duration::as_micros).collect();
    micros.sort_unstable();
    let Some(&max) = micros.last() else {
        return "rtt n=0".to_string();
    };
    // Nearest-rank percentile.
    let pct = |p: usize| micros[(micros.len() * p).div_ceil(100).max(1) - 1];
    let mean = micros.iter().sum::<u128>() / micros.len() as u128;
    let (n, p50, p90, p99) = (micros.len(), pct(50), pct(90), pct(99));
    format!("rtt n={n} p50_us={p50} p90_us={p90} p99_us={p99} max_us={max} mean_us={mean}")
}

/// How a held connection ended.
#[derive(Debug, PartialEq)]
pub enum HoldOutcome {
    /// Still open at the end: the last message came back.
    Open,
    /// Closed or reset this long after the handshake.
    Closed(Duration),
}

/// Keeps a connection for `length`, pinging every `ping` if given, then checks with one
/// text message that it still works.
pub fn hold(
    url: &WsUrl,
    headers: &[String],
    length: Duration,
    ping: Option<Duration>,
) -> io::Result<HoldOutcome> {
    let mut client = Client::connect(url, headers)?;
    let start = Instant::now();
    let closed = || Ok(HoldOutcome::Closed(start.elapsed()));
    let end = start + length;
    let mut next_ping = ping.map(|every| start + every);
    let (mut pings, mut pongs) = (0u64, 0u64);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if let (Some(at), Some(every)) = (next_ping, ping) {
            if now >= at {
                pings += 1;
                if client.send(frame::PING, &pings.to_be_bytes()).is_err() {
                    return closed();
                }
                next_ping = Some(at + every);
                continue;
            }
        }
        let wake = next_ping.map_or(end, |at| at.min(end));
        match client.wait_readable(wake - now) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => return closed(),
        }
        let frame = client.read_frame();
        if !frame.is_ok_and(|frame| keep_holding(&mut client, &frame, &mut pongs)) {
            return closed();
        }
    }
    if client.send(frame::TEXT, b"still-here").is_err() {
        return closed();
    }
    client.stream.set_read_timeout(Some(ECHO_TIMEOUT))?;
    loop {
        let frame = match client.read_frame() {
            Ok(frame) => frame,
            Err(e) if is_timeout(&e) => return Err(other("no echo of still-here within 10 s")),
            Err(_) => return closed(),
        };
        if frame.opcode == frame::TEXT && frame.payload == b"still-here" {
            break;
        }
        if !keep_holding(&mut client, &frame, &mut pongs) {
            return closed();
        }
    }
    // TCP keeps order, so every pong was in before the echo.
    if pongs < pings {
        return Err(other(&format!("sent {pings} pings but got {pongs} pongs")));
    }
    // A polite close as in `rtt`; the answer to the question is in already.
    client.send(frame::CLOSE, &1000u16.to_be_bytes())?;
    Ok(HoldOutcome::Open)
}

/// Deals with a frame that arrives while holding: counts pongs, answers pings, ignores
/// data; false when the connection is over (a close, or a pong that cannot be sent).
fn keep_holding(client: &mut Client, frame: &Frame, pongs: &mut u64) -> bool {
    match frame.opcode {
        frame::PONG => *pongs += 1,
        frame::PING => return client.send(frame::PONG, &frame.payload).is_ok(),
        frame::CLOSE => return false,
        _ => {}
    }
    true
}

/// A xorshift generator for masks and handshake keys, which need variety, not secrecy.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Rng((nanos as u64 ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn other(message: &str) -> io::Error {
    io::Error::other(message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server;
    use std::io::Read;
    use std::net::{SocketAddr, TcpListener};

    fn start_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || server::run(listener));
        addr
    }

    fn url(addr: SocketAddr) -> WsUrl {
        WsUrl::parse(&format!("ws://{addr}/echo")).unwrap()
    }

    #[test]
    fn rtt_client_gets_every_message_back_at_each_length_class() {
        let addr = start_server();
        let cookie = ["Cookie: session=abc".to_string()];
        for size in [32, 200, 70_000] {
            let samples = rtt(&url(addr), &cookie, 5, size, None).unwrap();
            assert!(rtt_summary(&samples).starts_with("rtt n=5 p50_us="));
        }
    }

    #[test]
    fn plain_requests_get_their_head_back_on_a_kept_alive_connection() {
        let addr = start_server();
        let first = "POST /form HTTP/1.1\r\nHost: t\r\nX-Test: 1\r\nContent-Length: 3\r\n\r\n";
        let second = "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(stream, "{first}abc{second}").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.contains(&format!(
            "Content-Length: {}\r\n\r\n{first}HTTP/1.1",
            first.len()
        )));
        assert!(answer.ends_with(&format!("Connection: close\r\n\r\n{second}")));
    }

    #[test]
    fn big_download_sends_exactly_the_bytes_asked_for() {
        let addr = start_server();
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET /big?bytes=200000 HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let body_at = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(answer.len() - body_at, 200_000);
        assert!(answer[body_at..].starts_with(b"0123456789abc"));
    }

    #[test]
    fn fragmented_message_comes_back_whole_after_an_interleaved_pong() {
        let mut client = Client::connect(&url(start_server()), &[]).unwrap();
        client
            .send_frame(&Frame {
                fin: false,
                opcode: frame::BINARY,
                payload: b"hel".to_vec(),
            })
            .unwrap();
        client.send(frame::PING, b"p").unwrap();
        client
            .send_frame(&Frame {
                fin: true,
                opcode: frame::CONTINUATION,
                payload: b"lo".to_vec(),
            })
            .unwrap();
        assert_eq!(client.read_frame().unwrap(), Frame::new(frame::PONG, b"p"));
        assert_eq!(
            client.read_frame().unwrap(),
            Frame::new(frame::BINARY, b"hello")
        );
        client.send(frame::CLOSE, &1000u16.to_be_bytes()).unwrap();
        assert_eq!(
            client.read_frame().unwrap(),
            Frame::new(frame::CLOSE, &[0x03, 0xE8])
        );
    }

    #[test]
    fn message_over_16_mib_is_refused_with_close_1009() {
        let mut client = Client::connect(&url(start_server()), &[]).unwrap();
        // Only the header: the server must refuse on the announced length alone.
        let header = [&[0x82u8, 0xFF][..], &(17u64 << 20).to_be_bytes(), &[0; 4]].concat();
        client.stream.write_all(&header).unwrap();
        assert_eq!(
            client.read_frame().unwrap(),
            Frame::new(frame::CLOSE, &1009u16.to_be_bytes())
        );
    }

    #[test]
    fn held_connection_with_pings_stays_open() {
        let every = Some(Duration::from_millis(100));
        let outcome = hold(&url(start_server()), &[], Duration::from_millis(450), every).unwrap();
        assert_eq!(outcome, HoldOutcome::Open);
    }

    /// A server for one connection that answers the handshake with `answer(key)`, keeps the
    /// connection `linger` without reading, then drops it, as a proxy's idle timeout would.
    fn one_shot_server(answer: fn(&str) -> String, linger: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let raw = http::read_head(&mut BufReader::new(stream.try_clone().unwrap()));
            let head = String::from_utf8(raw.unwrap().unwrap()).unwrap();
            let key = http::header(&head, "sec-websocket-key").unwrap();
            stream.write_all(answer(key).as_bytes()).unwrap();
            thread::sleep(linger);
        });
        addr
    }

    #[test]
    fn handshake_refusal_reports_the_servers_answer() {
        let refuse = |_: &str| "HTTP/1.1 403 Forbidden\r\nX-Why: no\r\n\r\n".to_string();
        let addr = one_shot_server(refuse, Duration::ZERO);
        let error = Client::connect(&url(addr), &[]).err().unwrap().to_string();
        assert!(
            error.contains("403 Forbidden") && error.contains("X-Why: no"),
            "{error}"
        );
    }

    #[test]
    fn held_connection_cut_by_the_far_side_reports_when() {
        let accept = |key: &str| {
            let accept = accept_key(key);
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
        };
        let addr = one_shot_server(accept, Duration::from_millis(200));
        let outcome = hold(&url(addr), &[], Duration::from_secs(5), None).unwrap();
        let HoldOutcome::Closed(after) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            after >= Duration::from_millis(150) && after < Duration::from_secs(2),
            "{after:?}"
        );
    }
}
