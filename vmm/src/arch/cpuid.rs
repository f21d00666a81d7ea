//! Per-vCPU CPUID patching on top of `KVM_GET_SUPPORTED_CPUID`, and the MSR
//! values a vCPU boots with.
//!
//! Topology presented to the guest: one package, `num_cpus` cores, one
//! thread per core, APIC ID = vCPU index.

use kvm_bindings::CpuId;
use kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry};

/// MSR indices (Intel SDM vol. 4 / AMD APM vol. 2).
pub mod msr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;

    /// IA32_MISC_ENABLE bit 0: fast-string operations enabled.
    pub const MISC_ENABLE_FAST_STRING: u64 = 1;
    /// MTRRdefType: MTRRs enabled (bit 11), default type write-back (6).
    pub const MTRR_DEF_TYPE_ENABLED_WB: u64 = (1 << 11) | 6;
}

// Leaf 1.
const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
// Leaf 7.0 EDX: AMX-BF16, AMX-TILE, AMX-INT8.
const LEAF7_EDX_AMX: u32 = (1 << 22) | (1 << 24) | (1 << 25);
// Leaf 0xD.0 EAX: XTILECFG, XTILEDATA state components.
const LEAFD_EAX_AMX: u32 = (1 << 17) | (1 << 18);
// Leaf 0x8000_0001 ECX.
const EXT1_ECX_SVM: u32 = 1 << 2;
/// Topology level types in leaves 0xB / 0x1F ECX[15:8].
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// KVM paravirt signature leaf and its "KVMKVMKVM\0\0\0" signature.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
/// Leaf 0x4000_0001 EAX: asynchronous page faults (KVM_FEATURE_ASYNC_PF,
/// _ASYNC_PF_VMEXIT, _ASYNC_PF_INT; arch/x86/include/uapi/asm/kvm_para.h).
const KVM_FEATURE_ASYNC_PF_ALL: u32 = (1 << 4) | (1 << 10) | (1 << 14);
/// Leaf 0x4000_0001 EAX bit 9: KVM_FEATURE_PV_TLB_FLUSH (same header).
const KVM_FEATURE_PV_TLB_FLUSH: u32 = 1 << 9;
/// The paravirt features the lab's guests do not get (see [`patch_cpuid`]).
const KVM_FEATURES_HIDDEN: u32 = KVM_FEATURE_ASYNC_PF_ALL | KVM_FEATURE_PV_TLB_FLUSH;

/// Bits needed to number `n` cores: ceil(log2(n)).
fn core_id_bits(n: u8) -> u32 {
    (u32::from(n.max(1)) - 1)
        .checked_ilog2()
        .map_or(0, |b| b + 1)
}

fn vendor(cpuid: &CpuId) -> Option<[u8; 12]> {
    let e = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0 && e.index == 0)?;
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&e.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&e.edx.to_le_bytes());
    v[8..12].copy_from_slice(&e.ecx.to_le_bytes());
    Some(v)
}

fn max_leaf(cpuid: &CpuId, base: u32) -> u32 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == base && e.index == 0)
        .map_or(0, |e| e.eax)
}

/// Rewrite a topology leaf (0xB or 0x1F): subleaf 0 = SMT (1 thread),
/// subleaf 1 = core (`num_cpus`), subleaf 2 terminates. Existing subleaves
/// are rewritten; missing subleaves 0–2 are added.
fn set_topology_leaf(cpuid: &mut CpuId, leaf: u32, apic_id: u32, num_cpus: u8) {
    let shift = core_id_bits(num_cpus);
    let values = |index: u32| -> (u32, u32, u32) {
        match index {
            0 => (0, 1, (LEVEL_SMT << 8)),
            1 => (shift, u32::from(num_cpus), (LEVEL_CORE << 8) | 1),
            i => (0, 0, i & 0xff),
        }
    };
    let mut have = [false; 3];
    for e in cpuid
        .as_mut_slice()
        .iter_mut()
        .filter(|e| e.function == leaf)
    {
        let (eax, ebx, ecx) = values(e.index);
        e.eax = eax;
        e.ebx = ebx;
        e.ecx = ecx;
        e.edx = apic_id;
        e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        if let Some(h) = have.get_mut(e.index as usize) {
            *h = true;
        }
    }
    for index in 0..3u32 {
        if !have[index as usize] {
            let (eax, ebx, ecx) = values(index);
            let entry = kvm_cpuid_entry2 {
                function: leaf,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                eax,
                ebx,
                ecx,
                edx: apic_id,
                ..Default::default()
            };
            if cpuid.push(entry).is_err() {
                tracing::warn!(leaf, index, "CPUID table full, topology subleaf not added");
            }
        }
    }
}

