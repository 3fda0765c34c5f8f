//! Builtins that need the target (memory, registers, symbols), through a
//! fake ProbeContext; new probe specs; loops against the step budget.

mod support;

use probe_lang::{ProbeSpec, RateUnit, WatchAddr, WatchMode, compile};
use probe_runtime::{Flow, Runtime};
use std::sync::Arc;
use support::{Capture, FakeCtx, run_script};

fn runtime(src: &str) -> (Arc<probe_lang::Program>, Runtime, Capture) {
    let p = Arc::new(compile(src, "t").unwrap_or_else(|d| panic!("{d}")));
    let cap = Capture::default();
    let rt = support::new_runtime(&p, cap.clone());
    (p, rt, cap)
}

/// A kprobe context with a string at 0x1000 (next to an unmapped page at
/// 0x2000), an array of u32 at 0x3000 and a few registers and symbols.
fn ctx() -> FakeCtx {
    let mut c = FakeCtx::new("kprobe:vfs_read");
    let mut page = vec![b'x'; 0x1000];
    page[..6].copy_from_slice(b"hello\0");
    page[0xffc..].copy_from_slice(b"end!");
    c.memory.push((0x1000, page));
    let words: Vec<u8> = [7u32, 0xffff_fffe, 9]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    c.memory.push((0x3000, words));
    let mut v6 = vec![0u8; 16];
    v6[15] = 1;
    c.memory.push((0x4000, v6));
    c.registers = vec![("rax".into(), 42), ("cr3".into(), 0x1234)];
    c.symbols = vec![("vfs_read".into(), 0xffff_8000), ("jiffies".into(), 0x3000)];
    c.args = [0x1000, 0x3000, 0, 0, 0, 0];
    c
}

fn run_kprobe(src: &str) -> (String, Vec<(String, String, u64)>, FakeCtx) {
    let (p, mut rt, cap) = runtime(src);
    let mut c = ctx();
    rt.run(p.block_of(0), &mut c);
    (cap.take(), rt.errors(), c)
}

#[test]
fn str_and_buf_are_bounded() {
    let (out, errs, c) = run_kprobe(
        r#"kprobe:f { printf("%s|%s|%s|%r|\n", str(arg0), str(arg0, 3), str(arg0 + 6), buf(arg0, 7)); printf("%s|\n", str(0x1ffc)); }"#,
    );
    assert!(errs.is_empty(), "{errs:?}");
    let long = "x".repeat(63);
    assert_eq!(out, format!("hello|hel|{long}|hello\\x00x|\nend!|\n"));
    // Reads never exceed the 64-byte string/buffer limit.
    assert!(c.max_read <= 64, "read {} bytes", c.max_read);
}

#[test]
fn bpftrace_strlen_bounds_str() {
    let src = r#"kprobe:f { printf("%s|%s|\n", str(arg0 + 6), str(arg0 + 6, 150)); }"#;
    for (len, want) in [(Some(100), 99), (Some(8), 7), (None, 63)] {
        let options = probe_lang::Options {
            str_len: len,
            ..Default::default()
        };
        let p = Arc::new(probe_lang::compile_with(src, "t", None, &options).unwrap());
        let cap = Capture::default();
        let mut rt = support::new_runtime(&p, cap.clone());
        let mut c = ctx();
        rt.run(p.block_of(0), &mut c);
        let x = "x".repeat(want);
        assert_eq!(cap.take(), format!("{x}|{x}|\n"), "BPFTRACE_STRLEN={len:?}");
    }
}

