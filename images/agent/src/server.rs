//! The agent loop that runs in the guest: read a request line, execute it,
//! write the response line, flush.
//!
//! In the guest, `/init` execs `netmem-lab agent --port /dev/hvc0`, which
//! calls [`serve`]. Diagnostics go to stderr (the serial console).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::protocol::{
    AGENT_VERSION, AgentError, AgentMessage, ErrorKind, Event, FileContents, MAX_LINE, Op, Reply,
    Request, Response, RunOutput, b64_decode, b64_encode, to_line,
};
use crate::sysinfo;

/// What [`Op::Shutdown`] does after the reply is on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownAction {
    /// `sync()` then `reboot(2)` (power off or restart). Only for the guest.
    PowerOff,
    /// Return from the serve function (tests; or an agent that is not PID 1).
    Exit,
}

/// How the agent behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Root of procfs/sysfs/`/dev/kmsg` for [`Op::Hello`] (`/` in the guest).
    pub sys_root: PathBuf,
    pub shutdown: ShutdownAction,
    /// Cap on each of a program's stdout and stderr.
    pub max_output: usize,
    /// Largest file [`Op::ReadFile`] returns.
    pub max_file: usize,
    /// How long a program's output pipes may stay open after it exited
    /// (background children holding them) before the output is taken as is.
    pub output_grace: Duration,
    /// How long [`serve_with`] waits for the port to appear.
    pub port_wait: Duration,
    /// Send [`Event::Heartbeat`] this often (`None`: never).
    pub heartbeat: Option<Duration>,
}

impl ServerConfig {
    /// The guest's configuration: real root; real power-off only when this
    /// process is PID 1 (as after `/init`'s exec), so that running the agent
    /// by hand on a host can never power the host off.
    pub fn guest() -> Self {
        // SAFETY: getpid has no preconditions.
        let pid1 = unsafe { libc::getpid() } == 1;
        ServerConfig {
            sys_root: PathBuf::from("/"),
            shutdown: if pid1 {
                ShutdownAction::PowerOff
            } else {
                ShutdownAction::Exit
            },
            max_output: 16 << 20,
            max_file: 32 << 20,
            output_grace: Duration::from_millis(500),
            port_wait: Duration::from_secs(10),
            heartbeat: Some(crate::protocol::HEARTBEAT_PERIOD),
        }
    }

    /// For tests: `sys_root` given, shutdown just returns.
    pub fn for_tests(sys_root: impl Into<PathBuf>) -> Self {
        ServerConfig {
            sys_root: sys_root.into(),
            shutdown: ShutdownAction::Exit,
            heartbeat: None,
            ..ServerConfig::guest()
        }
    }
}

