//! Measures loading and parsing a kernel's ORC tables and looking entries up:
//! `cargo run --release -p kernel-unwind --example orc_time VMLINUZ [CACHE_DIR]`.
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let img = std::path::PathBuf::from(args.next().expect("usage: orc_time VMLINUZ [CACHE_DIR]"));
    let cache = args.next().map(std::path::PathBuf::from);
    let names = [".orc_unwind_ip", ".orc_unwind"];
    let t = Instant::now();
    let secs = kernel_image::KernelSections::load(&img, &names, cache.as_deref()).expect("load");
    println!("section load: {:?}", t.elapsed());
    let (ip, orc) = (
        secs.get(names[0]).expect("ip"),
        secs.get(names[1]).expect("orc"),
    );
    for _ in 0..3 {
        let t = Instant::now();
        let table = kernel_unwind::OrcTable::parse(&ip.data, ip.addr, &orc.data).expect("parse");
        let parse = t.elapsed();
        let (lo, hi) = (table.iter().next().unwrap().0, 0xffffffff81e00000u64);
        let t = Instant::now();
        let mut hits = 0u64;
        for i in 0..1_000_000u64 {
            let a = lo + (i * 0x9e37_79b9) % (hi - lo);
            hits += table.find(a).is_some() as u64;
        }
        println!(
            "{} entries: parse {parse:?}; 1M lookups {:?} ({hits} found)",
            table.len(),
            t.elapsed()
        );
    }
}
