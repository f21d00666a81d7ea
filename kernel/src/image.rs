//! Recognising a kernel image: x86 bzImage (boot protocol) or ELF64 vmlinux.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::Serialize;

use crate::KernelError;

/// What kind of kernel image a file is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum KernelFormat {
    /// x86 boot protocol image (bzImage / vmlinuz).
    BzImage {
        /// Boot protocol version, e.g. 0x020f for 2.15.
        protocol: u16,
        /// `xloadflags` (bit 0 `XLF_KERNEL_64` is always set here).
        xloadflags: u16,
        /// The embedded version string (`kernel_version`), if present, e.g.
        /// `7.3.4+deb13-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP …`.
        version: Option<String>,
    },
    /// Uncompressed ELF64 x86-64 vmlinux.
    Elf64,
}

impl KernelFormat {
    /// The kernel release (`uname -r`) from the version string, if known.
    pub fn release(&self) -> Option<&str> {
        match self {
            KernelFormat::BzImage {
                version: Some(v), ..
            } => v.split_whitespace().next(),
            _ => None,
        }
    }
}

// Offsets in the x86 boot protocol's setup header (Documentation/arch/x86/boot.rst).
const OFF_BOOT_FLAG: usize = 0x1FE;
const OFF_HEADER: usize = 0x202;
const OFF_VERSION: usize = 0x206;
const OFF_KERNEL_VERSION: usize = 0x20E;
const OFF_XLOADFLAGS: usize = 0x236;
/// The setup header up to and including `xloadflags`.
const MIN_BZIMAGE: usize = OFF_XLOADFLAGS + 2;
/// `kernel_version` is a u16 offset from 0x200, so everything we need fits here.
const HEADER_READ: usize = 0x200 + 0x1_0000 + 256;
const MIN_PROTOCOL: u16 = 0x020C;
const XLF_KERNEL_64: u16 = 1 << 0;

const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_REL: u16 = 1;
const ET_EXEC: u16 = 2;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn read_prefix(path: &Path, max: usize) -> Result<Vec<u8>, KernelError> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            KernelError::Missing {
                path: path.to_path_buf(),
            }
        } else {
            KernelError::io(format!("cannot open kernel image {}", path.display()), e)
        }
    })?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(KernelError::NotX86Kernel {
            path: path.to_path_buf(),
            detail: "it is a directory".into(),
        });
    }
    let mut buf = Vec::with_capacity(max.min(1 << 20));
    file.take(max as u64)
        .read_to_end(&mut buf)
        .map_err(|e| KernelError::io(format!("cannot read kernel image {}", path.display()), e))?;
    Ok(buf)
}

/// Inspects `path` and says what kind of kernel it is.
///
/// Accepts an x86 bzImage with boot protocol ≥ 2.12 and a 64-bit entry point
/// (`XLF_KERNEL_64`), or an ELF64 x86-64 executable. Anything else is
/// [`KernelError::NotX86Kernel`], naming what was found instead.
pub fn inspect_image(path: &Path) -> Result<KernelFormat, KernelError> {
    let bytes = read_prefix(path, HEADER_READ)?;
    inspect_bytes(&bytes).map_err(|detail| KernelError::NotX86Kernel {
        path: path.to_path_buf(),
        detail,
    })
}

