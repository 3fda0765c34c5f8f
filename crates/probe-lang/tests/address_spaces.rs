//! `vtop`, `str_as`/`buf_as`/`uint_as` and `ustack` through a fake
//! context: what the language checks, how it reads, what it prints.

mod support;

use probe_lang::compile;
use probe_runtime::{ContextError, ProbeContext};
use std::sync::Arc;
use support::{Capture, FakeCtx};

/// A fake guest with two address spaces: the current one (FakeCtx's
/// memory) and task 0x7000's, whose page 0x5000 holds "other\0" at its
/// end and whose page 0x6000 is unmapped.
struct Ctx {
    base: FakeCtx,
    user_stack: Option<Vec<u64>>,
    task_reads: Vec<(u64, usize)>,
}

const TASK: u64 = 0x7000;

impl Ctx {
    fn new() -> Ctx {
        let mut base = FakeCtx::new("kprobe:ksys_write");
        base.memory.push((0x5ffa, b"mine\0\0".to_vec()));
        Ctx {
            base,
            user_stack: Some(vec![0x40_1136, 0x40_1160, 0x40_1190]),
            task_reads: Vec::new(),
        }
    }
}

impl ProbeContext for Ctx {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        self.base.arg(n)
    }
    fn retval(&mut self) -> Result<u64, ContextError> {
        self.base.retval()
    }
    fn vcpu(&self) -> u32 {
        0
    }
    fn nsecs(&self) -> u64 {
        0
    }
    fn func(&self) -> &str {
        self.base.func()
    }
    fn probe(&self) -> &str {
        self.base.probe()
    }
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ContextError> {
        self.base.read_memory(addr, buf)
    }
    fn vtop(&mut self, cr3: u64, vaddr: u64) -> Result<u64, ContextError> {
        if cr3 == 0x1000 && vaddr >> 12 == 5 {
            Ok(0x9_9000 | (vaddr & 0xfff))
        } else {
            Err(ContextError::Guest(format!("{vaddr:#x} is not mapped")))
        }
    }
    fn read_task_memory(
        &mut self,
        task: u64,
        addr: u64,
        buf: &mut [u8],
    ) -> Result<(), ContextError> {
        self.task_reads.push((addr, buf.len()));
        // As the backends report them: guest faults, read as zeroes.
        if task != TASK {
            return Err(ContextError::Memory {
                addr,
                reason: format!("task {task:#x} has no address space"),
            });
        }
        let page = b"......................other\0";
        let start = 0x6000 - page.len() as u64;
        let end = addr.saturating_add(buf.len() as u64);
        if addr < start || end > 0x6000 {
            return Err(ContextError::Memory {
                addr,
                reason: "not mapped".into(),
            });
        }
        let off = (addr - start) as usize;
        buf.copy_from_slice(&page[off..off + buf.len()]);
        Ok(())
    }
    fn ustack(&mut self, limit: usize) -> Result<Vec<u64>, ContextError> {
        match &self.user_stack {
            Some(s) => Ok(s.iter().copied().take(limit).collect()),
            None => Err(ContextError::Guest("no user stack".into())),
        }
    }
}

fn run(src: &str, ctx: &mut Ctx) -> (String, Vec<(String, String, u64)>) {
    let p = Arc::new(compile(src, "t").unwrap_or_else(|d| panic!("{d}")));
    let cap = Capture::default();
    let mut rt = support::new_runtime(&p, cap.clone());
    rt.run(p.block_of(0), ctx);
    rt.print_maps();
    (cap.take(), rt.errors())
}

#[test]
fn reads_in_another_address_space() {
    let mut c = Ctx::new();
    let (out, errs) = run(
        r#"kprobe:f {
            printf("%s|%s|%s|%r|%x|%x\n", str_as(0x7000, 0x5ffa), str(0x5ffa),
                   str_as(0x7000, 0x5ffa, 3), buf_as(0x7000, 0x5ffa, 4),
                   uint_as(0x7000, 0x5ffa, 2), vtop(0x1000, 0x5123));
        }"#,
        &mut c,
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "other|mine|oth|othe|746f|99123\n\n\n");
}

