//! Hot-path and compile-time benchmarks.
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use probe_lang::{ContextError, ProbeContext, Runtime, compile};
use std::sync::Arc;

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
    let prog = Arc::new(compile("kprobe:f { @c[arg0] = count(); }", "b").unwrap());
    let mut rt = Runtime::new(prog.clone(), Box::new(std::io::sink()));
    let block = prog.block_of(0);
    let mut ctx = Ctx { arg0: 0 };
    c.bench_function("keyed_count_handler", |b| {
        b.iter(|| {
            ctx.arg0 = (ctx.arg0 + 1) & 1023;
            black_box(rt.run(block, &mut ctx))
        })
    });

    let prog = Arc::new(compile(SCRIPT, "b").unwrap());
    let mut rt = Runtime::new(prog.clone(), Box::new(std::io::sink()));
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
}

criterion_group!(group, benches);
criterion_main!(group);
