//! Boot vCPU state: GDT, empty IDT and identity page tables in guest memory,
//! and the register values for the two entry modes we support:
//!
//! - **64-bit Linux boot protocol** (Documentation/arch/x86/boot.rst,
//!   "64-bit Boot Protocol"): long mode, paging on with the first 1 GiB
//!   identity-mapped, CS = `__BOOT_CS` (0x10), DS/ES/SS = `__BOOT_DS` (0x18),
//!   RSI = zero page.
//! - **PVH** (Xen docs/misc/pvh.pandoc): 32-bit protected mode, paging off,
//!   flat 4 GiB CS (32-bit code) and data segments, TR a 32-bit TSS with
//!   limit 0x67, EBX = `hvm_start_info`.
//!
//! The GDT has four 8-byte entries (it must fit below [`BOOT_IDT_START`]):
//!
//! | selector | descriptor | use |
//! |---|---|---|
//! | 0x00 | null | |
//! | 0x08 | 0x00cf9b000000ffff, 32-bit code (flags 0xc09b) | PVH CS |
//! | 0x10 | 0x00af9b000000ffff, 64-bit code (flags 0xa09b) | `__BOOT_CS` |
//! | 0x18 | 0x00cf93000000ffff, data (flags 0xc093) | `__BOOT_DS`, all data segments |
//!
//! TR is loaded with a busy TSS (access 0x8b, byte granular, base 0, limit
//! 0x67, as PVH requires)
//! directly into the hidden segment state; it has no GDT slot (selector 0),
//! which VMX/SVM entry accept and which the guest replaces with its own TSS.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START,
};

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT/IDT to guest memory")]
    Gdt(#[source] GuestMemoryError),
    #[error("cannot write the identity page tables to guest memory")]
    PageTables(#[source] GuestMemoryError),
}

/// Build a segment descriptor from access/flags (`0xF0FF` mask: flags in
/// bits 15:12, access byte in 7:0), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// GDT index of the 32-bit flat code segment (PVH CS, selector 0x08).
pub const GDT_CODE32: u8 = 1;
/// GDT index of the 64-bit code segment (`__BOOT_CS`, selector 0x10).
pub const GDT_CODE64: u8 = 2;
/// GDT index of the flat data segment (`__BOOT_DS`, selector 0x18).
pub const GDT_DATA: u8 = 3;

/// The boot GDT written at [`BOOT_GDT_START`].
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
];
/// The TSS descriptor TR's hidden state is derived from: busy TSS (type 0xb),
/// byte granularity, base 0, limit 0x67.
pub const BOOT_TSS: u64 = gdt_entry(0x008b, 0, 0x67);
/// IDT limit: one empty 8-byte slot at [`BOOT_IDT_START`].
pub const BOOT_IDT_LIMIT: u16 = 7;

/// Selector of GDT entry `index` (TI = 0, RPL = 0).
pub const fn selector(index: u8) -> u16 {
    (index as u16) << 3
}

/// The `kvm_segment` (hidden segment state) for GDT entry `entry` at
/// `table_index`. The limit is expanded to bytes when G is set.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let g = bit(55);
    let present = bit(47);
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: selector(table_index),
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: 1 - present,
        padding: 0,
    }
}

/// Write [`BOOT_GDT`] at [`BOOT_GDT_START`] and an empty IDT at
/// [`BOOT_IDT_START`].
pub fn setup_boot_gdt(mem: &GuestMemoryMmap<()>) -> Result<(), RegsError> {
    let mut bytes = Vec::with_capacity(BOOT_GDT.len() * 8);
    for e in BOOT_GDT {
        bytes.extend_from_slice(&e.to_le_bytes());
    }
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))
        .map_err(RegsError::Gdt)?;
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::Gdt)
}

const PTE_PRESENT: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PDE_PS: u64 = 1 << 7;

