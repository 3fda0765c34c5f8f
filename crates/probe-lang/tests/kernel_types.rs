//! Kernel types in the language, against a fake `KernelTypes` provider and
//! fake guest memory: typed `args`, struct casts, `->`/`.`/`[]`, bitfields,
//! unions, enums, pointers to pointers, `sizeof`/`offsetof`, typed
//! `curtask`, bounded task-list walks, `vmm:`/`host:tracepoint:` args, and
//! guest syscall tracepoints' args, kfunc/kretfunc and raw_syscalls.
//!
//! Long file: every test here runs against the one fake kernel below (its
//! types, prototypes and memory), which splitting would duplicate.

mod support;

use probe_lang::{
    FieldType, KernelTypes, MemberInfo, Param, ProbeSpec, Prototype, SyscallDecl, TypeInfo,
    TypeRef, Value, compile, compile_with_types,
};
use probe_runtime::Flow;
use std::sync::Arc;
use support::{Capture, FakeCtx};

/// A tiny kernel:
/// ```c
/// struct task_struct {            // size 80
///     int pid;                    // 0
///     char comm[16];              // 8
///     struct task_struct *real_parent; // 24
///     struct task_struct *parent; // 32
///     unsigned int flags:5;       // bit 323 (byte 40, bit 3)
///     int delta:4;                // bit 328 (byte 41), signed
///     enum state state;           // 44
///     int arr[4];                 // 48
///     union u { unsigned long a; int b; } u; // 64
///     struct task_struct **pp;    // 72
/// };
/// long do_sys_openat2(int dfd, const char *filename, struct file *how);
/// ```
struct Fake;

const INT: u32 = 1;
const CHAR: u32 = 2;
const ULONG: u32 = 3;
const CHAR_PTR: u32 = 4;
const TASK_PTR: u32 = 5;
const COMM: u32 = 6;
const TASK: u32 = 10;
const UINT: u32 = 11;
const STATE: u32 = 12;
const ARR: u32 = 13;
const FILE: u32 = 14;
const TASK_PP: u32 = 15;
const UNION: u32 = 16;
const FILE_PTR: u32 = 17;
/// `struct pt_regs` of x86-64 (the syscall argument registers only).
const PT_REGS: u32 = 18;
const TASK_ADDR: u64 = 0x2000;
const PARENT_ADDR: u64 = 0x3000;