/// Patch the CPUID KVM supports into what vCPU `vcpu_id` of a `num_cpus`
/// machine should see:
/// - leaf 1: hypervisor bit, TSC-deadline, no VMX, APIC ID in EBX[31:24],
///   logical processor count in EBX[23:16], HTT iff `num_cpus > 1`;
/// - leaves 0xB (and 0x1F if present): SMT level 1 thread, core level
///   `num_cpus`, x2APIC ID in EDX;
/// - leaf 4 (and AMD 0x8000_001D): cores per package and cache sharing
///   consistent with that topology (L1/L2 per core, L3 shared);
/// - 0x8000_0001: no SVM (no further nesting);
/// - AMD 0x8000_0008 ECX core count, 0x8000_001E extended APIC ID;
/// - AMX masked off (leaf 7 EDX, leaf 0xD XCR0 bits), since we do not ask
///   the host for dynamic XSTATE permission;
/// - 0x4000_0000: "KVMKVMKVM" signature; 0x4000_0001 as KVM gave it but
///   without asynchronous page faults. With them, a guest task that touches
///   a page the host is still faulting in sleeps until a "page ready"
///   interrupt; under the nested engine that wake-up was seen lost (a TCP
///   transfer hung for good in a guest that otherwise ran on). The lab's
///   guests are never overcommitted, so a synchronous fault costs nothing.
///   Nor paravirtual TLB flushes (a preempted vCPU's flush deferred to its
///   next entry, which relies on the host's flush-by-ASID at the next
///   VMRUN): under the nested engine, with them, 2 of 3 64 MiB nic-smoke
///   runs of a 2-vCPU guest ended in a triple fault mid-transfer with
///   nothing on the console. Later 2-vCPU runs without them still lost the
///   L1 or L2 at times, so this was not the whole story (the nested engine
///   now gives the guest one vCPU); the guest flushes remote TLBs by IPI, as
///   on bare metal, which costs the lab's small guests nothing.
pub fn patch_cpuid(cpuid: &mut CpuId, vcpu_id: u8, num_cpus: u8) {
    let num_cpus = num_cpus.max(1);
    let apic_id = u32::from(vcpu_id);
    let shift = core_id_bits(num_cpus);
    let is_amd = matches!(
        vendor(cpuid).as_ref(),
        Some(b"AuthenticAMD") | Some(b"HygonGenuine")
    );
    let has_0xb = max_leaf(cpuid, 0) >= 0xb || cpuid.as_slice().iter().any(|e| e.function == 0xb);

    for e in cpuid.as_mut_slice().iter_mut() {
        match (e.function, e.index) {
            (1, _) => {
                e.ecx |= LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE;
                e.ecx &= !LEAF1_ECX_VMX;
                e.ebx = (apic_id << 24) | (u32::from(num_cpus) << 16) | (e.ebx & 0xffff);
                if num_cpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            (4, _) | (0x8000_001d, _) if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { (1u32 << shift) - 1 } else { 0 };
                e.eax &= 0x3fff;
                e.eax |= (sharing & 0xfff) << 14;
                if e.function == 4 {
                    e.eax |= (((1u32 << shift) - 1) & 0x3f) << 26;
                }
            }
            (7, 0) => e.edx &= !LEAF7_EDX_AMX,
            (0xd, 0) => e.eax &= !LEAFD_EAX_AMX,
            (0x8000_0001, _) => e.ecx &= !EXT1_ECX_SVM,
            (0x8000_0008, _) if is_amd => {
                e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | (u32::from(num_cpus) - 1);
            }
            (0x8000_001e, _) if is_amd => {
                // Extended APIC ID; core (compute unit) ID = APIC ID, one
                // thread per core; node 0 of 1.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            (KVM_CPUID_FEATURES, _) => e.eax &= !KVM_FEATURES_HIDDEN,
            (KVM_CPUID_SIGNATURE, _) => {
                e.eax = e.eax.max(KVM_CPUID_FEATURES);
                e.ebx = u32::from_le_bytes(KVM_SIGNATURE[0..4].try_into().unwrap());
                e.ecx = u32::from_le_bytes(KVM_SIGNATURE[4..8].try_into().unwrap());
                e.edx = u32::from_le_bytes(KVM_SIGNATURE[8..12].try_into().unwrap());
            }
            _ => {}
        }
    }
    if has_0xb {
        set_topology_leaf(cpuid, 0xb, apic_id, num_cpus);
    }
    if cpuid.as_slice().iter().any(|e| e.function == 0x1f) {
        set_topology_leaf(cpuid, 0x1f, apic_id, num_cpus);
    }
}

/// MSRs to set on every vCPU before it runs (KVM_SET_MSRS). Check that the
/// count `set_msrs` returns equals the length.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(msr::IA32_SYSENTER_CS, 0),
        e(msr::IA32_SYSENTER_ESP, 0),
        e(msr::IA32_SYSENTER_EIP, 0),
        e(msr::STAR, 0),
        e(msr::CSTAR, 0),
        e(msr::KERNEL_GS_BASE, 0),
        e(msr::SYSCALL_MASK, 0),
        e(msr::LSTAR, 0),
        e(msr::IA32_TSC, 0),
        e(msr::IA32_MISC_ENABLE, msr::MISC_ENABLE_FAST_STRING),
        e(msr::IA32_MTRR_DEF_TYPE, msr::MTRR_DEF_TYPE_ENABLED_WB),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_regs(v: &[u8; 12], max: u32) -> [u32; 4] {
        let w = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().unwrap());
        [max, w(0), w(8), w(4)]
    }

    /// A CPUID shaped like KVM_GET_SUPPORTED_CPUID on an Intel host.
    fn intel() -> CpuId {
        CpuId::from_entries(&[
            entry(0, 0, vendor_regs(b"GenuineIntel", 0x1f)),
            // Leaf 1: VMX set, no hypervisor bit; CLFLUSH size 8 in EBX[15:8].
            entry(
                1,
                0,
                [0x906ea, 0x0000_0800, LEAF1_ECX_VMX | 1, LEAF1_EDX_HTT | 1],
            ),
            // Leaf 4: L1d (type 1, level 1) and L3 (type 3, level 3), host values.
            entry(4, 0, [(7 << 26) | (1 << 14) | (1 << 5) | 1, 0, 0, 0]),
            entry(4, 1, [(7 << 26) | (15 << 14) | (3 << 5) | 3, 0, 0, 0]),
            entry(4, 2, [0, 0, 0, 0]),
            entry(7, 0, [0, 0, 0, LEAF7_EDX_AMX | 1]),
            entry(0xb, 0, [1, 2, 0x100, 9]),
            entry(0xb, 1, [4, 8, 0x201, 9]),
            entry(0xd, 0, [LEAFD_EAX_AMX | 0x7, 0, 0, 0]),
            entry(0x1f, 0, [1, 2, 0x100, 9]),
            entry(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, EXT1_ECX_SVM | 1, 0]),
            entry(0x8000_0008, 0, [0x3027, 0, 0xabcd, 0]),
            entry(KVM_CPUID_SIGNATURE, 0, [KVM_CPUID_FEATURES, 0, 0, 0]),
            entry(KVM_CPUID_FEATURES, 0, [0x0100_7afb, 0, 0, 0]),
        ])
        .unwrap()
    }

    fn get(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap_or_else(|| panic!("leaf {f:#x}.{i} missing"))
    }

    #[test]
    fn core_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(4), 2);
        assert_eq!(core_id_bits(5), 3);
        assert_eq!(core_id_bits(255), 8);
    }

    #[test]
    fn leaf1() {
        let mut c = intel();
        patch_cpuid(&mut c, 3, 4);
        let e = get(&c, 1, 0);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_eq!(e.ecx & LEAF1_ECX_VMX, 0);
        assert_eq!(e.ecx & 1, 1, "other bits kept");
        assert_eq!(e.ebx >> 24, 3, "APIC ID");
        assert_eq!((e.ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!(e.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);

        let mut c = intel();
        patch_cpuid(&mut c, 0, 1);
        let e = get(&c, 1, 0);
        assert_eq!(e.edx & LEAF1_EDX_HTT, 0, "no HTT with one CPU");
        assert_eq!(e.ebx >> 16, 1);
    }

    #[test]
    fn topology_leaves() {
        let mut c = intel();
        patch_cpuid(&mut c, 5, 6);
        for leaf in [0xb, 0x1f] {
            let smt = get(&c, leaf, 0);
            assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
            let core = get(&c, leaf, 1);
            assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
            let end = get(&c, leaf, 2);
            assert_eq!((end.eax, end.ebx, end.ecx & 0xff00, end.edx), (0, 0, 0, 5));
            for i in 0..3 {
                assert_ne!(get(&c, leaf, i).flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0);
            }
        }
    }

    #[test]
    fn leaf4_and_amx_and_nesting() {
        let mut c = intel();
        patch_cpuid(&mut c, 0, 4);
        let l1 = get(&c, 4, 0);
        assert_eq!(l1.eax >> 26, 3, "4 cores per package");
        assert_eq!((l1.eax >> 14) & 0xfff, 0, "L1 private");
        assert_eq!(l1.eax & 0x3fff, (1 << 5) | 1);
        let l3 = get(&c, 4, 1);
        assert_eq!(l3.eax >> 26, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 shared by 4");
        assert_eq!(get(&c, 4, 2).eax, 0, "null cache entry untouched");
        assert_eq!(get(&c, 7, 0).edx, 1);
        assert_eq!(get(&c, 0xd, 0).eax, 7);
        assert_eq!(get(&c, 0x8000_0001, 0).ecx, 1, "SVM cleared");
        // Intel: 0x8000_0008 ECX left alone.
        assert_eq!(get(&c, 0x8000_0008, 0).ecx, 0xabcd);
    }

    #[test]
    fn kvm_leaves() {
        let mut c = intel();
        patch_cpuid(&mut c, 0, 2);
        let s = get(&c, KVM_CPUID_SIGNATURE, 0);
        let mut sig = Vec::new();
        for r in [s.ebx, s.ecx, s.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, KVM_SIGNATURE);
        assert_eq!(s.eax, KVM_CPUID_FEATURES);
        // 0x0100_7afb has ASYNC_PF (4), PV_TLB_FLUSH (9) and ASYNC_PF_INT
        // (14); they go, the rest (kvmclock, PV EOI/unhalt/IPI, ...) stays.
        let f = get(&c, KVM_CPUID_FEATURES, 0).eax;
        assert_eq!(f, 0x0100_7afb & !((1 << 4) | (1 << 9) | (1 << 14)));
        assert_eq!(f & KVM_FEATURES_HIDDEN, 0);
    }

    #[test]
    fn amd_topology() {
        let mut c = CpuId::from_entries(&[
            entry(0, 0, vendor_regs(b"AuthenticAMD", 0x10)),
            entry(1, 0, [0xa00f11, 0x0000_0800, 0, 0]),
            entry(0xb, 0, [0, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, EXT1_ECX_SVM | (1 << 22), 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0xf0ff | (1 << 16), 0]),
            entry(0x8000_001d, 0, [(1 << 14) | (1 << 5) | 1, 0, 0, 0]),
            entry(0x8000_001d, 3, [(15 << 14) | (3 << 5) | 3, 0, 0, 0]),
            entry(0x8000_001e, 0, [0, 0x100, 0, 0]),
        ])
        .unwrap();
        patch_cpuid(&mut c, 2, 3);
        assert_eq!(get(&c, 0x8000_0001, 0).ecx, 1 << 22);
        assert_eq!(get(&c, 0x8000_0008, 0).ecx, (1 << 16) | (2 << 12) | 2);
        assert_eq!((get(&c, 0x8000_001d, 0).eax >> 14) & 0xfff, 0);
        assert_eq!((get(&c, 0x8000_001d, 3).eax >> 14) & 0xfff, 3);
        assert_eq!(
            get(&c, 0x8000_001d, 3).eax >> 26,
            0,
            "no core count in 0x8000_001D"
        );
        let ext = get(&c, 0x8000_001e, 0);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (2, 2, 0));
        // Leaf 0xB exists although max basic leaf 0x10 ≥ 0xB: subleaves 1, 2 added.
        assert_eq!(get(&c, 0xb, 1).ebx, 3);
        assert_eq!(get(&c, 0xb, 2).edx, 2);
    }

    #[test]
    fn no_topology_leaf_when_unsupported() {
        let mut c = CpuId::from_entries(&[
            entry(0, 0, vendor_regs(b"GenuineIntel", 0xa)),
            entry(1, 0, [0, 0, 0, 0]),
        ])
        .unwrap();
        patch_cpuid(&mut c, 0, 2);
        assert_eq!(c.as_slice().len(), 2);
    }

    #[test]
    fn msrs() {
        let m = boot_msrs();
        let get = |i: u32| m.iter().find(|e| e.index == i).map(|e| e.data);
        for i in [
            msr::IA32_SYSENTER_CS,
            msr::IA32_SYSENTER_ESP,
            msr::IA32_SYSENTER_EIP,
            msr::STAR,
            msr::LSTAR,
            msr::CSTAR,
            msr::KERNEL_GS_BASE,
            msr::SYSCALL_MASK,
            msr::IA32_TSC,
        ] {
            assert_eq!(get(i), Some(0), "MSR {i:#x}");
        }
        assert_eq!(get(msr::IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(msr::IA32_MTRR_DEF_TYPE), Some(0x806));
        let mut idx: Vec<_> = m.iter().map(|e| e.index).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), m.len(), "no duplicates");
    }
}

