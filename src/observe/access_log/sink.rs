//! [`LogSink`]: a bounded channel into a writer thread that formats and writes the lines.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use super::record::Record;

/// Lines the channel holds before a request has to wait (and then drop its line). Records travel
/// by value (about 0.5 KiB each, allocated once with the channel): no allocation per line.
const CAPACITY: usize = 8_192;
/// How often a request retries a full channel (yielding in between) before dropping its line.
const SEND_RETRIES: u32 = 8;
/// Buffered lines are flushed at least this often even when the channel never goes idle.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the writer naps between drains while lines keep coming. Napping instead of blocking
/// in `recv` keeps the send on the request path a single atomic operation: no thread to wake.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// After this long without a line the writer blocks in `recv` (the next request pays one wake-up).
const PARK_AFTER: Duration = Duration::from_secs(1);
/// `BufWriter` capacity.
const BUFFER: usize = 64 * 1024;

/// Where access-log lines go: stdout, a file, any writer, or nowhere.
///
/// Cheap to clone: every clone feeds the same writer thread, which stops (after a last flush)
/// when the last clone and the last in-flight response are gone. Call [`flush`](Self::flush)
/// before the process exits so no line is lost.
#[derive(Clone)]
pub struct LogSink {
    shared: Option<Arc<Shared>>,
}

pub(super) struct Shared {
    tx: SyncSender<Msg>,
    counters: Arc<Counters>,
    target: Target,
}

enum Target {
    Stdout,
    File(Box<Path>),
    Writer,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdout => f.write_str("stdout"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Writer => f.write_str("writer"),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
}

// Lines are the traffic; boxing them would be an allocation per request freed on another thread.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Line(Record),
    Flush(mpsc::Sender<()>),
}

// === impl LogSink ===

impl LogSink {
    /// Lines to standard output (the container / systemd convention).
    ///
    /// If the writer thread cannot be started, an error is traced and every line is counted as
    /// [`dropped`](Self::dropped).
    pub fn stdout() -> Self {
        Self::spawn(Box::new(io::stdout()), Target::Stdout, CAPACITY)
    }

    /// Lines appended to the file at `path`, created if missing.
    pub fn file(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self::spawn(Box::new(file), Target::File(path.into()), CAPACITY))
    }

    /// Lines to any writer: a test buffer, a pipe, or [`std::io::sink()`] for benchmarks.
    pub fn writer(writer: impl Write + Send + 'static) -> Self {
        Self::spawn(Box::new(writer), Target::Writer, CAPACITY)
    }

    /// No access log: the layer records nothing, sends nothing and formats nothing.
    pub fn off() -> Self {
        Self { shared: None }
    }

    /// Whether this is [`LogSink::off`].
    pub fn is_off(&self) -> bool {
        self.shared.is_none()
    }

    /// Blocks until every line sent before this call is written and flushed.
    ///
    /// For graceful shutdown, after the server has drained its connections. It waits for the
    /// writer thread (normally well under a millisecond; up to the writer's own stall if the
    /// output blocks), so from async code call it where a short blocking wait is acceptable, or
    /// inside `spawn_blocking`. Returns at once for [`LogSink::off`] or a dead writer thread.
    pub fn flush(&self) {
        let Some(shared) = &self.shared else { return };
        let (ack, done) = mpsc::channel();
        // A blocking send: a flush must not be dropped because the channel is full.
        if shared.tx.send(Msg::Flush(ack)).is_ok() {
            // Err: the writer thread is gone; nothing more can be written anyway.
            let _ = done.recv();
        }
    }

    /// Lines handed to the output so far (written into its buffer; a later I/O error on flush
    /// can still lose them, and is traced).
    pub fn lines_written(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.counters.written.load(Ordering::Relaxed))
    }

    /// Lines lost so far: the channel stayed full, the writer thread was gone, or writing failed.
    pub fn dropped(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.counters.dropped.load(Ordering::Relaxed))
    }

    pub(super) fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// A sink over `writer` with a channel of `capacity` lines.
    fn spawn(writer: Box<dyn Write + Send>, target: Target, capacity: usize) -> Self {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let spawned = std::thread::Builder::new()
            .name("portcullis-access-log".into())
            .spawn(move || run(rx, writer, &thread_counters));
        if let Err(error) = spawned {
            // The receiver is gone with the closure: every send fails and counts as dropped.
            tracing::error!(%error, "access log: cannot start the writer thread; lines will be dropped");
        }
        Self { shared: Some(Arc::new(Shared { tx, counters, target })) }
    }

    #[cfg(test)]
    pub(super) fn writer_with_capacity(writer: impl Write + Send + 'static, capacity: usize) -> Self {
        Self::spawn(Box::new(writer), Target::Writer, capacity)
    }
}