impl KernelTypes for Fake {
    fn function(&self, name: &str) -> Option<Prototype> {
        let p = |n: &str, t| Param {
            name: n.into(),
            ty: TypeRef(t),
        };
        Some(match name {
            "do_sys_openat2" => Prototype {
                params: vec![p("dfd", INT), p("filename", CHAR_PTR), p("how", FILE_PTR)],
                ret: TypeRef(ULONG),
            },
            "seven" => Prototype {
                params: (0..7).map(|i| p(&format!("a{i}"), INT)).collect(),
                ret: TypeRef(0),
            },
            "by_value" => Prototype {
                params: vec![p("t", TASK)],
                ret: TypeRef(0),
            },
            "int_ret" => Prototype {
                params: vec![p("x", INT), p("filename", CHAR_PTR)],
                ret: TypeRef(INT),
            },
            // int_ret's parameter names, x of another type.
            "int_rex" => Prototype {
                params: vec![p("x", ULONG), p("filename", CHAR_PTR)],
                ret: TypeRef(ULONG),
            },
            _ => return None,
        })
    }
    fn lookup(&self, c_name: &str) -> Option<TypeRef> {
        Some(TypeRef(match c_name {
            "struct task_struct" => TASK,
            "struct file" => FILE,
            "union u" => UNION,
            "enum state" => STATE,
            "char" => CHAR,
            "struct pt_regs" => PT_REGS,
            _ => return None,
        }))
    }
    fn info(&self, ty: TypeRef) -> TypeInfo {
        match ty.0 {
            INT => TypeInfo::Int {
                size: 4,
                signed: true,
                char: false,
            },
            CHAR => TypeInfo::Int {
                size: 1,
                signed: true,
                char: true,
            },
            ULONG => TypeInfo::Int {
                size: 8,
                signed: false,
                char: false,
            },
            UINT => TypeInfo::Int {
                size: 4,
                signed: false,
                char: false,
            },
            CHAR_PTR => TypeInfo::Ptr {
                pointee: TypeRef(CHAR),
            },
            TASK_PTR => TypeInfo::Ptr {
                pointee: TypeRef(TASK),
            },
            TASK_PP => TypeInfo::Ptr {
                pointee: TypeRef(TASK_PTR),
            },
            FILE_PTR => TypeInfo::Ptr {
                pointee: TypeRef(FILE),
            },
            COMM => TypeInfo::Array {
                elem: TypeRef(CHAR),
                count: 16,
            },
            ARR => TypeInfo::Array {
                elem: TypeRef(INT),
                count: 4,
            },
            TASK => TypeInfo::Struct { size: 80 },
            FILE => TypeInfo::Struct { size: 232 },
            UNION => TypeInfo::Union { size: 8 },
            STATE => TypeInfo::Enum {
                size: 4,
                signed: false,
            },
            0 => TypeInfo::Void,
            _ => TypeInfo::Other,
        }
    }
    fn member(&self, ty: TypeRef, name: &str) -> Option<MemberInfo> {
        let m = |t, bit_offset, bitfield_size| MemberInfo {
            ty: TypeRef(t),
            bit_offset,
            bitfield_size,
        };
        match (ty.0, name) {
            (TASK, "pid") => Some(m(INT, 0, 0)),
            (TASK, "comm") => Some(m(COMM, 64, 0)),
            (TASK, "real_parent") => Some(m(TASK_PTR, 192, 0)),
            (TASK, "parent") => Some(m(TASK_PTR, 256, 0)),
            (TASK, "flags") => Some(m(UINT, 323, 5)),
            (TASK, "delta") => Some(m(INT, 328, 4)),
            (TASK, "state") => Some(m(STATE, 352, 0)),
            (TASK, "arr") => Some(m(ARR, 384, 0)),
            (TASK, "u") => Some(m(UNION, 512, 0)),
            (TASK, "pp") => Some(m(TASK_PP, 576, 0)),
            (UNION, "a") => Some(m(ULONG, 0, 0)),
            (UNION, "b") => Some(m(INT, 0, 0)),
            (PT_REGS, "r10") => Some(m(ULONG, 7 * 64, 0)),
            (PT_REGS, "r9") => Some(m(ULONG, 8 * 64, 0)),
            (PT_REGS, "r8") => Some(m(ULONG, 9 * 64, 0)),
            (PT_REGS, "dx") => Some(m(ULONG, 12 * 64, 0)),
            (PT_REGS, "si") => Some(m(ULONG, 13 * 64, 0)),
            (PT_REGS, "di") => Some(m(ULONG, 14 * 64, 0)),
            (PT_REGS, "ax") => Some(m(ULONG, 10 * 64, 0)),
            (PT_REGS, "orig_ax") => Some(m(ULONG, 15 * 64, 0)),
            _ => None,
        }
    }
    fn enumerator(&self, name: &str) -> Option<i64> {
        (name == "STATE_RUNNING").then_some(2)
    }
    fn type_name(&self, ty: TypeRef) -> String {
        match ty.0 {
            INT => "int",
            CHAR => "char",
            ULONG => "unsigned long",
            UINT => "unsigned int",
            CHAR_PTR => "const char *",
            TASK_PTR => "struct task_struct *",
            TASK_PP => "struct task_struct **",
            FILE_PTR => "struct file *",
            COMM => "char[16]",
            ARR => "int[4]",
            TASK => "struct task_struct",
            FILE => "struct file",
            UNION => "union u",
            STATE => "enum state",
            _ => "void",
        }
        .into()
    }
    fn event_field(&self, probe: &ProbeSpec, field: &str) -> Option<FieldType> {
        match (probe, field) {
            (ProbeSpec::Vmm { .. }, "name") => Some(FieldType::Str),
            (ProbeSpec::Vmm { .. }, "delta") => Some(FieldType::Int { signed: true }),
            _ => None,
        }
    }
    fn event_fields(&self, probe: &ProbeSpec) -> Option<Vec<(String, FieldType)>> {
        match probe {
            ProbeSpec::HostTracepoint { event, .. } if event == "kvm_pio" => Some(
                ["rw", "port", "size", "count"]
                    .map(|n| (n.to_string(), FieldType::Int { signed: false }))
                    .to_vec(),
            ),
            _ => None,
        }
    }
    fn kfunc_names(&self) -> Vec<String> {
        ["do_sys_openat2", "int_ret", "int_rex"]
            .map(String::from)
            .to_vec()
    }
    fn knows_syscalls(&self) -> bool {
        true
    }
    fn syscall(&self, name: &str) -> Option<SyscallDecl> {
        let p = |t: &str, n: &str| (t.to_string(), n.to_string());
        Some(match name {
            "openat" => SyscallDecl {
                nr: Some(257),
                params: vec![
                    p("int", "dfd"),
                    p("const char *", "filename"),
                    p("int", "flags"),
                    p("umode_t", "mode"),
                ],
            },
            "read" => SyscallDecl {
                nr: Some(0),
                params: vec![
                    p("unsigned int", "fd"),
                    p("char *", "buf"),
                    p("size_t", "count"),
                ],
            },
            _ => return None,
        })
    }
}

fn task(pid: i32, comm: &str, parent: u64) -> Vec<u8> {
    let mut b = vec![0u8; 80];
    b[0..4].copy_from_slice(&pid.to_le_bytes());
    b[8..8 + comm.len()].copy_from_slice(comm.as_bytes());
    b[24..32].copy_from_slice(&parent.to_le_bytes());
    b[32..40].copy_from_slice(&parent.to_le_bytes());
    b
}

