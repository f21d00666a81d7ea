//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while resolving a kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The spec is neither a catalog id nor a path.
    #[error(
        "unknown kernel '{id}': known kernels are {}; a PATH to a bzImage or ELF vmlinux is also accepted (a path must contain '/' or name an existing file)",
        known.join(", ")
    )]
    UnknownId { id: String, known: Vec<String> },

    /// A package could not be downloaded by any means.
    #[error("cannot download {package}: {detail}")]
    Download { package: String, detail: String },

    /// A downloaded or cached package does not match the catalog.
    #[error(
        "checksum mismatch for {package}: expected {expected}, got {actual}{}",
        path.as_ref().map(|p| format!(" ({}; delete it to download again)", p.display())).unwrap_or_default()
    )]
    Checksum {
        package: String,
        expected: String,
        actual: String,
        path: Option<PathBuf>,
    },

    /// The file is not a 64-bit x86 kernel image.
    #[error("{} is not a 64-bit x86 kernel (bzImage or ELF vmlinux): {detail}", path.display())]
    NotX86Kernel { path: PathBuf, detail: String },

    /// A file or directory the kernel needs does not exist.
    #[error("{} does not exist", path.display())]
    Missing { path: PathBuf },

    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Unpacking a package, or finding the kernel in what was unpacked, failed.
    #[error("cannot extract {package}: {detail}")]
    Extract { package: String, detail: String },

    /// No Debian mirror could be found to download from.
    #[error("no Debian mirror configured: {detail}")]
    NoMirror { detail: String },

    /// The embedded or given catalog is malformed.
    #[error("invalid kernel catalog: {detail}")]
    Catalog { detail: String },
}

impl KernelError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        KernelError::Io {
            context: context.into(),
            source,
        }
    }
}
