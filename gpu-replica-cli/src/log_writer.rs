//! Where `serve`'s log lines go: appended to a buffer in memory, written to stdout by a thread
//! of its own every [`WRITE_EVERY`] (at once for a warning or an error, or once
//! [`WRITE_SOON`] bytes wait). A request's access line so costs a lock and a copy: no system
//! call and no wake-up of another thread per line, which on a busy server were most of what a
//! line cost. Nothing is dropped: past [`MOST_WAITING`] bytes a line waits for room.
//!
//! Access lines skip `tracing` altogether ([`AccessLines`]): written straight into the same
//! buffer, in the very form `tracing`'s formatter gives them (text or JSON), at a fraction of
//! its cost per request.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gpu_replica_http::{AccessLine, AccessSink};

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in memory.
const WRITE_EVERY: Duration = Duration::from_millis(25);
/// Waiting bytes that make the thread write without waiting for its time.
const WRITE_SOON: usize = 256 * 1024;
/// Waiting bytes past which a line waits for the thread to write.
const MOST_WAITING: usize = 16 * 1024 * 1024;

#[derive(Default)]
struct Waiting {
    bytes: Vec<u8>,
    /// Write now: a warning or an error is waiting, or many bytes are.
    now: bool,
    /// The guard was dropped: write what is left and end.
    closed: bool,
    /// The thread sleeps until a line comes (nothing was waiting).
    asleep: bool,
}

