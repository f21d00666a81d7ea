//! The one error type of the `images` crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while assembling an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An I/O operation on `path` failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing ("reading", "writing", "creating", ...).
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A wanted module (or a dependency of one) is neither a file under the
    /// modules directory nor listed in `modules.builtin`.
    #[error("kernel module {name:?} not found under {dir}{}", required_by.as_ref().map(|r| format!(" (required by {r})")).unwrap_or_default())]
    ModuleNotFound {
        name: String,
        dir: PathBuf,
        required_by: Option<String>,
    },

    /// A `.ko.xz` file could not be decompressed (bad magic, CRC mismatch, truncated...).
    #[error("corrupt xz data in {path}: {message}")]
    CorruptXz { path: PathBuf, message: String },

    /// A module uses a compression we do not decompress.
    #[error("{path}: {format} compressed modules are not supported (only .ko and .ko.xz)")]
    UnsupportedCompression { path: PathBuf, format: &'static str },

    /// A file that must be an ELF64 little-endian object is not one.
    #[error("{path} is not a usable ELF64 file: {reason}")]
    NotElf { path: PathBuf, reason: String },

    /// The module's `.modinfo` section is missing or malformed.
    #[error("{path}: bad .modinfo: {reason}")]
    BadModinfo { path: PathBuf, reason: String },

    /// Module dependencies form a cycle (the kernel would refuse them too).
    #[error("kernel module dependency cycle: {}", cycle.join(" -> "))]
    DependencyCycle { cycle: Vec<String> },

    /// busybox must be static: the initramfs has no dynamic loader or libc.
    #[error("busybox at {path} is dynamically linked; install busybox-static")]
    DynamicBusybox { path: PathBuf },

    /// The agent binary must be static for the same reason.
    #[error(
        "agent binary at {path} is dynamically linked (needs {interpreter}); build with crt-static"
    )]
    DynamicAgent { path: PathBuf, interpreter: String },

    /// A cpio entry could not be written as asked.
    #[error("cpio entry {name:?}: {reason}")]
    CpioEntry { name: String, reason: String },

    /// The initramfs specification is inconsistent.
    #[error("invalid initramfs spec: {0}")]
    InvalidSpec(String),
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