/// PML4 at [`PML4_START`] → PDPT at [`PDPTE_START`] → PD at [`PDE_START`]
/// with 512 2-MiB pages identity-mapping [0, 1 GiB).
pub fn setup_identity_page_tables(mem: &GuestMemoryMmap<()>) -> Result<(), RegsError> {
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(RegsError::PageTables)
    };
    w(PDPTE_START | PTE_PRESENT | PTE_RW, PML4_START)?;
    w(PDE_START | PTE_PRESENT | PTE_RW, PDPTE_START)?;
    let mut pd = Vec::with_capacity(512 * 8);
    for i in 0..512u64 {
        pd.extend_from_slice(&((i << 21) | PTE_PRESENT | PTE_RW | PDE_PS).to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PDE_START))
        .map_err(RegsError::PageTables)
}

pub const X86_CR0_PE: u64 = 1 << 0;
pub const X86_CR0_ET: u64 = 1 << 4;
pub const X86_CR0_PG: u64 = 1 << 31;
pub const X86_CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS with only the always-one bit 1 set (interrupts off).
pub const RFLAGS_RESERVED: u64 = 1 << 1;

fn tss_segment() -> kvm_segment {
    // No GDT slot: selector 0 (TI = 0), hidden state is a busy TSS.
    kvm_segment_from_gdt(BOOT_TSS, 0)
}

fn unusable_ldt() -> kvm_segment {
    kvm_segment {
        unusable: 1,
        ..Default::default()
    }
}

fn set_common_segments(sregs: &mut kvm_sregs, code_index: u8) {
    sregs.cs = kvm_segment_from_gdt(BOOT_GDT[code_index as usize], code_index);
    let data = kvm_segment_from_gdt(BOOT_GDT[GDT_DATA as usize], GDT_DATA);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss_segment();
    sregs.ldt = unusable_ldt();
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = BOOT_IDT_LIMIT;
}

/// Long mode for the 64-bit Linux boot protocol: CS = 0x10 (64-bit code),
/// data segments 0x18, CR0 = PE|ET|PG, CR3 = [`PML4_START`], CR4 = PAE,
/// EFER = LME|LMA. Needs [`setup_boot_gdt`] and
/// [`setup_identity_page_tables`]. Other fields (APIC base, CR8, …) keep
/// what `KVM_GET_SREGS` returned.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    set_common_segments(sregs, GDT_CODE64);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
}

/// General registers for the 64-bit entry: RIP = `entry` (for a bzImage the
/// 64-bit entry point, `code32_start + 0x200`), RSP = RBP =
/// [`BOOT_STACK_POINTER`], RSI = `zero_page`, RFLAGS = 2.
pub fn long_mode_regs(entry: u64, zero_page: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: zero_page,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// 32-bit protected mode for PVH: CS = 0x08 (32-bit flat code), data
/// segments 0x18 (flat), TR a 32-bit busy TSS (limit 0x67), CR0 = PE|ET,
/// CR3 = CR4 = EFER = 0. Needs [`setup_boot_gdt`].
pub fn pvh_sregs(sregs: &mut kvm_sregs) {
    set_common_segments(sregs, GDT_CODE32);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// General registers for the PVH entry: RIP = `entry` (the
/// XEN_ELFNOTE_PHYS32_ENTRY address), RBX = [`PVH_INFO_START`], RFLAGS = 2.
pub fn pvh_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rbx: PVH_INFO_START,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    }
}

/// x87/SSE reset state: FCW 0x37f, MXCSR 0x1f80.
pub fn fpu_state() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Local APIC LVT LINT0 register offset.
pub const APIC_LVT0: usize = 0x350;
/// Local APIC LVT LINT1 register offset.
pub const APIC_LVT1: usize = 0x360;
/// LVT delivery mode ExtINT (bits 10:8 = 7).
pub const APIC_MODE_EXTINT: u32 = 0x7;
/// LVT delivery mode NMI (bits 10:8 = 4).
pub const APIC_MODE_NMI: u32 = 0x4;
const APIC_LVT_DELIVERY_MASK: u32 = 0x7 << 8;
const APIC_LVT_MASKED: u32 = 1 << 16;

fn lapic_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let b = &lapic.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, off: usize, v: u32) {
    for (dst, src) in lapic.regs[off..off + 4].iter_mut().zip(v.to_le_bytes()) {
        *dst = src as _;
    }
}