/// The current task (pid 42 "bash", child of pid 1 "init", whose parent is
/// itself), plus a pointer to it at 0x4000 (`pp`).
fn ctx(probe: &str) -> FakeCtx {
    let mut c = FakeCtx::new(probe);
    let mut t = task(42, "bash", PARENT_ADDR);
    // flags:5 at bit 3 of byte 40 = 0b10110 (22); delta:4 in byte 41 = -3.
    t[40] = 22 << 3 | 0b101;
    t[41] = 0xd0 | 0b1101;
    t[44..48].copy_from_slice(&2u32.to_le_bytes());
    for i in 0..4 {
        t[48 + 4 * i..52 + 4 * i].copy_from_slice(&(10 * i as i32 + 1).to_le_bytes());
    }
    t[64..72].copy_from_slice(&0xffff_ffff_ffff_fffeu64.to_le_bytes());
    t[72..80].copy_from_slice(&0x4000u64.to_le_bytes());
    c.memory.push((TASK_ADDR, t));
    c.memory.push((PARENT_ADDR, task(1, "init", PARENT_ADDR)));
    c.memory.push((0x4000, PARENT_ADDR.to_le_bytes().to_vec()));
    let mut path = b"/etc/passwd\0garbage".to_vec();
    path.resize(128, b'x');
    c.memory.push((0x1000, path));
    c.curtask = Some(TASK_ADDR);
    c
}

fn compile_ok(src: &str) -> Arc<probe_lang::Program> {
    Arc::new(compile_with_types(src, "t", Some(&Fake)).unwrap_or_else(|d| panic!("{d}")))
}

fn compile_err(src: &str) -> String {
    match compile_with_types(src, "t", Some(&Fake)) {
        Ok(_) => panic!("compiled: {src}"),
        Err(d) => d.to_string(),
    }
}

/// Runs block 0 once with `c`; returns the output and runtime errors.
fn run_with(src: &str, c: &mut FakeCtx) -> (String, Vec<(String, String, u64)>) {
    let p = compile_ok(src);
    let cap = Capture::default();
    let mut rt = support::new_runtime(&p, cap.clone());
    rt.run(p.block_of(0), c);
    (cap.take(), rt.errors())
}

fn run(src: &str) -> String {
    let mut c = ctx("kprobe:do_sys_openat2");
    c.args = [(-100i32) as u32 as u64, 0x1000, 0x2000, 0, 0, 0];
    let (out, errs) = run_with(src, &mut c);
    assert!(errs.is_empty(), "{errs:?}");
    out
}