/// Leaf 1 ECX: FMA (12), XSAVE (26), OSXSAVE (27), AVX (28), F16C (29).
const LEAF1_ECX_XSAVE: u32 = (1 << 12) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 29);
/// Leaf 7.0 EBX: AVX2 (5) and the AVX-512 family (16, 17, 21, 26, 27, 28, 30, 31).
const LEAF7_EBX_AVX: u32 = (1 << 5)
    | (1 << 16)
    | (1 << 17)
    | (1 << 21)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 30)
    | (1 << 31);
/// Leaf 7.0 ECX: AVX512_VBMI (1), PKU (3), OSPKE (4), AVX512_VBMI2 (6), VAES (9),
/// VPCLMULQDQ (10), AVX512_VNNI (11), AVX512_BITALG (12), AVX512_VPOPCNTDQ (14).
const LEAF7_ECX_AVX: u32 = (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 6)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 14);
/// Leaf 7.0 EDX: AVX512_4VNNIW (2), AVX512_4FMAPS (3), VP2INTERSECT (8), AVX512_FP16 (23), AMX.
const LEAF7_EDX_AVX: u32 = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23) | LEAF7_EDX_AMX;
/// Leaf 7.1 EAX: AVX_VNNI (4), AVX512_BF16 (5), AVX_IFMA (23).
const LEAF7_1_EAX_AVX: u32 = (1 << 4) | (1 << 5) | (1 << 23);
/// Leaf 0x8000_0001 ECX: XOP (11), FMA4 (16).
const EXT1_ECX_AVX: u32 = (1 << 11) | (1 << 16);

