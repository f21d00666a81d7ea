//! A writer for the cpio "newc" format (the one the kernel unpacks as an
//! initramfs; `cpio -H newc`).
//!
//! Each entry is a 110-byte ASCII header — magic `070701` and thirteen
//! 8-digit hex fields (ino, mode, uid, gid, nlink, mtime, filesize,
//! devmajor, devminor, rdevmajor, rdevminor, namesize, check) — then the
//! NUL-terminated name padded so header+name is a multiple of 4, then the
//! data padded to a multiple of 4. The archive ends with an entry named
//! `TRAILER!!!`.
//!
//! Names are stored relative (`bin/busybox`, not `/bin/busybox`), like
//! `find . | cpio -o` minus the `./`; the kernel unpacks relative to `/`.
//! Timestamps are 0 and owners root so that archives are reproducible.

use std::collections::HashSet;
use std::io::{self, Write};

use crate::error::ImageError;

/// The newc magic.
pub const MAGIC: &[u8; 6] = b"070701";
/// Name of the last entry of every archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Size of a newc header.
pub const HEADER_LEN: usize = 110;

/// File type bits (as in `st_mode`).
pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;

/// Character or block special file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// The metadata of one entry; `mode` includes the file type bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub filesize: u32,
    pub devmajor: u32,
    pub devminor: u32,
    pub rdevmajor: u32,
    pub rdevminor: u32,
}

/// Bytes needed to pad `len` up to a multiple of 4.
pub fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Encodes one header + name (with NUL and padding), without the data.
pub fn encode_header(h: &Header, name: &str) -> Vec<u8> {
    let namesize = name.len() + 1;
    let mut out = Vec::with_capacity(HEADER_LEN + namesize + 3);
    out.extend_from_slice(MAGIC);
    for v in [
        h.ino,
        h.mode,
        h.uid,
        h.gid,
        h.nlink,
        h.mtime,
        h.filesize,
        h.devmajor,
        h.devminor,
        h.rdevmajor,
        h.rdevminor,
        namesize as u32,
        0, // check: only used by the "crc" variant 070702
    ] {
        out.extend_from_slice(format!("{v:08x}").as_bytes());
    }
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len() + pad4(HEADER_LEN + namesize), 0);
    out
}

