//! initramfs assembly: cpio newc writer, module dependency resolution, busybox, guest agent
//!
//! - [`cpio`]: a newc archive writer.
//! - [`modules`]: finds kernel modules, decompresses `.ko.xz`, resolves
//!   dependencies from `.modinfo` (no `modules.dep` needed).
//! - [`initramfs`]: puts busybox, the static agent, modules and `/init` together.

pub mod cpio;
pub mod elf;
mod error;
pub mod initramfs;
pub mod modules;

pub use error::ImageError;
pub use initramfs::{ExtraFile, FileSource, InitKind, InitramfsInfo, InitramfsSpec, build};
pub use modules::{Module, ModuleIndex, ModuleSet};
