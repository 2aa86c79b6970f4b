//! `egress serve`'s request log: lines gathered in memory and written by a
//! thread of their own, so a request never waits for stdout.
//!
//! serve runs on one thread by default. Writing each line where the request
//! ends would make every request wait for whatever reads stdout (journald, a
//! pipe, a terminal); a reader that stops would stop the proxy. Here the
//! request only appends to a buffer; the writer thread takes the buffer
//! every [`FLUSH_EVERY`] (or sooner at [`FLUSH_AT`] bytes) and writes it
//! outside the lock. When the reader is so slow that [`MAX_PENDING`] bytes
//! wait, new lines are dropped and counted, and the count is reported on
//! stderr: the proxy keeps working and the loss is said.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Lines are written at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Or as soon as this much is waiting.
pub const FLUSH_AT: usize = 64 * 1024;
/// Beyond this much waiting, new lines are dropped (and counted).
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

/// The handle requests write through. Dropping it without
/// [`LogWriter::finish`] loses what is still waiting.
pub struct LogWriter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    max_pending: usize,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// Lines dropped since the last report.
    dropped: u64,
    closing: bool,
}

impl LogWriter {
    /// Starts the writer thread over `out`.
    pub fn start<W: Write + Send + 'static>(out: W) -> std::io::Result<Self> {
        Self::with_limit(out, MAX_PENDING)
    }

    fn with_limit<W: Write + Send + 'static>(
        mut out: W,
        max_pending: usize,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            max_pending,
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("egress-serve-log".to_owned())
            .spawn(move || thread_shared.write_until_closed(&mut out))?;
        Ok(LogWriter {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues one line (a newline is added). Never waits for the output.
    /// False when the line was dropped: too much is waiting, or the log is
    /// closed.
    #[must_use = "a dropped line should be counted"]
    pub fn line(&self, line: &str) -> bool {
        let mut state = self.shared.lock();
        if state.closing {
            return false;
        }
        if state.pending.len() + line.len() + 1 > self.shared.max_pending {
            state.dropped += 1;
            return false;
        }
        state.pending.extend_from_slice(line.as_bytes());
        state.pending.push(b'\n');
        if state.pending.len() >= FLUSH_AT {
            self.shared.wake.notify_one();
        }
        true
    }

    /// Writes what is waiting and stops the thread; later lines are
    /// dropped.
    pub fn finish(&self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write_until_closed(&self, out: &mut dyn Write) {
        let mut batch = Vec::with_capacity(FLUSH_AT);
        let mut broken = false;
        loop {
            let (dropped, closing) = {
                let mut state = self.lock();
                if !state.closing && state.pending.len() < FLUSH_AT {
                    state = self
                        .wake
                        .wait_timeout(state, FLUSH_EVERY)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                std::mem::swap(&mut batch, &mut state.pending);
                (std::mem::take(&mut state.dropped), state.closing)
            };
            if dropped > 0 {
                tracing::warn!(
                    "{dropped} request log lines dropped: stdout is not read fast enough \
                     ({} MiB waiting)",
                    self.max_pending >> 20
                );
            }
            if !batch.is_empty() && !broken {
                if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
                    // A closed stdout stays closed: say it once, keep serving.
                    tracing::error!("cannot write the request log to stdout: {e}");
                    broken = true;
                }
            }
            batch.clear();
            if closing && self.lock().pending.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Output that takes writes only while the test lets it.
    struct Gate {
        open: Arc<Mutex<()>>,
        sink: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.open.lock().unwrap();
            self.sink.send(buf.to_vec()).unwrap();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_in_order_and_finish_writes_the_rest() {
        let (sink, written) = mpsc::channel();
        let writer = LogWriter::start(Gate {
            open: Arc::new(Mutex::new(())),
            sink,
        })
        .unwrap();
        for i in 0..10_000 {
            assert!(writer.line(&format!("{{\"n\":{i}}}")));
        }
        writer.finish();
        assert!(!writer.line("after the end"));
        let all: Vec<u8> = written.try_iter().flatten().collect();
        let text = String::from_utf8(all).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10_000);
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(*line, format!("{{\"n\":{i}}}"));
        }
    }

    #[test]
    fn a_stuck_output_never_blocks_a_request_and_the_overflow_is_dropped() {
        let (sink, written) = mpsc::channel();
        let open = Arc::new(Mutex::new(()));
        let held = open.lock().unwrap();
        let writer = LogWriter::with_limit(
            Gate {
                open: open.clone(),
                sink,
            },
            1000,
        )
        .unwrap();
        // The output is stuck; a line of 99 bytes + newline: 10 fit.
        let line = "x".repeat(99);
        let started = std::time::Instant::now();
        let mut kept = 0;
        for _ in 0..1000 {
            kept += usize::from(writer.line(&line));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        // What the writer reports as dropped is what it did not keep.
        assert!((10..=20).contains(&kept), "{kept}");
        drop(held);
        writer.finish();
        let total: usize = written.try_iter().map(|b| b.len()).sum();
        // At most what fit while stuck, plus one batch the thread may have
        // taken before it blocked.
        assert!(total <= 2000, "{total}");
        assert!(total >= 1000, "{total}");
        assert_eq!(total % 100, 0);
        assert_eq!(total, kept * 100);
    }
}
