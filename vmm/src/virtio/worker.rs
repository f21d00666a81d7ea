//! Worker-thread plumbing shared by the virtio devices: a thread with a kill
//! EventFd, and an epoll wait that survives signals.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::{self, JoinHandle};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Worker threads that panicked (tests assert this stays zero).
#[cfg(test)]
pub(crate) static PANICKED_WORKERS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// A device worker thread, stopped (kill EventFd + join) on `stop` or drop.
pub(crate) struct Worker {
    kill: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Spawn `f`, which receives the kill EventFd it must poll.
    pub(crate) fn spawn<F>(name: &str, f: F) -> io::Result<Self>
    where
        F: FnOnce(EventFd) + Send + 'static,
    {
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let theirs = kill.try_clone()?;
        let handle = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || f(theirs))?;
        Ok(Worker {
            kill,
            handle: Some(handle),
        })
    }

    /// Ask the thread to exit and wait for it.
    pub(crate) fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            if let Err(e) = self.kill.write(1) {
                tracing::error!("cannot signal virtio worker to stop: {e}");
            }
            if h.join().is_err() {
                tracing::error!("virtio worker thread panicked");
                #[cfg(test)]
                PANICKED_WORKERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Register `fd` in `epoll` with `token` for `events`.
pub(crate) fn epoll_add(
    epoll: &Epoll,
    fd: &impl AsRawFd,
    token: u64,
    events: EventSet,
) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd.as_raw_fd(),
        EpollEvent::new(events, token),
    )
}

/// `epoll_wait` without timeout, retried on EINTR.
pub(crate) fn epoll_wait(epoll: &Epoll, events: &mut [EpollEvent]) -> io::Result<usize> {
    loop {
        match epoll.wait(-1, events) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// What woke a device worker in [`event_loop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Before the first wait: the guest may have queued work before activation.
    Start,
    /// A registered source with this token is ready.
    Ready(u64),
    /// Every ready source of one wait was handled.
    BatchDone,
}

/// The loop every virtio device worker runs: register `kill` and each
/// `(fd, token)` source for input, then call `on` with [`Wake::Start`], with
/// [`Wake::Ready`] per ready source and [`Wake::BatchDone`] after each wait,
/// until `kill` fires or epoll fails (logged with `name`). `on` gets the epoll
/// too, for devices that change their interest set (console backpressure).
pub(crate) fn event_loop(
    name: &str,
    kill: &EventFd,
    sources: &[(RawFd, u64)],
    mut on: impl FnMut(&Epoll, Wake),
) {
    const KILL: u64 = u64::MAX;
    let epoll = match Epoll::new().and_then(|ep| {
        epoll_add(&ep, kill, KILL, EventSet::IN)?;
        for &(fd, token) in sources {
            ep.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(ep)
    }) {
        Ok(ep) => ep,
        Err(e) => {
            tracing::error!("{name} worker cannot set up epoll: {e}");
            return;
        }
    };
    on(&epoll, Wake::Start);
    let mut events = [EpollEvent::default(); 8];
    loop {
        let n = match epoll_wait(&epoll, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("{name} epoll_wait failed: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                KILL => return,
                token => on(&epoll, Wake::Ready(token)),
            }
        }
        on(&epoll, Wake::BatchDone);
    }
}

/// Drain an EventFd (non-blocking); errors such as EAGAIN are ignored.
pub(crate) fn drain(evt: &EventFd) {
    let _ = evt.read();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn worker_stops_on_kill_and_drop() {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let mut w = Worker::spawn("test-worker", move |kill| {
            let epoll = Epoll::new().unwrap();
            epoll_add(&epoll, &kill, 0, EventSet::IN).unwrap();
            let mut ev = [EpollEvent::default(); 4];
            epoll_wait(&epoll, &mut ev).unwrap();
            d.store(true, Ordering::SeqCst);
        })
        .unwrap();
        w.stop();
        assert!(done.load(Ordering::SeqCst));
        w.stop();
        drop(w);
    }
}
