//! BTF from arbitrary bytes: parsing, then every accessor on every type
//! (cycles, wild ids and bad offsets must be errors, never panics or hangs).
#![no_main]
use kernel_btf::Btf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data) {
        kernel_btf::fuzzing::exercise(&btf);
    }
});