#[test]
fn join_prints_a_null_ended_array_of_strings() {
    let (p, mut rt, cap) = runtime(r#"kprobe:f { join(arg1); join(arg1, ","); }"#);
    let mut c = ctx();
    // argv at 0x5000: "hello", "llo", NULL, then what must not be read.
    let argv: Vec<u8> = [0x1000u64, 0x1002, 0, 0x1000]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    c.memory.push((0x5000, argv));
    c.args[1] = 0x5000;
    rt.run(p.block_of(0), &mut c);
    assert!(rt.errors().is_empty(), "{:?}", rt.errors());
    assert_eq!(cap.take(), "hello llo\nhello,llo\n");
    let e = compile(r#"kprobe:f { join(arg0, 1); }"#, "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("the delimiter must be a string literal"), "{e}");
}

#[test]
fn typed_reads_and_pointer_arithmetic() {
    let (out, errs, _) = run_kprobe(
        r#"kprobe:f { $p = (uint32 *)arg1; printf("%d %d %d %d\n", *$p, *($p + 2), *(int32 *)(arg1 + 4), *(uint8 *)arg0); $q = (int8 *)arg1; printf("%d %lx\n", *($q + 4), *(uint64 *)arg1); }"#,
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "7 9 -2 104\n-2 fffffffe00000007\n");
}

#[test]
fn bad_pointer_is_a_counted_error() {
    let (p, mut rt, _) = runtime("kprobe:f { @a = count(); $x = *(uint64 *)0x10; @b = count(); }");
    let mut c = ctx();
    rt.run(p.block_of(0), &mut c);
    rt.run(p.block_of(0), &mut c);
    assert_eq!(
        rt.errors(),
        vec![(
            "kprobe:vfs_read".into(),
            "failed to read memory at 0x10: unmapped".into(),
            2
        )]
    );
    // As bpftrace: the failed read gives 0 and the handler goes on.
    assert_eq!(rt.map_value("a", &[]), Some(2));
    assert_eq!(rt.map_value("b", &[]), Some(2));
}

#[test]
fn failed_reads_give_zeroes_and_the_handler_goes_on() {
    let (p, mut rt, cap) = runtime(
        r#"kprobe:f { $x = *(uint32 *)0x10; $s = str(0x20); $b = buf(0x30, 4); printf("%d [%s] %r\n", $x + 1, $s, $b); $y = (uint64)(*(uint8 *)arg1); printf("%d\n", $y); @after = count(); }"#,
    );
    let mut c = ctx();
    rt.run(p.block_of(0), &mut c);
    assert_eq!(cap.take(), "1 [] \\x00\\x00\\x00\\x00\n7\n");
    assert_eq!(rt.map_value("after", &[]), Some(1));
    // Each failed read counted once, naming its address.
    let errs = rt.errors();
    assert_eq!(errs.len(), 3, "{errs:?}");
    for (addr, e) in ["0x10", "0x20", "0x30"].iter().zip(&errs) {
        assert!(
            e.1.starts_with(&format!("failed to read memory at {addr}:")) && e.2 == 1,
            "{errs:?}"
        );
    }
}

#[test]
fn errors_that_are_not_reads_still_end_the_handler() {
    let (p, mut rt, _) = runtime(r#"kprobe:f { @a = count(); $r = reg("zmm31"); @b = count(); }"#);
    let mut c = ctx();
    rt.run(p.block_of(0), &mut c);
    assert_eq!(rt.map_value("a", &[]), Some(1));
    assert_eq!(rt.map_value("b", &[]), Some(0));
    let (p, mut rt, _) = runtime(r#"kprobe:f { @a = count(); $r = 1 / arg5; @b = count(); }"#);
    rt.run(p.block_of(0), &mut c);
    assert_eq!(rt.map_value("b", &[]), Some(0));
}

#[test]
fn registers_and_symbols() {
    let (out, errs, _) = run_kprobe(
        r#"kprobe:f { printf("%d %x %s %s %s %x\n", reg("rax"), reg("cr3"), ksym(0xffff8010), ksym(0), ksym(5), kaddr("vfs_read")); }"#,
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "42 1234 vfs_read 0 0x5 ffff8000\n");
    // bpftrace's pt_regs names read the same registers as GDB's.
    let (out, errs, _) = run_kprobe(r#"kprobe:f { printf("%d %d\n", reg("ax"), reg("rax")); }"#);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "42 42\n");
    let p = compile(
        r#"kprobe:f { $a = reg("ip") + reg("sp") + reg("flags"); }"#,
        "t",
    )
    .unwrap();
    assert_eq!(p.register_names(), ["rip", "rsp", "eflags"]);
    let e = compile(r#"kprobe:f { $a = reg("orig_ax"); }"#, "t").unwrap_err();
    assert!(e.to_string().contains("has no orig_ax"), "{e}");
    let (out, errs, _) = run_kprobe(r#"kprobe:f { printf("%d\n", reg("zmm31")); }"#);
    assert_eq!(out, "");
    assert_eq!(errs[0].1, "failed to read register: no register 'zmm31'");
    let (_, errs, _) = run_kprobe(r#"kprobe:f { printf("%d\n", kaddr("no_such_sym")); }"#);
    assert_eq!(errs[0].1, "unknown kernel symbol 'no_such_sym'");
    // The engine can check kaddr() symbols before attaching.
    let p = compile(
        "BEGIN {\n  $a = kaddr(\"x\");\n  $b = kaddr(\"y\");\n  $c = kaddr(\"x\");\n}",
        "s.bt",
    )
    .unwrap();
    assert_eq!(p.kaddr_symbols(), ["x", "y"]);
    assert!(p.check_kaddrs(|s| s == "x" || s == "y").is_ok());
    let e = p.check_kaddrs(|s| s == "y").unwrap_err();
    assert_eq!(e.0.len(), 2);
    assert_eq!((e.0[0].line, e.0[0].col, e.0[1].line), (2, 14, 4));
    assert_eq!(e.0[0].message, "unknown kernel symbol 'x'");
    let p = compile(
        r#"BEGIN { $a = reg("rax"); $b = reg("cr3"); $c = reg("rax"); }"#,
        "t",
    )
    .unwrap();
    assert_eq!(p.register_names(), ["rax", "cr3"]);
    assert!(p.check_registers(|r| r == "rax" || r == "cr3").is_ok());
    let e = p.check_registers(|r| r == "rax").unwrap_err();
    assert_eq!(
        e.to_string(),
        "error: unknown register 'cr3'\n --> t:1:35\n  |\n1 | BEGIN { $a = reg(\"rax\"); $b = reg(\"cr3\"); $c = reg(\"rax\"); }\n  |                                   ^^^^^\n"
    );
}

#[test]
fn default_trait_methods_report_unsupported() {
    struct Minimal;
    impl probe_runtime::ProbeContext for Minimal {
        fn arg(&mut self, _: u8) -> Result<u64, probe_runtime::ContextError> {
            Ok(0)
        }
        fn retval(&mut self) -> Result<u64, probe_runtime::ContextError> {
            Ok(0)
        }
        fn vcpu(&self) -> u32 {
            0
        }
        fn nsecs(&self) -> u64 {
            0
        }
        fn func(&self) -> &str {
            "f"
        }
        fn probe(&self) -> &str {
            "kprobe:f"
        }
        fn read_memory(&mut self, _: u64, _: &mut [u8]) -> Result<(), probe_runtime::ContextError> {
            Ok(())
        }
    }
    let (p, mut rt, cap) = runtime(r#"kprobe:f { printf("%s\n", ksym(16)); $r = reg("rax"); }"#);
    rt.run(p.block_of(0), &mut Minimal);
    assert_eq!(cap.take(), "0x10\n");
    assert_eq!(
        rt.errors()[0].1,
        "failed to read register: reg(\"rax\") is not supported by this probe context"
    );
}

#[test]
fn ntop_strncmp_len_has_key() {
    let (out, errs, _) = run_kprobe(
        r#"kprobe:f { @m[1] = 1; @m[5] = 2; printf("%s %s %s\n", ntop(0x0100007f), ntop(2, 0x0101a8c0), ntop(10, buf(0x4000, 16)));
           printf("%d %d %d %d\n", strncmp("abc", "abd", 2), strncmp("abc", "abd", 3), strncmp(str(arg0), "help", 3), strncmp("ab", "abc", 5));
           printf("%d %d %d\n", len(@m), has_key(@m, 5), has_key(@m, 2)); }"#,
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "127.0.0.1 192.168.1.1 ::1\n0 1 0 1\n2 1 0\n");
}

#[test]
fn elapsed_counts_from_first_run() {
    let (p, mut rt, cap) = runtime(r#"kprobe:f { printf("%d\n", elapsed); }"#);
    let mut c = ctx();
    c.nsecs = 1000;
    rt.run(p.block_of(0), &mut c);
    c.nsecs = 1500;
    rt.run(p.block_of(0), &mut c);
    assert_eq!(cap.take(), "0\n500\n");
}

#[test]
fn while_loops_are_bounded_by_the_step_budget() {
    let (p, mut rt, _) =
        runtime("kprobe:f { @before = count(); while (@before > 0) { @spin = count(); } }");
    rt.set_step_budget(1000);
    let mut c = ctx();
    assert_eq!(rt.run(p.block_of(0), &mut c), Flow::Continue);
    assert_eq!(rt.run(p.block_of(0), &mut c), Flow::Continue);
    assert_eq!(
        rt.errors(),
        vec![(
            "kprobe:vfs_read".into(),
            "handler exceeded its step budget of 1000 operations".into(),
            2
        )]
    );
    assert_eq!(rt.map_value("before", &[]), Some(2));
    let spins = rt.map_value("spin", &[]).unwrap();
    assert!(spins > 100 && spins < 1000, "{spins}");
    // A bounded loop finishes within the default budget.
    let out =
        run_script("BEGIN { $i = 0; while ($i < 1000) { $i++; } printf(\"%d\\n\", $i); exit(); }");
    assert_eq!(out, "1000\n\n\n");
}

#[test]
fn new_probe_specs() {
    let p = compile(
        "interval:ms:100, interval:s:2, i:us:50, profile:hz:99, p:hz:1000 { @a = count(); }
         watchpoint:0xffffffff81000000:8:w, watchpoint:4096:1:rw, w:0x10:4:r { @b = count(); }",
        "t",
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let iv = |unit, value| ProbeSpec::Interval { unit, value };
    assert_eq!(
        p.probes(),
        &[
            iv(RateUnit::Ms, 100),
            iv(RateUnit::S, 2),
            iv(RateUnit::Us, 50),
            ProbeSpec::Profile {
                unit: RateUnit::Hz,
                value: 99
            },
            ProbeSpec::Profile {
                unit: RateUnit::Hz,
                value: 1000
            },
            ProbeSpec::Watchpoint {
                addr: WatchAddr::Address(0xffffffff81000000),
                len: 8,
                mode: WatchMode::Write
            },
            ProbeSpec::Watchpoint {
                addr: WatchAddr::Address(4096),
                len: 1,
                mode: WatchMode::ReadWrite
            },
            ProbeSpec::Watchpoint {
                addr: WatchAddr::Address(0x10),
                len: 4,
                mode: WatchMode::Read
            },
        ]
    );
    let names: Vec<String> = p.probes().iter().map(|s| s.name()).collect();
    assert_eq!(names[0], "interval:ms:100");
    assert_eq!(names[3], "profile:hz:99");
    assert_eq!(names[5], "watchpoint:0xffffffff81000000:8:w");
    let blocks: Vec<u32> = (0..p.probes().len()).map(|i| p.block_of(i).0).collect();
    assert_eq!(blocks, [0, 0, 0, 0, 0, 1, 1, 1]);
    assert_eq!(RateUnit::Ms.period_ns(100), 100_000_000);
    assert_eq!(RateUnit::Hz.period_ns(99), 10_101_010);
    assert_eq!(RateUnit::Us.period_ns(50), 50_000);
}

#[test]
fn watchpoints_on_kernel_symbols() {
    let p = compile(
        "watchpoint:jiffies_64:8:w, w:init_task+0x10:4:rw { @b = count(); }",
        "t",
    )
    .unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        p.probes()[0],
        ProbeSpec::Watchpoint {
            addr: WatchAddr::Symbol {
                name: "jiffies_64".into(),
                offset: 0
            },
            len: 8,
            mode: WatchMode::Write
        }
    );
    let names: Vec<String> = p.probes().iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        [
            "watchpoint:jiffies_64:8:w",
            "watchpoint:init_task+0x10:4:rw"
        ]
    );
}

#[test]
fn map_updates_in_handlers() {
    let (p, mut rt, cap) =
        runtime("kprobe:f { @n[arg0]++; @t[arg0] += arg1; @last = arg1; @s[arg0] = func; }");
    let mut c = ctx();
    for i in 0..3u64 {
        c.args[0] = i % 2;
        c.args[1] = 10 * i;
        rt.run(p.block_of(0), &mut c);
    }
    assert_eq!(rt.map_value("n", &[probe_lang::Value::Int(0)]), Some(2));
    rt.print_maps();
    assert_eq!(
        cap.take(),
        "\n\n@last: 20\n@n[1]: 1\n@n[0]: 2\n@s[0]: vfs_read\n@s[1]: vfs_read\n@t[1]: 10\n@t[0]: 20\n"
    );
}

#[test]
fn time_prints_wall_clock_in_both_formats() {
    let (p, mut rt, cap) = runtime(r#"BEGIN { time(); time("%Y|\n"); }"#);
    rt.run(p.block_of(0), &mut FakeCtx::new("BEGIN"));
    let out = cap.take();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    let b = lines[0].as_bytes();
    assert!(
        b.len() == 8
            && b[2] == b':'
            && b[5] == b':'
            && lines[0]
                .replace(':', "")
                .bytes()
                .all(|c| c.is_ascii_digit()),
        "{out:?}"
    );
    assert!(lines[1].len() == 5 && lines[1].ends_with('|'), "{out:?}");
    let mut rt = support::new_runtime_as(&p, cap.clone(), probe_output::OutputFormat::Json);
    rt.run(p.block_of(0), &mut FakeCtx::new("BEGIN"));
    let out = cap.take();
    assert!(
        out.starts_with("{\"type\": \"time\", \"data\": \""),
        "{out:?}"
    );
    assert!(out.contains("\\n\"}\n{\"type\": \"time\""), "{out:?}");
}

#[test]
fn strftime_maps_nsecs_to_wall_clock_and_rand_is_32_bit() {
    let (p, mut rt, cap) = runtime(
        r#"kprobe:f { printf("%s %s|%d %d\n", strftime("%s", nsecs), strftime("%s", nsecs + 86400000000000), rand < 4294967296, rand != rand); }"#,
    );
    let mut c = ctx();
    c.nsecs = 5_000_000_000;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    rt.run(p.block_of(0), &mut c);
    let out = cap.take();
    let (times, flags) = out.trim_end().split_once('|').unwrap();
    let t: Vec<u64> = times.split(' ').map(|x| x.parse().unwrap()).collect();
    assert!(t[0] >= before && t[0] <= before + 5, "{out}");
    assert_eq!(t[1], t[0] + 86400, "{out}");
    assert_eq!(flags, "1 1");
}

#[test]
fn maps_hold_at_most_4096_entries_like_bpftrace() {
    // bpftrace 0.17: `while ($i < 5000) { @m[$i] = 1; $i++; }` keeps 4096.
    let (p, mut rt, _) = runtime(
        "BEGIN { $i = 0; while ($i < 5000) { @m[$i] = 1; @c[$i] = count(); @u[$i]++; $i++; } @m[0] = 7; @after = count(); }",
    );
    rt.set_step_budget(1_000_000);
    rt.run(p.block_of(0), &mut FakeCtx::new("BEGIN"));
    assert_eq!(rt.map_value("m", &[probe_lang::Value::Int(4095)]), Some(1));
    assert_eq!(rt.map_value("m", &[probe_lang::Value::Int(4096)]), Some(0));
    // Existing keys still update, and the handler goes on.
    assert_eq!(rt.map_value("m", &[probe_lang::Value::Int(0)]), Some(7));
    assert_eq!(rt.map_value("after", &[]), Some(1));
    let errs = rt.errors();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_eq!(
        errs[1].1,
        "map @m is full (4096 entries); new keys are dropped"
    );
    assert_eq!(errs[1].2, 904);
}

/// Layouts as bpftrace 0.17 prints kstack (checked on the host with
/// `bpftrace -e 'BEGIN { @v = kstack(2); @k[kstack(1), 5] = count(); printf("[%s]", kstack(1)); }'`
/// and with `-f json`): frames indented by 8 spaces in printf and map
/// values, by 4 in map keys.
#[test]
fn kstack_layouts() {
    let src = r#"kprobe:f { printf("[%s]\n", kstack); @k[kstack(2), 5] = count(); @v = kstack(1); print(kstack(1)); }"#;
    let (p, mut rt, cap) = runtime(src);
    let mut c = ctx();
    c.stack = vec![0xffff_8005, 0x3004, 0x10];
    rt.run(p.block_of(0), &mut c);
    rt.print_maps();
    assert!(rt.errors().is_empty(), "{:?}", rt.errors());
    assert_eq!(
        cap.take(),
        "[\n        vfs_read+5\n        jiffies+4\n        0x10\n]\n\n        vfs_read+5\n\n\n\n\
         @k[\n    vfs_read+5\n    jiffies+4\n, 5]: 1\n@v: \n        vfs_read+5\n\n"
    );
    let (p, _, cap) = runtime(src);
    let mut rt = support::new_runtime_as(&p, cap.clone(), probe_output::OutputFormat::Json);
    rt.run(p.block_of(0), &mut c);
    rt.print_maps();
    let out = cap.take();
    assert!(
        out.contains("{\"type\": \"value\", \"data\": \"\\n        vfs_read+5\\n\"}"),
        "{out}"
    );
    assert!(
        out.contains("{\"@k\": {\"\\n    vfs_read+5\\n    jiffies+4\\n,5\": 1}}"),
        "{out}"
    );
    // Without stack support the read is a counted error.
    let (p, mut rt, _) = runtime(src);
    rt.run(p.block_of(0), &mut ctx());
    assert_eq!(rt.errors()[0].1, "no stack");
}

/// A handler that never ends within its step budget still ends at its
/// wall-clock budget, counted as an error, and the next hit runs again.
#[test]
fn an_endless_handler_stops_at_its_time_budget() {
    let (p, mut rt, _) =
        runtime("kprobe:f { @before = count(); while (@before > 0) { @spin = count(); } }");
    rt.set_step_budget(u64::MAX);
    rt.set_time_budget(std::time::Duration::from_millis(20));
    let mut c = ctx();
    let start = std::time::Instant::now();
    assert_eq!(rt.run(p.block_of(0), &mut c), Flow::Continue);
    assert_eq!(rt.run(p.block_of(0), &mut c), Flow::Continue);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        rt.errors(),
        vec![(
            "kprobe:vfs_read".into(),
            "handler exceeded its time budget of 20 ms (the hit was abandoned)".into(),
            2
        )]
    );
    assert_eq!(rt.map_value("before", &[]), Some(2));
}
