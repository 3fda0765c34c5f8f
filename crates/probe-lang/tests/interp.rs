//! Interpreter tests with a fake ProbeContext: kprobe handlers, predicates,
//! runtime errors, step budget, probe specs.

mod support;

use probe_lang::{BlockId, KprobeTarget, ProbeSpec, Value, compile};
use probe_runtime::{Flow, Runtime};
use std::sync::Arc;
use support::{Capture, FakeCtx, run_script};

fn runtime(src: &str) -> (Arc<probe_lang::Program>, Runtime, Capture) {
    let p = Arc::new(compile(src, "t").unwrap_or_else(|d| panic!("{d}")));
    let cap = Capture::default();
    let rt = support::new_runtime(&p, cap.clone());
    (p, rt, cap)
}

#[test]
fn probe_specs() {
    let p = compile(
        "BEGIN, END {} kprobe:vfs_read, kprobe:do_sys_*+0 , k:f+0x10, kprobe:0xffffffff81000000, kprobe:a?c, kretprobe:x /1/ { }",
        "t",
    )
    .unwrap();
    let f = |s: &str, offset| ProbeSpec::Kprobe {
        target: KprobeTarget::Function(s.into()),
        offset,
    };
    assert_eq!(
        p.probes(),
        &[
            ProbeSpec::Begin,
            ProbeSpec::End,
            f("vfs_read", 0),
            f("do_sys_*", 0),
            f("f", 16),
            ProbeSpec::Kprobe {
                target: KprobeTarget::Address(0xffffffff81000000),
                offset: 0
            },
            f("a?c", 0),
            ProbeSpec::Kretprobe {
                function: "x".into()
            },
        ]
    );
    let blocks: Vec<u32> = (0..p.probes().len()).map(|i| p.block_of(i).0).collect();
    assert_eq!(blocks, [0, 0, 1, 1, 1, 1, 1, 1]);
}

#[test]
fn keyed_counts_and_builtins() {
    let (p, mut rt, cap) = runtime(
        "kprobe:vfs_* /arg0 > 1/ { @c[func] = count(); @s[vcpu, arg1] = sum(arg2); @n = max(nsecs); @p[probe] = count(); }",
    );
    let mut ctx = FakeCtx::new("kprobe:vfs_read");
    for i in 0..5u64 {
        ctx.args = [i, 7, 100 + i, 0, 0, 0];
        ctx.nsecs = 1000 * i;
        ctx.vcpu = (i % 2) as u32;
        assert_eq!(rt.run(p.block_of(0), &mut ctx), Flow::Continue);
    }
    assert_eq!(rt.map_value("c", &[Value::Str("vfs_read".into())]), Some(3));
    assert_eq!(
        rt.map_value("s", &[Value::Int(1), Value::Int(7)]),
        Some(103)
    );
    rt.print_maps();
    assert_eq!(
        cap.take(),
        "\n\n@c[vfs_read]: 3\n@n: 4000\n@p[kprobe:vfs_read]: 3\n@s[1, 7]: 103\n@s[0, 7]: 206\n"
    );
    assert!(rt.errors().is_empty());
}

#[test]
fn printf_if_ternary_scratch() {
    let out = run_script(
        r#"BEGIN { $x = 5; $s = "hi"; if ($x > 3) { printf("%s %d\n", $s, $x * 2); } else { printf("no\n"); }
           if ($x == 0) { printf("zero\n") } else if ($x == 5) { printf("five %s\n", $x > 4 ? "big" : "small") }
           printf("%d %d %d\n", -$x, ~0 >> 60, (-16) >> 2); printf("%d %d\n", "a" == "a", $s != "hi"); exit(); printf("after exit\n"); }"#,
    );
    // `>>` is logical as in bpftrace 0.17: `~0 >> 60` is 15, `(-16) >> 2`
    // prints its low 32 bits with %d.
    assert_eq!(out, "hi 10\nfive big\n-5 15 -4\n1 0\n\n\n");
}

#[test]
fn unsigned_vs_signed_comparisons() {
    let (p, mut rt, cap) =
        runtime("kprobe:f { printf(\"%d %d %d\\n\", arg0 > 1, -1 > 1, arg0 - 2 < 0); }");
    let mut ctx = FakeCtx::new("kprobe:f");
    ctx.args[0] = u64::MAX; // -1 as a register value: unsigned, so huge
    rt.run(p.block_of(0), &mut ctx);
    assert_eq!(cap.take(), "1 0 0\n");
}