/// [`inspect_image`] on the first bytes of a file (at least `HEADER_READ`
/// bytes, or the whole file if shorter).
pub(crate) fn inspect_bytes(b: &[u8]) -> Result<KernelFormat, String> {
    if b.starts_with(b"\x7fELF") {
        return inspect_elf(b);
    }
    if let Some(what) = known_non_kernel(b) {
        return Err(what);
    }
    if b.len() < MIN_BZIMAGE {
        return Err(format!(
            "the file is {} bytes, too short for a bzImage setup header ({MIN_BZIMAGE} bytes) and not ELF",
            b.len()
        ));
    }
    let magic = &b[OFF_HEADER..OFF_HEADER + 4];
    if magic != b"HdrS" {
        return Err(format!(
            "no \"HdrS\" magic at 0x202 (found {}) and no ELF magic: neither a bzImage nor a vmlinux",
            hex::encode(magic)
        ));
    }
    let boot_flag = le16(b, OFF_BOOT_FLAG);
    if boot_flag != 0xAA55 {
        return Err(format!(
            "boot flag at 0x1fe is {boot_flag:#06x}, a bzImage has 0xaa55"
        ));
    }
    let protocol = le16(b, OFF_VERSION);
    if protocol < MIN_PROTOCOL {
        return Err(format!(
            "boot protocol {}.{:02} is too old, 2.12 or newer is needed (xloadflags)",
            protocol >> 8,
            protocol & 0xff
        ));
    }
    let xloadflags = le16(b, OFF_XLOADFLAGS);
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(format!(
            "xloadflags {xloadflags:#06x} lacks XLF_KERNEL_64: a 32-bit kernel without a 64-bit entry point"
        ));
    }
    Ok(KernelFormat::BzImage {
        protocol,
        xloadflags,
        version: bzimage_version(b),
    })
}

/// The NUL-terminated `kernel_version` string, if the header points at one.
fn bzimage_version(b: &[u8]) -> Option<String> {
    let off = le16(b, OFF_KERNEL_VERSION) as usize;
    if off == 0 {
        return None;
    }
    let start = off + 0x200;
    let tail = b.get(start..)?;
    let end = tail.iter().take(256).position(|&c| c == 0)?;
    let s = &tail[..end];
    if s.is_empty() || !s.iter().all(|&c| c == b' ' || c.is_ascii_graphic()) {
        return None;
    }
    Some(String::from_utf8_lossy(s).into_owned())
}

fn inspect_elf(b: &[u8]) -> Result<KernelFormat, String> {
    if b.len() < 64 {
        return Err(format!("truncated ELF file ({} bytes)", b.len()));
    }
    let class = b[4];
    let data = b[5];
    if data != ELFDATA2LSB {
        return Err(format!("big-endian or invalid ELF (EI_DATA {data})"));
    }
    let e_type = le16(b, 0x10);
    let machine = le16(b, 0x12);
    match (class, machine) {
        (ELFCLASS64, EM_X86_64) => {}
        (ELFCLASS32, m) => {
            return Err(format!(
                "ELF32 file (ELFCLASS32, e_machine {m}{}); only 64-bit x86-64 kernels are supported",
                if m == EM_386 { " = i386" } else { "" }
            ));
        }
        (ELFCLASS64, m) => {
            return Err(format!(
                "ELF64 for machine {m}, not x86-64 (EM_X86_64 = 62)"
            ));
        }
        (c, _) => return Err(format!("invalid ELF class {c}")),
    }
    match e_type {
        ET_EXEC => Ok(KernelFormat::Elf64),
        ET_REL => {
            Err("ELF64 relocatable object (a kernel module?), not a vmlinux executable".into())
        }
        t => Err(format!(
            "ELF64 of type {t}, a vmlinux is an executable (ET_EXEC)"
        )),
    }
}

/// Names well-known file types that users might pass by mistake.
fn known_non_kernel(b: &[u8]) -> Option<String> {
    let what = if b.starts_with(b"!<arch>\ndebian-binary") {
        "a Debian package (.deb); extract it with `dpkg-deb -x` and pass the vmlinuz inside"
    } else if b.starts_with(&[0x1f, 0x8b]) {
        "gzip-compressed data; decompress it first"
    } else if b.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "xz-compressed data; decompress it first"
    } else if b.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd-compressed data; decompress it first"
    } else if b.starts_with(b"070701") || b.starts_with(b"070702") {
        "a cpio archive (an initramfs?)"
    } else if b.starts_with(b"#!") {
        "a script"
    } else if b.is_empty() {
        "an empty file"
    } else {
        return None;
    };
    Some(format!("it is {what}"))
}

/// Reads the kernel release from an image file: the bzImage version string's
/// first word, or for an ELF vmlinux the word after `Linux version ` in its
/// `.rodata` (the `linux_banner`). `None` if neither is found.
pub(crate) fn image_release(path: &Path, format: &KernelFormat) -> Option<String> {
    match format {
        KernelFormat::BzImage { .. } => format.release().map(str::to_string),
        KernelFormat::Elf64 => elf_banner_release(path),
    }
}

