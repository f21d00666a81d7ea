//! The host side: talks to the agent over any pair of byte streams (the
//! VMM's virtio-console backend, a socket, a pty).
//!
//! A reader thread splits the incoming bytes into lines and parses them;
//! the client waits on a channel with a deadline, so a dead or hung guest
//! produces [`ClientError::Timeout`] rather than a hang. Lines that are not
//! protocol JSON (console noise before the agent starts) are kept in a
//! small ring for diagnostics and otherwise ignored; a JSON object preceded
//! by noise on the same line is still found.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::protocol::{
    AgentError, AgentMessage, Event, HelloInfo, MAX_LINE, Op, Reply, Request, Response, RunOutput,
    b64_encode, to_line,
};

/// Default deadline for one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Heartbeat silence that ends a wait (see [`AgentClient::set_stall_after`]):
/// many heartbeat periods, so that a loaded guest is not taken for a stopped one.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(45);
/// How many noise lines are kept.
pub const NOISE_LINES: usize = 64;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("writing to the agent: {0}")]
    Io(#[from] io::Error),
    #[error("no {what} from the agent within {timeout:?}{detail}")]
    Timeout {
        what: String,
        timeout: Duration,
        /// Recent console noise / stray agent errors, to explain the silence.
        detail: String,
    },
    #[error("agent channel closed{detail}")]
    Disconnected { detail: String },
    /// The agent beat before and then went silent for `silent`: the guest
    /// stopped scheduling (hung or frozen), not just a slow request.
    #[error(
        "the guest stopped: no agent heartbeat for {silent:?} (the last at guest uptime {last_uptime_ms:?} ms) while waiting for {what}{detail}"
    )]
    Stalled {
        what: String,
        silent: Duration,
        last_uptime_ms: Option<u64>,
        detail: String,
    },
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    #[error("unexpected reply {got:?} to {op}")]
    Unexpected { op: &'static str, got: &'static str },
}

/// What the agent's ready event said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyInfo {
    pub agent_version: String,
    /// Guest uptime at readiness.
    pub uptime_ms: Option<u64>,
}

/// A program to run with options; see [`AgentClient::run_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSpec {
    pub argv: Vec<String>,
    pub stdin: Option<String>,
    /// Kill the program after this long (the request's own deadline is this plus the client's timeout).
    pub timeout: Option<Duration>,
    pub env: Vec<(String, String)>,
}

impl RunSpec {
    pub fn new<S: AsRef<str>>(argv: &[S]) -> Self {
        RunSpec {
            argv: argv.iter().map(|s| s.as_ref().to_string()).collect(),
            ..Default::default()
        }
    }
}

enum Got {
    Ready,
    Response(Box<Response>),
    Timeout,
    /// Heartbeats stopped: how long ago the last came, its guest uptime.
    Stalled(Duration, Option<u64>),
}

enum Incoming {
    Msg(AgentMessage),
    Noise(String),
    Closed(Option<io::Error>),
}

/// A connection to one agent. `R` is read on a background thread.
pub struct AgentClient<R, W> {
    writer: W,
    rx: Receiver<Incoming>,
    next_id: u64,
    timeout: Duration,
    ready: Option<ReadyInfo>,
    noise: VecDeque<String>,
    stray_errors: Vec<AgentError>,
    late_responses: u64,
    closed: Option<String>,
    /// When the last heartbeat arrived, and the guest uptime it carried.
    last_beat: Option<(Instant, Option<u64>)>,
    stall_after: Duration,
    _reader: PhantomData<fn() -> R>,
}

fn reader_thread<R: Read>(mut r: R, tx: mpsc::Sender<Incoming>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut dropping = false;
    let mut buf = vec![0u8; 64 * 1024];
    let send_line = |line: &[u8]| -> bool {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return true;
        }
        let text = String::from_utf8_lossy(line);
        // Noise may precede the JSON object on the same line.
        let msg = text
            .find('{')
            .and_then(|i| AgentMessage::from_line(&text[i..]).ok());
        let item = match msg {
            Some(m) => Incoming::Msg(m),
            None => Incoming::Noise(text.into_owned()),
        };
        tx.send(item).is_ok()
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => {
                if !pending.is_empty() && !dropping {
                    send_line(&pending);
                }
                let _ = tx.send(Incoming::Closed(None));
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Incoming::Closed(Some(e)));
                return;
            }
        };
        let mut chunk = &buf[..n];
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            if dropping {
                dropping = false;
                pending.clear();
            } else {
                pending.extend_from_slice(&chunk[..i]);
                if !send_line(&pending) {
                    return; // client gone
                }
                pending.clear();
            }
            chunk = &chunk[i + 1..];
        }
        if !dropping {
            pending.extend_from_slice(chunk);
            if pending.len() > MAX_LINE {
                pending.clear();
                dropping = true;
                if tx
                    .send(Incoming::Noise(format!(
                        "<line longer than {MAX_LINE} bytes dropped>"
                    )))
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

impl<R: Read + Send + 'static, W: Write> AgentClient<R, W> {
    /// Starts reading `reader` on a thread. Nothing is sent yet.
    pub fn new(reader: R, writer: W) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("agent-client-reader".into())
            .spawn(move || reader_thread(reader, tx))
            .expect("spawning the agent reader thread");
        AgentClient {
            writer,
            rx,
            next_id: 1,
            timeout: DEFAULT_TIMEOUT,
            ready: None,
            noise: VecDeque::new(),
            stray_errors: Vec::new(),
            late_responses: 0,
            closed: None,
            last_beat: None,
            stall_after: DEFAULT_STALL_AFTER,
            _reader: PhantomData,
        }
    }
}