impl fmt::Debug for LogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.shared {
            None => f.write_str("LogSink::Off"),
            Some(shared) => f
                .debug_struct("LogSink")
                .field("target", &shared.target)
                .field("lines_written", &self.lines_written())
                .field("dropped", &self.dropped())
                .finish(),
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Hands `record` to the writer thread; never blocks for more than a few yields.
    pub(super) fn send(&self, record: Record) {
        let mut msg = Msg::Line(record);
        for _ in 0..SEND_RETRIES {
            match self.tx.try_send(msg) {
                Ok(()) => return,
                Err(TrySendError::Full(back)) => {
                    msg = back;
                    std::thread::yield_now();
                }
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").field("target", &self.target).finish_non_exhaustive()
    }
}

// === the writer thread ===

fn run(rx: Receiver<Msg>, writer: Box<dyn Write + Send>, counters: &Counters) {
    let mut writer = Writer {
        out: BufWriter::with_capacity(BUFFER, writer),
        line: Vec::with_capacity(1024),
        dirty: false,
        failing: false,
        last_flush: Instant::now(),
        counters,
    };
    let mut last_line = Instant::now();
    loop {
        // Drain everything queued, then flush: the channel is idle.
        loop {
            match rx.try_recv() {
                Ok(msg) => {
                    last_line = Instant::now();
                    writer.handle(msg);
                    if writer.last_flush.elapsed() >= FLUSH_INTERVAL {
                        writer.flush();
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    writer.flush();
                    return;
                }
            }
        }
        writer.flush();
        if last_line.elapsed() < PARK_AFTER {
            std::thread::sleep(POLL_INTERVAL);
            continue;
        }
        match rx.recv() {
            Ok(msg) => {
                last_line = Instant::now();
                writer.handle(msg);
            }
            Err(_) => return,
        }
    }
}

struct Writer<'a> {
    out: BufWriter<Box<dyn Write + Send>>,
    /// One line at a time, so a failing output never receives half a line.
    line: Vec<u8>,
    dirty: bool,
    /// Whether the last I/O failed; errors are traced on the transition only, not per line.
    failing: bool,
    last_flush: Instant,
    counters: &'a Counters,
}

impl Writer<'_> {
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Line(record) => self.write(&record),
            Msg::Flush(ack) => {
                self.flush();
                let _ = ack.send(());
            }
        }
    }

    fn write(&mut self, record: &Record) {
        self.line.clear();
        let result = record.write_json(&mut self.line).and_then(|()| {
            self.line.push(b'\n');
            self.out.write_all(&self.line)
        });
        match result {
            Ok(()) => {
                self.dirty = true;
                self.counters.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                self.failed(&error);
            }
        }
    }

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        if !self.dirty {
            return;
        }
        match self.out.flush() {
            Ok(()) => {
                self.dirty = false;
                self.failing = false;
            }
            Err(error) => self.failed(&error),
        }
    }

    fn failed(&mut self, error: &io::Error) {
        if !self.failing {
            tracing::warn!(%error, "access log: writing failed; lines may be lost");
        }
        self.failing = true;
    }
}
