//! The host ↔ guest-agent protocol: newline-delimited JSON, one object per line.
//!
//! Host → agent: [`Request`] `{"id":7,"op":{"kind":"run","argv":["echo","hi"],...}}`
//!
//! Agent → host: [`AgentMessage`], which is either
//! - an [`Event`], e.g. the unsolicited first frame `{"event":"ready","agent_version":"0.1.0",...}`, or
//! - a [`Response`] `{"id":7,"ok":{"kind":"run",...}}` / `{"id":7,"err":{"kind":"io","message":"...","errno":2}}`.
//!
//! A line the agent cannot parse gets an error response with id 0 (or with
//! the request's id if the line was JSON with a numeric `id` but a bad `op`).
//! Blank lines are ignored. Only `serde` and `serde_json` are used here so
//! that the host can share this module as is.

use serde::{Deserialize, Serialize};

/// Version string the agent reports in its ready event.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Longest line either side accepts; longer lines are discarded with an error.
pub const MAX_LINE: usize = 64 << 20;

/// One request from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the host, echoed in the response; 0 is reserved for errors
    /// about lines that could not be parsed.
    pub id: u64,
    pub op: Op,
}

/// What the agent should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    /// Describe the guest: [`Reply::Hello`].
    Hello,
    /// [`Reply::Pong`].
    Ping,
    /// Run a program (no shell: use `["sh","-c",...]` for one): [`Reply::Run`].
    Run {
        argv: Vec<String>,
        /// Written to the program's stdin, which is then closed (stdin is /dev/null if absent).
        #[serde(default)]
        stdin: Option<String>,
        /// Kill the program (its whole process group) after this long.
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Added to the agent's environment.
        #[serde(default)]
        env: Vec<(String, String)>,
    },
    /// Power off (or reboot): [`Reply::ShuttingDown`], then the guest goes away.
    Shutdown {
        #[serde(default)]
        reboot: bool,
    },
    /// Read a whole file: [`Reply::File`].
    ReadFile { path: String },
    /// Create or truncate a file: [`Reply::Written`].
    WriteFile {
        path: String,
        /// The contents, base64 (standard alphabet, padded); see [`b64_encode`].
        contents_b64: String,
        /// Permission bits to set (e.g. 0o644); unchanged/umask default if absent.
        #[serde(default)]
        mode: Option<u32>,
    },
}

impl Op {
    /// A short name for logs and errors ("run", "hello", ...).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Ping => "ping",
            Op::Run { .. } => "run",
            Op::Shutdown { .. } => "shutdown",
            Op::ReadFile { .. } => "read_file",
            Op::WriteFile { .. } => "write_file",
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Hello(HelloInfo),
    Pong,
    Run(RunOutput),
    File(FileContents),
    Written { path: String, bytes: u64 },
    ShuttingDown,
}

impl Reply {
    /// The variant's name ("hello", "run", ...), for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Reply::Hello(_) => "hello",
            Reply::Pong => "pong",
            Reply::Run(_) => "run",
            Reply::File(_) => "file",
            Reply::Written { .. } => "written",
            Reply::ShuttingDown => "shutting_down",
        }
    }
}

/// Classes of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line was not a valid request.
    BadRequest,
    /// A file operation failed (`errno` set).
    Io,
    /// The program could not be started (`errno` set).
    Spawn,
    /// The operation is not available here.
    Unsupported,
    /// A bug in the agent (e.g. a caught panic).
    Internal,
    /// The program outlived SIGKILL after its timeout (stuck in the guest
    /// kernel); the message has each of its tasks' state, wchan and stack.
    Stuck,
    /// A kind this version does not know.
    #[serde(other)]
    Other,
}

/// A failed answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default)]
    pub errno: Option<i32>,
}

impl AgentError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
            errno: None,
        }
    }

    /// From an I/O error, keeping its errno.
    pub fn from_io(kind: ErrorKind, context: &str, e: &std::io::Error) -> Self {
        AgentError {
            kind,
            message: format!("{context}: {e}"),
            errno: e.raw_os_error(),
        }
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = serde_json::to_value(self.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        write!(f, "{kind}: {}", self.message)?;
        if let Some(e) = self.errno {
            write!(f, " (errno {e})")?;
        }
        Ok(())
    }
}

impl std::error::Error for AgentError {}

/// The answer to request `id`; on the wire `{"id":..,"ok":..}` or `{"id":..,"err":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ResponseRepr", into = "ResponseRepr")]
pub struct Response {
    pub id: u64,
    pub result: Result<Reply, AgentError>,
}

#[derive(Clone, Serialize, Deserialize)]
struct ResponseRepr {
    id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    err: Option<AgentError>,
}

impl From<Response> for ResponseRepr {
    fn from(r: Response) -> Self {
        match r.result {
            Ok(ok) => ResponseRepr {
                id: r.id,
                ok: Some(ok),
                err: None,
            },
            Err(err) => ResponseRepr {
                id: r.id,
                ok: None,
                err: Some(err),
            },
        }
    }
}