fn elf_banner_release(path: &Path) -> Option<String> {
    let mut f = File::open(path).ok()?;
    let mut eh = [0u8; 64];
    f.read_exact(&mut eh).ok()?;
    let shoff = le64(&eh, 0x28);
    let shentsize = le16(&eh, 0x3A) as u64;
    let shnum = le16(&eh, 0x3C) as u64;
    let shstrndx = le16(&eh, 0x3E) as u64;
    if shoff == 0 || shentsize < 64 || shnum == 0 || shstrndx >= shnum || shnum > 4096 {
        return None;
    }
    let mut sh = vec![0u8; (shentsize * shnum) as usize];
    f.seek(SeekFrom::Start(shoff)).ok()?;
    f.read_exact(&mut sh).ok()?;
    let section = |i: u64| {
        let o = (i * shentsize) as usize;
        (le32(&sh, o), le64(&sh, o + 0x18), le64(&sh, o + 0x20)) // name, offset, size
    };
    let read = |f: &mut File, off: u64, len: u64| -> Option<Vec<u8>> {
        if len > 256 << 20 {
            return None;
        }
        let mut v = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(off)).ok()?;
        f.read_exact(&mut v).ok()?;
        Some(v)
    };
    let (_, stroff, strsize) = section(shstrndx);
    let names = read(&mut f, stroff, strsize)?;
    let rodata = (0..shnum).find(|&i| {
        let name = section(i).0 as usize;
        names
            .get(name..)
            .is_some_and(|n| n.starts_with(b".rodata\0"))
    })?;
    let (_, off, size) = section(rodata);
    let data = read(&mut f, off, size)?;
    banner_release(&data)
}

