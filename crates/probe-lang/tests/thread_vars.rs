//! Thread-local variables (`self->name`, DTrace's): parsed, typed one type
//! per name across the program, stored per (guest, guest thread), whatever
//! vCPU the thread runs on; unset ones read as 0 or "", cleared by
//! `delete(self->x)` or by a zero, after which the thread holds nothing.

mod support;

use probe_lang::compile;
use probe_runtime::{ContextError, ProbeContext, Runtime};
use std::sync::Arc;
use support::{Capture, FakeCtx};

/// A probe hit in a guest thread (`tid`, `None`: not known here) on a
/// vCPU at a given time.
struct Hit {
    inner: FakeCtx,
    guest: String,
    tid: Option<u64>,
    /// `tid` reads asked of this context.
    tid_reads: usize,
}

fn hit(probe: &str, guest: &str, tid: u64, vcpu: u32, nsecs: u64) -> Hit {
    let mut inner = FakeCtx::new(probe);
    inner.vcpu = vcpu;
    inner.nsecs = nsecs;
    Hit {
        inner,
        guest: guest.to_string(),
        tid: Some(tid),
        tid_reads: 0,
    }
}

impl ProbeContext for Hit {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        self.inner.arg(n)
    }
    fn retval(&mut self) -> Result<u64, ContextError> {
        self.inner.retval()
    }
    fn vcpu(&self) -> u32 {
        self.inner.vcpu()
    }
    fn nsecs(&self) -> u64 {
        self.inner.nsecs()
    }
    fn func(&self) -> &str {
        self.inner.func()
    }
    fn probe(&self) -> &str {
        self.inner.probe()
    }
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ContextError> {
        self.inner.read_memory(addr, buf)
    }
    fn guest(&self) -> &str {
        &self.guest
    }
    fn tid(&mut self) -> Result<u64, ContextError> {
        self.tid_reads += 1;
        self.tid
            .ok_or_else(|| ContextError::Unavailable("tid: BEGIN does not stop a vCPU".into()))
    }
}

fn runtime(src: &str) -> (Arc<probe_lang::Program>, Runtime, Capture) {
    let p = Arc::new(compile(src, "t").unwrap_or_else(|d| panic!("{d}")));
    let cap = Capture::default();
    let rt = support::new_runtime(&p, cap.clone());
    (p, rt, cap)
}

/// Index of the block of the first probe named `name`.
fn block(p: &probe_lang::Program, name: &str) -> probe_lang::BlockId {
    let i = p.probes().iter().position(|s| s.name() == name).unwrap();
    p.block_of(i)
}

/// Threads holding `self->` values.
fn held(rt: &mut Runtime) -> usize {
    rt.interpreter_mut().thread_vars().lock().unwrap().threads()
}

#[test]
fn entry_return_latency_pairs_per_thread_across_vcpus() {
    let (p, mut rt, cap) = runtime(
        "kprobe:f { self->ts = nsecs; }\n\
         kretprobe:f /self->ts/ { printf(\"%d %d\\n\", tid, nsecs - self->ts); delete(self->ts); }",
    );
    let (entry, ret) = (block(&p, "kprobe:f"), block(&p, "kretprobe:f"));
    // Thread 10 enters on vCPU 0 and sleeps; thread 11 runs on vCPU 0 in
    // between; thread 10 wakes on vCPU 1. Each return pairs with its own
    // entry, not with whatever last ran on its vCPU.
    rt.run(entry, &mut hit("kprobe:f", "vm0", 10, 0, 100));
    rt.run(entry, &mut hit("kprobe:f", "vm0", 11, 0, 150));
    rt.run(ret, &mut hit("kretprobe:f", "vm0", 10, 1, 400));
    rt.run(ret, &mut hit("kretprobe:f", "vm0", 11, 0, 160));
    // A return without an entry (the call began before tracing) or a
    // second return after delete: the predicate filters it out.
    rt.run(ret, &mut hit("kretprobe:f", "vm0", 12, 0, 500));
    rt.run(ret, &mut hit("kretprobe:f", "vm0", 10, 0, 600));
    assert_eq!(cap.take(), "10 300\n11 10\n");
    assert!(rt.errors().is_empty(), "{:?}", rt.errors());
    assert_eq!(held(&mut rt), 0, "every delete freed its thread");
}

#[test]
fn guests_with_the_same_tid_are_apart() {
    let (p, mut rt, cap) =
        runtime("kprobe:f { self->n++; printf(\"%s %d %d\\n\", guest, tid, self->n); }");
    let b = block(&p, "kprobe:f");
    for (g, t, v) in [
        ("vm0", 5, 0),
        ("vm1", 5, 0),
        ("vm0", 5, 1),
        ("vm0", 6, 1),
        ("vm1", 5, 1),
    ] {
        rt.run(b, &mut hit("kprobe:f", g, t, v, 0));
    }
    assert_eq!(cap.take(), "vm0 5 1\nvm1 5 1\nvm0 5 2\nvm0 6 1\nvm1 5 2\n");
}

