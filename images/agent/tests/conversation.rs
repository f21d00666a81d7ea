//! Client ↔ server over real byte streams: a socketpair, a unix socket
//! path, and a pty (the tty path the guest's /dev/hvc0 takes).

use std::ffi::CStr;
use std::fs::File;
use std::io::{BufReader, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use netmem_agent::client::{AgentClient, ClientError, RunSpec};
use netmem_agent::protocol::ErrorKind;
use netmem_agent::server::{ServerConfig, serve_streams_with, serve_with};
use netmem_agent::sysinfo::fake;

const READY: Duration = Duration::from_secs(10);

#[test]
fn full_conversation_over_a_socketpair() {
    let root = tempfile::tempdir().unwrap();
    fake::populate(root.path());
    let (host, guest) = UnixStream::pair().unwrap();

    // Console noise before the agent starts, including a partial line that
    // the ready frame then follows on the same line.
    (&guest)
        .write_all(b"\x1b[0m[    0.123] booting...\r\n\0\0garbage {not json\n\x1b[?25l")
        .unwrap();

    let cfg = ServerConfig::for_tests(root.path());
    let server = thread::spawn(move || {
        let r = BufReader::new(guest.try_clone().unwrap());
        serve_streams_with(r, &guest, &cfg)
    });

    let mut client = AgentClient::new(host.try_clone().unwrap(), host.try_clone().unwrap());
    client.set_timeout(Duration::from_secs(20));
    let ready = client.wait_ready(READY).unwrap();
    assert_eq!(ready.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(ready.uptime_ms, Some(1250));
    let noise: Vec<&str> = client.noise().collect();
    assert_eq!(noise.len(), 2, "{noise:?}");
    assert!(noise[0].contains("booting"));
    // wait_ready again returns at once.
    assert_eq!(client.wait_ready(Duration::ZERO).unwrap(), ready);

    let hello = client.hello().unwrap();
    assert_eq!(hello.release, "7.3.4+deb13-cloud-amd64");
    assert_eq!(hello.pci.len(), 2);
    assert_eq!(hello.pci[1].driver.as_deref(), Some("gve"));
    assert_eq!(hello.iommu_groups[1].type_, "DMA");
    assert_eq!(hello.dmesg_warnings.len(), 3);

    let out = client.run(&["echo", "hi"]).unwrap();
    assert_eq!(out.stdout, "hi\n");
    assert!(out.success());

    let out = client
        .run_with(RunSpec {
            stdin: Some("a\nb\n".into()),
            env: vec![("NETMEM_X".into(), "42".into())],
            ..RunSpec::new(&["sh", "-c", "wc -l; echo $NETMEM_X >&2; exit 7"])
        })
        .unwrap();
    assert_eq!(out.stdout.trim(), "2");
    assert_eq!(out.stderr, "42\n");
    assert_eq!(out.exit_code, Some(7));

    let t = Instant::now();
    let out = client
        .run_with(RunSpec {
            timeout: Some(Duration::from_millis(200)),
            ..RunSpec::new(&["sleep", "30"])
        })
        .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.signal, Some(9));
    assert!(t.elapsed() < Duration::from_secs(5));

    match client.run(&["/nonexistent/binary"]) {
        Err(ClientError::Agent(e)) => {
            assert_eq!(e.kind, ErrorKind::Spawn);
            assert_eq!(e.errno, Some(2));
        }
        other => panic!("{other:?}"),
    }

    // A malformed line: the agent answers with id 0 and carries on.
    client
        .writer_mut()
        .write_all(b"this is {not a request\n")
        .unwrap();
    client.ping().unwrap();
    assert_eq!(client.stray_errors().len(), 1);
    assert_eq!(client.stray_errors()[0].kind, ErrorKind::BadRequest);

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("file.bin");
    let p = p.to_str().unwrap();
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    client.write_file(p, &data, Some(0o640)).unwrap();
    assert_eq!(client.read_file(p).unwrap(), data);
    assert!(matches!(
        client.read_file("/nonexistent/f"),
        Err(ClientError::Agent(e)) if e.kind == ErrorKind::Io
    ));

    client.shutdown().unwrap();
    server.join().unwrap().unwrap();
    // The server is gone: the next request fails quickly instead of hanging.
    drop(host);
    let e = client.ping().unwrap_err();
    assert!(
        matches!(e, ClientError::Disconnected { .. } | ClientError::Io(_)),
        "{e}"
    );
}

#[test]
fn silent_agent_times_out() {
    // The "guest" never writes anything and never closes.
    let (host, _guest) = UnixStream::pair().unwrap();
    let mut client = AgentClient::new(host.try_clone().unwrap(), host);
    let t = Instant::now();
    let e = client.wait_ready(Duration::from_millis(200)).unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    client.set_timeout(Duration::from_millis(100));
    assert!(matches!(client.ping(), Err(ClientError::Timeout { .. })));
}

#[test]
fn serves_on_a_unix_socket_path() {
    let root = tempfile::tempdir().unwrap();
    fake::populate(root.path());
    let sock = root.path().join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let cfg = ServerConfig::for_tests(root.path());
    let server = thread::spawn(move || serve_with(&sock, &cfg));
    let (conn, _) = listener.accept().unwrap();
    let mut client = AgentClient::new(conn.try_clone().unwrap(), conn);
    client.wait_ready(READY).unwrap();
    assert_eq!(
        client.run(&["echo", "over", "socket"]).unwrap().stdout,
        "over socket\n"
    );
    client.reboot().unwrap();
    server.join().unwrap().unwrap();
}

fn open_pty() -> (File, String) {
    // SAFETY: plain libc calls on descriptors we own.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(
            master >= 0,
            "posix_openpt: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let name = CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
        (File::from(OwnedFd::from_raw_fd(master)), name)
    }
}