#[test]
fn typed_args_from_the_prototype() {
    let src = r#"kprobe:do_sys_openat2 { printf("%s|%s|%d\n", str(args.filename), str(args->filename), args.dfd); }"#;
    // dfd is an int: the register's upper half is not part of it.
    assert_eq!(run(src), "/etc/passwd|/etc/passwd|-100\n");
    // A pointer parameter is typed: its struct members are reachable.
    assert_eq!(
        run(r#"kprobe:do_sys_openat2 { printf("%d\n", args.how == arg2); }"#),
        "1\n"
    );
}

#[test]
fn args_errors_have_positions_before_running() {
    let e = compile_err("kprobe:do_sys_openat2 {\n  printf(\"%d\\n\", args.nope);\n}");
    assert!(
        e.contains("function 'do_sys_openat2' has no parameter named 'nope' (parameters: dfd, filename, how)"),
        "{e}"
    );
    assert!(e.contains("t:2:18") && e.contains("^^^^^^^^^"), "{e}");
    let e = compile_err("kretprobe:do_sys_openat2 { printf(\"%d\\n\", args.dfd); }");
    assert!(e.contains("use retval"), "{e}");
    let e = compile_err("BEGIN { printf(\"%d\\n\", args.dfd); }");
    assert!(e.contains("args can only be used in kprobes"), "{e}");
    let e = compile_err("kprobe:nosuch { printf(\"%d\\n\", args.x); }");
    assert!(e.contains("no prototype for function 'nosuch'"), "{e}");
    let e = compile_err("kprobe:seven { printf(\"%d\\n\", args.a6); }");
    assert!(e.contains("passed on the stack"), "{e}");
    let e = compile_err("kprobe:by_value { printf(\"%d\\n\", args.t); }");
    assert!(e.contains("passed by value"), "{e}");
    let e = compile_err("kprobe:do_sys_* { printf(\"%d\\n\", args.dfd); }");
    assert!(e.contains("without offset or wildcard"), "{e}");
    // retval stays in kretprobes.
    compile_ok("kretprobe:do_sys_openat2 { printf(\"%d\\n\", retval); }");
}

#[test]
fn without_btf_types_are_clear_errors() {
    for src in [
        "kprobe:do_sys_openat2 { printf(\"%d\\n\", args.dfd); }",
        "kprobe:f { printf(\"%d\\n\", ((struct task_struct *)arg0)->pid); }",
        "BEGIN { printf(\"%d\\n\", sizeof(struct file)); }",
        "BEGIN { printf(\"%d\\n\", offsetof(struct task_struct, comm)); }",
    ] {
        let e = compile(src, "t").unwrap_err().to_string();
        assert!(e.contains("type information (BTF)"), "{src}: {e}");
    }
    // curtask stays an integer.
    let e = compile("kprobe:f { printf(\"%d\\n\", curtask->pid); }", "t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("BTF"), "{e}");
    compile("kprobe:f { printf(\"%d\\n\", curtask); }", "t").unwrap();
}

#[test]
fn enumerators_bswap_and_ntop_of_an_array() {
    let out = run(r#"kprobe:do_sys_openat2 {
        $t = (struct task_struct *)arg2;
        printf("%d %d\n", $t->state == STATE_RUNNING, STATE_RUNNING);
        $p = $t->pid;
        printf("%x %x %d\n", bswap($p), bswap((uint16)0x1234), bswap(0x1122334455667788) == 0x8877665544332211);
        printf("%s %s\n", ntop($t->arr), ntop(10, $t->arr));
    }"#);
    assert_eq!(
        out,
        "1 2\n2a000000 3412 1\n100:0:b00:0:1500:0:1f00:0 100:0:b00:0:1500:0:1f00:0\n"
    );
    // Without a header or an enum that has it, the message says where it looked.
    let e = compile_err("BEGIN { printf(\"%d\\n\", NOPE_X); }");
    assert!(
        e.contains("unknown identifier 'NOPE_X': no #include'd header defines it as an integer and no enum of the guest kernel has it"),
        "{e}"
    );
    let e = compile_err(
        "kprobe:f { $t = (struct task_struct *)arg0; printf(\"%s\\n\", ntop($t->u)); }",
    );
    assert!(
        e.contains("ntop() takes an integer (IPv4) or a buffer"),
        "{e}"
    );
}

#[test]
fn struct_members_nested_arrays_unions_bitfields_enums() {
    let out = run(r#"kprobe:do_sys_openat2 {
        $t = (struct task_struct *)arg2;
        printf("%d %s %s %s\n", $t->pid, $t->comm, $t->real_parent->comm, $t->parent->real_parent->comm);
        printf("%d %d %d %c\n", $t->arr[0], $t->arr[3], $t->arr[$t->arr[0] + 1], $t->comm[1]);
        printf("%d %d %d\n", $t->flags, $t->delta, $t->state);
        printf("%d %d\n", $t->u.a, $t->u.b);
        printf("%d %d %s\n", (*$t->pp)->pid, $t->pp[0]->pid, (*$t).comm);
        printf("%d %d %d\n", sizeof(struct task_struct), offsetof(struct task_struct, comm), offsetof(struct task_struct, u.b));
        printf("%d\n", sizeof(struct file));
    }"#);
    assert_eq!(
        out,
        "42 bash init init\n1 31 21 a\n22 -3 2\n-2 -2\n1 1 bash\n80 8 64\n232\n"
    );
}

#[test]
fn reads_are_bounded() {
    let mut c = ctx("kprobe:do_sys_openat2");
    c.args[2] = TASK_ADDR;
    let (out, errs) = run_with(
        r#"kprobe:do_sys_openat2 { $t = (struct task_struct *)arg2; printf("%d %s %d\n", $t->pid, $t->comm, $t->flags); }"#,
        &mut c,
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "42 bash 22\n");
    // pid: 4 bytes, comm: its 16 bytes, flags: the 1 byte holding it.
    assert_eq!(c.max_read, 16);
    assert_eq!(c.reads, 3);
}

#[test]
fn curtask_is_typed() {
    let (out, errs) = run_with(
        r#"kprobe:ksys_write { printf("%s %d %s\n", curtask->comm, curtask->pid, curtask->parent->comm); }"#,
        &mut ctx("kprobe:ksys_write"),
    );
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "bash 42 init\n");
}

#[test]
fn task_list_walk_within_budget() {
    let src = r#"kprobe:ksys_write { $t = curtask; $i = 0; while ($i < 64) { if ($t->pid == 1) { break; } $t = $t->real_parent; $i++; } printf("%s %d\n", $t->comm, $i); exit(); }"#;
    let p = compile_ok(src);
    let cap = Capture::default();
    let mut rt = support::new_runtime(&p, cap.clone());
    assert_eq!(
        rt.run(p.block_of(0), &mut ctx("kprobe:ksys_write")),
        Flow::Exit
    );
    assert_eq!(cap.take(), "init 1\n");
    assert!(rt.errors().is_empty());
}

#[test]
fn cyclic_walk_stops_at_the_step_budget_and_is_counted() {
    // A two-task cycle in which no task has pid 1.
    let mut c = FakeCtx::new("kprobe:ksys_write");
    c.memory.push((0x5000, task(7, "a", 0x6000)));
    c.memory.push((0x6000, task(8, "b", 0x5000)));
    c.curtask = Some(0x5000);
    let p = compile_ok(
        r#"kprobe:ksys_write { $t = curtask; while ($t->pid != 1) { $t = $t->real_parent; } printf("found\n"); }"#,
    );
    let cap = Capture::default();
    let mut rt = support::new_runtime(&p, cap.clone());
    rt.set_step_budget(1000);
    for _ in 0..3 {
        assert_eq!(rt.run(p.block_of(0), &mut c), Flow::Continue);
    }
    assert_eq!(cap.take(), "");
    assert_eq!(
        rt.errors(),
        vec![(
            "kprobe:ksys_write".to_string(),
            "handler exceeded its step budget of 1000 operations".to_string(),
            3
        )]
    );
    // Every read was one bounded member.
    assert!(c.max_read <= 8, "{}", c.max_read);
}

#[test]
fn unreadable_memory_is_a_counted_error() {
    let mut c = FakeCtx::new("kprobe:f");
    c.args[0] = 0xdead_0000;
    let (out, errs) = run_with(
        r#"kprobe:f { printf("%d\n", ((struct task_struct *)arg0)->real_parent->pid); }"#,
        &mut c,
    );
    // As bpftrace: the failed read of real_parent gives NULL, whose ->pid
    // fails too and gives 0; the handler goes on to print it.
    assert_eq!(out, "0\n");
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.1.contains("failed to read memory at 0xdead0018") && e.2 == 1),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.1.starts_with("failed to read memory at 0x")
                && !e.1.contains("0xdead")
                && e.2 == 1),
        "{errs:?}"
    );
}