#[test]
fn a_string_running_into_an_unmapped_page_stops_at_the_page_end() {
    let mut c = Ctx::new();
    // 63 bytes from 0x5ffa cross into the unmapped page at 0x6000: the
    // read is retried up to the page end, as str() does.
    let (out, errs) = run(
        r#"kprobe:f { printf("%s\n", str_as(0x7000, 0x5ffa)); }"#,
        &mut c,
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "other\n\n\n");
    assert_eq!(c.task_reads, [(0x5ffa, 63), (0x5ffa, 6)]);
}

#[test]
fn failed_reads_and_walks_are_counted_errors() {
    let mut c = Ctx::new();
    let src = r#"kprobe:f { @a = str_as(0x8000, 0x5ffa); }
kprobe:g { @b = vtop(0x1000, 0xdead000); }
kprobe:h { @c = uint_as(0x7000, 0x6000, 8); }"#;
    let p = Arc::new(compile(src, "t").unwrap());
    let cap = Capture::default();
    let mut rt = support::new_runtime(&p, cap.clone());
    for i in 0..3 {
        rt.run(p.block_of(i), &mut c);
        rt.run(p.block_of(i), &mut c);
    }
    rt.print_maps();
    // A failed read gives "" or 0 and the handler goes on (bpftrace's
    // probe_read); vtop() of an unmapped address is no read and stops it.
    let out = cap.take();
    assert!(out.contains("@a: \n"), "{out}");
    assert!(out.contains("@c: 0\n"), "{out}");
    assert!(!out.contains("@b"), "{out}");
    let errs = rt.errors();
    let msgs: Vec<&str> = errs.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs.iter().all(|e| e.2 == 2), "{errs:?}");
    assert!(
        msgs.iter()
            .any(|m| m.contains("task 0x8000 has no address space"))
    );
    assert!(msgs.iter().any(|m| m.contains("0xdead000 is not mapped")));
    assert!(
        msgs.iter()
            .any(|m| m.contains("failed to read memory at 0x6000: not mapped"))
    );
}

/// `ustack` prints as bpftrace prints user frames it cannot symbolize
/// (`0x...`), with kstack's layout, and is usable as a map key.
#[test]
fn ustack_layouts_and_limits() {
    let mut c = Ctx::new();
    let (out, errs) = run(
        r#"kprobe:f { printf("[%s]\n", ustack(2)); @u[ustack] = count(); }"#,
        &mut c,
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(
        out,
        "[\n        0x401136\n        0x401160\n]\n\n\n@u[\n    0x401136\n    0x401160\n    0x401190\n]: 1\n"
    );
    c.user_stack = None;
    let (_, errs) = run(r#"kprobe:f { @u[ustack] = count(); }"#, &mut c);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].1.contains("no user stack"), "{errs:?}");
}

#[test]
fn bad_arguments_are_compile_errors() {
    for (src, msg) in [
        (
            "kprobe:f { @ = ustack(0); }",
            "ustack() takes a frame count literal from 1 to 127",
        ),
        (
            "kprobe:f { @ = ustack(arg0); }",
            "ustack() takes a frame count literal",
        ),
        (
            "kprobe:f { @ = uint_as(arg0, arg1, 3); }",
            "uint_as() takes a size literal of 1, 2, 4 or 8 bytes",
        ),
        (
            r#"kprobe:f { @ = str_as("task", arg1); }"#,
            "task argument of str_as() must be an integer, found string",
        ),
        (
            r#"kprobe:f { @ = vtop(arg0, comm); }"#,
            "address argument of vtop() must be an integer, found string",
        ),
        ("kprobe:f { @ = buf_as(arg0, arg1); }", "buf_as"),
        ("kprobe:f { @ = vtop(arg0); }", "vtop"),
    ] {
        let e = compile(src, "t").expect_err(src).to_string();
        assert!(e.contains(msg), "{src}: {e}");
        // Errors point at the script position.
        assert!(e.contains("t:1:"), "{src}: {e}");
    }
}
