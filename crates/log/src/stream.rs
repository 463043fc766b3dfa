//! The enclave's log lines to the parent's collector (`nekms logs collect`).
//!
//! Every line also waits in a bounded queue; a task dials the collector,
//! reconnecting as needed, and writes what waits. When the parent does not
//! take the lines, the oldest are dropped and counted, and the next lines
//! it takes begin with one saying how many. Lines that a broken
//! connection may not have delivered are sent again (at least once).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing_subscriber::fmt::MakeWriter;

use crate::Format;

/// Lines kept for the parent before the oldest are dropped.
pub const LINES: usize = 4096;

pub struct Stream {
    lines: Mutex<VecDeque<Vec<u8>>>,
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
        let stream =
            Arc::new(Stream { lines: Mutex::new(VecDeque::new()), wake: tokio::sync::Notify::new(), lost: 0.into(), unreported: 0.into() });
        crate::install(program, format, Some(crate::layer(program, format, ToStream(stream.clone()))), true);
        stream
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Vec<u8>>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, line: Vec<u8>) {
        let mut q = self.queue();
        if q.len() >= LINES {
            q.pop_front();
            self.lost.fetch_add(1, Ordering::Relaxed);
            self.unreported.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(line);
        drop(q);
        self.wake.notify_one();
    }

    /// Lines dropped since start because the parent did not take them.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Deliver the lines to the collector at `address` until the task is dropped.
    pub async fn send_to(&self, address: nekms_transport::Address) {
        loop {
            let mut conn = match nekms_transport::connect(&address).await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if self.deliver(&mut conn).await.is_err() {
                continue;
            }
        }
    }

    async fn deliver(&self, conn: &mut nekms_transport::Stream) -> io::Result<()> {
        loop {
            // Said where they were lost: after what the parent took, before what waited.
            let lost = self.unreported.swap(0, Ordering::Relaxed);
            if lost > 0 {
                tracing::warn!(lost, "log lines dropped: the parent's collector did not take them");
            }
            let taken: Vec<Vec<u8>> = self.queue().drain(..).collect();
            if taken.is_empty() {
                self.wake.notified().await;
                continue;
            }
            if let Err(e) = conn.write_all(&taken.concat()).await {
                // Back to the front, as far as they fit beside what came since.
                let mut q = self.queue();
                for line in taken.into_iter().rev() {
                    if q.len() >= LINES {
                        self.lost.fetch_add(1, Ordering::Relaxed);
                        self.unreported.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    q.push_front(line);
                }
                return Err(e);
            }
        }
    }

    /// On the way out: up to `within` for the queue to empty.
    pub async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.queue().is_empty() && tokio::time::Instant::now() < deadline {
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
            self.stream.push(std::mem::take(&mut self.bytes));
        }
    }
}