#[test]
fn idle_tasks_are_apart_per_vcpu() {
    // Every vCPU's idle task has tid 0: each is its own thread.
    let (p, mut rt, cap) = runtime("kprobe:f { self->n++; printf(\"%d \", self->n); }");
    let b = block(&p, "kprobe:f");
    for v in [0, 1, 0, 1, 1] {
        rt.run(b, &mut hit("kprobe:f", "vm0", 0, v, 0));
    }
    assert_eq!(cap.take(), "1 1 2 2 3 ");
}

#[test]
fn unset_reads_zero_and_empty_and_zero_clears() {
    let (p, mut rt, cap) = runtime(
        "kprobe:f { printf(\"[%d|%s|%d]\\n\", self->i, self->s, self->t.0); }\n\
         kprobe:g { self->i = 7; self->s = \"x\"; self->t = (3, \"y\"); self->i += 2; }\n\
         kprobe:h { self->i = 0; self->s = 0; delete(self->t); }",
    );
    let (f, g, h) = (
        block(&p, "kprobe:f"),
        block(&p, "kprobe:g"),
        block(&p, "kprobe:h"),
    );
    rt.run(f, &mut hit("kprobe:f", "vm0", 3, 0, 0));
    rt.run(g, &mut hit("kprobe:g", "vm0", 3, 0, 0));
    // The same thread on another vCPU sees it; another thread does not.
    rt.run(f, &mut hit("kprobe:f", "vm0", 3, 1, 0));
    rt.run(f, &mut hit("kprobe:f", "vm0", 4, 0, 0));
    assert_eq!(held(&mut rt), 1);
    rt.run(h, &mut hit("kprobe:h", "vm0", 3, 0, 0));
    rt.run(f, &mut hit("kprobe:f", "vm0", 3, 0, 0));
    assert_eq!(cap.take(), "[0||0]\n[9|x|3]\n[0||0]\n[0||0]\n");
    assert_eq!(held(&mut rt), 0);
}

#[test]
fn a_value_that_becomes_zero_frees_the_thread() {
    // As DTrace's dynamic variables: zero (computed, not only a literal 0)
    // or "" deletes, so a balanced script holds nothing.
    let (p, mut rt, _) = runtime(
        "kprobe:f { self->d++; self->s = \"in\"; } kretprobe:f { self->d--; self->s = str(0x10, 0); }",
    );
    let (f, r) = (block(&p, "kprobe:f"), block(&p, "kretprobe:f"));
    for t in 1..=100 {
        rt.run(f, &mut hit("kprobe:f", "vm0", t, 0, 0));
    }
    assert_eq!(held(&mut rt), 100);
    for t in 1..=100 {
        rt.run(r, &mut hit("kretprobe:f", "vm0", t, (t % 2) as u32, 0));
    }
    assert_eq!(held(&mut rt), 0);
}

#[test]
fn storage_is_bounded_and_drops_are_counted() {
    let (p, mut rt, cap) = runtime("kprobe:f { self->ts = nsecs; printf(\"%d \", self->ts); }");
    rt.interpreter_mut()
        .thread_vars()
        .lock()
        .unwrap()
        .set_limit(3);
    let b = block(&p, "kprobe:f");
    // Five threads that never return: three are held, two dropped.
    for t in 1..=5 {
        rt.run(b, &mut hit("kprobe:f", "vm0", t, 0, 10 + t));
    }
    // A thread already held still updates.
    rt.run(b, &mut hit("kprobe:f", "vm0", 2, 0, 99));
    assert_eq!(held(&mut rt), 3);
    assert_eq!(cap.take(), "11 12 13 0 0 99 ");
    assert_eq!(
        rt.errors(),
        vec![(
            "kprobe:f".into(),
            "self-> variables are held for 3 threads (the limit); a new thread's value is dropped"
                .into(),
            2
        )]
    );
}

#[test]
fn the_thread_is_read_once_a_run_and_only_for_self_vars() {
    let (p, mut rt, _) = runtime(
        "kprobe:f { self->a = 1; self->b = self->a + 1; @x = self->b; } kprobe:g { @c = count(); }",
    );
    let mut h = hit("kprobe:f", "vm0", 7, 0, 0);
    rt.run(block(&p, "kprobe:f"), &mut h);
    assert_eq!(h.tid_reads, 1);
    rt.run(block(&p, "kprobe:f"), &mut h);
    assert_eq!(h.tid_reads, 2);
    let mut h = hit("kprobe:g", "vm0", 7, 0, 0);
    rt.run(block(&p, "kprobe:g"), &mut h);
    assert_eq!(h.tid_reads, 0, "no self-> in the block: no tid read");
    assert_eq!(rt.map_value("x", &[]), Some(2));
}