impl<R, W: Write> AgentClient<R, W> {
    /// Deadline for each request (default [`DEFAULT_TIMEOUT`]).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long an agent that has sent heartbeats may go without one before
    /// a wait ends in [`ClientError::Stalled`] (default [`DEFAULT_STALL_AFTER`]).
    pub fn set_stall_after(&mut self, d: Duration) {
        self.stall_after = d;
    }

    /// Heartbeats seen: the time of the last and the guest uptime it carried.
    pub fn last_heartbeat(&self) -> Option<(Instant, Option<u64>)> {
        self.last_beat
    }

    /// The last ready event seen, if any.
    pub fn ready_info(&self) -> Option<&ReadyInfo> {
        self.ready.as_ref()
    }

    /// Recent non-protocol lines (oldest first).
    pub fn noise(&self) -> impl Iterator<Item = &str> {
        self.noise.iter().map(String::as_str)
    }

    /// Errors the agent sent with id 0 (about lines it could not parse).
    pub fn stray_errors(&self) -> &[AgentError] {
        &self.stray_errors
    }

    /// Responses that arrived for requests that had already timed out.
    pub fn late_responses(&self) -> u64 {
        self.late_responses
    }

    /// The writer, e.g. to inject raw bytes in tests.
    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }

    fn detail(&self) -> String {
        let mut d = String::new();
        if let Some((at, up)) = self.last_beat {
            d.push_str(&format!(
                "; last heartbeat {:.1?} ago (guest uptime {} ms)",
                at.elapsed(),
                up.map_or("?".into(), |u| u.to_string())
            ));
        }
        if let Some(c) = &self.closed {
            d.push_str(&format!("; channel closed: {c}"));
        }
        if let Some(e) = self.stray_errors.last() {
            d.push_str(&format!("; agent reported: {e}"));
        }
        if !self.noise.is_empty() {
            let tail: Vec<&str> = self
                .noise
                .iter()
                .rev()
                .take(5)
                .rev()
                .map(String::as_str)
                .collect();
            d.push_str(&format!("; last console lines: {tail:?}"));
        }
        d
    }

    /// Waits until `deadline` for the next ready event or response,
    /// keeping noise and closing for diagnostics.
    fn next(&mut self, deadline: Instant) -> Result<Got, ClientError> {
        loop {
            if self.closed.is_some() {
                return Err(ClientError::Disconnected {
                    detail: self.detail(),
                });
            }
            let now = Instant::now();
            let mut left = deadline.saturating_duration_since(now);
            if let Some((at, uptime)) = self.last_beat {
                let silent = now.saturating_duration_since(at);
                if silent >= self.stall_after {
                    return Ok(Got::Stalled(silent, uptime));
                }
                left = left.min(self.stall_after - silent);
            }
            let item = match self.rx.recv_timeout(left) {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => continue,
                Err(RecvTimeoutError::Timeout) => return Ok(Got::Timeout),
                Err(RecvTimeoutError::Disconnected) => Incoming::Closed(None),
            };
            match item {
                Incoming::Noise(line) => {
                    if self.noise.len() == NOISE_LINES {
                        self.noise.pop_front();
                    }
                    self.noise.push_back(line);
                }
                Incoming::Closed(e) => {
                    self.closed =
                        Some(e.map_or_else(|| "end of stream".to_string(), |e| e.to_string()));
                }
                Incoming::Msg(AgentMessage::Event(Event::Ready {
                    agent_version,
                    uptime_ms,
                })) => {
                    self.ready = Some(ReadyInfo {
                        agent_version,
                        uptime_ms,
                    });
                    return Ok(Got::Ready);
                }
                Incoming::Msg(AgentMessage::Event(Event::Heartbeat { uptime_ms })) => {
                    self.last_beat = Some((Instant::now(), uptime_ms));
                }
                Incoming::Msg(AgentMessage::Response(r)) => return Ok(Got::Response(Box::new(r))),
            }
        }
    }

    /// Waits for the agent's ready event (returns at once if one was already seen).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<ReadyInfo, ClientError> {
        if let Some(r) = &self.ready {
            return Ok(r.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next(deadline)? {
                Got::Timeout => {
                    return Err(ClientError::Timeout {
                        what: "ready event".into(),
                        timeout,
                        detail: self.detail(),
                    });
                }
                Got::Stalled(silent, last_uptime_ms) => {
                    return Err(ClientError::Stalled {
                        what: "ready event".into(),
                        silent,
                        last_uptime_ms,
                        detail: self.detail(),
                    });
                }
                Got::Ready => return Ok(self.ready.clone().expect("set by next")),
                Got::Response(r) => self.note_unmatched(*r),
            }
        }
    }

    fn note_unmatched(&mut self, r: Response) {
        match r.result {
            Err(e) if r.id == 0 => self.stray_errors.push(e),
            _ => self.late_responses += 1,
        }
    }

    /// Sends `op` and waits up to `timeout` for its response.
    pub fn request(&mut self, op: Op, timeout: Duration) -> Result<Reply, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let name = op.name();
        self.writer.write_all(&to_line(&Request { id, op }))?;
        self.writer.flush()?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.next(deadline)? {
                Got::Timeout => {
                    return Err(ClientError::Timeout {
                        what: format!("response to {name} (id {id})"),
                        timeout,
                        detail: self.detail(),
                    });
                }
                Got::Stalled(silent, last_uptime_ms) => {
                    return Err(ClientError::Stalled {
                        what: format!("response to {name} (id {id})"),
                        silent,
                        last_uptime_ms,
                        detail: self.detail(),
                    });
                }
                Got::Ready => {} // the agent restarted? keep waiting until the deadline
                Got::Response(r) if r.id == id => return r.result.map_err(ClientError::Agent),
                Got::Response(r) => self.note_unmatched(*r),
            }
        }
    }

    /// [`AgentClient::request`] with the client's timeout.
    pub fn call(&mut self, op: Op) -> Result<Reply, ClientError> {
        let t = self.timeout;
        self.request(op, t)
    }

    pub fn ping(&mut self) -> Result<(), ClientError> {
        match self.call(Op::Ping)? {
            Reply::Pong => Ok(()),
            r => Err(ClientError::Unexpected {
                op: "ping",
                got: r.name(),
            }),
        }
    }

    pub fn hello(&mut self) -> Result<HelloInfo, ClientError> {
        match self.call(Op::Hello)? {
            Reply::Hello(h) => Ok(h),
            r => Err(ClientError::Unexpected {
                op: "hello",
                got: r.name(),
            }),
        }
    }

    /// Runs `argv` (no shell) and returns its output, whatever its exit status.
    pub fn run<S: AsRef<str>>(&mut self, argv: &[S]) -> Result<RunOutput, ClientError> {
        self.run_with(RunSpec::new(argv))
    }

    pub fn run_with(&mut self, spec: RunSpec) -> Result<RunOutput, ClientError> {
        let deadline = self.timeout + spec.timeout.unwrap_or_default();
        let op = Op::Run {
            argv: spec.argv,
            stdin: spec.stdin,
            timeout_ms: spec.timeout.map(|t| t.as_millis() as u64),
            env: spec.env,
        };
        match self.request(op, deadline)? {
            Reply::Run(o) => Ok(o),
            r => Err(ClientError::Unexpected {
                op: "run",
                got: r.name(),
            }),
        }
    }

    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, ClientError> {
        match self.call(Op::ReadFile { path: path.into() })? {
            Reply::File(f) => f.bytes().map_err(|e| {
                ClientError::Agent(AgentError::new(
                    crate::protocol::ErrorKind::BadRequest,
                    format!("agent sent bad base64: {e}"),
                ))
            }),
            r => Err(ClientError::Unexpected {
                op: "read_file",
                got: r.name(),
            }),
        }
    }

    pub fn write_file(
        &mut self,
        path: &str,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), ClientError> {
        match self.call(Op::WriteFile {
            path: path.into(),
            contents_b64: b64_encode(contents),
            mode,
        })? {
            Reply::Written { .. } => Ok(()),
            r => Err(ClientError::Unexpected {
                op: "write_file",
                got: r.name(),
            }),
        }
    }

    /// Asks the guest to power off; returns once the agent acknowledged.
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        self.shutdown_inner(false)
    }

    /// Asks the guest to reboot; returns once the agent acknowledged.
    pub fn reboot(&mut self) -> Result<(), ClientError> {
        self.shutdown_inner(true)
    }

    fn shutdown_inner(&mut self, reboot: bool) -> Result<(), ClientError> {
        match self.call(Op::Shutdown { reboot })? {
            Reply::ShuttingDown => Ok(()),
            r => Err(ClientError::Unexpected {
                op: "shutdown",
                got: r.name(),
            }),
        }
    }

    /// Gives the writer back (the reader thread keeps running until its stream ends).
    pub fn into_writer(self) -> W {
        self.writer
    }
}
