//! Cables between NIC ports: bounded per-port inboxes with backpressure,
//! fault injection, a pcap tap per wire, and scheduled link outages.
//!
//! A sender never blocks: when the receiver's inbox is full,
//! [`PortShared::transmit`] hands the frame back and the sender keeps it in
//! its own backlog (its TX ring then fills up, which is the backpressure the
//! guest sees). The receiver wakes the sender when it makes room. No lock of
//! one NIC is ever taken while holding another NIC's lock, so two NICs
//! sending to each other cannot deadlock.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::faults::{AtomicFaultCounters, FaultCounters, FaultState, WireFaults};
use crate::pcap::PcapWriter;

pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A level-triggered wake-up flag with a condition variable.
#[derive(Default)]
pub(crate) struct Signal {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    pub fn notify(&self) {
        *lock(&self.flag) = true;
        self.cv.notify_all();
    }

    /// Wait until notified or `timeout` passed; clears the flag.
    pub fn wait(&self, timeout: Option<Duration>) {
        let mut f = lock(&self.flag);
        if !*f {
            f = match timeout {
                Some(t) => {
                    self.cv
                        .wait_timeout(f, t)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self.cv.wait(f).unwrap_or_else(PoisonError::into_inner),
            };
        }
        *f = false;
    }
}

struct Delivery {
    at: Instant,
    frame: Vec<u8>,
}

/// One end of a cable: the inbox of frames arriving at this port and the
/// attachment through which it sends.
pub(crate) struct PortShared {
    pub name: String,
    inbox: Mutex<VecDeque<Delivery>>,
    capacity: usize,
    /// Wakes whoever consumes this inbox (the NIC worker or a host reader).
    pub owner: Arc<Signal>,
    /// Wakes whoever sends into this inbox (set when cabled).
    sender: Mutex<Option<Arc<Signal>>>,
    tx: Mutex<Option<Arc<WireDir>>>,
    /// Cable present and link up.
    pub link_up: AtomicBool,
    /// Link transitions of this port (cable plugged or unplugged, wire
    /// link up or down), counted so that a down-then-up pair between two
    /// looks of the owner is not lost.
    pub link_downs: AtomicU64,
    pub link_ups: AtomicU64,
    attached: AtomicBool,
    /// The owner's receive work, runnable on a sender's thread (see
    /// `GveConfig::inline_doorbells`).
    inline_poll: Mutex<Option<InlinePoll>>,
}

/// Receive work of a port's owner, run by whoever just filled its inbox.
pub(crate) type InlinePoll = Box<dyn Fn() + Send + Sync>;

/// Result of a transmit attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TxOutcome {
    /// On the wire (or deliberately lost by a fault).
    Sent,
    /// No cable or link down: the frame is gone.
    NoLink,
    /// Receiver full: the frame is handed back, retry later.
    Full(Vec<u8>),
}

impl PortShared {
    pub fn new(name: &str, capacity: usize, owner: Arc<Signal>) -> Arc<Self> {
        Arc::new(PortShared {
            name: name.to_string(),
            inbox: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            owner,
            sender: Mutex::new(None),
            tx: Mutex::new(None),
            link_up: AtomicBool::new(false),
            link_downs: AtomicU64::new(0),
            link_ups: AtomicU64::new(0),
            attached: AtomicBool::new(false),
            inline_poll: Mutex::new(None),
        })
    }

    pub fn set_inline_poll(&self, f: InlinePoll) {
        *lock(&self.inline_poll) = Some(f);
    }

    /// Run the receive work of the port at the other end of this port's
    /// cable on this thread, if its owner offers it and it has frames.
    pub fn run_peer_inline(&self) {
        let Some(dir) = lock(&self.tx).clone() else {
            return;
        };
        if dir.dst.queued() == 0 {
            return;
        }
        let g = lock(&dir.dst.inline_poll);
        if let Some(f) = g.as_ref() {
            f();
        }
    }

    fn set_link(&self, up: bool) {
        if self.link_up.swap(up, Ordering::SeqCst) != up {
            let c = if up { &self.link_ups } else { &self.link_downs };
            c.fetch_add(1, Ordering::SeqCst);
            self.owner.notify();
        }
    }

    /// Send `frame` out of this port.
    pub fn transmit(&self, frame: Vec<u8>) -> TxOutcome {
        let dir = lock(&self.tx).clone();
        match dir {
            Some(d) => d.send(frame),
            None => TxOutcome::NoLink,
        }
    }