/// Why the agent loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening agent port {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("agent port I/O: {0}")]
    Io(#[from] io::Error),
    #[error("reboot(2) failed: {0}")]
    Reboot(#[source] io::Error),
}

/// Serves on `port` with [`ServerConfig::guest`].
pub fn serve(port: &Path) -> Result<(), ServeError> {
    serve_with(port, &ServerConfig::guest())
}

/// Serves on `port`: a tty (put into raw mode; e.g. `/dev/hvc0`), a unix
/// socket (connected to), a FIFO or character device (opened read-write),
/// or a regular file (requests read from it, responses written to stdout).
pub fn serve_with(port: &Path, cfg: &ServerConfig) -> Result<(), ServeError> {
    let open_err = |source| ServeError::Open {
        path: port.to_path_buf(),
        source,
    };
    let deadline = Instant::now() + cfg.port_wait;
    let meta = loop {
        match fs::metadata(port) {
            Ok(m) => break m,
            Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(open_err(e)),
        }
    };
    let ft = meta.file_type();
    if ft.is_socket() {
        let s = UnixStream::connect(port).map_err(open_err)?;
        let r = s.try_clone().map_err(open_err)?;
        eprintln!("netmem-agent: serving on socket {}", port.display());
        let outcome = serve_loop(BufReader::new(r), &s, cfg, false)?;
        return finish(outcome, cfg, None);
    }
    if ft.is_file() {
        let f = File::open(port).map_err(open_err)?;
        let outcome = serve_loop(BufReader::new(f), io::stdout(), cfg, false)?;
        return finish(outcome, cfg, None);
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(port)
        .map_err(open_err)?;
    let fd = f.as_raw_fd();
    let tty = is_tty(fd);
    if tty {
        make_raw(fd).map_err(open_err)?;
    }
    eprintln!(
        "netmem-agent {AGENT_VERSION}: serving on {}{}",
        port.display(),
        if tty { " (tty, raw)" } else { "" }
    );
    let r = f.try_clone().map_err(open_err)?;
    let outcome = serve_loop(BufReader::new(r), &f, cfg, tty)?;
    finish(outcome, cfg, tty.then_some(fd))
}

/// Serves on a pair of streams with [`ServerConfig::guest`]; returns at EOF.
pub fn serve_streams<R: BufRead, W: Write + Send>(r: R, w: W) -> Result<(), ServeError> {
    serve_streams_with(r, w, &ServerConfig::guest())
}

/// Serves on a pair of streams; returns at EOF or after a shutdown request
/// (with [`ShutdownAction::Exit`]).
pub fn serve_streams_with<R: BufRead, W: Write + Send>(
    r: R,
    w: W,
    cfg: &ServerConfig,
) -> Result<(), ServeError> {
    let outcome = serve_loop(r, w, cfg, false)?;
    finish(outcome, cfg, None)
}

fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// `cfmakeraw` + blocking reads of at least one byte.
fn make_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: termios is plain old data, filled by tcgetattr before use.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; t is a valid termios.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: t is a valid termios.
    unsafe { libc::cfmakeraw(&mut t) };
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    // SAFETY: fd is open; t is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Eof,
    Shutdown { reboot: bool },
}

fn finish(outcome: Outcome, cfg: &ServerConfig, tty: Option<RawFd>) -> Result<(), ServeError> {
    let Outcome::Shutdown { reboot } = outcome else {
        return Ok(());
    };
    if cfg.shutdown == ShutdownAction::Exit {
        return Ok(());
    }
    if let Some(fd) = tty {
        // SAFETY: fd is open; waits until the reply has left the tty.
        unsafe { libc::tcdrain(fd) };
    }
    eprintln!(
        "netmem-agent: {}",
        if reboot { "rebooting" } else { "powering off" }
    );
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(if reboot {
            libc::LINUX_REBOOT_CMD_RESTART
        } else {
            libc::LINUX_REBOOT_CMD_POWER_OFF
        });
    }
    Err(ServeError::Reboot(io::Error::last_os_error()))
}

enum LineRead {
    Eof,
    Line,
    TooLong(usize),
}

/// Reads up to and excluding `\n` into `buf`; a line longer than `max` is
/// consumed and discarded. A final line without `\n` counts as a line.
fn read_line_bounded<R: BufRead>(r: &mut R, max: usize, buf: &mut Vec<u8>) -> io::Result<LineRead> {
    buf.clear();
    let mut total = 0usize;
    let mut too_long = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(match (total, too_long) {
                (0, _) => LineRead::Eof,
                (_, true) => LineRead::TooLong(total),
                (_, false) => LineRead::Line,
            });
        }
        let (chunk, used, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        total += used;
        r.consume(used);
        if done {
            return Ok(if too_long {
                LineRead::TooLong(total)
            } else {
                LineRead::Line
            });
        }
    }
}

/// Writes one frame; the lock keeps heartbeats and responses whole lines.
fn write_frame<W: Write, T: serde::Serialize>(w: &Mutex<W>, v: &T) -> io::Result<()> {
    let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
    w.write_all(&to_line(v))?;
    w.flush()
}

fn serve_loop<R: BufRead, W: Write + Send>(
    r: R,
    w: W,
    cfg: &ServerConfig,
    tty: bool,
) -> Result<Outcome, ServeError> {
    let w = Mutex::new(w);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        if let Some(period) = cfg.heartbeat {
            let w = &w;
            s.spawn(move || {
                // Ends when the serve loop drops `stop_tx`.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(period) {
                    let beat = AgentMessage::Event(Event::Heartbeat {
                        uptime_ms: sysinfo::uptime_ms(&cfg.sys_root),
                    });
                    if write_frame(w, &beat).is_err() {
                        break;
                    }
                }
            });
        }
        let res = serve_requests(r, &w, cfg, tty);
        drop(stop_tx);
        res
    })
}