impl TryFrom<ResponseRepr> for Response {
    type Error = String;
    fn try_from(r: ResponseRepr) -> Result<Self, String> {
        match (r.ok, r.err) {
            (Some(ok), None) => Ok(Response {
                id: r.id,
                result: Ok(ok),
            }),
            (None, Some(err)) => Ok(Response {
                id: r.id,
                result: Err(err),
            }),
            (Some(_), Some(_)) => Err("response has both \"ok\" and \"err\"".into()),
            (None, None) => Err("response has neither \"ok\" nor \"err\"".into()),
        }
    }
}

/// Unsolicited frames from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The first frame after the agent opened its port.
    Ready {
        agent_version: String,
        /// Guest uptime when the agent became ready (from /proc/uptime).
        #[serde(default)]
        uptime_ms: Option<u64>,
    },
    /// Sent every [`HEARTBEAT_PERIOD`] by a guest agent, from its own thread:
    /// a guest whose agent stops beating has stopped scheduling (a hang or
    /// a frozen machine), whatever request is outstanding.
    Heartbeat {
        #[serde(default)]
        uptime_ms: Option<u64>,
    },
}

/// How often a guest agent sends [`Event::Heartbeat`].
pub const HEARTBEAT_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

/// Anything the agent writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgentMessage {
    Event(Event),
    Response(Response),
}

impl AgentMessage {
    /// Parses one line (without or with its trailing newline).
    pub fn from_line(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line.trim_end_matches(['\n', '\r']))
    }
}

/// `serde_json` never puts a raw newline in its compact output, so one value is one line.
pub fn to_line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(value).expect("protocol types always serialize");
    v.push(b'\n');
    v
}

/// What the guest looks like (answer to [`Op::Hello`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloInfo {
    /// `uname -r`.
    pub release: String,
    /// `uname -v`.
    pub version: String,
    /// `uname -m`.
    pub machine: String,
    /// `/proc/cmdline`.
    pub cmdline: String,
    /// `/sys/bus/pci/devices/*`, sorted by address.
    pub pci: Vec<PciFunction>,
    /// `/sys/kernel/iommu_groups/*`, sorted by id.
    pub iommu_groups: Vec<IommuGroup>,
    /// Loaded modules, from `/proc/modules`.
    pub modules: Vec<String>,
    /// From `/proc/uptime`.
    pub uptime_ms: u64,
    /// Kernel log records with level <= warning (from `/dev/kmsg`).
    pub dmesg_warnings: Vec<String>,
}

/// One PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciFunction {
    /// `0000:00:01.0`.
    pub bdf: String,
    pub vendor: u16,
    pub device: u16,
    /// Class code (`0x020000` for Ethernet).
    pub class: u32,
    /// Bound driver (`gve`, `virtio-pci`), if any.
    pub driver: Option<String>,
    pub iommu_group: Option<u32>,
}

/// One IOMMU group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IommuGroup {
    pub id: u32,
    /// Contents of `/sys/kernel/iommu_groups/N/type`: `DMA`, `DMA-FQ`, `identity`, `blocked`...
    #[serde(rename = "type")]
    pub type_: String,
    /// Device names (PCI addresses) in the group, sorted.
    pub devices: Vec<String>,
}

/// What a program did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOutput {
    /// Exit status if it exited.
    pub exit_code: Option<i32>,
    /// Signal number if it was killed.
    pub signal: Option<i32>,
    /// Output, lossily decoded as UTF-8 (capped; see `truncated`).
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    /// Killed because `timeout_ms` passed.
    #[serde(default)]
    pub timed_out: bool,
    /// Output beyond the cap was dropped.
    #[serde(default)]
    pub truncated: bool,
}

impl RunOutput {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// A file's contents (answer to [`Op::ReadFile`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContents {
    pub path: String,
    /// Base64 of the contents; see [`FileContents::bytes`].
    pub contents_b64: String,
}