    /// Take the next frame whose delivery time has come.
    pub fn pop_ready(&self, now: Instant) -> Option<Vec<u8>> {
        let mut q = lock(&self.inbox);
        if q.front().is_some_and(|d| d.at <= now) {
            let was_full = q.len() >= self.capacity;
            let f = q.pop_front().map(|d| d.frame);
            drop(q);
            if was_full && let Some(s) = lock(&self.sender).as_ref() {
                s.notify();
            }
            return f;
        }
        None
    }

    /// Put a frame back at the head (the receiver could not take it yet).
    pub fn unpop(&self, frame: Vec<u8>, now: Instant) {
        lock(&self.inbox).push_front(Delivery { at: now, frame });
    }

    /// When the earliest delayed frame becomes deliverable.
    pub fn next_deadline(&self) -> Option<Instant> {
        lock(&self.inbox).front().map(|d| d.at)
    }

    pub fn queued(&self) -> usize {
        lock(&self.inbox).len()
    }

    /// Drop everything queued (e.g. device reset): returns how many.
    pub fn clear(&self) -> usize {
        let mut q = lock(&self.inbox);
        let n = q.len();
        q.clear();
        drop(q);
        if let Some(s) = lock(&self.sender).as_ref() {
            s.notify();
        }
        n
    }

    fn has_room(&self) -> bool {
        lock(&self.inbox).len() < self.capacity
    }

    fn enqueue(&self, at: Instant, frame: Vec<u8>) {
        let mut q = lock(&self.inbox);
        // Keep the queue ordered by delivery time (stable for equal times).
        let pos = q.iter().rposition(|d| d.at <= at).map_or(0, |p| p + 1);
        q.insert(pos, Delivery { at, frame });
        drop(q);
        self.owner.notify();
    }
}

/// The NIC end of a cable, returned by [`crate::GveDevice::new`]; pass it to
/// [`Wire::connect`], [`Wire::loopback`] or [`Wire::connect_host`].
pub struct NicPort {
    pub(crate) shared: Arc<PortShared>,
}

impl NicPort {
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

/// One direction of a wire.
pub(crate) struct WireDir {
    dst: Arc<PortShared>,
    faults: Mutex<FaultState>,
    link: Arc<AtomicBool>,
    counters: Arc<AtomicFaultCounters>,
    pcap: Option<Arc<Mutex<PcapWriter<std::io::BufWriter<std::fs::File>>>>>,
}

impl WireDir {
    fn send(&self, frame: Vec<u8>) -> TxOutcome {
        if !self.link.load(Ordering::SeqCst) {
            AtomicFaultCounters::inc(&self.counters.link_down_drops);
            return TxOutcome::NoLink;
        }
        if !self.dst.has_room() {
            return TxOutcome::Full(frame);
        }
        AtomicFaultCounters::inc(&self.counters.frames);
        let copies = lock(&self.faults).apply(frame, &self.counters);
        let now = Instant::now();
        for (f, delay) in copies {
            if let Some(p) = &self.pcap
                && let Err(e) = lock(p).write_packet(
                    SystemTime::now()
                        .checked_add(delay)
                        .unwrap_or_else(SystemTime::now),
                    &f,
                )
            {
                tracing::warn!("pcap write failed: {e}");
            }
            AtomicFaultCounters::inc(&self.counters.delivered);
            self.dst.enqueue(now.checked_add(delay).unwrap_or(now), f);
        }
        TxOutcome::Sent
    }
}

/// Options of one wire.
#[derive(Clone, Debug, Default)]
pub struct WireOptions {
    /// Write every delivered frame (after faults) to this pcap file.
    pub pcap: Option<PathBuf>,
    pub faults: WireFaults,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("port {0} is already cabled")]
    AlreadyCabled(String),
    #[error("cannot create pcap {path}: {source}")]
    Pcap {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the link-schedule thread: {0}")]
    Thread(std::io::Error),
    #[error("invalid wire faults: {0}")]
    Faults(String),
}

struct WireInner {
    ends: Vec<Arc<PortShared>>,
    /// Both directions (one for a loopback), to swap their faults.
    dirs: Vec<(Arc<WireDir>, bool)>,
    link: Arc<AtomicBool>,
    counters: Arc<AtomicFaultCounters>,
    pcap: Option<Arc<Mutex<PcapWriter<std::io::BufWriter<std::fs::File>>>>>,
    stop: AtomicBool,
    /// The faults in force (the last `WireOptions::faults` or `set_faults`).
    faults: Mutex<WireFaults>,
    /// Generation of the link schedule: a schedule thread whose generation
    /// is no longer current stops.
    schedule_gen: AtomicU64,
    /// The current schedule holds the link down (a window is open).
    schedule_down: AtomicBool,
    /// Link-schedule threads, each with the signal that wakes it.
    threads: Mutex<Vec<(JoinHandle<()>, Arc<Signal>)>>,
}

impl WireInner {
    fn set_link(&self, up: bool) {
        if self.link.swap(up, Ordering::SeqCst) != up {
            if up {
                AtomicFaultCounters::inc(&self.counters.link_ups);
            } else {
                AtomicFaultCounters::inc(&self.counters.link_downs);
            }
        }
        for e in &self.ends {
            e.set_link(up);
        }
    }

