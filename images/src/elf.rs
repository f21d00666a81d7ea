//! Just enough ELF64 (little-endian) reading for two questions: "which
//! bytes make up section X" (kernel modules' `.modinfo`) and "does this
//! executable need a dynamic loader" (`PT_INTERP`).

/// Why bytes are not a usable ELF64 little-endian file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfError(pub String);

impl std::fmt::Display for ElfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ElfError> {
    Err(ElfError(msg.into()))
}

const PT_INTERP: u32 = 3;
const SHT_NOBITS: u32 = 8;

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| ElfError(format!("truncated at offset {off}")))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or_else(|| ElfError(format!("truncated at offset {off}")))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
        .ok_or_else(|| ElfError(format!("truncated at offset {off}")))
}

fn to_usize(v: u64, what: &str) -> Result<usize, ElfError> {
    usize::try_from(v).map_err(|_| ElfError(format!("{what} {v} out of range")))
}

/// A parsed ELF64 little-endian header plus access to sections and segments.
#[derive(Debug, Clone, Copy)]
pub struct Elf64<'a> {
    bytes: &'a [u8],
    phoff: usize,
    phentsize: usize,
    phnum: usize,
    shoff: usize,
    shentsize: usize,
    shnum: usize,
    shstrndx: usize,
}

/// One section header, reduced to what we use.
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    pub name: &'a [u8],
    pub kind: u32,
    pub offset: usize,
    pub size: usize,
}