impl FileContents {
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        b64_decode(&self.contents_b64)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with `=` padding.
pub fn b64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(B64[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional, ASCII whitespace ignored).
pub fn b64_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0u32;
    let mut padding = false;
    for (i, c) in s.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding = true;
                continue;
            }
            c if c.is_ascii_whitespace() => continue,
            _ => return Err(format!("invalid base64 byte {c:#04x} at {i}")),
        };
        if padding {
            return Err(format!("base64 data after padding at {i}"));
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 {
        return Err("truncated base64".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(
        v: &T,
    ) -> String {
        let line = to_line(v);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let s = String::from_utf8(line).unwrap();
        let back: T = serde_json::from_str(&s).unwrap();
        assert_eq!(&back, v);
        s
    }

    #[test]
    fn requests_round_trip() {
        let ops = [
            Op::Hello,
            Op::Ping,
            Op::Run {
                argv: vec!["sh".into(), "-c".into(), "echo \"hi\"\nexit 3".into()],
                stdin: Some("input\n".into()),
                timeout_ms: Some(1500),
                env: vec![("A".into(), "b=c".into())],
            },
            Op::Shutdown { reboot: true },
            Op::ReadFile {
                path: "/proc/cmdline".into(),
            },
            Op::WriteFile {
                path: "/tmp/x".into(),
                contents_b64: b64_encode(b"\0\x01binary"),
                mode: Some(0o600),
            },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            round_trip(&Request {
                id: i as u64 + 1,
                op,
            });
        }
        let s = round_trip(&Request {
            id: 9,
            op: Op::Ping,
        });
        assert_eq!(s, "{\"id\":9,\"op\":{\"kind\":\"ping\"}}\n");
        // Optional fields may be left out by hand-written requests.
        let r: Request =
            serde_json::from_str(r#"{"id":3,"op":{"kind":"run","argv":["true"]}}"#).unwrap();
        assert_eq!(
            r.op,
            Op::Run {
                argv: vec!["true".into()],
                stdin: None,
                timeout_ms: None,
                env: vec![]
            }
        );
    }

    #[test]
    fn responses_round_trip_including_errors() {
        let hello = HelloInfo {
            release: "7.3.4+deb13-cloud-amd64".into(),
            pci: vec![PciFunction {
                bdf: "0000:00:01.0".into(),
                vendor: 0x1ae0,
                device: 0x0042,
                class: 0x020000,
                driver: Some("gve".into()),
                iommu_group: Some(3),
            }],
            iommu_groups: vec![IommuGroup {
                id: 3,
                type_: "DMA".into(),
                devices: vec!["0000:00:01.0".into()],
            }],
            ..Default::default()
        };
        let replies = [
            Ok(Reply::Hello(hello)),
            Ok(Reply::Pong),
            Ok(Reply::Run(RunOutput {
                exit_code: Some(0),
                stdout: "hi\n".into(),
                duration_ms: 3,
                ..Default::default()
            })),
            Ok(Reply::File(FileContents {
                path: "/x".into(),
                contents_b64: b64_encode(b"abc"),
            })),
            Ok(Reply::Written {
                path: "/x".into(),
                bytes: 3,
            }),
            Ok(Reply::ShuttingDown),
            Err(AgentError {
                kind: ErrorKind::Io,
                message: "open /nope: No such file".into(),
                errno: Some(2),
            }),
            Err(AgentError::new(ErrorKind::BadRequest, "expected value")),
        ];
        for (i, result) in replies.into_iter().enumerate() {
            let r = Response {
                id: i as u64,
                result,
            };
            let s = round_trip(&r);
            let msg = AgentMessage::from_line(&s).unwrap();
            assert_eq!(msg, AgentMessage::Response(r));
        }
        let s = String::from_utf8(to_line(&Response {
            id: 4,
            result: Err(AgentError {
                kind: ErrorKind::Io,
                message: "m".into(),
                errno: Some(2),
            }),
        }))
        .unwrap();
        assert_eq!(
            s,
            "{\"id\":4,\"err\":{\"kind\":\"io\",\"message\":\"m\",\"errno\":2}}\n"
        );
        let s = String::from_utf8(to_line(&Response {
            id: 5,
            result: Ok(Reply::Pong),
        }))
        .unwrap();
        assert_eq!(s, "{\"id\":5,\"ok\":{\"kind\":\"pong\"}}\n");
        // IommuGroup's field is "type" on the wire.
        assert!(
            serde_json::to_string(&IommuGroup {
                id: 1,
                type_: "identity".into(),
                devices: vec![]
            })
            .unwrap()
            .contains("\"type\":\"identity\"")
        );
    }

    #[test]
    fn malformed_responses_and_unknown_kinds() {
        assert!(AgentMessage::from_line(r#"{"id":1}"#).is_err());
        assert!(
            AgentMessage::from_line(
                r#"{"id":1,"ok":{"kind":"pong"},"err":{"kind":"io","message":""}}"#
            )
            .is_err()
        );
        let m = AgentMessage::from_line(r#"{"id":2,"err":{"kind":"brand_new","message":"x"}}"#)
            .unwrap();
        let AgentMessage::Response(Response { result: Err(e), .. }) = m else {
            panic!("{m:?}")
        };
        assert_eq!(e.kind, ErrorKind::Other);
        assert_eq!(e.errno, None);
    }

    #[test]
    fn ready_event() {
        let line = r#"{"event":"ready","agent_version":"0.1.0"}"#;
        let m = AgentMessage::from_line(line).unwrap();
        assert_eq!(
            m,
            AgentMessage::Event(Event::Ready {
                agent_version: "0.1.0".into(),
                uptime_ms: None
            })
        );
        let s = round_trip(&AgentMessage::Event(Event::Ready {
            agent_version: AGENT_VERSION.into(),
            uptime_ms: Some(812),
        }));
        assert!(s.starts_with("{\"event\":\"ready\""), "{s}");
    }

    #[test]
    fn base64() {
        for (raw, enc) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64_encode(raw), enc);
            assert_eq!(b64_decode(enc).unwrap(), raw);
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(b64_decode(&b64_encode(&all)).unwrap(), all);
        assert_eq!(b64_decode("Zm9v\nYmFy").unwrap(), b"foobar");
        assert!(b64_decode("Zm9v!").is_err());
        assert!(b64_decode("Z").is_err());
        assert!(b64_decode("Zg==Zg").is_err());
    }
}
