//! x86_64 machine architecture helpers: guest RAM layout and e820, ACPI
//! tables, CPUID/MSR set-up and the boot vCPU register state.
//!
//! Everything here is a pure function over plain data or guest memory, so
//! it can be unit-tested without a VM; only the `kvm_boot` tests in
//! [`regs`] touch `/dev/kvm`. The addresses come from [`crate::layout`].

pub mod acpi;
pub mod cpuid;
pub mod memory;
pub mod regs;