    /// Wake every schedule thread (it then checks whether it is current).
    fn wake_schedules(&self) {
        for (_, s) in lock(&self.threads).iter() {
            s.notify();
        }
    }

    /// Start the link schedule of `faults` (windows relative to now) as
    /// generation `generation`; nothing when it has no window.
    fn start_schedule(
        self: &Arc<Self>,
        faults: &WireFaults,
        generation: u64,
    ) -> Result<(), WireError> {
        let mut windows = faults.link_down.clone();
        if windows.is_empty() {
            return Ok(());
        }
        windows.sort_by_key(|w| w.at_ms);
        let inner = self.clone();
        let signal = Arc::new(Signal::default());
        let wake = signal.clone();
        let start = Instant::now();
        let t = std::thread::Builder::new()
            .name("sim-nic-wire".into())
            .spawn(move || {
                let current = || {
                    !inner.stop.load(Ordering::SeqCst)
                        && inner.schedule_gen.load(Ordering::SeqCst) == generation
                };
                for w in windows {
                    let end = w.at_ms.saturating_add(w.duration_ms);
                    for (at, up) in [(w.at_ms, false), (end, true)] {
                        let Some(when) = start.checked_add(Duration::from_millis(at)) else {
                            return;
                        };
                        loop {
                            if !current() {
                                return;
                            }
                            let now = Instant::now();
                            if now >= when {
                                break;
                            }
                            wake.wait(Some(when - now));
                        }
                        // Checked and applied under the faults lock, so a
                        // concurrent `set_faults` sees either the whole
                        // transition or none of it.
                        let _g = lock(&inner.faults);
                        if !current() {
                            return;
                        }
                        inner.schedule_down.store(!up, Ordering::SeqCst);
                        inner.set_link(up);
                    }
                }
            })
            .map_err(WireError::Thread)?;
        let mut threads = lock(&self.threads);
        threads.retain(|(t, _)| !t.is_finished());
        threads.push((t, signal));
        Ok(())
    }
}

/// A cable. Dropping it unplugs both ends (link down) and flushes the pcap.
pub struct Wire {
    inner: Arc<WireInner>,
}

/// The host end of [`Wire::connect_host`]: tests and scenarios inject and
/// capture frames directly.
pub struct HostPort {
    shared: Arc<PortShared>,
    signal: Arc<Signal>,
}

impl HostPort {
    /// Send a frame towards the NIC. Returns false if the NIC's inbox is
    /// full or the link is down (the frame is then dropped).
    pub fn send(&self, frame: Vec<u8>) -> bool {
        matches!(self.shared.transmit(frame), TxOutcome::Sent)
    }

    /// Next frame from the NIC, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if let Some(f) = self.shared.pop_ready(now) {
                return Some(f);
            }
            if now >= deadline {
                return None;
            }
            let mut wait = deadline - now;
            if let Some(d) = self.shared.next_deadline() {
                wait = wait.min(d.saturating_duration_since(now));
            }
            self.signal.wait(Some(wait.max(Duration::from_micros(50))));
        }
    }

    pub fn try_recv(&self) -> Option<Vec<u8>> {
        self.shared.pop_ready(Instant::now())
    }
}

/// Capacity of a host port's inbox.
const HOST_INBOX: usize = 65536;

impl Wire {
    /// Cable two NIC ports back to back.
    pub fn connect(a: NicPort, b: NicPort, opts: WireOptions) -> Result<Wire, WireError> {
        Wire::build(vec![a.shared, b.shared], opts)
    }

    /// Cable a NIC to itself: what it sends, it receives.
    pub fn loopback(a: NicPort, opts: WireOptions) -> Result<Wire, WireError> {
        Wire::build(vec![a.shared], opts)
    }

    /// Cable a NIC to a host-side endpoint.
    pub fn connect_host(a: NicPort, opts: WireOptions) -> Result<(Wire, HostPort), WireError> {
        let signal = Arc::new(Signal::default());
        let host = PortShared::new("host", HOST_INBOX, signal.clone());
        let w = Wire::build(vec![a.shared, host.clone()], opts)?;
        Ok((
            w,
            HostPort {
                shared: host,
                signal,
            },
        ))
    }