#[test]
fn type_errors() {
    let cases = [
        (
            "kprobe:f { $t = (struct task_struct *)arg0; printf(\"%d\\n\", $t.pid); }",
            "is a pointer; use '->pid'",
        ),
        (
            "kprobe:f { $t = (struct task_struct *)arg0; printf(\"%d\\n\", (*$t)->pid); }",
            "is not a pointer; use '.pid'",
        ),
        (
            "kprobe:f { $t = (struct task_struct *)arg0; printf(\"%d\\n\", $t->nope); }",
            "'struct task_struct' has no member named 'nope'",
        ),
        (
            "kprobe:f { $t = (struct task_struct *)arg0; printf(\"%d\\n\", $t->arr[4]); }",
            "index 4 is out of bounds for an array of 4 elements",
        ),
        (
            "kprobe:f { $t = (struct task_struct *)arg0; printf(\"%d\\n\", $t->pp->pid); }",
            "pointer to a pointer",
        ),
        (
            "kprobe:f { $t = (struct task_struct *)arg0; printf(\"%d\\n\", $t->pid->x); }",
            "cannot use '->x' on a value of type integer",
        ),
        (
            "kprobe:f { printf(\"%d\\n\", ((struct nosuch *)arg0)->x); }",
            "unknown type 'struct nosuch'",
        ),
        (
            "kprobe:f { printf(\"%d\\n\", ((struct task_struct)arg0)); }",
            "only pointers to structs",
        ),
        (
            "kprobe:f { printf(\"%d\\n\", offsetof(struct task_struct, pid.x)); }",
            "'int' is not a struct or union",
        ),
        (
            "kprobe:f { $t = (struct task_struct *)arg0; printf(\"%d\\n\", $t->u); }",
            "printf",
        ),
    ];
    let more = [
        // As bpftrace 0.17: an enum is an integer, not a string.
        ("kprobe:f { printf(\"%s\\n\", curtask->state); }", "string"),
        (
            "kprobe:do_sys_openat2 { print(args); }",
            "args is used with a field name",
        ),
    ];
    for (src, want) in cases.into_iter().chain(more) {
        let e = compile_err(src);
        assert!(e.contains(want), "{src}: {e}");
    }
}

#[test]
fn vmm_and_tracepoint_args() {
    let p = compile_ok(
        r#"vmm:serial_write { printf("%s %d %d\n", args.name, args.delta, args.value); } host:tracepoint:kvm:kvm_exit, host:t:kvm:kvm_entry { @[args.exit_reason] = count(); }"#,
    );
    assert_eq!(
        p.probes(),
        &[
            ProbeSpec::Vmm {
                event: "serial_write".into()
            },
            ProbeSpec::HostTracepoint {
                system: "kvm".into(),
                event: "kvm_exit".into()
            },
            ProbeSpec::HostTracepoint {
                system: "kvm".into(),
                event: "kvm_entry".into()
            },
        ]
    );
    assert_eq!(p.probes()[1].name(), "host:tracepoint:kvm:kvm_exit");
    let mut c = FakeCtx::new("vmm:serial_write");
    c.probe_args = vec![
        ("name".into(), Value::Str("ttyS0".into())),
        ("delta".into(), Value::Int(-5i64 as u64)),
        ("value".into(), Value::Int(65)),
    ];
    let cap = Capture::default();
    let mut rt = support::new_runtime(&p, cap.clone());
    rt.run(p.block_of(0), &mut c);
    assert_eq!(cap.take(), "ttyS0 -5 65\n");
    // A missing field is a counted runtime error (the default context has none).
    rt.run(
        p.block_of(1),
        &mut FakeCtx::new("host:tracepoint:kvm:kvm_exit"),
    );
    assert_eq!(rt.errors()[0].1, "no field 'exit_reason'");
    // Where the event's fields are known, another name is an error.
    let e = compile_err("host:tracepoint:kvm:kvm_pio { @[args.prot] = count(); }");
    assert!(
        e.contains(
            "error: 'host:tracepoint:kvm:kvm_pio' has no field 'prot' (fields: rw, port, size, count)\n --> t:1:33"
        ),
        "{e}"
    );
    compile_ok("host:tracepoint:kvm:kvm_pio /args.port == 0x99/ { @[args.size] = count(); }");
    // Attach points without type checking (a caller picks the types).
    assert_eq!(
        probe_lang::attach_points("kprobe:f { $x = args.y; } vmm:e, host:t:kvm:x { } nope:a { }"),
        [
            ProbeSpec::Kprobe {
                target: probe_lang::KprobeTarget::Function("f".into()),
                offset: 0
            },
            ProbeSpec::Vmm { event: "e".into() },
            ProbeSpec::HostTracepoint {
                system: "kvm".into(),
                event: "x".into()
            },
        ]
    );
    // Without a type provider, event fields are integers.
    let p = compile("vmm:e { printf(\"%d\\n\", args.x); }", "t").unwrap();
    assert_eq!(p.probes()[0].name(), "vmm:e");
    assert!(compile("vmm:e { printf(\"%s\\n\", args.x); }", "t").is_err());
    for bad in [
        "vmm:",
        "vmm:a*",
        "host:tracepoint:kvm",
        "host:tracepoint::x",
        "tracepoint:kvm:kvm_exit",
    ] {
        assert!(compile(&format!("{bad} {{ }}"), "t").is_err(), "{bad}");
    }
}

