//! BTF from arbitrary bytes: parsing, then every accessor on every type
//! (cycles, wild ids and bad offsets must be errors, never panics or hangs).
#![no_main]
use kernel_btf::{Btf, TypeId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(btf) = Btf::parse(data) else {
        return;
    };
    for id in 0..(btf.type_count() as TypeId).min(4096) + 2 {
        let _ = btf.kind(id);
        let _ = btf.name(id);
        let _ = btf.resolve(id);
        let _ = btf.size_of(id);
        let _ = btf.members(id);
        let _ = btf.member(id, "comm");
        let _ = btf.int(id);
        let _ = btf.array(id);
        let _ = btf.pointee(id);
        let _ = btf.enumerators(id);
        let _ = btf.function_by_id(id);
        let _ = btf.type_name(id);
    }
    for n in ["struct task_struct", "union u", "pid_t", "enum e", ""] {
        let _ = btf.lookup(n);
    }
});