/// Virtual-wire LINT set-up: LVT0 = ExtINT, LVT1 = NMI, both unmasked
/// (KVM resets every LVT masked). Trigger/polarity bits are kept.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let v = lapic_reg(lapic, off) & !(APIC_LVT_DELIVERY_MASK | APIC_LVT_MASKED);
        set_lapic_reg(lapic, off, v | (mode << 8));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    #[test]
    fn gdt_entries_exact() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0x808b, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(BOOT_TSS, 0x0000_8b00_0000_0067);
        assert_eq!(
            gdt_entry(0x4092, 0x1234_5678, 0xabcde),
            0x124a_9234_5678_bcde
        );
    }

    #[test]
    fn gdt_bytes_in_memory() {
        let m = mem();
        setup_boot_gdt(&m).unwrap();
        let mut got = [0u8; 40];
        m.read_slice(&mut got, GuestAddress(BOOT_GDT_START))
            .unwrap();
        let want: [u8; 40] = [
            0, 0, 0, 0, 0, 0, 0, 0, // null
            0xff, 0xff, 0, 0, 0, 0x9b, 0xcf, 0, // 0x08 code32
            0xff, 0xff, 0, 0, 0, 0x9b, 0xaf, 0, // 0x10 code64
            0xff, 0xff, 0, 0, 0, 0x93, 0xcf, 0, // 0x18 data
            0, 0, 0, 0, 0, 0, 0, 0, // IDT
        ];
        assert_eq!(got, want);
        assert_eq!(BOOT_GDT_START + BOOT_GDT.len() as u64 * 8, BOOT_IDT_START);
    }

    #[test]
    fn segment_conversion() {
        let cs = kvm_segment_from_gdt(BOOT_GDT[GDT_CODE64 as usize], GDT_CODE64);
        assert_eq!(
            (cs.base, cs.limit, cs.selector, cs.type_, cs.present, cs.dpl),
            (0, 0xffff_ffff, 0x10, 0xb, 1, 0)
        );
        assert_eq!(
            (cs.db, cs.s, cs.l, cs.g, cs.avl, cs.unusable),
            (0, 1, 1, 1, 0, 0)
        );

        let cs32 = kvm_segment_from_gdt(BOOT_GDT[GDT_CODE32 as usize], GDT_CODE32);
        assert_eq!(
            (cs32.selector, cs32.type_, cs32.db, cs32.l),
            (0x08, 0xb, 1, 0)
        );
        assert_eq!(cs32.limit, 0xffff_ffff);

        let ds = kvm_segment_from_gdt(BOOT_GDT[GDT_DATA as usize], GDT_DATA);
        assert_eq!(
            (ds.selector, ds.type_, ds.db, ds.l, ds.s),
            (0x18, 0x3, 1, 0, 1)
        );

        let tr = kvm_segment_from_gdt(BOOT_TSS, 0);
        assert_eq!(
            (tr.selector, tr.type_, tr.s, tr.present, tr.limit, tr.g),
            (0, 0xb, 0, 1, 0x67, 0)
        );

        let null = kvm_segment_from_gdt(0, 0);
        assert_eq!((null.present, null.unusable), (0, 1));

        let odd = kvm_segment_from_gdt(0x124a_9234_5678_bcde, 5);
        assert_eq!(
            (odd.base, odd.limit, odd.selector),
            (0x1234_5678, 0xabcde, 0x28)
        );
        assert_eq!((odd.type_, odd.db, odd.g), (0x2, 1, 0));
    }

    #[test]
    fn page_tables() {
        let m = mem();
        setup_identity_page_tables(&m).unwrap();
        let r = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(r(PML4_START), 0xa003);
        assert_eq!(r(PML4_START + 8), 0);
        assert_eq!(r(PDPTE_START), 0xb003);
        assert_eq!(r(PDPTE_START + 8), 0);
        assert_eq!(r(PDE_START), 0x83);
        assert_eq!(r(PDE_START + 8), 0x20_0083);
        assert_eq!(r(PDE_START + 511 * 8), 0x3fe0_0083);
    }

    #[test]
    fn long_mode_state() {
        let mut s = kvm_sregs::default();
        long_mode_sregs(&mut s);
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.cs.l, 1);
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, 0x18);
            assert_eq!(seg.type_, 3);
        }
        assert_eq!(s.tr.type_, 0xb);
        assert_eq!(s.ldt.unusable, 1);
        assert_eq!((s.gdt.base, s.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((s.idt.base, s.idt.limit), (BOOT_IDT_START, 7));
        assert_eq!(s.cr0, 0x8000_0011);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cr4, 0x20);
        assert_eq!(s.efer, 0x500);

        let r = long_mode_regs(0x100_0200, 0x7000);
        assert_eq!(
            (r.rip, r.rsp, r.rbp, r.rsi, r.rflags),
            (
                0x100_0200,
                BOOT_STACK_POINTER,
                BOOT_STACK_POINTER,
                0x7000,
                2
            )
        );
        assert_eq!((r.rax, r.rbx, r.rdi), (0, 0, 0));
    }

    #[test]
    fn pvh_state() {
        let mut s = kvm_sregs {
            cr4: 0x20,
            efer: 0x500,
            cr3: 0x9000,
            ..Default::default()
        };
        pvh_sregs(&mut s);
        assert_eq!((s.cs.selector, s.cs.db, s.cs.l), (0x08, 1, 0));
        assert_eq!((s.cs.base, s.cs.limit), (0, 0xffff_ffff));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!((seg.base, seg.limit, seg.db), (0, 0xffff_ffff, 1));
        }
        assert_eq!((s.tr.type_, s.tr.limit, s.tr.base), (0xb, 0x67, 0));
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (0x11, 0, 0, 0));

        let r = pvh_regs(0x100_0000);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0000, PVH_INFO_START, 2));
    }

    #[test]
    fn fpu() {
        let f = fpu_state();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
    }

    #[test]
    fn lint() {
        let mut l = kvm_lapic_state::default();
        // KVM's reset value: every LVT masked.
        set_lapic_reg(&mut l, APIC_LVT0, 0x1_0000);
        set_lapic_reg(&mut l, APIC_LVT1, 0x1_0000);
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x700);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x400);
        // Trigger/polarity bits are kept, delivery mode replaced.
        set_lapic_reg(&mut l, APIC_LVT0, 0x1_a200);
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0xa700);
        // Raw byte layout: little endian at 0x350.
        assert_eq!(l.regs[APIC_LVT1 + 1] as u8, 0x04);
    }
}

