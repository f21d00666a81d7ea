//! Measures module decompression and resolution.
//!
//! `cargo run --release -p images --example modbench -- DIR [MODULE...]`
use std::path::Path;
use std::time::Instant;

use images::modules::{ModuleIndex, read_module_file};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: modbench DIR [MODULE...]");
        std::process::exit(2);
    };
    let mut names: Vec<String> = args.collect();
    if names.is_empty() {
        names = [
            "gve",
            "virtio_iommu",
            "sch_ingress",
            "cls_bpf",
            "kvm_amd",
            "kvm",
            "irqbypass",
            "kvm_intel",
            "xfs",
            "btrfs",
        ]
        .map(String::from)
        .to_vec();
    }
    let t = Instant::now();
    let idx = ModuleIndex::open(Path::new(&dir)).expect("index");
    println!("index: {} module files in {:?}", idx.len(), t.elapsed());

    // Sequential decompression of each named file (no dependency walk).
    let mut total_in = 0u64;
    let mut total_out = 0usize;
    let t = Instant::now();
    for n in &names {
        let Some(p) = idx.path_of(n) else {
            println!("  {n}: not a file (builtin?)");
            continue;
        };
        let one = Instant::now();
        let data = read_module_file(p).expect("decompress");
        let inb = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        println!(
            "  {n:<14} {inb:>9} -> {:>9} bytes in {:?}",
            data.len(),
            one.elapsed()
        );
        total_in += inb;
        total_out += data.len();
    }
    let el = t.elapsed();
    println!(
        "sequential: {} files, {total_in} -> {total_out} bytes in {el:?} ({:.1} MB/s out)",
        names.len(),
        total_out as f64 / el.as_secs_f64() / 1e6
    );

    // Full resolution (parallel per dependency level).
    let t = Instant::now();
    let set = idx.resolve(&names).expect("resolve");
    println!(
        "resolve: {} modules, {} bytes in {:?}: {:?}",
        set.modules.len(),
        set.total_bytes(),
        t.elapsed(),
        set.load_order()
    );
}