#[test]
fn no_guest_thread_is_a_counted_error() {
    let (p, mut rt, _) = runtime("BEGIN { @a = count(); self->x = 1; @b = count(); }");
    let mut h = hit("BEGIN", "vm0", 0, 0, 0);
    h.tid = None;
    rt.run(p.block_of(0), &mut h);
    assert_eq!(rt.map_value("a", &[]), Some(1));
    assert_eq!(rt.map_value("b", &[]), Some(0));
    let errs = rt.errors();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0]
            .1
            .starts_with("self-> variables belong to the guest thread"),
        "{errs:?}"
    );
}

#[test]
fn self_vars_are_not_maps_and_show_in_the_dump() {
    let p = compile(
        "kprobe:f { self->ts = nsecs; @c = count(); } kretprobe:f /self->ts/ { delete(self->ts); }",
        "t",
    )
    .unwrap();
    assert_eq!(p.map_names(), ["@c"]);
    let d = p.dump();
    assert!(d.contains("thread-local variable: self->ts"), "{d}");
    assert!(d.contains("self0 self->ts integer"), "{d}");
    assert!(d.contains("predicate self0"), "{d}");
    assert!(d.contains("delete self0"), "{d}");
}

fn err(src: &str) -> String {
    match compile(src, "script") {
        Ok(_) => panic!("expected an error for {src:?}"),
        Err(d) => d.to_string(),
    }
}

#[test]
fn type_errors_name_the_variable_and_place() {
    let e = err("kprobe:f { self->x = 1; }\nkprobe:g { self->x = \"s\"; }");
    assert!(
        e.starts_with(
            "error: type mismatch for self->x: assigning string to a variable of type integer\n --> script:2:22\n"
        ),
        "{e}"
    );
    let e = err("kprobe:f { @a = self->nope; }");
    assert!(
        e.starts_with(
            "error: undefined variable 'self->nope' (it is never assigned)\n --> script:1:17\n"
        ),
        "{e}"
    );
    let e = err("kprobe:f { delete(self->gone); }");
    assert!(e.contains("undefined variable 'self->gone'"), "{e}");
    let e = err("kprobe:f { $x = self; }");
    assert!(
        e.contains("self is used with a variable name: self->NAME"),
        "{e}"
    );
    let e = err("kprobe:f { self-> = 1; }");
    assert!(
        e.starts_with(
            "error: expected a variable name after 'self->', found '='\n --> script:1:19\n"
        ),
        "{e}"
    );
    let e = err("kprobe:f { self->b = buf(arg0, 4); }");
    assert!(
        e.contains("a buffer cannot be stored in a thread-local variable"),
        "{e}"
    );
    let e = err("kprobe:f { self->s = \"a\"; self->s += 1; }");
    assert!(
        e.contains("operator '+' cannot be applied to string and integer"),
        "{e}"
    );
}

#[test]
fn a_read_may_come_before_the_assignment_in_the_source() {
    // One type per name across the program, as for maps: the first block
    // reads what a later block assigns.
    let (p, mut rt, cap) = runtime(
        "kretprobe:f /self->ts/ { printf(\"%d\\n\", nsecs - self->ts); }\n\
         kprobe:f { self->ts = nsecs; }",
    );
    rt.run(block(&p, "kprobe:f"), &mut hit("kprobe:f", "vm0", 1, 0, 5));
    rt.run(
        block(&p, "kretprobe:f"),
        &mut hit("kretprobe:f", "vm0", 1, 0, 12),
    );
    assert_eq!(cap.take(), "7\n");
}

#[test]
fn zero_does_not_fix_the_type() {
    // `self->s = 0` clears; the string assignment elsewhere types it.
    let (p, mut rt, cap) = runtime(
        "kprobe:f { self->s = 0; } kprobe:g { self->s = \"x\"; printf(\"%s\\n\", self->s); }",
    );
    rt.run(block(&p, "kprobe:g"), &mut hit("kprobe:g", "vm0", 1, 0, 0));
    rt.run(block(&p, "kprobe:f"), &mut hit("kprobe:f", "vm0", 1, 0, 0));
    assert_eq!(cap.take(), "x\n");
    // Alone, `= 0` makes an integer.
    assert!(compile("kprobe:f { self->z = 0; @v = self->z; }", "t").is_ok());
}
