//! Guest agent: framed serde protocol over a virtio-console port
//!
//! - [`protocol`]: the newline-delimited JSON frames (host and guest share it).
//! - [`server`]: the agent loop in the guest ([`server::serve`]).
//! - [`client`]: the host side ([`client::AgentClient`]).
//! - [`sysinfo`]: what [`protocol::Op::Hello`] reports, gathered from procfs/sysfs.
//!
//! The agent runs as `/sbin/netmem-lab agent --port /dev/hvc0`, the same
//! static executable as the host CLI; nothing here needs a shared library.

pub mod client;
pub mod protocol;
pub mod server;
pub mod sysinfo;

pub use client::{AgentClient, ClientError, ReadyInfo, RunSpec};
pub use protocol::{
    AgentError, AgentMessage, ErrorKind, Event, HelloInfo, IommuGroup, Op, PciFunction, Reply,
    Request, Response, RunOutput,
};
pub use server::{
    ServeError, ServerConfig, ShutdownAction, serve, serve_streams, serve_streams_with, serve_with,
};

/// Entry point for `netmem-lab agent --port PORT`: serves on `port` with
/// [`ServerConfig::guest`]. As PID 1 it never returns into a kernel panic:
/// whatever ends the loop, it reports on stderr and powers the guest off.
pub fn agent_main(port: &std::path::Path) -> std::process::ExitCode {
    let result = serve(port);
    if let Err(e) = &result {
        eprintln!("netmem-agent: {e}");
    }
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == 1 {
        eprintln!("netmem-agent: agent loop ended as PID 1; powering off");
        // SAFETY: sync and reboot have no memory-safety preconditions.
        unsafe {
            libc::sync();
            libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
        }
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}
