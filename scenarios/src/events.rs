//! The event stream of a run. The same events drive the terminal timeline
//! whether the machine runs here (kvm engine) or inside L1 (nested engine,
//! where they travel as JSON lines over a virtio-serial port).

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A timeline step finished (`elapsed_ms` since the run started where the
    /// step happened: L1's clock for nested steps).
    Step {
        name: String,
        elapsed_ms: u64,
        detail: String,
    },
    /// Progress of a long step (download, L1 boot).
    Progress { what: String, detail: String },
    /// A line of the lab guest's serial console.
    Console { line: String },
    /// A log message from the L1 side.
    Log { level: String, message: String },
    /// The final report of the run (the JSON the user asked for).
    Report { report: serde_json::Value },
    /// The run failed; the message says why and the console tail shows context.
    Failure {
        message: String,
        console_tail: Vec<String>,
        exit_code: i32,
    },
}

pub trait EventSink: Send + Sync {
    fn emit(&self, ev: Event);
}

/// Prints the timeline for a person. Console lines only with `verbose`.
pub struct TerminalSink {
    start: Instant,
    verbose: bool,
    out: Mutex<Box<dyn Write + Send>>,
}

impl TerminalSink {
    pub fn new(verbose: bool) -> Self {
        TerminalSink {
            start: Instant::now(),
            verbose,
            out: Mutex::new(Box::new(std::io::stderr())),
        }
    }
    pub fn with_writer(verbose: bool, w: Box<dyn Write + Send>) -> Self {
        TerminalSink {
            start: Instant::now(),
            verbose,
            out: Mutex::new(w),
        }
    }
}

impl EventSink for TerminalSink {
    fn emit(&self, ev: Event) {
        let t = self.start.elapsed().as_secs_f64();
        let Ok(mut o) = self.out.lock() else { return };
        let _ = match ev {
            Event::Step { name, detail, .. } => writeln!(
                o,
                "[{t:7.2}s] {name}{}",
                if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                }
            ),
            Event::Progress { what, detail } => writeln!(o, "[{t:7.2}s]   … {what} {detail}"),
            Event::Console { line } if self.verbose => writeln!(o, "          | {line}"),
            Event::Console { .. } => Ok(()),
            Event::Log { level, message } => writeln!(o, "[{t:7.2}s]   {level}: {message}"),
            Event::Report { .. } => Ok(()),
            Event::Failure {
                message,
                console_tail,
                ..
            } => {
                let _ = writeln!(o, "[{t:7.2}s] FAILED: {message}");
                if !console_tail.is_empty() {
                    let _ = writeln!(o, "--- last {} console lines ---", console_tail.len());
                    for l in console_tail {
                        let _ = writeln!(o, "  {l}");
                    }
                }
                Ok(())
            }
        };
    }
}

/// Writes each event as one JSON line (the L1 side of the nested engine).
pub struct JsonLineSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl JsonLineSink {
    pub fn new(w: Box<dyn Write + Send>) -> Self {
        JsonLineSink { out: Mutex::new(w) }
    }
}

impl EventSink for JsonLineSink {
    fn emit(&self, ev: Event) {
        if let (Ok(mut o), Ok(s)) = (self.out.lock(), serde_json::to_string(&ev)) {
            let _ = writeln!(o, "{s}");
            let _ = o.flush();
        }
    }
}

/// Remembers events (tests, and the report of a failed run).
#[derive(Default)]
pub struct CollectSink(pub Mutex<Vec<Event>>);

impl EventSink for CollectSink {
    fn emit(&self, ev: Event) {
        if let Ok(mut v) = self.0.lock() {
            v.push(ev);
        }
    }
}

/// Sends every event to several sinks.
pub struct Tee(pub Vec<std::sync::Arc<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&self, ev: Event) {
        for s in &self.0 {
            s.emit(ev.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_round_trip() {
        let evs = vec![
            Event::Step {
                name: "VM started".into(),
                elapsed_ms: 3,
                detail: String::new(),
            },
            Event::Console {
                line: "[    0.000000] Linux version 7.3.4".into(),
            },
            Event::Report {
                report: serde_json::json!({"verdict": "pass"}),
            },
            Event::Failure {
                message: "kernel panic".into(),
                console_tail: vec!["a".into()],
                exit_code: 2,
            },
        ];
        for e in evs {
            let s = serde_json::to_string(&e).unwrap();
            assert!(!s.contains('\n'));
            let back: Event = serde_json::from_str(&s).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn terminal_prints_failure_tail() {
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let b = std::sync::Arc::new(Mutex::new(Vec::new()));
        let t = TerminalSink::with_writer(false, Box::new(Buf(b.clone())));
        t.emit(Event::Console {
            line: "hidden".into(),
        });
        t.emit(Event::Failure {
            message: "guest kernel panicked".into(),
            console_tail: vec!["Kernel panic - not syncing".into()],
            exit_code: 2,
        });
        let s = String::from_utf8(b.lock().unwrap().clone()).unwrap();
        assert!(!s.contains("hidden"));
        assert!(s.contains("FAILED: guest kernel panicked"));
        assert!(s.contains("Kernel panic - not syncing"));
    }
}