    fn build(ends: Vec<Arc<PortShared>>, opts: WireOptions) -> Result<Wire, WireError> {
        opts.faults.validate().map_err(WireError::Faults)?;
        for (i, e) in ends.iter().enumerate() {
            if e.attached.swap(true, Ordering::SeqCst) {
                for e in &ends[..i] {
                    e.attached.store(false, Ordering::SeqCst);
                }
                return Err(WireError::AlreadyCabled(e.name.clone()));
            }
        }
        let pcap = match &opts.pcap {
            Some(path) => Some(Arc::new(Mutex::new(PcapWriter::create(path).map_err(
                |source| {
                    for e in &ends {
                        e.attached.store(false, Ordering::SeqCst);
                    }
                    WireError::Pcap {
                        path: path.clone(),
                        source,
                    }
                },
            )?))),
            None => None,
        };
        let link = Arc::new(AtomicBool::new(true));
        let counters = Arc::new(AtomicFaultCounters::default());
        let mut dirs = Vec::new();
        let mut dir = |dst: &Arc<PortShared>, a_to_b: bool| {
            let d = Arc::new(WireDir {
                dst: dst.clone(),
                faults: Mutex::new(FaultState::new(&opts.faults, a_to_b)),
                link: link.clone(),
                counters: counters.clone(),
                pcap: pcap.clone(),
            });
            dirs.push((d.clone(), a_to_b));
            d
        };
        match ends.as_slice() {
            [a] => {
                *lock(&a.tx) = Some(dir(a, true));
                *lock(&a.sender) = Some(a.owner.clone());
            }
            [a, b] => {
                *lock(&a.tx) = Some(dir(b, true));
                *lock(&b.tx) = Some(dir(a, false));
                *lock(&a.sender) = Some(b.owner.clone());
                *lock(&b.sender) = Some(a.owner.clone());
            }
            _ => {}
        }
        let inner = Arc::new(WireInner {
            ends,
            dirs,
            link,
            counters,
            pcap,
            stop: AtomicBool::new(false),
            faults: Mutex::new(opts.faults.clone()),
            schedule_gen: AtomicU64::new(0),
            schedule_down: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        for e in &inner.ends {
            e.set_link(true);
        }
        // Dropping the wire on error unplugs the ends again.
        let w = Wire { inner };
        w.inner.start_schedule(&opts.faults, 0)?;
        Ok(w)
    }

    /// Replace the wire's faults from now on: fresh per-direction state
    /// seeded from `faults.seed` (the counters go on), and `faults`'
    /// link windows counted from now. A link schedule still running is
    /// cancelled; if one of its windows held the link down, the link comes
    /// back up.
    pub fn set_faults(&self, faults: WireFaults) -> Result<(), WireError> {
        faults.validate().map_err(WireError::Faults)?;
        let generation = {
            let mut cur = lock(&self.inner.faults);
            let generation = self.inner.schedule_gen.fetch_add(1, Ordering::SeqCst) + 1;
            for (d, a_to_b) in &self.inner.dirs {
                *lock(&d.faults) = FaultState::new(&faults, *a_to_b);
            }
            if self.inner.schedule_down.swap(false, Ordering::SeqCst) {
                self.inner.set_link(true);
            }
            *cur = faults.clone();
            generation
        };
        self.inner.wake_schedules();
        self.inner.start_schedule(&faults, generation)
    }

    /// The faults in force.
    pub fn faults(&self) -> WireFaults {
        lock(&self.inner.faults).clone()
    }

    /// What the faults injected so far.
    pub fn counters(&self) -> FaultCounters {
        self.inner.counters.snapshot()
    }

    /// Force the link down or up (both ends see the transition).
    pub fn set_link(&self, up: bool) {
        self.inner.set_link(up);
    }

    pub fn link_up(&self) -> bool {
        self.inner.link.load(Ordering::SeqCst)
    }

    /// Flush the pcap file, if any.
    pub fn flush_pcap(&self) {
        if let Some(p) = &self.inner.pcap
            && let Err(e) = lock(p).flush()
        {
            tracing::warn!("pcap flush failed: {e}");
        }
    }

    /// Frames written to the pcap so far.
    pub fn pcap_records(&self) -> u64 {
        self.inner.pcap.as_ref().map_or(0, |p| lock(p).records())
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.wake_schedules();
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        for (t, _) in threads {
            let _ = t.join();
        }
        for e in &self.inner.ends {
            *lock(&e.tx) = None;
            *lock(&e.sender) = None;
            e.set_link(false);
            e.attached.store(false, Ordering::SeqCst);
        }
        self.flush_pcap();
    }
}