fn serve_requests<R: BufRead, W: Write>(
    mut r: R,
    w: &Mutex<W>,
    cfg: &ServerConfig,
    tty: bool,
) -> Result<Outcome, ServeError> {
    let ready = AgentMessage::Event(Event::Ready {
        agent_version: AGENT_VERSION.to_string(),
        uptime_ms: sysinfo::uptime_ms(&cfg.sys_root),
    });
    write_frame(w, &ready)?;
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    let mut line = Vec::new();
    loop {
        let response = match read_line_bounded(&mut r, MAX_LINE, &mut line)? {
            LineRead::Eof if tty => {
                // A tty reports EOF on hangup; the host may come back.
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            LineRead::Eof => return Ok(Outcome::Eof),
            LineRead::TooLong(n) => Response {
                id: 0,
                result: Err(AgentError::new(
                    ErrorKind::BadRequest,
                    format!("line of {n} bytes exceeds the {MAX_LINE}-byte limit"),
                )),
            },
            LineRead::Line => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let (response, shutdown) = handle_line(&line, cfg);
                if let Some(reboot) = shutdown {
                    write_frame(w, &response)?;
                    return Ok(Outcome::Shutdown { reboot });
                }
                response
            }
        };
        write_frame(w, &response)?;
        if pid1 {
            reap_orphans();
        }
    }
}

/// As PID 1, collect the exit status of orphans (daemons started by `Run`)
/// between requests, when no child of ours is running.
fn reap_orphans() {
    loop {
        let mut status = 0;
        // SAFETY: plain syscall with a valid status pointer.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            break;
        }
    }
}

/// Parses and executes one request line. Returns the response and, for a
/// shutdown request, `Some(reboot)`. Never panics (a panic in an operation
/// becomes an `internal` error).
pub fn handle_line(line: &[u8], cfg: &ServerConfig) -> (Response, Option<bool>) {
    let req: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            // Answer with the request's id if at least that much is readable.
            let id = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            let preview: String = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
            return (
                Response {
                    id,
                    result: Err(AgentError::new(
                        ErrorKind::BadRequest,
                        format!("malformed request ({e}): {preview:?}"),
                    )),
                },
                None,
            );
        }
    };
    let shutdown = match req.op {
        Op::Shutdown { reboot } => Some(reboot),
        _ => None,
    };
    let op_name = req.op.name();
    let result = catch_unwind(AssertUnwindSafe(|| execute(req.op, cfg))).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(AgentError::new(
            ErrorKind::Internal,
            format!("panic in {op_name}: {msg}"),
        ))
    });
    (Response { id: req.id, result }, shutdown)
}

/// Executes one operation (a shutdown only answers here; the caller acts).
pub fn execute(op: Op, cfg: &ServerConfig) -> Result<Reply, AgentError> {
    match op {
        Op::Hello => Ok(Reply::Hello(sysinfo::gather_hello(&cfg.sys_root))),
        Op::Ping => Ok(Reply::Pong),
        Op::Shutdown { .. } => Ok(Reply::ShuttingDown),
        Op::Run {
            argv,
            stdin,
            timeout_ms,
            env,
        } => run_command(
            &argv,
            stdin,
            timeout_ms.map(Duration::from_millis),
            &env,
            cfg,
        )
        .map(Reply::Run),
        Op::ReadFile { path } => {
            let f = File::open(&path)
                .map_err(|e| AgentError::from_io(ErrorKind::Io, &format!("open {path}"), &e))?;
            let mut data = Vec::new();
            f.take(cfg.max_file as u64 + 1)
                .read_to_end(&mut data)
                .map_err(|e| AgentError::from_io(ErrorKind::Io, &format!("read {path}"), &e))?;
            if data.len() > cfg.max_file {
                return Err(AgentError::new(
                    ErrorKind::Unsupported,
                    format!("{path} is larger than {} bytes", cfg.max_file),
                ));
            }
            Ok(Reply::File(FileContents {
                path,
                contents_b64: b64_encode(&data),
            }))
        }
        Op::WriteFile {
            path,
            contents_b64,
            mode,
        } => {
            let data = b64_decode(&contents_b64).map_err(|e| {
                AgentError::new(ErrorKind::BadRequest, format!("contents_b64: {e}"))
            })?;
            fs::write(&path, &data)
                .map_err(|e| AgentError::from_io(ErrorKind::Io, &format!("write {path}"), &e))?;
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| {
                    AgentError::from_io(ErrorKind::Io, &format!("chmod {path}"), &e)
                })?;
            }
            Ok(Reply::Written {
                path,
                bytes: data.len() as u64,
            })
        }
    }
}

#[derive(Default)]
struct Capture {
    data: Vec<u8>,
    truncated: bool,
}

