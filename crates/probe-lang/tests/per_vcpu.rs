//! Per-vCPU variables (`self->name`, DTrace's thread-local syntax): parsed,
//! typed one type per name across the program, stored per (guest, vCPU),
//! unset ones read as 0 or "", cleared by `delete(self->x)` or `= 0`.

mod support;

use probe_lang::compile;
use probe_runtime::{ContextError, ProbeContext, Runtime};
use std::sync::Arc;
use support::{Capture, FakeCtx};

/// A probe hit on a given guest and vCPU at a given time.
struct Hit {
    inner: FakeCtx,
    guest: String,
}

fn hit(probe: &str, guest: &str, vcpu: u32, nsecs: u64) -> Hit {
    let mut inner = FakeCtx::new(probe);
    inner.vcpu = vcpu;
    inner.nsecs = nsecs;
    Hit {
        inner,
        guest: guest.to_string(),
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

#[test]
fn entry_return_latency_pairs_per_vcpu() {
    let (p, mut rt, cap) = runtime(
        "kprobe:f { self->ts = nsecs; }\n\
         kretprobe:f /self->ts/ { printf(\"%d\\n\", nsecs - self->ts); delete(self->ts); }",
    );
    let (entry, ret) = (block(&p, "kprobe:f"), block(&p, "kretprobe:f"));
    // Interleaved calls on two vCPUs each pair with their own entry.
    rt.run(entry, &mut hit("kprobe:f", "vm0", 0, 100));
    rt.run(entry, &mut hit("kprobe:f", "vm0", 1, 150));
    rt.run(ret, &mut hit("kretprobe:f", "vm0", 1, 160));
    rt.run(ret, &mut hit("kretprobe:f", "vm0", 0, 400));
    // A return without an entry (the call began before tracing) or a
    // second return after delete: the predicate filters it out.
    rt.run(ret, &mut hit("kretprobe:f", "vm0", 0, 500));
    rt.run(ret, &mut hit("kretprobe:f", "vm0", 2, 600));
    assert_eq!(cap.take(), "10\n300\n");
    assert!(rt.errors().is_empty(), "{:?}", rt.errors());
}

#[test]
fn guests_with_the_same_vcpu_number_are_apart() {
    let (p, mut rt, cap) =
        runtime("kprobe:f { self->n++; printf(\"%s %d %d\\n\", guest, vcpu, self->n); }");
    let b = block(&p, "kprobe:f");
    for (g, v) in [("vm0", 0), ("vm1", 0), ("vm0", 0), ("vm0", 1), ("vm1", 0)] {
        rt.run(b, &mut hit("kprobe:f", g, v, 0));
    }
    assert_eq!(cap.take(), "vm0 0 1\nvm1 0 1\nvm0 0 2\nvm0 1 1\nvm1 0 2\n");
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
    rt.run(f, &mut hit("kprobe:f", "vm0", 0, 0));
    rt.run(g, &mut hit("kprobe:g", "vm0", 0, 0));
    rt.run(f, &mut hit("kprobe:f", "vm0", 0, 0));
    // Another vCPU sees none of it.
    rt.run(f, &mut hit("kprobe:f", "vm0", 1, 0));
    rt.run(h, &mut hit("kprobe:h", "vm0", 0, 0));
    rt.run(f, &mut hit("kprobe:f", "vm0", 0, 0));
    assert_eq!(cap.take(), "[0||0]\n[9|x|3]\n[0||0]\n[0||0]\n");
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
    assert!(d.contains("per-vcpu variable: self->ts"), "{d}");
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
        e.contains("a buffer cannot be stored in a per-vCPU variable"),
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
    rt.run(block(&p, "kprobe:f"), &mut hit("kprobe:f", "vm0", 0, 5));
    rt.run(
        block(&p, "kretprobe:f"),
        &mut hit("kretprobe:f", "vm0", 0, 12),
    );
    assert_eq!(cap.take(), "7\n");
}

#[test]
fn zero_does_not_fix_the_type() {
    // `self->s = 0` clears; the string assignment elsewhere types it.
    let (p, mut rt, cap) = runtime(
        "kprobe:f { self->s = 0; } kprobe:g { self->s = \"x\"; printf(\"%s\\n\", self->s); }",
    );
    rt.run(block(&p, "kprobe:g"), &mut hit("kprobe:g", "vm0", 0, 0));
    rt.run(block(&p, "kprobe:f"), &mut hit("kprobe:f", "vm0", 0, 0));
    assert_eq!(cap.take(), "x\n");
    // Alone, `= 0` makes an integer.
    assert!(compile("kprobe:f { self->z = 0; @v = self->z; }", "t").is_ok());
}
