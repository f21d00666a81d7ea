//! `netmem-lab`: the lab's command line. See ARCHITECTURE.md (CLI contract).

mod cmd;
mod rundir;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "netmem-lab",
    version,
    about = "VM lab for devmem (netmem) TCP TX through netkit devices"
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Kernels, engines and scenarios available here.
    List,
    /// Kernel packages: `kernels fetch [ID…]` downloads, checks and caches them.
    Kernels {
        #[command(subcommand)]
        what: cmd::KernelsWhat,
    },
    /// Run a scenario (default: the catalog's default) and give a verdict.
    Scenario(cmd::ScenarioArgs),
    /// Every scenario on every kernel: a table of verdicts.
    Matrix(cmd::MatrixArgs),
    /// Property-based fault schedules around a scenario; a violation is
    /// shrunk and saved as a replayable scenario file.
    Campaign(cmd::CampaignArgs),
    /// Boot a kernel to the guest agent, print its hello, power off.
    Boot(cmd::BootArgs),
    /// Measure against QEMU on the same kernel and engine.
    Bench {
        #[command(subcommand)]
        what: cmd::BenchWhat,
    },
    /// Guest agent (runs inside the lab guest as part of its initramfs).
    #[command(hide = true)]
    Agent {
        #[arg(long, default_value = "/dev/hvc0")]
        port: std::path::PathBuf,
    },
    /// Run a job inside the nested engine's L1 guest.
    #[command(hide = true, name = "l1-job")]
    L1Job { job: std::path::PathBuf },
    /// Guest tools used by scenario steps (scenarios::guest_tools).
    #[command(hide = true, name = "tcp-sink")]
    TcpSink(cmd::ToolArgs),
    #[command(hide = true, name = "tcp-source")]
    TcpSource(cmd::ToolArgs),
    #[command(hide = true, name = "netns-add")]
    NetnsAdd(cmd::ToolArgs),
    #[command(hide = true, name = "netns-exec")]
    NetnsExec(cmd::ToolArgs),
    #[command(hide = true, name = "netns-setup")]
    NetnsSetup(cmd::ToolArgs),
    #[command(hide = true, name = "ethtool")]
    Ethtool(cmd::ToolArgs),
    /// Any other guest tool listed in scenarios::guest_tools::TOOLS.
    #[command(external_subcommand)]
    Tool(Vec<String>),
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let code = match cli.command {
        Command::List => cmd::list(),
        Command::Kernels { what } => cmd::kernels(what),
        Command::Boot(a) => cmd::boot(a),
        Command::Scenario(a) => cmd::scenario(a),
        Command::Matrix(a) => cmd::matrix(a),
        Command::Campaign(a) => cmd::campaign(a),
        Command::Bench { what } => cmd::bench(what),
        Command::Agent { port } => cmd::agent(&port),
        Command::L1Job { job } => cmd::l1_job(&job),
        Command::TcpSink(a) => cmd::guest_tool("tcp-sink", a),
        Command::TcpSource(a) => cmd::guest_tool("tcp-source", a),
        Command::NetnsAdd(a) => cmd::guest_tool("netns-add", a),
        Command::NetnsExec(a) => cmd::guest_tool("netns-exec", a),
        Command::NetnsSetup(a) => cmd::guest_tool("netns-setup", a),
        Command::Ethtool(a) => cmd::guest_tool("ethtool", a),
        Command::Tool(v) => cmd::guest_tool_external(&v),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