/// `p + n` on a kernel pointer moves n pointees (80-byte tasks here, 8-byte
/// pointers for `**`), as in C and bpftrace; the result keeps its type.
#[test]
fn kernel_pointer_arithmetic_counts_pointees() {
    assert_eq!(
        run(r#"kprobe:do_sys_openat2 {
            $t = (struct task_struct *)0x1000;
            $n = 2;
            printf("%x %x %x %d\n", $t + $n, $t - 1, (struct task_struct **)0x1000 + 3,
                   ($t + 1) - $t);
        }"#),
        "10a0 fb0 1018 80\n"
    );
    // The sum is still a task pointer: members resolve through it.
    compile_ok("kprobe:do_sys_openat2 { $t = (struct task_struct *)arg0; print(($t + 1)->pid); }");
}

#[test]
fn sizeof_and_offsetof_are_unsigned() {
    // Unsigned: a huge difference, not a negative one.
    assert_eq!(
        run(r#"kprobe:do_sys_openat2 { printf("%d\n", sizeof(struct task_struct) - 81 > 0); }"#),
        "1\n"
    );
}

/// Every combination of bases, member/index chains and probe types either
/// compiles and runs (against fake memory) or is a diagnostic: no panic.
#[test]
fn no_panic_on_combinations() {
    let bases = [
        "curtask",
        "args",
        "(struct task_struct *)arg0",
        "(struct task_struct **)arg0",
        "(union u *)arg2",
        "*curtask",
        "curtask->pp",
        "arg0",
        "(1, 2)",
        "\"s\"",
        "sizeof(struct task_struct)",
        "offsetof(struct task_struct, u.a)",
    ];
    let posts = [
        "",
        "->pid",
        ".pid",
        "->comm",
        "[0]",
        "[99]",
        "[arg1]",
        "->u.b",
        ".0",
        "->arr[3]",
        "->pp[0]",
        "->flags",
        "->delta",
        "->nope",
        "->comm[15]",
        ".filename",
        "->dfd",
        ".a",
    ];
    let probes = [
        "kprobe:do_sys_openat2",
        "kretprobe:f",
        "BEGIN",
        "vmm:e",
        "host:tracepoint:a:b",
        "tracepoint:syscalls:sys_enter_openat",
    ];
    let mut compiled = 0;
    for probe in probes {
        for b in bases {
            for p1 in posts {
                for p2 in posts {
                    let e = format!("{b}{p1}{p2}");
                    for body in [
                        format!("printf(\"%d\\n\", {e});"),
                        format!("print({e});"),
                        format!("$x = {e}; @m[$x] = count();"),
                    ] {
                        let src = format!("{probe} {{ {body} }}");
                        if let Ok(p) = compile_with_types(&src, "t", Some(&Fake)) {
                            compiled += 1;
                            let p = Arc::new(p);
                            let mut rt = support::new_runtime(&p, Capture::default());
                            let mut c = ctx(probe);
                            c.args = [TASK_ADDR, 3, TASK_ADDR + 64, 0, 0, 0];
                            rt.run(p.block_of(0), &mut c);
                            assert!(c.max_read <= 64, "{src}: read {} bytes", c.max_read);
                        }
                        let _ = compile(&src, "t");
                    }
                }
            }
        }
    }
    assert!(compiled > 100, "{compiled}");
}

#[test]
fn struct_values_are_not_printed_as_numbers() {
    for src in [
        "kprobe:f { print(curtask->u); }",
        "kprobe:f { @m = curtask->u; }",
        "kprobe:f { @m[curtask->u] = count(); }",
        "kprobe:f { printf(\"%d\\n\", curtask->arr); }",
    ] {
        let e = compile_err(src);
        assert!(e.contains("struct"), "{src}: {e}");
    }
    // Pointers print as addresses, as bpftrace does.
    let (out, _) = run_with("kprobe:f { print(curtask); }", &mut ctx("kprobe:f"));
    assert_eq!(out, "8192\n");
}

/// `tracepoint:syscalls:*` in the guest: fields named and typed as the
/// guest's tracefs has them, read from the `struct pt_regs` that
/// `__x64_sys_NAME` gets (arg0), `args.ret` from the return.
#[test]
fn guest_syscall_tracepoints() {
    let src = r#"tracepoint:syscalls:sys_enter_openat { printf("%s %d %d %d %d\n", str(args.filename), args.dfd, args.flags, args.mode, args.__syscall_nr); }"#;
    let mut c = ctx("tracepoint:syscalls:sys_enter_openat");
    let mut regs = vec![0u8; 168];
    for (off, v) in [
        (112, -100i64 as u64),
        (104, 0x1000),
        (96, 0o1101),
        (56, 0o644),
    ] {
        regs[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    c.memory.push((0x5000, regs));
    // The live registers are not the syscall's: only arg0 (the pt_regs) is read.
    c.args = [0x5000, 1, 2, 3, 4, 5];
    let (out, errs) = run_with(src, &mut c);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "/etc/passwd -100 577 420 257\n");
    let p = compile_ok(src);
    assert_eq!(p.probes()[0].syscall_event(), Some(("openat", false)));

    let mut c = ctx("tracepoint:syscalls:sys_exit_read");
    c.retval = -14i64 as u64;
    let (out, _) = run_with(
        r#"tracepoint:syscalls:sys_exit_read { printf("%d %d\n", args.ret, args.__syscall_nr); }"#,
        &mut c,
    );
    assert_eq!(out, "-14 0\n");

    // Errors, each at its line:column, before anything runs.
    let e = compile_err("tracepoint:syscalls:sys_exit_read { @ = args.fd; }");
    assert!(
        e.contains(
            "'tracepoint:syscalls:sys_exit_read' has no field 'fd' (fields: __syscall_nr, ret)"
        ),
        "{e}"
    );
    let e = compile_err("tracepoint:syscalls:sys_enter_read { @ = args.nope; }");
    assert!(
        e.contains("(fields: __syscall_nr, fd, buf, count)") && e.contains("t:1:42"),
        "{e}"
    );
    let e = compile_err("tracepoint:syscalls:sys_enter_nosuch { }");
    assert!(
        e.contains(
            "guest tracepoint syscalls:sys_enter_nosuch: the guest kernel has no syscall 'nosuch'"
        ) && e.contains("t:1:1"),
        "{e}"
    );
    let e = compile_err("BEGIN { }\n  tracepoint:sched:sched_switch { }");
    // These types know no guest events (the binary's find them in the image).
    assert!(e.contains("guest tracepoint sched:sched_switch needs the guest kernel's image (its jump table and BTF)") && e.contains("t:2:3"), "{e}");
    let e = compile_err("tracepoint:syscalls:sys_enter_open* { @ = args.flags; }");
    assert!(e.contains("wildcard"), "{e}");
    compile_ok("tracepoint:syscalls:sys_enter_open* { @[probe] = count(); }");
    let e = compile_err(
        "tracepoint:syscalls:sys_enter_openat, tracepoint:syscalls:sys_enter_read { @ = args.dfd; }",
    );
    assert!(e.contains("has no field 'dfd'"), "{e}");
    // One block per tracepoint, as bpftrace compiles them: a field at a
    // different place in each (filename: 1st of open, 2nd of openat) works
    // (tests/bpftrace_tools.rs runs opensnoop.bt).
    compile_ok(
        "tracepoint:syscalls:sys_enter_openat, tracepoint:syscalls:sys_enter_read { @ = args.__syscall_nr; }",
    );

    let e = compile_err("tracepoint:syscalls:sys_enter_read { @ = retval; }");
    assert!(
        e.contains("retval builtin can only be used in kretprobe"),
        "{e}"
    );
}

/// `kfunc`/`kretfunc`: `args` by the prototype, and a kretfunc's `retval`
/// typed by the return type: an `int` is the low half of rax, signed.
#[test]
fn kfunc_args_and_typed_kretfunc_retval() {
    let mut c = ctx("kretfunc:int_ret");
    c.args = [(-7i32) as u32 as u64, 0x1000, 0, 0, 0, 0];
    // `mov $-2, %eax` leaves rax zero-extended.
    c.retval = 0xffff_fffe;
    let src = r#"kretfunc:int_ret { printf("%d %d %d %s\n", retval, retval < 0, args.x, str(args->filename)); }"#;
    let (out, errs) = run_with(src, &mut c);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "-2 1 -7 /etc/passwd\n");
    // A kretprobe's retval stays the raw (unsigned) register.
    let (out, _) = run_with(
        r#"kretprobe:int_ret { printf("%d\n", retval < 0); }"#,
        &mut c,
    );
    assert_eq!(out, "0\n");
    let (out, _) = run_with(r#"kfunc:int_ret { printf("%d\n", args.x); }"#, &mut c);
    assert_eq!(out, "-7\n");
    // Pointer return: typed, so members are reachable.
    let p = compile_ok("kretfunc:do_sys_openat2 { @ = retval; }");
    assert!(p.dump().contains("retval"), "{}", p.dump());
    for (src, says) in [
        (
            "kfunc:seven { }",
            "parameter 'a6' (parameter 7) is passed on the stack",
        ),
        ("kfunc:by_value { }", "parameter 't' is a "),
        ("kretfunc:nosuch { }", "BTF has no function 'nosuch'"),
        ("kretfunc:seven { @ = retval; }", "parameter 'a6'"),
        (
            "kfunc:int_ret { @ = retval; }",
            "retval builtin can only be used in kretprobe, kretfunc and uretprobe",
        ),
        (
            "kfunc:int_ret { @ = arg0; }",
            "arg0 builtin can only be used in kprobe and uprobe blocks",
        ),
    ] {
        let e = compile_err(src);
        assert!(e.contains(says), "{src}: {e}");
    }
    // Without BTF, kfunc is an error, not an untyped probe.
    let e = compile("kfunc:int_ret { }", "t").unwrap_err().to_string();
    assert!(
        e.contains("needs the guest kernel's type information"),
        "{e}"
    );
}

/// `kfunc:`/`kretfunc:` wildcards expand to the provider's kfunc names; a
/// block reading `args` or `retval` on one is compiled once per function,
/// so each is typed by its own prototype.
#[test]
fn kfunc_wildcards_expand_and_type_args_per_function() {
    // Without args: one block on every match, `probe` naming each.
    let p = compile_ok("kfunc:*_* { @[probe] = count(); }");
    let names: Vec<String> = p.probes().iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        ["kfunc:do_sys_openat2", "kfunc:int_ret", "kfunc:int_rex"]
    );
    assert!((0..3).all(|i| p.block_of(i) == p.block_of(0)));
    let p = compile_ok("kretfunc:vmlinux:int_re? { @ = count(); }");
    let names: Vec<String> = p.probes().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["kretfunc:int_ret", "kretfunc:int_rex"]);
    // A guest prefix stays on each match.
    let p = compile_ok("vm1:kfunc:int_re* { @ = count(); }");
    assert_eq!(p.probes().len(), 2);
    assert!((0..2).all(|i| p.armed_in(i, "vm1") && !p.armed_in(i, "vm2")));

    // `args.x` is an int in int_ret and an unsigned long in int_rex: one
    // block each, so each reads its own (one block on both cannot).
    let src = r#"kfunc:int_re* { printf("%s %d\n", probe, args.x > 0); }"#;
    let p = compile_ok(src);
    assert_eq!(p.probes().len(), 2);
    assert_ne!(p.block_of(0), p.block_of(1));
    let e = compile_err(r#"kfunc:int_ret, kfunc:int_rex { printf("%d\n", args.x); }"#);
    assert!(e.contains("parameter 'x' differs"), "{e}");
    for (probe, block, want) in [
        ("kfunc:int_ret", 0, "kfunc:int_ret 0\n"),
        ("kfunc:int_rex", 1, "kfunc:int_rex 1\n"),
    ] {
        let mut c = ctx(probe);
        c.args = [(-7i32) as u32 as u64, 0x1000, 0, 0, 0, 0];
        let cap = Capture::default();
        let mut rt = support::new_runtime(&p, cap.clone());
        rt.run(p.block_of(block), &mut c);
        assert!(rt.errors().is_empty(), "{:?}", rt.errors());
        assert_eq!(cap.take(), want);
    }
    // retval typed per function too: int_ret's int is signed.
    let p = compile_ok("kretfunc:int_re* { @[probe] = sum(retval); }");
    assert_eq!(p.probes().len(), 2);
    assert_ne!(p.block_of(0), p.block_of(1));

    // A wildcard that matches nothing: dropped beside another attach point,
    // an error at its line:column alone.
    let p = compile_ok("kfunc:nosuch*, kfunc:int_ret { @ = count(); }");
    assert_eq!(p.probes().len(), 1);
    let e = compile_err("BEGIN {}\n  kretfunc:nosuch* { @ = count(); }");
    assert!(e.contains(":2:3"), "{e}");
    assert!(e.contains("no function matches 'nosuch*'"), "{e}");

    // As bpftrace 0.17: `args` on matches with different parameters is
    // refused, naming two of them.
    let e = compile_err("kfunc:*_* { @ = args.filename; }");
    assert!(
        e.contains(
            "kfunc:*_*: Probe has attach points with mixed arguments (do_sys_openat2(dfd, filename, how) and int_ret(x, filename))"
        ),
        "{e}"
    );
    assert!(e.contains(":1:1"), "{e}");
}

/// `raw_syscalls:sys_enter`/`sys_exit`: `args.id`, `args.args[N]` and
/// `args.ret` from the `struct pt_regs` the probed function's first
/// argument points to.
#[test]
fn raw_syscalls_fields_from_pt_regs() {
    let mut regs = vec![0u8; 21 * 8];
    let mut put =
        |slot: usize, v: u64| regs[slot * 8..slot * 8 + 8].copy_from_slice(&v.to_le_bytes());
    put(15, 1); // orig_ax: write
    put(14, 3); // di
    put(7, 44); // r10: the fourth argument
    put(10, (-9i64) as u64); // ax: -EBADF
    let mut c = ctx("tracepoint:raw_syscalls:sys_enter");
    c.args = [0x8000, 1, 0, 0, 0, 0];
    c.memory.push((0x8000, regs));
    let src = r#"tracepoint:raw_syscalls:sys_enter { printf("%d %d %d\n", args.id, args.args[0], args.args[3]); }"#;
    let (out, errs) = run_with(src, &mut c);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "1 3 44\n");
    let src = r#"tracepoint:raw_syscalls:sys_exit { printf("%d %d\n", args.id, args.ret); }"#;
    let (out, errs) = run_with(src, &mut c);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(out, "1 -9\n");
    let e = compile_err("tracepoint:raw_syscalls:sys_enter { @ = args.args[$x]; }");
    assert!(
        e.contains("undefined variable") || e.contains("constant index"),
        "{e}"
    );
    let e = compile_err("tracepoint:raw_syscalls:sys_enter { @ = args.args; }");
    assert!(e.contains("with a constant index"), "{e}");
    let e = compile_err("tracepoint:raw_syscalls:sys_enter { @ = args.ret; }");
    assert!(e.contains("(fields: id, args)"), "{e}");
}
