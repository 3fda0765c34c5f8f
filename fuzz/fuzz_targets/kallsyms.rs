//! The kallsyms finder over arbitrary bytes (a hostile or corrupt image).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = 0xffff_ffff_8100_0000u64;
    let _ = kernel_image::fuzzing::find_kallsyms(data, base);
});