fn spawn_reader<R: Read + Send + 'static>(
    mut src: R,
    cap: usize,
    done: mpsc::Sender<()>,
) -> Arc<Mutex<Capture>> {
    let out = Arc::new(Mutex::new(Capture::default()));
    let sink = Arc::clone(&out);
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let mut c = sink.lock().unwrap_or_else(|e| e.into_inner());
                    let room = cap.saturating_sub(c.data.len());
                    if n > room {
                        c.truncated = true;
                    }
                    c.data.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
    out
}

fn take(c: &Mutex<Capture>) -> (String, bool) {
    let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
    let data = std::mem::take(&mut c.data);
    (String::from_utf8_lossy(&data).into_owned(), c.truncated)
}

/// How long a killed program may take to exit before it counts as stuck.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Every task of every process in process group `pgid` under `proc`: its
/// name, state, wchan and kernel stack (/proc/PID/task/TID/{stat,wchan,stack}).
fn stuck_report(proc: &Path, pgid: libc::pid_t) -> String {
    let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
    // "pid (comm) S ppid pgrp ..." with comm possibly holding spaces.
    let after_comm = |stat: &str| {
        let close = stat.rfind(')')?;
        let open = stat.find('(')?;
        let f: Vec<String> = stat[close + 1..]
            .split_whitespace()
            .map(String::from)
            .collect();
        Some((stat[open + 1..close].to_string(), f))
    };
    let mut tasks = Vec::new();
    let mut pids: Vec<u32> = fs::read_dir(proc)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    for pid in pids {
        let Some((_, f)) = after_comm(&read(proc.join(format!("{pid}/stat")))) else {
            continue;
        };
        if f.get(2).and_then(|g| g.parse::<libc::pid_t>().ok()) != Some(pgid) {
            continue;
        }
        let task_dir = proc.join(format!("{pid}/task"));
        let mut tids: Vec<u32> = fs::read_dir(&task_dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        tids.sort_unstable();
        for tid in tids {
            let t = task_dir.join(tid.to_string());
            let Some((comm, f)) = after_comm(&read(t.join("stat"))) else {
                continue;
            };
            let stack: Vec<String> = read(t.join("stack"))
                .lines()
                .take(16)
                .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
                .collect();
            tasks.push(format!(
                "{comm}[{pid}/{tid}] state {} wchan {} stack {}",
                f.first().map_or("?", String::as_str),
                read(t.join("wchan")).trim(),
                if stack.is_empty() {
                    "unreadable".to_string()
                } else {
                    stack.join(" < ")
                }
            ));
        }
    }
    if tasks.is_empty() {
        format!("no task of process group {pgid} left in {}", proc.display())
    } else {
        tasks.join("; ")
    }
}

/// Runs `argv` in its own process group, capturing output; on timeout the
/// whole group gets SIGKILL, and a group that outlives it by [`KILL_GRACE`]
/// is reported as [`ErrorKind::Stuck`].
fn run_command(
    argv: &[String],
    stdin: Option<String>,
    timeout: Option<Duration>,
    env: &[(String, String)],
    cfg: &ServerConfig,
) -> Result<RunOutput, AgentError> {
    let Some(program) = argv.first() else {
        return Err(AgentError::new(ErrorKind::BadRequest, "run: empty argv"));
    };
    let started = Instant::now();
    let mut cmd = Command::new(program);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| AgentError::from_io(ErrorKind::Spawn, &format!("run {program}"), &e))?;
    let pid = child.id() as libc::pid_t;

    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Detached: a program that never reads its stdin must not block us.
        thread::spawn(move || {
            let _ = pipe.write_all(data.as_bytes());
        });
    }
    let (done_tx, done_rx) = mpsc::channel();
    let stdout = spawn_reader(
        child.stdout.take().expect("piped"),
        cfg.max_output,
        done_tx.clone(),
    );
    let stderr = spawn_reader(child.stderr.take().expect("piped"), cfg.max_output, done_tx);

    let (status_tx, status_rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = status_tx.send(child.wait());
    });
    let mut timed_out = false;
    let status = match timeout {
        None => status_rx.recv(),
        Some(t) => match status_rx.recv_timeout(t) {
            Ok(s) => Ok(s),
            Err(_) => {
                timed_out = true;
                // SAFETY: signals our child's process group (pgid == pid).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                match status_rx.recv_timeout(KILL_GRACE) {
                    Ok(s) => Ok(s),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        // Unkillable: sleeping uninterruptibly in the kernel.
                        // Say where instead of waiting for good.
                        return Err(AgentError::new(
                            ErrorKind::Stuck,
                            format!(
                                "{program} outlived SIGKILL by {KILL_GRACE:?} after its {t:?} timeout; {}",
                                stuck_report(Path::new("/proc"), pid)
                            ),
                        ));
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => Err(mpsc::RecvError),
                }
            }
        },
    };
    let status = match status {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(AgentError::from_io(ErrorKind::Internal, "wait", &e)),
        Err(_) => {
            return Err(AgentError::new(
                ErrorKind::Internal,
                "waiter thread vanished",
            ));
        }
    };
    // Both readers end when every holder of the pipes has exited; children
    // left running in the background may keep them open: don't wait forever.
    let grace_end = Instant::now() + cfg.output_grace;
    for _ in 0..2 {
        let left = grace_end.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let (stdout, t1) = take(&stdout);
    let (stderr, t2) = take(&stderr);
    Ok(RunOutput {
        exit_code: status.code(),
        signal: status.signal(),
        stdout,
        stderr,
        duration_ms: started.elapsed().as_millis() as u64,
        timed_out,
        truncated: t1 || t2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn cfg() -> ServerConfig {
        ServerConfig::for_tests("/nonexistent-root")
    }

    fn run(
        argv: &[&str],
        stdin: Option<&str>,
        timeout_ms: Option<u64>,
    ) -> Result<RunOutput, AgentError> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        run_command(
            &argv,
            stdin.map(String::from),
            timeout_ms.map(Duration::from_millis),
            &[],
            &cfg(),
        )
    }

    #[test]
    fn stuck_report_names_each_task_of_the_group_with_its_stack() {
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        let task = |pid: u32, tid: u32, stat: &str, wchan: &str, stack: &str| {
            let d = p.join(format!("{pid}/task/{tid}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("stat"), stat).unwrap();
            fs::write(d.join("wchan"), wchan).unwrap();
            fs::write(d.join("stack"), stack).unwrap();
            if pid == tid {
                fs::write(p.join(format!("{pid}/stat")), stat).unwrap();
            }
        };
        // Group 40: the sink (two threads, one stuck) and a child; 50 is another group.
        task(
            40,
            40,
            "40 (tcp sink) S 1 40 40 0",
            "do_wait",
            "[<0>] do_wait+0x1/0x2\n",
        );
        task(
            40,
            41,
            "41 (tcp sink) D 1 40 40 0",
            "kvm_async_pf_task_wait_schedule",
            "[<0>] kvm_async_pf_task_wait_schedule+0x10/0x90\n[<0>] exc_page_fault+0x5/0x9\n",
        );
        task(43, 43, "43 (sh) R 40 40 40 0", "0", "");
        task(50, 50, "50 (other) D 1 50 50 0", "x", "[<0>] y+0x0/0x1\n");
        fs::create_dir_all(p.join("self")).unwrap();
        let r = stuck_report(p, 40);
        assert!(
            r.contains("tcp sink[40/41] state D wchan kvm_async_pf_task_wait_schedule stack kvm_async_pf_task_wait_schedule+0x10/0x90 < exc_page_fault+0x5/0x9"),
            "{r}"
        );
        assert!(r.contains("tcp sink[40/40] state S"), "{r}");
        assert!(
            r.contains("sh[43/43] state R wchan 0 stack unreadable"),
            "{r}"
        );
        assert!(!r.contains("other"), "{r}");
        assert!(stuck_report(p, 99).starts_with("no task of process group 99"));
    }

    #[test]
    fn bounded_lines() {
        let mut r = Cursor::new(b"short\n0123456789abc\nlast".to_vec());
        let mut buf = Vec::new();
        assert!(matches!(
            read_line_bounded(&mut r, 10, &mut buf).unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, b"short");
        assert!(matches!(
            read_line_bounded(&mut r, 10, &mut buf).unwrap(),
            LineRead::TooLong(14)
        ));
        assert!(matches!(
            read_line_bounded(&mut r, 10, &mut buf).unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, b"last");
        assert!(matches!(
            read_line_bounded(&mut r, 10, &mut buf).unwrap(),
            LineRead::Eof
        ));
        // Long lines split across many small reads.
        let mut r = BufReader::with_capacity(3, Cursor::new(b"abcdefgh\nxy\n".to_vec()));
        assert!(matches!(
            read_line_bounded(&mut r, 5, &mut buf).unwrap(),
            LineRead::TooLong(9)
        ));
        assert!(matches!(
            read_line_bounded(&mut r, 5, &mut buf).unwrap(),
            LineRead::Line
        ));
        assert_eq!(buf, b"xy");
    }

    #[test]
    fn run_captures_and_reports() {
        let o = run(&["sh", "-c", "echo out; echo err >&2; exit 3"], None, None).unwrap();
        assert_eq!((o.exit_code, o.signal), (Some(3), None));
        assert_eq!(o.stdout, "out\n");
        assert_eq!(o.stderr, "err\n");
        let o = run(&["cat"], Some("piped\n"), None).unwrap();
        assert_eq!(o.stdout, "piped\n");
        assert!(o.success());
        let e = run(&["/nonexistent/prog"], None, None).unwrap_err();
        assert_eq!((e.kind, e.errno), (ErrorKind::Spawn, Some(libc::ENOENT)));
        assert_eq!(
            run(&[], None, None).unwrap_err().kind,
            ErrorKind::BadRequest
        );
    }

    #[test]
    fn run_timeout_kills_the_process_group() {
        let t = Instant::now();
        // The pipeline's `sleep` holds stdout too: killing only `sh` would hang the readers.
        let o = run(
            &["sh", "-c", "echo started; sleep 30 | cat"],
            None,
            Some(200),
        )
        .unwrap();
        assert!(o.timed_out);
        assert_eq!(o.signal, Some(libc::SIGKILL));
        assert_eq!(o.stdout, "started\n");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[test]
    fn background_children_do_not_block_the_reply() {
        let t = Instant::now();
        let o = run(&["sh", "-c", "sleep 5 & echo bg"], None, None).unwrap();
        assert_eq!(o.stdout, "bg\n");
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    #[test]
    fn output_is_capped() {
        let mut c = cfg();
        c.max_output = 1000;
        let argv = ["sh", "-c", "yes | head -c 5000"].map(String::from);
        let o = run_command(&argv, None, None, &[], &c).unwrap();
        assert_eq!(o.stdout.len(), 1000);
        assert!(o.truncated);
    }

    #[test]
    fn files() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f").to_string_lossy().into_owned();
        let r = execute(
            Op::WriteFile {
                path: p.clone(),
                contents_b64: b64_encode(b"\0bin\xff"),
                mode: Some(0o600),
            },
            &cfg(),
        )
        .unwrap();
        assert_eq!(
            r,
            Reply::Written {
                path: p.clone(),
                bytes: 5
            }
        );
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let Reply::File(f) = execute(Op::ReadFile { path: p.clone() }, &cfg()).unwrap() else {
            panic!()
        };
        assert_eq!(f.bytes().unwrap(), b"\0bin\xff");
        let e = execute(
            Op::ReadFile {
                path: "/nonexistent/x".into(),
            },
            &cfg(),
        )
        .unwrap_err();
        assert_eq!((e.kind, e.errno), (ErrorKind::Io, Some(libc::ENOENT)));
        let e = execute(
            Op::WriteFile {
                path: p,
                contents_b64: "!!".into(),
                mode: None,
            },
            &cfg(),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
    }

    #[test]
    fn malformed_lines_keep_their_id_when_possible() {
        let (r, s) = handle_line(b"not json", &cfg());
        assert_eq!(r.id, 0);
        assert_eq!(r.result.unwrap_err().kind, ErrorKind::BadRequest);
        assert_eq!(s, None);
        let (r, _) = handle_line(br#"{"id":42,"op":{"kind":"fly"}}"#, &cfg());
        assert_eq!(r.id, 42);
        assert!(r.result.is_err());
        let (r, s) = handle_line(
            br#"{"id":43,"op":{"kind":"shutdown","reboot":false}}"#,
            &cfg(),
        );
        assert_eq!(
            (r.id, r.result, s),
            (43, Ok(Reply::ShuttingDown), Some(false))
        );
    }

    #[test]
    fn stream_loop_ignores_blank_lines_and_stops_at_shutdown() {
        let input = b"\r\n{\"id\":1,\"op\":{\"kind\":\"ping\"}}\r\n   \n{\"id\":2,\"op\":{\"kind\":\"shutdown\"}}\n{\"id\":3,\"op\":{\"kind\":\"ping\"}}\n";
        let mut out = Vec::new();
        serve_streams_with(Cursor::new(input.to_vec()), &mut out, &cfg()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("{\"event\":\"ready\""));
        assert_eq!(lines[1], "{\"id\":1,\"ok\":{\"kind\":\"pong\"}}");
        assert_eq!(lines[2], "{\"id\":2,\"ok\":{\"kind\":\"shutting_down\"}}");
    }
}
