//! Loading a Linux kernel and its initramfs into guest memory and writing the
//! boot information: the x86 64-bit boot protocol for a bzImage
//! (Documentation/arch/x86/boot.rst) or PVH for an ELF vmlinux with a
//! XEN_ELFNOTE_PHYS32_ENTRY note (Xen docs/misc/pvh.pandoc).

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::{BootConfigurator, BootParams, pvh::PvhBootConfigurator};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{Elf, KernelLoader, bzimage::BzImage};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::*;

/// `hdr.boot_flag` (0xAA55) and "HdrS" magic of a bzImage setup header.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// XLF_KERNEL_64: the kernel has the legacy 64-bit entry point at load + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry from the protected-mode load address.
const KERNEL_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Minimum boot protocol for the 64-bit entry with `xloadflags` (2.12).
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
/// `type_of_loader` "undefined" (boot.rst: 0xff).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `loadflags` bit: the heap_end_ptr is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// e820 types (arch/x86/include/uapi/asm/e820.h).
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
/// hvm_start_info magic "xEn3" | 0x6 (PVH spec).
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}")]
    OpenKernel {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path} could not be loaded: {detail}")]
    LoadKernel { path: String, detail: String },
    #[error("kernel {path}: {detail}")]
    Unsupported { path: String, detail: String },
    #[error("cannot read initramfs {path}")]
    ReadInitramfs {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("initramfs of {size} bytes does not fit below {limit:#x}")]
    InitramfsTooBig { size: u64, limit: u64 },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing boot information to guest memory: {0}")]
    Memory(String),
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit long mode at `entry`, RSI = zero page.
    Linux64 { entry: u64 },
    /// 32-bit protected mode at `entry`, RBX = hvm_start_info.
    Pvh { entry: u64 },
}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is a plain-old-data repr(C, packed) struct of integers.
unsafe impl ByteValued for ZeroPage {}

#[derive(Clone, Copy, Debug)]
pub struct E820 {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Where the initramfs goes: page-aligned at the top of low RAM, under the
/// kernel's `initrd_addr_max`.
pub fn initramfs_address(
    low_ram_end: u64,
    initrd_addr_max: u64,
    size: u64,
) -> Result<u64, BootError> {
    let limit = low_ram_end.min(initrd_addr_max.saturating_add(1));
    let start = limit
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= HIGH_RAM_START)
        .ok_or(BootError::InitramfsTooBig { size, limit })?;
    Ok(start)
}

/// Load the kernel image (bzImage or PVH ELF) into `mem`.
pub fn load_kernel(
    mem: &GuestMemoryMmap<()>,
    path: &Path,
) -> Result<(EntryMode, Option<setup_header>), BootError> {
    let p = path.display().to_string();
    let mut f = File::open(path).map_err(|source| BootError::OpenKernel {
        path: p.clone(),
        source,
    })?;
    // Try ELF first (vmlinux with a PVH note), then bzImage.
    match Elf::load(mem, None, &mut f, Some(GuestAddress(HIGH_RAM_START))) {
        Ok(r) => match r.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(a) => {
                return Ok((
                    EntryMode::Pvh {
                        entry: a.raw_value(),
                    },
                    None,
                ));
            }
            _ => {
                return Err(BootError::Unsupported {
                    path: p,
                    detail: "ELF kernel without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); pass the bzImage (vmlinuz) instead".into(),
                });
            }
        },
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => {}
        Err(e) => {
            return Err(BootError::LoadKernel {
                path: p,
                detail: e.to_string(),
            });
        }
    }
    let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIGH_RAM_START))).map_err(|e| {
        BootError::LoadKernel {
            path: p.clone(),
            detail: e.to_string(),
        }
    })?;
    let hdr = r.setup_header.ok_or_else(|| BootError::LoadKernel {
        path: p.clone(),
        detail: "no setup header".into(),
    })?;
    let (boot_flag, magic, version, xl) = (hdr.boot_flag, hdr.header, hdr.version, hdr.xloadflags);
    if boot_flag != BOOT_FLAG_MAGIC || magic != HDRS_MAGIC {
        return Err(BootError::Unsupported {
            path: p,
            detail: "not a bzImage (bad boot flag or HdrS magic)".into(),
        });
    }
    if version < MIN_BOOT_PROTOCOL || xl & XLF_KERNEL_64 == 0 {
        return Err(BootError::Unsupported {
            path: p,
            detail: format!(
                "boot protocol {version:#x} / xloadflags {xl:#x} lack the 64-bit entry point"
            ),
        });
    }
    Ok((
        EntryMode::Linux64 {
            entry: r.kernel_load.raw_value() + KERNEL_64BIT_ENTRY_OFFSET,
        },
        Some(hdr),
    ))
}

/// Write the command line (NUL-terminated) at CMDLINE_START.
pub fn write_cmdline(mem: &GuestMemoryMmap<()>, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() + 1 > CMDLINE_MAX_SIZE || cmdline.contains('\0') {
        return Err(BootError::Cmdline(format!(
            "{} bytes, max {}",
            cmdline.len(),
            CMDLINE_MAX_SIZE - 1
        )));
    }
    let mut b = cmdline.as_bytes().to_vec();
    b.push(0);
    mem.write_slice(&b, GuestAddress(CMDLINE_START))
        .map_err(|e| BootError::Memory(e.to_string()))
}

