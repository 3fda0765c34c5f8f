//! `trace()` and `snapshot()`: what the checker accepts and rejects (with
//! positions), the call sites' typed layouts, and what the interpreter hands
//! to the recorder.

use probe_lang::{BlockId, TraceSite, TraceType, compile};
use probe_runtime::{ContextError, Flow, ProbeContext, Traced, TracedValue};
use std::sync::Arc;

mod support;
use support::FakeCtx;

/// (line, column, message) of every diagnostic.
fn errors(src: &str) -> Vec<(usize, usize, String)> {
    match compile(src, "t.bt") {
        Ok(_) => panic!("expected an error for {src:?}"),
        Err(d) => {
            d.0.iter()
                .map(|e| (e.line, e.col, e.message.clone()))
                .collect()
        }
    }
}

#[test]
fn trace_fields_are_typed_per_call_site() {
    let p = compile(
        "kprobe:ksys_write /arg2 == 1/ { trace(fd = arg0, n = (int32)arg2, who = comm, b = buf(arg1, 4)); }\n\
         kretprobe:ksys_write { trace(); trace(ret = (int64)retval); snapshot(); }",
        "t",
    )
    .unwrap();
    use TraceType::*;
    let site = |f: &[(&str, TraceType)]| TraceSite {
        fields: f.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
    };
    assert_eq!(
        p.trace_sites(),
        &[
            site(&[("fd", Unsigned), ("n", Signed), ("who", Str), ("b", Buf)]),
            site(&[("ret", Signed)]),
        ]
    );
    assert!(p.uses_trace());
    assert!(
        !compile("kprobe:f { snapshot(); }", "t")
            .unwrap()
            .uses_trace(),
        "snapshot() alone keeps recording every hit"
    );
}

#[test]
fn trace_errors_have_positions() {
    let cases: &[(&str, (usize, usize), &str)] = &[
        (
            "kprobe:f {\n  trace(arg0);\n}",
            (2, 9),
            "trace() fields need a name, as in trace(fd = arg0, n = arg2)",
        ),
        (
            "kprobe:f { trace(a = arg0, a = arg1); }",
            (1, 28),
            "trace() field 'a' is given twice",
        ),
        (
            "kprobe:f { trace(t = (arg0, arg1)); }",
            (1, 22),
            "trace() field 't' cannot hold a tuple; trace its elements as separate fields",
        ),
        (
            "kprobe:f { trace(s = kstack); }",
            (1, 22),
            "trace() field 's' cannot hold a stack; trace(...) takes integers, str() or buf()",
        ),
        (
            "kprobe:f { trace(c = count()); }",
            (1, 22),
            "count() can only be used as a map value, e.g. @x = count(...)",
        ),
        (
            "kprobe:f { trace(b = buf(arg0, 4), _b_length = 1); }",
            (1, 36),
            "trace() field '_b_length' clashes with the length of buffer field 'b'",
        ),
        (
            "kprobe:f { trace(arg0 + 1 = 2); }",
            (1, 27),
            "a trace() field name must be a plain name, as in trace(fd = arg0)",
        ),
        (
            "BEGIN { trace(); }",
            (1, 9),
            "trace() cannot be used in BEGIN: it records what happens in a guest",
        ),
        (
            "kprobe:f { snapshot(1); }",
            (1, 12),
            "snapshot() takes 0 arguments, got 1",
        ),
    ];
    for (src, (line, col), msg) in cases {
        let errs = errors(src);
        assert!(
            errs.iter()
                .any(|(l, c, m)| (l, c) == (line, col) && m == msg),
            "{src:?}: {errs:?}"
        );
    }
}

#[test]
fn outside_record_every_trace_and_snapshot_call_is_an_error() {
    let p = compile("kprobe:f {\n  trace(a = 1);\n  snapshot();\n}", "t.bt").unwrap();
    let d = p.check_not_recording("run").unwrap_err();
    let at: Vec<(usize, usize)> = d.0.iter().map(|e| (e.line, e.col)).collect();
    assert_eq!(at, [(2, 3), (3, 3)]);
    assert!(
        d.0[0]
            .message
            .starts_with("trace() writes to a trace, which `vmprobe run` does not make"),
        "{d}"
    );
    let plain = compile("kprobe:f { @c = count(); }", "t").unwrap();
    assert!(plain.check_not_recording("run").is_ok());
}

/// A hit on `kprobe:f` (the shared fake context) whose recorder keeps what
/// it is given.
struct Recording {
    hit: FakeCtx,
    traced: Vec<Traced>,
}

impl ProbeContext for Recording {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        self.hit.arg(n)
    }
    fn retval(&mut self) -> Result<u64, ContextError> {
        self.hit.retval()
    }
    fn vcpu(&self) -> u32 {
        self.hit.vcpu()
    }
    fn nsecs(&self) -> u64 {
        self.hit.nsecs()
    }
    fn func(&self) -> &str {
        self.hit.func()
    }
    fn probe(&self) -> &str {
        self.hit.probe()
    }
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ContextError> {
        self.hit.read_memory(addr, buf)
    }
    fn trace(&mut self, what: Traced) -> Result<(), ContextError> {
        self.traced.push(what);
        Ok(())
    }
}

#[test]
fn the_interpreter_hands_typed_fields_to_the_recorder() {
    let p = Arc::new(
        compile(
            "kprobe:f { trace(); trace(p = arg0, n = (int64)arg2, s = str(arg0), b = buf(arg0, 3)); snapshot(); }",
            "t",
        )
        .unwrap(),
    );
    let mut rt = support::new_runtime(&p, std::io::sink());
    let mut hit = FakeCtx::new("kprobe:f");
    hit.args = [0x1000, 7, u64::MAX, 0, 0, 0];
    hit.memory = vec![(0x1000, [b"hi\0\x01".as_slice(), &[0xee; 252]].concat())];
    let mut ctx = Recording {
        hit,
        traced: Vec::new(),
    };
    assert_eq!(rt.run(BlockId(0), &mut ctx), Flow::Continue);
    assert!(rt.errors().is_empty(), "{:?}", rt.errors());
    let field = |n: &str, v| (Arc::<str>::from(n), v);
    assert_eq!(
        ctx.traced,
        [
            Traced::Probe,
            Traced::Fields {
                site: 0,
                fields: vec![
                    field("p", TracedValue::U64(0x1000)),
                    field("n", TracedValue::I64(-1)),
                    field("s", TracedValue::Str("hi".into())),
                    field("b", TracedValue::Bytes(b"hi\0".as_slice().into())),
                ]
            },
            Traced::Snapshot,
        ]
    );
}

#[test]
fn without_a_recorder_trace_is_a_counted_runtime_error() {
    // A context that does not record (e.g. an embedder's): the handler run
    // stops at trace() and the error is counted, nothing panics.
    let p = Arc::new(compile("kprobe:f { trace(a = 1); }", "t").unwrap());
    let mut rt = support::new_runtime(&p, std::io::sink());
    rt.run(BlockId(0), &mut FakeCtx::new("kprobe:f"));
    let errs = rt.errors();
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].1.contains("only under `vmprobe record`"),
        "{errs:?}"
    );
}