/// Finds `Linux version <release> ` in a byte blob.
pub(crate) fn banner_release(data: &[u8]) -> Option<String> {
    const NEEDLE: &[u8] = b"Linux version ";
    let mut from = 0;
    while let Some(pos) = data[from..].windows(NEEDLE.len()).position(|w| w == NEEDLE) {
        let start = from + pos + NEEDLE.len();
        let word: Vec<u8> = data[start..]
            .iter()
            .copied()
            .take_while(|c| c.is_ascii_graphic())
            .take(128)
            .collect();
        // Skip format strings like "Linux version %s".
        if !word.is_empty() && !word.contains(&b'%') {
            return Some(String::from_utf8_lossy(&word).into_owned());
        }
        from = start;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal bzImage setup header that passes validation.
    pub(crate) fn synthetic_bzimage(version: Option<&str>) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000];
        b[0x1F1] = 3; // setup_sects
        b[OFF_BOOT_FLAG..OFF_BOOT_FLAG + 2].copy_from_slice(&0xAA55u16.to_le_bytes());
        b[OFF_HEADER..OFF_HEADER + 4].copy_from_slice(b"HdrS");
        b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&0x020Fu16.to_le_bytes());
        b[OFF_XLOADFLAGS..OFF_XLOADFLAGS + 2].copy_from_slice(&0x007Fu16.to_le_bytes());
        if let Some(v) = version {
            let off = 0x0380u16;
            b[OFF_KERNEL_VERSION..OFF_KERNEL_VERSION + 2].copy_from_slice(&off.to_le_bytes());
            let at = off as usize + 0x200;
            b[at..at + v.len()].copy_from_slice(v.as_bytes());
        }
        b
    }

    pub(crate) fn synthetic_elf(class: u8, machine: u16, e_type: u16) -> Vec<u8> {
        let mut b = vec![0u8; 128];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = class;
        b[5] = ELFDATA2LSB;
        b[6] = 1;
        b[0x10..0x12].copy_from_slice(&e_type.to_le_bytes());
        b[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        b
    }

    const V: &str = "7.3.4+deb13-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 7.3.4-1~bpo13+1 (2026-11-15)";

    #[test]
    fn valid_bzimage() {
        let f = inspect_bytes(&synthetic_bzimage(Some(V))).unwrap();
        assert_eq!(
            f,
            KernelFormat::BzImage {
                protocol: 0x020F,
                xloadflags: 0x7F,
                version: Some(V.into())
            }
        );
        assert_eq!(f.release(), Some("7.3.4+deb13-cloud-amd64"));
        let f = inspect_bytes(&synthetic_bzimage(None)).unwrap();
        assert_eq!(f.release(), None);
    }

    #[test]
    fn bzimage_rejections() {
        let mut b = synthetic_bzimage(None);
        b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&0x020Au16.to_le_bytes());
        assert!(inspect_bytes(&b).unwrap_err().contains("2.10"));

        let mut b = synthetic_bzimage(None);
        b[OFF_XLOADFLAGS] = 0x7E;
        assert!(inspect_bytes(&b).unwrap_err().contains("XLF_KERNEL_64"));

        let mut b = synthetic_bzimage(None);
        b[OFF_BOOT_FLAG] = 0;
        assert!(inspect_bytes(&b).unwrap_err().contains("boot flag"));

        let mut b = synthetic_bzimage(None);
        b[OFF_HEADER] = b'X';
        assert!(inspect_bytes(&b).unwrap_err().contains("HdrS"));
    }

    #[test]
    fn too_short() {
        let b = synthetic_bzimage(None);
        let e = inspect_bytes(&b[..0x100]).unwrap_err();
        assert!(e.contains("too short"), "{e}");
        assert!(inspect_bytes(&[]).unwrap_err().contains("empty"));
    }

    #[test]
    fn random_bytes() {
        // xorshift, deterministic.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let b: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let e = inspect_bytes(&b).unwrap_err();
        assert!(e.contains("HdrS"), "{e}");
    }

    #[test]
    fn elf64_x86_64() {
        assert_eq!(
            inspect_bytes(&synthetic_elf(ELFCLASS64, EM_X86_64, ET_EXEC)).unwrap(),
            KernelFormat::Elf64
        );
        let e = inspect_bytes(&synthetic_elf(ELFCLASS64, EM_X86_64, ET_REL)).unwrap_err();
        assert!(e.contains("module"), "{e}");
        let e = inspect_bytes(&synthetic_elf(ELFCLASS64, 183, ET_EXEC)).unwrap_err();
        assert!(e.contains("machine 183"), "{e}");
    }

    #[test]
    fn elf32_rejected() {
        let e = inspect_bytes(&synthetic_elf(ELFCLASS32, EM_386, ET_EXEC)).unwrap_err();
        assert!(e.contains("ELF32"), "{e}");
    }

    #[test]
    fn other_formats_named() {
        assert!(
            inspect_bytes(b"!<arch>\ndebian-binary   ")
                .unwrap_err()
                .contains("Debian package")
        );
        assert!(
            inspect_bytes(&[0x1f, 0x8b, 8, 0])
                .unwrap_err()
                .contains("gzip")
        );
    }

    #[test]
    fn banner() {
        let blob = b"\0\0Linux version %s (%s)\0junkLinux version 6.1.0-test (me@host) #1\0";
        assert_eq!(banner_release(blob).as_deref(), Some("6.1.0-test"));
        assert_eq!(banner_release(b"nothing here"), None);
    }

    #[test]
    fn inspect_image_errors_name_the_path() {
        let dir = crate::testutil::TempDir::new("inspect");
        let p = dir.path().join("bogus");
        std::fs::write(&p, b"hello world, not a kernel at all").unwrap();
        let e = inspect_image(&p).unwrap_err();
        assert!(matches!(e, KernelError::NotX86Kernel { .. }));
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");

        let e = inspect_image(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(e, KernelError::Missing { .. }), "{e}");

        let p = dir.path().join("bz");
        std::fs::write(&p, synthetic_bzimage(Some(V))).unwrap();
        let f = inspect_image(&p).unwrap();
        assert_eq!(
            image_release(&p, &f).as_deref(),
            Some("7.3.4+deb13-cloud-amd64")
        );
    }
}