/// Copy the initramfs into guest memory; returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemoryMmap<()>,
    path: &Path,
    low_ram_end: u64,
    initrd_addr_max: u64,
) -> Result<(u64, u64), BootError> {
    let data = std::fs::read(path).map_err(|source| BootError::ReadInitramfs {
        path: path.display().to_string(),
        source,
    })?;
    let size = data.len() as u64;
    let addr = initramfs_address(low_ram_end, initrd_addr_max, size)?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| BootError::Memory(e.to_string()))?;
    Ok((addr, size))
}

/// Fill and write the zero page for the 64-bit Linux boot protocol.
pub fn write_zero_page(
    mem: &GuestMemoryMmap<()>,
    hdr: setup_header,
    cmdline_len: usize,
    initramfs: Option<(u64, u64)>,
    e820: &[E820],
    rsdp: u64,
) -> Result<(), BootError> {
    let mut zp = ZeroPage::default();
    zp.0.hdr = hdr;
    zp.0.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    zp.0.hdr.loadflags |= CAN_USE_HEAP;
    zp.0.hdr.heap_end_ptr = 0xfe00;
    zp.0.hdr.cmd_line_ptr = CMDLINE_START as u32;
    zp.0.hdr.cmdline_size = cmdline_len as u32;
    if let Some((a, s)) = initramfs {
        zp.0.hdr.ramdisk_image = a as u32;
        zp.0.hdr.ramdisk_size = s as u32;
    }
    if e820.len() > zp.0.e820_table.len() {
        return Err(BootError::Memory("too many e820 entries".into()));
    }
    for (i, e) in e820.iter().enumerate() {
        zp.0.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    zp.0.e820_entries = e820.len() as u8;
    zp.0.acpi_rsdp_addr = rsdp;
    mem.write_obj(zp, GuestAddress(ZERO_PAGE_START))
        .map_err(|e| BootError::Memory(e.to_string()))
}

/// Write hvm_start_info, the module list (initramfs) and the memory map for PVH.
pub fn write_pvh_info(
    mem: &GuestMemoryMmap<()>,
    initramfs: Option<(u64, u64)>,
    e820: &[E820],
    rsdp: u64,
) -> Result<(), BootError> {
    let mut start = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    let mods: Vec<hvm_modlist_entry> = initramfs
        .map(|(a, s)| {
            vec![hvm_modlist_entry {
                paddr: a,
                size: s,
                ..Default::default()
            }]
        })
        .unwrap_or_default();
    start.nr_modules = mods.len() as u32;
    if !mods.is_empty() {
        start.modlist_paddr = PVH_MODLIST_START;
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut bp = BootParams::new(&start, GuestAddress(PVH_INFO_START));
    bp.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !mods.is_empty() {
        bp.set_modules(&mods, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap<()>>(&bp, mem)
        .map_err(|e| BootError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_goes_high_and_aligned() {
        let a = initramfs_address(0x8000_0000, 0x7fff_ffff, 0x12345).unwrap();
        assert_eq!(a & 0xfff, 0);
        assert!(a + 0x12345 <= 0x8000_0000);
        // initrd_addr_max lower than RAM end wins.
        let b = initramfs_address(0xc000_0000, 0x37ff_ffff, 0x1000).unwrap();
        assert_eq!(b, 0x3800_0000 - 0x1000);
        assert!(initramfs_address(0x20_0000, 0x7fff_ffff, 0x40_0000).is_err());
    }

    #[test]
    fn zero_page_fields() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let hdr = setup_header {
            boot_flag: BOOT_FLAG_MAGIC,
            header: HDRS_MAGIC,
            version: 0x20f,
            ..Default::default()
        };
        let e820 = [
            E820 {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM,
            },
            E820 {
                addr: 0x10_0000,
                size: 0x100_0000,
                kind: E820_RAM,
            },
        ];
        write_zero_page(&mem, hdr, 10, Some((0x300_0000, 0x1000)), &e820, 0xe0000).unwrap();
        let zp: ZeroPage = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let (t, c, r, n, rsdp) = (
            zp.0.hdr.type_of_loader,
            zp.0.hdr.cmd_line_ptr,
            zp.0.hdr.ramdisk_image,
            zp.0.e820_entries,
            zp.0.acpi_rsdp_addr,
        );
        assert_eq!(
            (t, c, r, n, rsdp),
            (0xff, CMDLINE_START as u32, 0x300_0000, 2, 0xe0000)
        );
        // Fixed offsets from boot.rst: e820_entries at 0x1e8, hdr at 0x1f1, acpi_rsdp_addr at 0x70.
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(ZERO_PAGE_START + 0x1e8))
            .unwrap();
        assert_eq!(b[0], 2);
        let rs: u64 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x70)).unwrap();
        assert_eq!(rs, 0xe0000);
        let magic: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x202)).unwrap();
        assert_eq!(magic, HDRS_MAGIC);
    }

    #[test]
    fn garbage_kernel_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x400_0000)]).unwrap();
        let dir = std::env::temp_dir().join(format!("nl-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("junk");
        std::fs::write(&p, vec![0x5au8; 8192]).unwrap();
        assert!(load_kernel(&mem, &p).is_err());
        assert!(matches!(
            load_kernel(&mem, &dir.join("missing")),
            Err(BootError::OpenKernel { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
