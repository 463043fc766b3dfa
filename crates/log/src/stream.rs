//! The enclave's log lines to the parent's collector (`nekms logs collect`).
//!
//! Every line also waits in a queue bounded in lines and in bytes, each
//! line cleaned of control characters and at most [`MAX_LINE`] bytes (a
//! longer one is cut, and says so); a task dials the collector,
//! reconnecting after a pause, and writes what waits. When the parent does
//! not take the lines, the oldest are dropped and counted, and the next
//! lines it takes begin with one saying how many. Lines a broken
//! connection was handed are sent again on the next, as far as they fit;
//! what the kernel had accepted for a connection the collector then closed
//! is gone without being counted.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing_subscriber::fmt::MakeWriter;

use crate::Format;

/// Lines kept for the parent before the oldest are dropped ...
pub const LINES: usize = 4096;
/// ... and bytes.
pub const BYTES: usize = 4 << 20;
/// The longest line sent (the collector takes up to 64 KiB).
pub const MAX_LINE: usize = 8 << 10;

#[derive(Default)]
struct Queue {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
}

pub struct Stream {
    queue: Mutex<Queue>,
    format: Format,
    wake: tokio::sync::Notify,
    /// Dropped in all; dropped and not yet said.
    lost: AtomicU64,
    unreported: AtomicU64,
}

impl Stream {
    /// Install the process's logger, to stderr and to the returned stream,
    /// which [`Stream::send_to`] delivers. Events of other crates than
    /// nekms's own are kept to `info` and above.
    pub fn init(program: &'static str, format: Format) -> Arc<Stream> {
        let stream = Arc::new(Stream {
            queue: Mutex::new(Queue::default()),
            format,
            wake: tokio::sync::Notify::new(),
            lost: 0.into(),
            unreported: 0.into(),
        });
        crate::install(program, format, Some(crate::layer(program, format, ToStream(stream.clone()))), true);
        stream
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dropped(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
        self.unreported.fetch_add(n, Ordering::Relaxed);
    }

    /// Queue a line at the back, dropping the oldest to make room.
    fn push(&self, line: Vec<u8>) {
        let mut q = self.lock();
        while !q.lines.is_empty() && (q.lines.len() >= LINES || q.bytes + line.len() > BYTES) {
            let old = q.lines.pop_front().expect("not empty");
            q.bytes -= old.len();
            self.dropped(1);
        }
        q.bytes += line.len();
        q.lines.push_back(line);
        drop(q);
        self.wake.notify_one();
    }

    /// A line as it is queued: cleaned, and cut to [`MAX_LINE`] in its format.
    fn shaped(&self, bytes: &[u8]) -> Vec<u8> {
        let line = crate::clean(bytes);
        if line.len() <= MAX_LINE {
            return line;
        }
        let text = String::from_utf8_lossy(&line);
        let mut end = 1024;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let start = &text[..end];
        let mut cut = match self.format {
            Format::Json => serde_json::json!({"level": "WARN", "message": "a log line was cut", "bytes": line.len(), "start": start})
                .to_string()
                .into_bytes(),
            Format::Text => format!("{start} [... a line of {} bytes, cut]", line.len()).into_bytes(),
        };
        cut.push(b'\n');
        cut
    }

    /// Lines dropped since start because the parent did not take them.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Deliver the lines to the collector at `address` until the task is dropped.
    pub async fn send_to(&self, address: nekms_transport::Address) {
        loop {
            if let Ok(mut conn) = nekms_transport::connect(&address).await {
                let _ = self.deliver(&mut conn).await;
            }
            // A collector that is down, or closed the connection: not straight back.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn deliver(&self, conn: &mut nekms_transport::Stream) -> io::Result<()> {
        loop {
            // Said where they were lost: after what the parent took, before what waited.
            let lost = self.unreported.swap(0, Ordering::Relaxed);
            if lost > 0 {
                tracing::warn!(lost, "log lines dropped: the parent's collector did not take them");
            }
            let taken: Vec<Vec<u8>> = {
                let mut q = self.lock();
                q.bytes = 0;
                q.lines.drain(..).collect()
            };
            if taken.is_empty() {
                self.wake.notified().await;
                continue;
            }
            if let Err(e) = conn.write_all(&taken.concat()).await {
                // Back to the front, as far as they fit beside what came since.
                let mut q = self.lock();
                for line in taken.into_iter().rev() {
                    if q.lines.len() >= LINES || q.bytes + line.len() > BYTES {
                        self.dropped(1);
                        continue;
                    }
                    q.bytes += line.len();
                    q.lines.push_front(line);
                }
                return Err(e);
            }
        }
    }

    /// On the way out: up to `within` for the queue to empty.
    pub async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.lock().lines.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The last lines taken are being written.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct ToStream(Arc<Stream>);

/// One formatted event: queued whole when the formatter is done with it.
pub struct Line<'a> {
    stream: &'a Stream,
    bytes: Vec<u8>,
}

impl<'a> MakeWriter<'a> for ToStream {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line { stream: &self.0, bytes: Vec::new() }
    }
}

impl io::Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.bytes.is_empty() {
            let line = self.stream.shaped(&self.bytes);
            self.stream.push(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(format: Format) -> Stream {
        Stream { queue: Mutex::new(Queue::default()), format, wake: tokio::sync::Notify::new(), lost: 0.into(), unreported: 0.into() }
    }

    #[test]
    fn a_long_line_is_cut_in_its_format_and_the_queue_is_bounded_in_bytes() {
        let s = stream(Format::Json);
        let long = format!("{{\"message\":\"{}\"}}\n", "\u{1}".repeat(1 << 20));
        let cut = s.shaped(long.as_bytes());
        assert!(cut.len() <= MAX_LINE);
        let v: serde_json::Value = serde_json::from_slice(&cut).unwrap();
        assert_eq!(v["message"], "a log line was cut");
        let text = stream(Format::Text).shaped("x".repeat(100_000).as_bytes());
        assert!(text.len() <= MAX_LINE && String::from_utf8(text).unwrap().contains("cut]"));
        for _ in 0..2000 {
            s.push(vec![b'y'; MAX_LINE]);
        }
        let q = s.lock();
        assert!(q.bytes <= BYTES && q.lines.len() == BYTES / MAX_LINE, "{} lines, {} bytes", q.lines.len(), q.bytes);
        assert_eq!(s.lost(), (2000 - BYTES / MAX_LINE) as u64);
    }
}