/// Turns `/a/b`, `./a/b` or `a/b/` into `a/b`; rejects empty names, `..`,
/// NUL bytes and the trailer's name.
pub fn normalize_name(name: &str) -> Result<String, ImageError> {
    let bad = |reason: &str| ImageError::CpioEntry {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for comp in name.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(bad("contains '..'")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(bad("empty path"));
    }
    let n = parts.join("/");
    if n == TRAILER {
        return Err(bad("reserved name"));
    }
    Ok(n)
}

/// Streams a newc archive into `W`.
///
/// Every name is written at most once ([`ImageError::CpioEntry`] otherwise);
/// [`CpioWriter::dir_all`] and the `*_with_parents` helpers skip directories
/// already written.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    entries: usize,
    names: HashSet<String>,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
            entries: 0,
            names: HashSet::new(),
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Entries written so far (without the trailer).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Whether `name` (normalized) has been written.
    pub fn contains(&self, name: &str) -> bool {
        normalize_name(name).is_ok_and(|n| self.names.contains(&n))
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn io_err(&self, name: &str, e: io::Error) -> ImageError {
        ImageError::CpioEntry {
            name: name.to_string(),
            reason: format!("write failed: {e}"),
        }
    }

    /// Writes an entry with explicit metadata. `filesize` and `ino` are
    /// filled in here (a fresh inode number per entry; `nlink` is taken as given).
    pub fn entry(&mut self, name: &str, mut header: Header, data: &[u8]) -> Result<(), ImageError> {
        let name = normalize_name(name)?;
        if self.names.contains(&name) {
            return Err(ImageError::CpioEntry {
                name,
                reason: "already in the archive".into(),
            });
        }
        header.filesize = u32::try_from(data.len()).map_err(|_| ImageError::CpioEntry {
            name: name.clone(),
            reason: format!("{} bytes exceed the 4 GiB newc limit", data.len()),
        })?;
        header.ino = self.next_ino;
        self.next_ino += 1;
        let head = encode_header(&header, &name);
        self.write_raw(&head).map_err(|e| self.io_err(&name, e))?;
        self.write_raw(data).map_err(|e| self.io_err(&name, e))?;
        self.write_raw(&[0u8; 3][..pad4(data.len())])
            .map_err(|e| self.io_err(&name, e))?;
        self.entries += 1;
        self.names.insert(name);
        Ok(())
    }

    fn plain(mode: u32, nlink: u32) -> Header {
        Header {
            ino: 0,
            mode,
            uid: 0,
            gid: 0,
            nlink,
            mtime: 0,
            filesize: 0,
            devmajor: 0,
            devminor: 0,
            rdevmajor: 0,
            rdevminor: 0,
        }
    }

    /// A directory; `perm` is the permission bits (e.g. 0o755).
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), ImageError> {
        self.entry(name, Self::plain(S_IFDIR | (perm & 0o7777), 2), &[])
    }

    /// A directory and all its missing ancestors (0o755), skipping those already written.
    pub fn dir_all(&mut self, name: &str) -> Result<(), ImageError> {
        let name = normalize_name(name)?;
        let mut prefix = String::new();
        for comp in name.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(comp);
            if !self.names.contains(&prefix) {
                self.dir(&prefix.clone(), 0o755)?;
            }
        }
        Ok(())
    }

    fn parents(&mut self, name: &str) -> Result<(), ImageError> {
        let name = normalize_name(name)?;
        if let Some((parent, _)) = name.rsplit_once('/') {
            self.dir_all(parent)?;
        }
        Ok(())
    }

    /// A regular file; `perm` is the permission bits (e.g. 0o644, 0o755).
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), ImageError> {
        self.entry(name, Self::plain(S_IFREG | (perm & 0o7777), 1), data)
    }

    /// [`CpioWriter::file`] after creating missing parent directories.
    pub fn file_with_parents(
        &mut self,
        name: &str,
        perm: u32,
        data: &[u8],
    ) -> Result<(), ImageError> {
        self.parents(name)?;
        self.file(name, perm, data)
    }

    /// A symbolic link `name -> target` (the target is stored as the data, unterminated).
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), ImageError> {
        if target.is_empty() || target.contains('\0') {
            return Err(ImageError::CpioEntry {
                name: name.to_string(),
                reason: format!("bad symlink target {target:?}"),
            });
        }
        self.entry(name, Self::plain(S_IFLNK | 0o777, 1), target.as_bytes())
    }

    /// [`CpioWriter::symlink`] after creating missing parent directories.
    pub fn symlink_with_parents(&mut self, name: &str, target: &str) -> Result<(), ImageError> {
        self.parents(name)?;
        self.symlink(name, target)
    }

    /// A device node (the kernel creates it when unpacking; no privileges needed here).
    pub fn device(
        &mut self,
        name: &str,
        kind: DeviceKind,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), ImageError> {
        let ty = match kind {
            DeviceKind::Char => S_IFCHR,
            DeviceKind::Block => S_IFBLK,
        };
        let mut h = Self::plain(ty | (perm & 0o7777), 1);
        h.rdevmajor = major;
        h.rdevminor = minor;
        self.entry(name, h, &[])
    }

    /// Writes the trailer and returns the inner writer (flushed).
    pub fn finish(mut self) -> Result<W, ImageError> {
        let head = encode_header(&Self::plain(0, 1), TRAILER);
        self.write_raw(&head).map_err(|e| self.io_err(TRAILER, e))?;
        self.out.flush().map_err(|e| self.io_err(TRAILER, e))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Command, Stdio};

    fn hdr(
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rmaj: u32,
        rmin: u32,
        namesize: u32,
    ) -> String {
        format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{:08x}",
            0, 0, 0, 0, 0, 0
        )
    }

    #[test]
    fn exact_bytes_of_a_small_archive() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("/bin", 0o755).unwrap();
        w.file("bin/hello", 0o644, b"hi\n").unwrap();
        w.symlink("bin/sh", "busybox").unwrap();
        w.device("dev/console", DeviceKind::Char, 0o600, 5, 1)
            .unwrap();
        let bytes = w.finish().unwrap();

        let mut exp = Vec::new();
        // "bin": 110 + 4 = 114 -> pad 2
        exp.extend_from_slice(hdr(1, 0o040755, 2, 0, 0, 0, 4).as_bytes());
        exp.extend_from_slice(b"bin\0\0\0");
        // "bin/hello": 110 + 10 = 120 -> pad 0; data 3 -> pad 1
        exp.extend_from_slice(hdr(2, 0o100644, 1, 3, 0, 0, 10).as_bytes());
        exp.extend_from_slice(b"bin/hello\0");
        exp.extend_from_slice(b"hi\n\0");
        // "bin/sh": 110 + 7 = 117 -> pad 3; data "busybox" 7 -> pad 1
        exp.extend_from_slice(hdr(3, 0o120777, 1, 7, 0, 0, 7).as_bytes());
        exp.extend_from_slice(b"bin/sh\0\0\0\0");
        exp.extend_from_slice(b"busybox\0");
        // "dev/console": 110 + 12 = 122 -> pad 2
        exp.extend_from_slice(hdr(4, 0o020600, 1, 0, 5, 1, 12).as_bytes());
        exp.extend_from_slice(b"dev/console\0\0\0");
        // trailer: 110 + 11 = 121 -> pad 3
        exp.extend_from_slice(hdr(0, 0, 1, 0, 0, 0, 11).as_bytes());
        exp.extend_from_slice(b"TRAILER!!!\0\0\0\0");

        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&exp)
        );
        assert_eq!(bytes, exp);
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn padding_rules() {
        assert_eq!(pad4(0), 0);
        assert_eq!(pad4(1), 3);
        assert_eq!(pad4(2), 2);
        assert_eq!(pad4(3), 1);
        assert_eq!(pad4(4), 0);
        // Header + name is always a multiple of 4, for every name length.
        for len in 1..20 {
            let name = "x".repeat(len);
            let h = encode_header(&CpioWriter::<Vec<u8>>::plain(S_IFREG, 1), &name);
            assert_eq!(h.len() % 4, 0, "name length {len}");
            assert!(h.len() > HEADER_LEN + len);
            assert!(h.len() < HEADER_LEN + len + 1 + 4);
        }
        // Data of every length keeps the stream aligned.
        for len in 0..9 {
            let mut w = CpioWriter::new(Vec::new());
            w.file("f", 0o644, &vec![b'a'; len]).unwrap();
            assert_eq!(w.bytes_written() % 4, 0, "data length {len}");
        }
    }

    #[test]
    fn names_are_normalized_and_unique() {
        assert_eq!(normalize_name("/a//b/./c/").unwrap(), "a/b/c");
        assert!(normalize_name("/").is_err());
        assert!(normalize_name("a/../b").is_err());
        assert!(normalize_name("TRAILER!!!").is_err());
        let mut w = CpioWriter::new(Vec::new());
        w.file("/etc/x", 0o644, b"").unwrap();
        assert!(w.file("etc/x", 0o644, b"").is_err());
        w.dir_all("etc/a/b").unwrap();
        w.dir_all("/etc/a").unwrap();
        assert_eq!(w.entries(), 4); // etc/x, etc, etc/a, etc/a/b
        assert!(w.symlink("l", "").is_err());
    }

    fn have_cpio() -> bool {
        Command::new("cpio")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn run_cpio(args: &[&str], cwd: &Path, input: &[u8]) -> (bool, String, String) {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_what_we_wrote() {
        if !have_cpio() {
            eprintln!("note: no `cpio` binary on this machine, skipping the extraction check");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let mut w = CpioWriter::new(Vec::new());
        w.dir_all("bin").unwrap();
        w.file("bin/tool", 0o755, b"#!/bin/sh\necho tool\n")
            .unwrap();
        w.symlink("bin/alias", "tool").unwrap();
        w.file_with_parents("etc/netmem/odd", 0o600, b"12345")
            .unwrap();
        w.file_with_parents("etc/empty", 0o644, b"").unwrap();
        let big: Vec<u8> = (0..10_007u32).map(|i| (i % 251) as u8).collect();
        w.file_with_parents("lib/modules/r/big.ko", 0o644, &big)
            .unwrap();
        let archive = w.finish().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (ok, list, err) = run_cpio(&["-t", "--quiet"], dir.path(), &archive);
        assert!(ok, "cpio -t failed: {err}");
        let names: Vec<&str> = list.lines().collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/tool",
                "bin/alias",
                "etc",
                "etc/netmem",
                "etc/netmem/odd",
                "etc/empty",
                "lib",
                "lib/modules",
                "lib/modules/r",
                "lib/modules/r/big.ko"
            ]
        );

        let (ok, _, err) = run_cpio(&["-idv", "--no-absolute-filenames"], dir.path(), &archive);
        assert!(ok, "cpio -idv failed: {err}");
        let root = dir.path();
        assert_eq!(
            std::fs::read(root.join("bin/tool")).unwrap(),
            b"#!/bin/sh\necho tool\n"
        );
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("bin/tool"), 0o755);
        assert_eq!(mode("etc/netmem/odd"), 0o600);
        assert_eq!(
            std::fs::read_link(root.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            std::fs::read(root.join("etc/netmem/odd")).unwrap(),
            b"12345"
        );
        assert_eq!(std::fs::read(root.join("etc/empty")).unwrap(), b"");
        assert_eq!(
            std::fs::read(root.join("lib/modules/r/big.ko")).unwrap(),
            big
        );
        assert!(root.join("lib/modules/r").is_dir());
    }
}