/// Hide XSAVE and every feature whose state XSAVE manages (AVX, AVX-512,
/// PKU, AMX, …) from the guest: the guest runs on FXSAVE alone.
///
/// Needed on the nested engine: QEMU TCG's SVM does not intercept a nested
/// guest's XSETBV, so L1 KVM never sees the guest's XCR0 and reports a stale
/// CPUID 0xD.0 EBX (the legacy 576 bytes); Linux 7.3 then fails its XSAVE
/// consistency check and dereferences NULL in fpstate_reset (measured: L2
/// panic in fpu__init_system_xstate). The dependent features must go too:
/// Linux only clears them itself (cpuid-deps.c) when *it* disables XSAVE,
/// and with AVX still advertised its crypto self-tests hit #UD.
pub fn hide_xsave(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice().iter_mut() {
        match (e.function, e.index) {
            (1, _) => e.ecx &= !LEAF1_ECX_XSAVE,
            (7, 0) => {
                e.ebx &= !LEAF7_EBX_AVX;
                e.ecx &= !LEAF7_ECX_AVX;
                e.edx &= !LEAF7_EDX_AVX;
            }
            (7, 1) => e.eax &= !LEAF7_1_EAX_AVX,
            (0x8000_0001, _) => e.ecx &= !EXT1_ECX_AVX,
            (0xd, _) => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod xsave_tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn hide_xsave_clears_leaf1_and_0xd() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ecx: LEAF1_ECX_XSAVE | 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xd,
                index: 0,
                eax: 0x207,
                ebx: 0x240,
                ecx: 0xa88,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xd,
                index: 2,
                eax: 0x100,
                ebx: 0x240,
                ..Default::default()
            },
        ];
        let mut c = CpuId::from_entries(&entries).unwrap();
        hide_xsave(&mut c);
        let s = c.as_slice();
        assert_eq!(s[0].ecx, 1);
        assert!(
            s[1..]
                .iter()
                .all(|e| e.eax == 0 && e.ebx == 0 && e.ecx == 0)
        );
    }
}