/// Tiny guests on the real `/dev/kvm`: the boot state must actually run.
/// Skipped (with a note) where no VM can be created.
#[cfg(test)]
mod kvm_boot {
    use super::*;
    use crate::arch::cpuid::{boot_msrs, patch_cpuid};
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::GuestMemoryBackend;

    /// `mov dx, 0x3f8; mov al, 'K'; out dx, al; hlt` — same bytes in 32-bit
    /// and 64-bit mode.
    const CODE: [u8; 8] = [0x66, 0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xf4];
    const CODE_ADDR: u64 = 0x10_0000;
    const MEM_SIZE: usize = 2 << 20;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Mode {
        Long,
        Pvh,
    }

    /// Runs the tiny guest; returns the exits seen, or None if no VM can be
    /// created here.
    fn run(mode: Mode) -> Option<Vec<String>> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("note: /dev/kvm unavailable ({e}); skipping tiny-guest test");
                return None;
            }
        };
        let vm = match kvm.create_vm() {
            Ok(vm) => vm,
            Err(e) => {
                eprintln!("note: KVM_CREATE_VM failed ({e}); skipping tiny-guest test");
                return None;
            }
        };
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of a live MEM_SIZE-byte anonymous
        // mapping owned by `mem`, which is declared before `vm` and so
        // outlives it.
        unsafe { vm.set_user_memory_region(region) }.unwrap();

        setup_boot_gdt(&mem).unwrap();
        setup_identity_page_tables(&mem).unwrap();
        mem.write_slice(&CODE, GuestAddress(CODE_ADDR)).unwrap();

        let vcpu = vm.create_vcpu(0).unwrap();
        let mut cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        patch_cpuid(&mut cpuid, 0, 1);
        if mode == Mode::Long {
            let leaf = |f: u32| cpuid.as_slice().iter().find(|e| e.function == f).copied();
            if let Some(l0) = leaf(0) {
                let v: Vec<u8> = [l0.ebx, l0.edx, l0.ecx]
                    .iter()
                    .flat_map(|r| r.to_le_bytes())
                    .collect();
                eprintln!(
                    "KVM supported CPUID: {} entries, vendor {:?}, max leaf {:#x}, leaf 0xb {}",
                    cpuid.as_slice().len(),
                    String::from_utf8_lossy(&v),
                    l0.eax,
                    leaf(0xb).is_some()
                );
            }
        }
        vcpu.set_cpuid2(&cpuid).unwrap();
        let entries = boot_msrs();
        let msrs = kvm_bindings::Msrs::from_entries(&entries).unwrap();
        let written = vcpu.set_msrs(&msrs).unwrap();
        assert_eq!(written, entries.len(), "KVM rejected MSR #{written}");

        let mut sregs = vcpu.get_sregs().unwrap();
        let regs = match mode {
            Mode::Long => {
                long_mode_sregs(&mut sregs);
                long_mode_regs(CODE_ADDR, crate::layout::ZERO_PAGE_START)
            }
            Mode::Pvh => {
                pvh_sregs(&mut sregs);
                pvh_regs(CODE_ADDR)
            }
        };
        vcpu.set_sregs(&sregs).unwrap();
        vcpu.set_regs(&regs).unwrap();
        vcpu.set_fpu(&fpu_state()).unwrap();

        let mut vcpu = vcpu;
        let mut exits = Vec::new();
        for _ in 0..16 {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(port, data)) => exits.push(format!("out {port:#x} {data:?}")),
                Ok(VcpuExit::Hlt) => {
                    exits.push("hlt".into());
                    break;
                }
                Ok(other) => {
                    exits.push(format!("{other:?}"));
                    break;
                }
                Err(e) => {
                    exits.push(format!("error {e}"));
                    break;
                }
            }
        }
        // The mode really is what we asked for.
        let s = vcpu.get_sregs().unwrap();
        match mode {
            Mode::Long => assert_eq!(s.efer & EFER_LMA, EFER_LMA, "long mode active"),
            Mode::Pvh => assert_eq!(s.cr0 & X86_CR0_PG, 0, "paging off"),
        }
        let r = vcpu.get_regs().unwrap();
        assert_eq!(r.rip, CODE_ADDR + CODE.len() as u64, "stopped after hlt");
        Some(exits)
    }

    fn check(mode: Mode) {
        if let Some(exits) = run(mode) {
            eprintln!("{mode:?} tiny guest exits: {exits:?}");
            assert_eq!(exits, vec!["out 0x3f8 [75]".to_string(), "hlt".into()]);
        }
    }

    #[test]
    fn long_mode_guest_writes_serial_and_halts() {
        check(Mode::Long);
    }

    #[test]
    fn pvh_guest_writes_serial_and_halts() {
        check(Mode::Pvh);
    }

    #[test]
    fn lint_on_in_kernel_lapic() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("note: /dev/kvm unavailable; skipping");
            return;
        };
        let Ok(vm) = kvm.create_vm() else {
            eprintln!("note: KVM_CREATE_VM failed; skipping");
            return;
        };
        if let Err(e) = vm.create_irq_chip() {
            eprintln!("note: KVM_CREATE_IRQCHIP failed ({e}); skipping");
            return;
        }
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut lapic = vcpu.get_lapic().unwrap();
        eprintln!(
            "KVM LAPIC reset LVT0={:#x} LVT1={:#x}",
            lapic_reg(&lapic, APIC_LVT0),
            lapic_reg(&lapic, APIC_LVT1)
        );
        set_lint(&mut lapic);
        vcpu.set_lapic(&lapic).unwrap();
        let back = vcpu.get_lapic().unwrap();
        assert_eq!(lapic_reg(&back, APIC_LVT0) & 0x1_0700, 0x700);
        assert_eq!(lapic_reg(&back, APIC_LVT1) & 0x1_0700, 0x400);
    }
}