#[derive(Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// The thread is wanted (a line that should not wait, or the end).
    wanted: Condvar,
    /// The thread wrote: room for waiting writers.
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer handed to the log's formatter (cheap to clone).
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Writes what is left when dropped (at exit), then ends the thread.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A writer into `out` and its guard; the thread is named `gpu-replica-log`.
pub fn batch_writer<W: Write + Send + 'static>(mut out: W) -> (BatchWriter, Guard) {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new()
        .name("gpu-replica-log".into())
        .spawn({
            let shared = shared.clone();
            move || {
                let mut spare = Vec::new();
                loop {
                    let mut waiting = shared.lock();
                    while !waiting.now && !waiting.closed {
                        if waiting.bytes.is_empty() {
                            // Nothing to write: sleep until a line comes.
                            waiting.asleep = true;
                            waiting = shared
                                .wanted
                                .wait(waiting)
                                .unwrap_or_else(|p| p.into_inner());
                            waiting.asleep = false;
                            continue;
                        }
                        // Lines wait their time, so that many go in one write.
                        waiting = shared
                            .wanted
                            .wait_timeout(waiting, WRITE_EVERY)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        break;
                    }
                    std::mem::swap(&mut waiting.bytes, &mut spare);
                    waiting.now = false;
                    let closed = waiting.closed;
                    drop(waiting);
                    shared.room.notify_all();
                    if !spare.is_empty() {
                        // Nowhere to say that the log cannot be written.
                        let _ = out.write_all(&spare).and_then(|()| out.flush());
                        spare.clear();
                        // A burst's buffer is not kept for ever.
                        spare.shrink_to(WRITE_SOON);
                    } else if closed {
                        return;
                    }
                }
            }
        })
        .expect("starting the log's thread");
    (
        BatchWriter {
            shared: shared.clone(),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    )
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wanted.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One line (the formatter writes a line whole, in one call).
pub struct Line<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut waiting = self.shared.lock();
        while waiting.bytes.len() >= MOST_WAITING && !waiting.closed {
            waiting.now = true;
            self.shared.wanted.notify_one();
            waiting = self
                .shared
                .room
                .wait(waiting)
                .unwrap_or_else(|p| p.into_inner());
        }
        waiting.bytes.extend_from_slice(bytes);
        let now = !waiting.now && (self.urgent || waiting.bytes.len() >= WRITE_SOON);
        if now {
            waiting.now = true;
        }
        // The first line after a quiet time starts the thread's clock.
        let wake = now || std::mem::take(&mut waiting.asleep);
        drop(waiting);
        if wake {
            self.shared.wanted.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.shared,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        Line {
            shared: &self.shared,
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

/// How access lines are written: as `tracing`'s formatter writes an event (text without
/// colour, or JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// `2026-11-30T20:17:00.417471Z  INFO gpu_replica::access: request method=GET …`
    Text,
    /// `{"timestamp":…,"level":"INFO","fields":{"message":"request",…},"target":…}`
    Json,
}

/// The access log's lines, written into the log's buffer.
pub struct AccessLines {
    writer: BatchWriter,
    form: Form,
}

impl AccessLines {
    /// Lines in `form`, into `writer`.
    pub fn new(writer: BatchWriter, form: Form) -> AccessLines {
        AccessLines { writer, form }
    }
}

thread_local! {
    /// A line being made, and the last second's text (`2026-11-30T20:17:00`).
    static MAKING: RefCell<(Vec<u8>, u64, String)> =
        RefCell::new((Vec::with_capacity(256), u64::MAX, String::new()));
}

/// `secs` since the epoch as RFC 3339 to the second, in UTC.
fn second_text(secs: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

impl AccessSink for AccessLines {
    fn write(&self, line: &AccessLine<'_>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        MAKING.with(|making| {
            let (buf, second, stamp) = &mut *making.borrow_mut();
            if *second != now.as_secs() {
                *second = now.as_secs();
                *stamp = second_text(*second);
            }
            buf.clear();
            let micros = now.subsec_micros();
            // Writing into a Vec cannot fail.
            let _ = match self.form {
                Form::Text => writeln!(
                    buf,
                    "{stamp}.{micros:06}Z  INFO gpu_replica::access: request method={} path={:?} status={} micros={}",
                    line.method, line.path, line.status, line.micros
                ),
                Form::Json => {
                    let _ = write!(
                        buf,
                        "{{\"timestamp\":\"{stamp}.{micros:06}Z\",\"level\":\"INFO\",\"fields\":{{\"message\":\"request\",\"method\":"
                    );
                    let _ = serde_json::to_writer(&mut *buf, line.method.as_str());
                    buf.extend_from_slice(b",\"path\":");
                    let _ = serde_json::to_writer(&mut *buf, line.path);
                    writeln!(
                        buf,
                        ",\"status\":{},\"micros\":{}}},\"target\":\"gpu_replica::access\"}}",
                        line.status, line.micros
                    )
                }
            };
            let _ = self.writer.make_writer().write_all(buf);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the thread wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Out(Arc<Mutex<Vec<u8>>>);

    impl Write for Out {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_in_order_within_their_time_and_all_at_the_end() {
        let out = Out::default();
        let (writer, guard) = batch_writer(out.clone());
        for i in 0..1000 {
            writer
                .make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.0.lock().unwrap().len() < 1000 * 6 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000, "written before the end, without a flush");
        assert!(lines
            .iter()
            .enumerate()
            .all(|(i, l)| *l == format!("line {i}")));
        // The rest at the end: nothing is lost when the guard goes.
        writer.make_writer().write_all(b"last\n").unwrap();
        drop(guard);
        assert!(String::from_utf8(out.0.lock().unwrap().clone())
            .unwrap()
            .ends_with("line 999\nlast\n"));
    }

    /// The line `tracing`'s formatter writes for the access event, and ours, with the time
    /// cut off (they are made a moment apart).
    fn both_lines(form: Form) -> (String, String) {
        let path = "/api/v1/replicaSet/a%22b%5C\"q";
        let theirs = Out::default();
        let made = theirs.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || made.clone())
            .with_ansi(false);
        let dispatch = match form {
            Form::Text => tracing::Dispatch::new(builder.finish()),
            Form::Json => tracing::Dispatch::new(builder.json().finish()),
        };
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(
                target: "gpu_replica::access",
                method = %hyper::Method::PATCH,
                path,
                status = 404u16,
                micros = 108u64,
                "request"
            );
        });
        let out = Out::default();
        let (writer, guard) = batch_writer(out.clone());
        AccessLines::new(writer, form).write(&AccessLine {
            method: &hyper::Method::PATCH,
            path,
            status: 404,
            micros: 108,
        });
        drop(guard);
        let cut = |bytes: &[u8]| {
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            let at = text.find('Z').unwrap();
            text[at..].to_string()
        };
        let theirs = cut(&theirs.0.lock().unwrap());
        let ours = cut(&out.0.lock().unwrap());
        (theirs, ours)
    }

    #[test]
    fn access_lines_read_as_tracing_writes_them_in_text_and_json() {
        for form in [Form::Text, Form::Json] {
            let (theirs, ours) = both_lines(form);
            assert_eq!(ours, theirs, "{form:?}");
        }
        // The time is RFC 3339 in UTC, to the microsecond.
        assert_eq!(second_text(1_796_069_820), "2026-11-30T20:17:00");
    }

    #[test]
    fn a_writer_past_the_most_waiting_bytes_waits_for_room_and_loses_nothing() {
        let out = Out::default();
        let (writer, guard) = batch_writer(out.clone());
        let line = vec![b'x'; 1024 * 1024];
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let writer = writer.clone();
                let line = line.clone();
                std::thread::spawn(move || {
                    for _ in 0..16 {
                        writer.make_writer().write_all(&line).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        assert_eq!(out.0.lock().unwrap().len(), 64 * 1024 * 1024);
    }
}