#[test]
fn runtime_errors_are_counted_per_probe() {
    let (p, mut rt, cap) = runtime(
        "kprobe:f,kprobe:g { @a = count(); $z = arg1 / arg0; @b = count(); } kprobe:h { @c[arg0] = count(); }",
    );
    let mut f = FakeCtx::new("kprobe:f");
    let mut g = FakeCtx::new("kprobe:g");
    f.args[1] = 10;
    for _ in 0..3 {
        assert_eq!(rt.run(BlockId(0), &mut f), Flow::Continue);
    }
    rt.run(BlockId(0), &mut g);
    f.args[0] = 2;
    rt.run(BlockId(0), &mut f);
    let mut h = FakeCtx::new("kprobe:h");
    h.fail_args = true;
    rt.run(p.block_of(2), &mut h);
    assert_eq!(
        rt.errors(),
        vec![
            ("kprobe:f".into(), "division by zero".into(), 3),
            ("kprobe:g".into(), "division by zero".into(), 1),
            (
                "kprobe:h".into(),
                "failed to read register: register read failed".into(),
                1
            ),
        ]
    );
    // The handler aborted at the error: @b only counted the good run.
    assert_eq!(rt.map_value("a", &[]), Some(5));
    assert_eq!(rt.map_value("b", &[]), Some(1));
    rt.print_maps();
    assert_eq!(cap.take(), "\n\n@a: 5\n@b: 1\n\n");
}

#[test]
fn step_budget_aborts_runaway_handler() {
    let (p, mut rt, _cap) = runtime("kprobe:f { @a = count(); @b = count(); @c = count(); }");
    rt.set_step_budget(2);
    let mut ctx = FakeCtx::new("kprobe:f");
    rt.run(p.block_of(0), &mut ctx);
    assert_eq!(rt.map_value("a", &[]), Some(1));
    assert_eq!(rt.map_value("c", &[]), Some(0));
    assert_eq!(
        rt.errors()[0].1,
        "handler exceeded its step budget of 2 operations"
    );
    // The budget is per run, not cumulative.
    rt.set_step_budget(100);
    rt.run(p.block_of(0), &mut ctx);
    assert_eq!(rt.map_value("c", &[]), Some(1));
}

#[test]
fn exit_flow_and_retval() {
    let (p, mut rt, _cap) = runtime("kretprobe:f { @r = sum(retval); if (@r > 10) { exit(); } }");
    let mut ctx = FakeCtx::new("kretprobe:f");
    ctx.retval = 6;
    assert_eq!(rt.run(p.block_of(0), &mut ctx), Flow::Continue);
    assert_eq!(rt.run(p.block_of(0), &mut ctx), Flow::Exit);
}

#[test]
fn min_max_avg_unsigned() {
    let (p, mut rt, cap) =
        runtime("kprobe:f { @mn = min(arg0); @mx = max(arg0); @av = avg(arg0); }");
    let mut ctx = FakeCtx::new("kprobe:f");
    for v in [5, u64::MAX, 3] {
        ctx.args[0] = v;
        rt.run(p.block_of(0), &mut ctx);
    }
    rt.print_maps();
    // Unsigned values print unsigned; avg of wrapped sum divides unsigned.
    assert_eq!(
        cap.take(),
        "\n\n@av: 2\n\n@mn: 3\n@mx: 18446744073709551615\n"
    );
}

#[test]
fn dump_shows_ast_and_ir() {
    let p = compile(
        "kprobe:f /arg0/ { @m[arg1, \"x\"] = count(); printf(\"%d\\n\", 1 + 2); }",
        "t",
    )
    .unwrap();
    let d = p.dump();
    for want in [
        "kprobe:f -> block 0",
        "AST",
        "= @m",
        "IR",
        "m0 @m count[integer, string] unsigned",
        "s0 \"x\"",
        "m0[arg(1), s0] <- Count()",
        "printf f0(Add(1, 2))",
        "predicate arg(0)",
    ] {
        assert!(d.contains(want), "dump lacks {want:?}:\n{d}");
    }
}

#[test]
fn engine_can_share_program_and_move_runtime() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Runtime>();
    send::<probe_lang::Program>();
    sync::<probe_lang::Program>();
    assert_eq!(probe_output::attaching_message(1), "Attaching 1 probe...\n");
    assert_eq!(
        probe_output::attaching_message(3),
        "Attaching 3 probes...\n"
    );
}
