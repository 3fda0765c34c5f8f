//! ORC unwind tables from arbitrary bytes: parsing and lookups.
#![no_main]
use kernel_unwind::OrcTable;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // The first byte splits the rest into the ip and orc sections.
    let n = usize::from(data[0]) % 64 + 1;
    let rest = &data[1..];
    let (ip, orc) = rest.split_at((n * 4).min(rest.len()));
    let base = 0xffff_ffff_8100_0000u64;
    if let Ok(table) = OrcTable::parse(ip, base, orc) {
        for probe in [0, base, base + 1, base + 0x1000, u64::MAX] {
            let _ = table.find(probe);
        }
        for w in ip.chunks_exact(4) {
            let off = i32::from_le_bytes(w.try_into().unwrap());
            let _ = table.find(base.wrapping_add_signed(i64::from(off)));
        }
    }
});
