//! Measures loading and parsing a kernel's BTF:
//! `cargo run --release -p kernel-btf --example btf_parse_time VMLINUZ [CACHE_DIR]`.
//! Loads the `.BTF` section twice through `KernelSections` (with CACHE_DIR: cold, then from
//! the cache), then parses it a few times.
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let img = std::path::PathBuf::from(
        args.next()
            .expect("usage: btf_parse_time VMLINUZ [CACHE_DIR]"),
    );
    let cache = args.next().map(std::path::PathBuf::from);
    let mut bytes = Vec::new();
    for round in ["first", "second"] {
        let t = Instant::now();
        let secs = kernel_image::KernelSections::load(&img, &[".BTF"], cache.as_deref())
            .expect("load image");
        bytes = secs.get(".BTF").expect("no .BTF").data.clone();
        println!(
            "{round} section load: {:?} ({} bytes)",
            t.elapsed(),
            bytes.len()
        );
    }
    for _ in 0..3 {
        let t = Instant::now();
        let btf = kernel_btf::Btf::parse(&bytes).expect("parse");
        let parse = t.elapsed();
        let t = Instant::now();
        let task = btf.lookup("struct task_struct").expect("task_struct");
        let comm = btf.member(task, "comm").unwrap().expect("comm");
        let f = btf.function("ksys_write").expect("ksys_write");
        let lookups = t.elapsed();
        println!(
            "{} types: parse {parse:?}; task_struct.comm @{} {}, ksys_write/{} in {lookups:?}",
            btf.type_count(),
            comm.offset,
            btf.type_name(comm.ty),
            f.params.len()
        );
    }
}