impl<'a> Elf64<'a> {
    /// Checks the identification bytes and reads the header.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ElfError> {
        if bytes.len() < 64 {
            return err(format!(
                "{} bytes is too short for an ELF64 header",
                bytes.len()
            ));
        }
        if &bytes[..4] != b"\x7fELF" {
            return err("no ELF magic");
        }
        if bytes[4] != 2 {
            return err(format!("ELF class {} is not ELFCLASS64", bytes[4]));
        }
        if bytes[5] != 1 {
            return err(format!(
                "ELF data encoding {} is not little-endian",
                bytes[5]
            ));
        }
        let phoff = to_usize(u64_at(bytes, 0x20)?, "e_phoff")?;
        let shoff = to_usize(u64_at(bytes, 0x28)?, "e_shoff")?;
        let phentsize = usize::from(u16_at(bytes, 0x36)?);
        let phnum = usize::from(u16_at(bytes, 0x38)?);
        let shentsize = usize::from(u16_at(bytes, 0x3a)?);
        let shnum = usize::from(u16_at(bytes, 0x3c)?);
        let shstrndx = usize::from(u16_at(bytes, 0x3e)?);
        if phnum > 0 && phentsize < 56 {
            return err(format!("e_phentsize {phentsize} < 56"));
        }
        if shnum > 0 && shentsize < 64 {
            return err(format!("e_shentsize {shentsize} < 64"));
        }
        Ok(Elf64 {
            bytes,
            phoff,
            phentsize,
            phnum,
            shoff,
            shentsize,
            shnum,
            shstrndx,
        })
    }

    /// `e_type` (1 = REL, 2 = EXEC, 3 = DYN).
    pub fn elf_type(&self) -> u16 {
        u16::from_le_bytes([self.bytes[16], self.bytes[17]])
    }

    /// The path in `PT_INTERP`, if the file asks for a dynamic loader.
    pub fn interpreter(&self) -> Result<Option<String>, ElfError> {
        for i in 0..self.phnum {
            let base = self
                .phoff
                .checked_add(
                    i.checked_mul(self.phentsize)
                        .ok_or_else(|| ElfError("phdr overflow".into()))?,
                )
                .ok_or_else(|| ElfError("phdr overflow".into()))?;
            let p_type = u32_at(self.bytes, base)?;
            if p_type == PT_INTERP {
                let off = to_usize(u64_at(self.bytes, base + 8)?, "p_offset")?;
                let size = to_usize(u64_at(self.bytes, base + 32)?, "p_filesz")?;
                let raw = off
                    .checked_add(size)
                    .and_then(|end| self.bytes.get(off..end))
                    .ok_or_else(|| ElfError("PT_INTERP outside the file".into()))?;
                let raw = raw.split(|&c| c == 0).next().unwrap_or_default();
                return Ok(Some(String::from_utf8_lossy(raw).into_owned()));
            }
        }
        Ok(None)
    }

    fn section_at(&self, index: usize) -> Result<(u32, u32, usize, usize), ElfError> {
        let base = index
            .checked_mul(self.shentsize)
            .and_then(|o| o.checked_add(self.shoff))
            .ok_or_else(|| ElfError("shdr overflow".into()))?;
        if self.bytes.len() < base.saturating_add(64) {
            return err(format!("section header {index} outside the file"));
        }
        let name = u32_at(self.bytes, base)?;
        let kind = u32_at(self.bytes, base + 4)?;
        let offset = to_usize(u64_at(self.bytes, base + 24)?, "sh_offset")?;
        let size = to_usize(u64_at(self.bytes, base + 32)?, "sh_size")?;
        Ok((name, kind, offset, size))
    }

    /// All section headers with their names.
    pub fn sections(&self) -> Result<Vec<Section<'a>>, ElfError> {
        if self.shnum == 0 {
            return Ok(Vec::new());
        }
        if self.shstrndx >= self.shnum {
            return err(format!(
                "e_shstrndx {} >= e_shnum {}",
                self.shstrndx, self.shnum
            ));
        }
        let (_, _, stroff, strsize) = self.section_at(self.shstrndx)?;
        let strtab = stroff
            .checked_add(strsize)
            .and_then(|end| self.bytes.get(stroff..end))
            .ok_or_else(|| ElfError("section name table outside the file".into()))?;
        let mut out = Vec::with_capacity(self.shnum);
        for i in 0..self.shnum {
            let (name_off, kind, offset, size) = self.section_at(i)?;
            let name = strtab
                .get(name_off as usize..)
                .map(|s| s.split(|&c| c == 0).next().unwrap_or_default())
                .ok_or_else(|| {
                    ElfError(format!("section {i} name offset {name_off} out of range"))
                })?;
            out.push(Section {
                name,
                kind,
                offset,
                size,
            });
        }
        Ok(out)
    }

    /// The contents of the first section called `name`, if any.
    pub fn section_data(&self, name: &str) -> Result<Option<&'a [u8]>, ElfError> {
        for s in self.sections()? {
            if s.name == name.as_bytes() {
                if s.kind == SHT_NOBITS {
                    return Ok(Some(&[]));
                }
                let data = s
                    .offset
                    .checked_add(s.size)
                    .and_then(|end| self.bytes.get(s.offset..end))
                    .ok_or_else(|| ElfError(format!("section {name} outside the file")))?;
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Builders for tiny synthetic ELF files used by the tests of several modules.

    /// A relocatable ELF64 with the given sections (name, contents), like a `.ko`.
    pub fn relocatable(sections: &[(&str, &[u8])]) -> Vec<u8> {
        // Layout: header | section contents... | .shstrtab | section headers
        let mut shstrtab = vec![0u8];
        let mut names = Vec::new();
        for (name, _) in sections {
            names.push(shstrtab.len() as u32);
            shstrtab.extend_from_slice(name.as_bytes());
            shstrtab.push(0);
        }
        let shstr_name = shstrtab.len() as u32;
        shstrtab.extend_from_slice(b".shstrtab\0");

        let mut body = Vec::new();
        let mut offsets = Vec::new();
        for (_, data) in sections {
            offsets.push(64 + body.len());
            body.extend_from_slice(data);
        }
        let shstr_off = 64 + body.len();
        body.extend_from_slice(&shstrtab);
        while body.len() % 8 != 0 {
            body.push(0);
        }
        let shoff = 64 + body.len();
        let shnum = sections.len() + 2; // null + sections + shstrtab

        let mut out = header(1, 0, 0, shoff as u64, shnum as u16, (shnum - 1) as u16);
        out.extend_from_slice(&body);
        out.extend_from_slice(&[0u8; 64]); // SHN_UNDEF
        for (i, (_, data)) in sections.iter().enumerate() {
            out.extend_from_slice(&shdr(names[i], 1, offsets[i] as u64, data.len() as u64));
        }
        out.extend_from_slice(&shdr(
            shstr_name,
            3,
            shstr_off as u64,
            shstrtab.len() as u64,
        ));
        out
    }

    /// An executable ELF64 with one PT_LOAD and, if `interp` is given, a PT_INTERP.
    pub fn executable(interp: Option<&str>) -> Vec<u8> {
        let phnum: u16 = if interp.is_some() { 2 } else { 1 };
        let mut out = header(2, 64, phnum, 0, 0, 0);
        let data_off = 64 + 56 * u64::from(phnum);
        let interp_bytes = interp.map(|s| {
            let mut v = s.as_bytes().to_vec();
            v.push(0);
            v
        });
        if let Some(ib) = &interp_bytes {
            out.extend_from_slice(&phdr(3, data_off, ib.len() as u64));
        }
        out.extend_from_slice(&phdr(1, 0, data_off + 16));
        if let Some(ib) = &interp_bytes {
            out.extend_from_slice(ib);
        }
        out.extend_from_slice(&[0xf4; 16]); // hlt
        out
    }

    fn header(
        e_type: u16,
        phoff: u64,
        phnum: u16,
        shoff: u64,
        shnum: u16,
        shstrndx: u16,
    ) -> Vec<u8> {
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        h.extend_from_slice(&e_type.to_le_bytes());
        h.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&0x40_0000u64.to_le_bytes()); // entry
        h.extend_from_slice(&phoff.to_le_bytes());
        h.extend_from_slice(&shoff.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes()); // flags
        h.extend_from_slice(&64u16.to_le_bytes()); // ehsize
        h.extend_from_slice(&56u16.to_le_bytes());
        h.extend_from_slice(&phnum.to_le_bytes());
        h.extend_from_slice(&64u16.to_le_bytes());
        h.extend_from_slice(&shnum.to_le_bytes());
        h.extend_from_slice(&shstrndx.to_le_bytes());
        assert_eq!(h.len(), 64);
        h
    }

    fn phdr(p_type: u32, offset: u64, filesz: u64) -> Vec<u8> {
        let mut p = Vec::with_capacity(56);
        p.extend_from_slice(&p_type.to_le_bytes());
        p.extend_from_slice(&5u32.to_le_bytes()); // R+X
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(&(0x40_0000 + offset).to_le_bytes());
        p.extend_from_slice(&(0x40_0000 + offset).to_le_bytes());
        p.extend_from_slice(&filesz.to_le_bytes());
        p.extend_from_slice(&filesz.to_le_bytes());
        p.extend_from_slice(&0x1000u64.to_le_bytes());
        p
    }

    fn shdr(name: u32, kind: u32, offset: u64, size: u64) -> Vec<u8> {
        let mut s = Vec::with_capacity(64);
        s.extend_from_slice(&name.to_le_bytes());
        s.extend_from_slice(&kind.to_le_bytes());
        s.extend_from_slice(&0u64.to_le_bytes()); // flags
        s.extend_from_slice(&0u64.to_le_bytes()); // addr
        s.extend_from_slice(&offset.to_le_bytes());
        s.extend_from_slice(&size.to_le_bytes());
        s.extend_from_slice(&0u32.to_le_bytes()); // link
        s.extend_from_slice(&0u32.to_le_bytes()); // info
        s.extend_from_slice(&1u64.to_le_bytes()); // align
        s.extend_from_slice(&0u64.to_le_bytes()); // entsize
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sections_by_name() {
        let elf = testutil::relocatable(&[(".text", b"\x90\x90"), (".modinfo", b"name=x\0")]);
        let e = Elf64::parse(&elf).unwrap();
        assert_eq!(e.elf_type(), 1);
        assert_eq!(e.section_data(".modinfo").unwrap(), Some(&b"name=x\0"[..]));
        assert_eq!(e.section_data(".text").unwrap(), Some(&b"\x90\x90"[..]));
        assert_eq!(e.section_data(".data").unwrap(), None);
    }

    #[test]
    fn interpreter_detection() {
        let st = testutil::executable(None);
        assert_eq!(Elf64::parse(&st).unwrap().interpreter().unwrap(), None);
        let dy = testutil::executable(Some("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(
            Elf64::parse(&dy).unwrap().interpreter().unwrap().as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
    }

    #[test]
    fn rejects_non_elf_and_truncation() {
        assert!(Elf64::parse(b"#!/bin/sh\n").is_err());
        let mut e = testutil::relocatable(&[(".modinfo", b"a=b\0")]);
        e[4] = 1;
        assert!(Elf64::parse(&e).unwrap_err().0.contains("ELFCLASS64"));
        let e = testutil::relocatable(&[(".modinfo", b"a=b\0")]);
        let cut = &e[..e.len() - 10];
        assert!(Elf64::parse(cut).unwrap().sections().is_err());
    }

    #[test]
    fn host_busybox_if_present() {
        let p = std::path::Path::new("/bin/busybox");
        let Ok(bytes) = std::fs::read(p) else {
            eprintln!("note: /bin/busybox absent, skipping");
            return;
        };
        let e = Elf64::parse(&bytes).unwrap();
        // Debian's busybox-static has no interpreter; the dynamic one has.
        let _ = e.interpreter().unwrap();
    }
}