/// The tty path: raw mode must be set, or a line longer than the canonical
/// 4096-byte buffer would be cut and input would be echoed back.
#[test]
fn serves_on_a_pty_in_raw_mode() {
    let (master, slave) = open_pty();
    if !Path::new(&slave).exists() {
        eprintln!("note: {slave} not visible (no devpts?), skipping");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    fake::populate(root.path());
    let cfg = ServerConfig::for_tests(root.path());
    let server = thread::spawn(move || serve_with(Path::new(&slave), &cfg));
    let mut client = AgentClient::new(master.try_clone().unwrap(), master);
    client.wait_ready(READY).unwrap();
    let long = "x".repeat(10_000);
    let out = client.run(&["echo", long.as_str()]).unwrap();
    assert_eq!(out.stdout.len(), 10_001);
    assert_eq!(
        client.noise().count(),
        0,
        "echo or noise: {:?}",
        client.noise().collect::<Vec<_>>()
    );
    client.shutdown().unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn heartbeats_keep_a_long_request_alive() {
    let root = tempfile::tempdir().unwrap();
    fake::populate(root.path());
    let (host, guest) = UnixStream::pair().unwrap();
    let mut cfg = ServerConfig::for_tests(root.path());
    cfg.heartbeat = Some(Duration::from_millis(50));
    let server = thread::spawn(move || {
        let r = BufReader::new(guest.try_clone().unwrap());
        serve_streams_with(r, &guest, &cfg)
    });
    let mut client = AgentClient::new(host.try_clone().unwrap(), host.try_clone().unwrap());
    client.set_stall_after(Duration::from_millis(400));
    client.wait_ready(READY).unwrap();
    // Longer than the stall limit, but the agent keeps beating meanwhile.
    let out = client
        .run_with(RunSpec {
            timeout: Some(Duration::from_secs(10)),
            ..RunSpec::new(&["sleep", "1"])
        })
        .unwrap();
    assert!(out.success(), "{out:?}");
    let (at, uptime) = client.last_heartbeat().expect("heartbeats arrived");
    assert!(at.elapsed() < Duration::from_millis(400));
    assert_eq!(uptime, Some(1250));
    drop(client);
    host.shutdown(std::net::Shutdown::Both).unwrap();
    server.join().unwrap().unwrap();
}

#[test]
fn an_agent_that_stops_beating_is_a_stalled_guest() {
    let (host, guest) = UnixStream::pair().unwrap();
    // A guest that became ready, beat twice and then froze.
    (&guest)
        .write_all(
            b"{\"event\":\"ready\",\"agent_version\":\"x\"}\n\
              {\"event\":\"heartbeat\",\"uptime_ms\":7}\n\
              {\"event\":\"heartbeat\",\"uptime_ms\":9}\n",
        )
        .unwrap();
    let mut client = AgentClient::new(host.try_clone().unwrap(), host);
    client.set_stall_after(Duration::from_millis(300));
    client.set_timeout(Duration::from_secs(20));
    client.wait_ready(READY).unwrap();
    let t = Instant::now();
    let e = client.ping().unwrap_err();
    match &e {
        ClientError::Stalled {
            last_uptime_ms,
            silent,
            ..
        } => {
            assert_eq!(*last_uptime_ms, Some(9));
            assert!(*silent >= Duration::from_millis(300));
        }
        other => panic!("expected Stalled, got {other}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(e.to_string().contains("no agent heartbeat"), "{e}");
    drop(guest);
}
