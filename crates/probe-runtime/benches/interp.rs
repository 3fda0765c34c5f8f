//! Hot-path and compile-time benchmarks.
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use probe_lang::compile;
use probe_runtime::output::Discard;
use probe_runtime::{ContextError, ProbeContext, Runtime};

struct Ctx {
    arg0: u64,
}

impl ProbeContext for Ctx {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        Ok(self.arg0 + n as u64)
    }
    fn retval(&mut self) -> Result<u64, ContextError> {
        Ok(0)
    }
    fn vcpu(&self) -> u32 {
        1
    }
    fn nsecs(&self) -> u64 {
        12345
    }
    fn func(&self) -> &str {
        "vfs_read"
    }
    fn probe(&self) -> &str {
        "kprobe:vfs_read"
    }
    fn read_memory(&mut self, _: u64, _: &mut [u8]) -> Result<(), ContextError> {
        Ok(())
    }
}

const SCRIPT: &str = r#"// ~10 lines
kprobe:vfs_read, kprobe:vfs_write /arg0 > 2/ {
    @calls[func] = count();
    @bytes[vcpu, arg0 & 0xff] = sum(arg2);
    $lat = nsecs - arg1;
    if ($lat > 1000) { @slow = count(); } else { @fast = avg($lat); }
    @max = max(arg2 * 2 + 1);
}
END { printf("%-10s %5d %08lx\n", "total", @slow, @max); clear(@calls); }
"#;

fn benches(c: &mut Criterion) {
    let prog = compile("kprobe:f { @c[arg0] = count(); }", "b").unwrap();
    let mut rt = Runtime::new(prog.executable().clone(), Box::new(Discard));
    let block = prog.block_of(0);
    let mut ctx = Ctx { arg0: 0 };
    c.bench_function("keyed_count_handler", |b| {
        b.iter(|| {
            ctx.arg0 = (ctx.arg0 + 1) & 1023;
            black_box(rt.run(block, &mut ctx))
        })
    });

    let prog = compile(SCRIPT, "b").unwrap();
    let mut rt = Runtime::new(prog.executable().clone(), Box::new(Discard));
    let block = prog.block_of(0);
    c.bench_function("ten_line_handler", |b| {
        b.iter(|| {
            ctx.arg0 = (ctx.arg0 + 1) & 1023;
            black_box(rt.run(block, &mut ctx))
        })
    });

    c.bench_function("compile_10_lines", |b| {
        b.iter(|| compile(black_box(SCRIPT), "b").unwrap())
    });

    // The end-to-end suite's scripts (tests/scripts/*.bt), each compiled
    // once per iteration; those that need the kernel's BTF (args, casts)
    // are checked up to their first type error, which is most of the work.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/scripts");
    let mut scripts: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "bt"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    scripts.sort();
    let typed_free = scripts.iter().filter(|s| compile(s, "b").is_ok()).count();
    eprintln!(
        "compile_suite: {} scripts ({typed_free} compile without kernel types)",
        scripts.len()
    );
    c.bench_function("compile_suite", |b| {
        b.iter(|| {
            for s in &scripts {
                let _ = black_box(compile(black_box(s), "b"));
            }
        })
    });
}

criterion_group!(group, benches);
criterion_main!(group);
