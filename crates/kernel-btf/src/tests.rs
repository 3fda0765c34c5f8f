use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use super::*;

/// Builds BTF bytes record by record (little-endian unless `big`).
#[derive(Default)]
struct Builder {
    words: Vec<u32>,
    strings: Vec<u8>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            words: Vec::new(),
            strings: vec![0],
        }
    }

    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn ty(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, st: u32, extra: &[u32]) {
        let n = self.s(name);
        self.words
            .extend_from_slice(&[n, (kflag as u32) << 31 | kind << 24 | vlen, st]);
        self.words.extend_from_slice(extra);
    }

    fn bytes(&self, big: bool) -> Vec<u8> {
        let w = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend_from_slice(&if big {
            MAGIC.to_be_bytes()
        } else {
            MAGIC.to_le_bytes()
        });
        out.extend_from_slice(&[1, 0]);
        let tlen = self.words.len() as u32 * 4;
        for v in [24, 0, tlen, tlen, self.strings.len() as u32] {
            out.extend_from_slice(&w(v));
        }
        for &v in &self.words {
            out.extend_from_slice(&w(v));
        }
        out.extend_from_slice(&self.strings);
        out
    }
}

const SIGNED: u32 = 1 << 24;
const CHAR: u32 = 2 << 24;

/// The synthetic type table used by most tests (ids in comments).
fn sample() -> Builder {
    let mut b = Builder::new();
    b.ty("int", 1, 0, false, 4, &[SIGNED | 32]); // 1
    b.ty("char", 1, 0, false, 1, &[SIGNED | CHAR | 8]); // 2
    b.ty("", 10, 0, false, 2, &[]); // 3 const char
    b.ty("", 2, 0, false, 3, &[]); // 4 const char *
    let (pid, comm, flags) = (b.s("pid"), b.s("comm"), b.s("flags"));
    // 5 struct task: pid @0, comm @4, anonymous union @16, flags:3 @bit 160
    b.ty(
        "task",
        4,
        4,
        true,
        24,
        &[pid, 1, 0, comm, 6, 32, 0, 7, 128, flags, 1, 3 << 24 | 160],
    );
    b.ty("", 3, 0, false, 0, &[2, 1, 8]); // 6 char[8]
    let (a, bb) = (b.s("a"), b.s("b"));
    b.ty("", 5, 2, false, 4, &[a, 1, 0, bb, 8, 0]); // 7 union { int a; u32_t b; }
    b.ty("u32_t", 8, 0, false, 9, &[]); // 8
    b.ty("unsigned int", 1, 0, false, 4, &[32]); // 9
    b.ty("", 2, 0, false, 5, &[]); // 10 struct task *
    let (t, buf) = (b.s("t"), b.s("buf"));
    b.ty("", 13, 3, false, 1, &[t, 10, buf, 4, 0, 0]); // 11 int (struct task *, const char *, ...)
    b.ty("do_thing", 12, 1, false, 11, &[]); // 12
    let (red, blue) = (b.s("RED"), b.s("BLUE"));
    b.ty("color", 6, 2, false, 4, &[red, 0, blue, 5]); // 13
    let x = b.s("X");
    b.ty("big", 19, 1, false, 8, &[x, 0, 0x8000_0000]); // 14 enum big { X = 1 << 63 }
    b.ty("fwdonly", 7, 0, true, 0, &[]); // 15 union fwdonly (forward)
    b.ty("", 2, 0, false, 11, &[]); // 16 function pointer
    b.ty("", 3, 0, false, 0, &[6, 1, 2]); // 17 char[2][8]
    let bf = b.s("bf");
    b.ty("legacy", 4, 1, false, 4, &[bf, 19, 0]); // 18 struct legacy { unsigned bf:3 (old style) }
    b.ty("unsigned int", 1, 0, false, 4, &[2 << 16 | 3]); // 19 3 bits at bit 2
    b.ty("loop1", 8, 0, false, 21, &[]); // 20
    b.ty("loop2", 8, 0, false, 20, &[]); // 21
    let neg = b.s("NEG");
    b.ty("sgn", 6, 1, true, 4, &[neg, (-3i32) as u32]); // 22 signed enum
    b.ty("", 9, 0, false, 4, &[]); // 23 volatile (const char *)
    b.ty("", 10, 0, false, 10, &[]); // 24 const (struct task *)
    b.ty("task", 7, 0, false, 0, &[]); // 25 struct task (forward, after the definition)
    b
}

#[test]
fn synthetic_types() {
    for big in [false, true] {
        let btf = Btf::parse(&sample().bytes(big)).unwrap();
        assert_eq!(btf.type_count(), 26);
        check_sample(&btf);
    }
}

fn check_sample(btf: &Btf) {
    let task = btf.lookup("struct task").unwrap();
    assert_eq!(task, 5, "the definition, not the forward declaration");
    assert_eq!(btf.struct_by_name("task"), Some(5));
    assert_eq!(btf.ids_by_name("task"), [5, 25]);
    assert_eq!(btf.lookup("union fwdonly"), Some(15));
    assert_eq!(
        btf.lookup("struct fwdonly"),
        None,
        "a union forward is not a struct"
    );
    assert_eq!(btf.lookup("enum color"), Some(13));
    assert_eq!(btf.lookup("enum big"), Some(14));
    assert_eq!(btf.lookup("enum fwdonly"), None);
    assert_eq!(btf.lookup("color"), None, "enums need the keyword, as in C");
    assert_eq!(btf.lookup("u32_t"), Some(8));
    assert_eq!(btf.lookup("unsigned int"), Some(9));
    assert_eq!(btf.lookup("void"), Some(0));
    assert_eq!(btf.lookup("struct nope"), None);
    assert_eq!(btf.size_of(task).unwrap(), 24);

    let comm = btf.member(task, "comm").unwrap().unwrap();
    assert_eq!(
        (comm.offset, comm.bit_offset, comm.bitfield_size),
        (4, 32, 0)
    );
    assert_eq!(btf.type_name(comm.ty), "char[8]");
    assert_eq!(
        btf.array(comm.ty).unwrap(),
        Some(ArrayInfo {
            elem: 2,
            index: 1,
            count: 8
        })
    );
    assert_eq!(btf.size_of(comm.ty).unwrap(), 8);
    // Found through the anonymous union, offset from the outer struct.
    let b = btf.member(task, "b").unwrap().unwrap();
    assert_eq!((b.offset, b.ty), (16, 8));
    assert_eq!(btf.resolve(b.ty).unwrap(), 9);
    let flags = btf.member(task, "flags").unwrap().unwrap();
    assert_eq!(
        (flags.offset, flags.bit_offset, flags.bitfield_size),
        (20, 160, 3)
    );
    assert_eq!(btf.member(task, "nope").unwrap(), None);
    assert_eq!(btf.member(task, "").unwrap(), None);
    let names: Vec<&str> = btf.members(task).unwrap().iter().map(|m| m.name).collect();
    assert_eq!(names, ["pid", "comm", "", "flags"]);
    // Through a pointer is not a struct.
    assert!(matches!(
        btf.member(10, "pid"),
        Err(Error::WrongKind {
            found: Kind::Ptr,
            ..
        })
    ));
    let legacy = btf.member(18, "bf").unwrap().unwrap();
    assert_eq!((legacy.bit_offset, legacy.bitfield_size), (2, 3));

    let int = btf.int(8).unwrap().unwrap();
    assert_eq!((int.size, int.bits, int.signed), (4, 32, false));
    let c = btf.int(3).unwrap().unwrap();
    assert!(c.signed && c.char && !c.bool);
    assert_eq!(btf.int(5).unwrap(), None);
    assert_eq!(btf.pointee(10).unwrap(), Some(5));
    assert_eq!(btf.pointee(24).unwrap(), Some(5), "through const");
    assert_eq!(btf.pointee(5).unwrap(), None);
    assert_eq!(btf.size_of(10).unwrap(), POINTER_SIZE);
    assert_eq!(btf.size_of(17).unwrap(), 16);
    assert!(matches!(btf.size_of(12), Err(Error::NoSize { .. })));
    assert!(matches!(btf.size_of(15), Err(Error::NoSize { .. })));

    assert_eq!(btf.enum_value(13, "BLUE").unwrap(), Some(5));
    assert_eq!(btf.enum_name(13, 0).unwrap(), Some("RED"));
    assert_eq!(btf.enum_name(13, 1).unwrap(), None);
    assert_eq!(
        btf.enum_value(14, "X").unwrap(),
        Some(i64::MIN),
        "bit pattern kept"
    );
    assert_eq!(btf.enum_value(22, "NEG").unwrap(), Some(-3));
    assert!(btf.enum_signed(22).unwrap());
    assert!(btf.enum_signed(9).is_err());
    assert!(matches!(btf.enumerators(5), Err(Error::WrongKind { .. })));
    assert_eq!(btf.find_enumerator("BLUE"), Some((13, 5)));
    assert_eq!(btf.find_enumerator("NEG"), Some((22, -3)));
    assert_eq!(btf.find_enumerator("X"), Some((14, i64::MIN)));
    assert_eq!(
        btf.find_enumerator("task"),
        None,
        "a type name is no enumerator"
    );
    assert_eq!(btf.find_enumerator("GREEN"), None);

    let f = btf.function("do_thing").unwrap();
    assert_eq!((f.id, f.proto, f.ret, f.variadic), (12, 11, 1, true));
    assert_eq!(f.linkage, Some(Linkage::Global));
    let params: Vec<(&str, String)> = f
        .params
        .iter()
        .map(|p| (p.name, btf.type_name(p.ty)))
        .collect();
    assert_eq!(
        params,
        [
            ("t", "struct task *".to_string()),
            ("buf", "const char *".to_string())
        ]
    );
    assert!(btf.function("nope").is_none());
    assert!(btf.function("task").is_none());
    // Function pointer type.
    assert_eq!(btf.function_by_id(16).unwrap().params.len(), 2);

    for (id, want) in [
        (0, "void"),
        (1, "int"),
        (4, "const char *"),
        (5, "struct task"),
        (7, "union (anon)"),
        (8, "u32_t"),
        (10, "struct task *"),
        (11, "int (struct task *, const char *, ...)"),
        (12, "do_thing"),
        (13, "enum color"),
        (15, "union fwdonly"),
        (16, "int (*)(struct task *, const char *, ...)"),
        (17, "char[2][8]"),
        (23, "const char * volatile"),
        (24, "struct task * const"),
        (25, "struct task"),
    ] {
        assert_eq!(btf.type_name(id), want, "type {id}");
    }

    assert_eq!(btf.resolve(20), Err(Error::Cycle(20)));
    assert_eq!(btf.size_of(21), Err(Error::Cycle(21)));
    assert_eq!(btf.type_name(20), "loop1", "typedef names stop at the name");
    assert_eq!(btf.kind(99), Err(Error::NoType(99)));
    assert_eq!(btf.name(99), Err(Error::NoType(99)));
    assert!(btf.type_name(99).contains("bad type"));
}

#[test]
fn header_errors() {
    let good = sample().bytes(false);
    assert_eq!(
        Btf::parse(&[]).unwrap_err(),
        Error::Truncated("shorter than the BTF header")
    );
    let mut bad = good.clone();
    bad[0] = 0;
    assert!(matches!(Btf::parse(&bad), Err(Error::BadMagic(_))));
    let mut bad = good.clone();
    bad[2] = 2;
    assert_eq!(Btf::parse(&bad).unwrap_err(), Error::Version(2));
    let mut bad = good.clone();
    bad[4] = 8; // hdr_len 8
    assert!(matches!(Btf::parse(&bad), Err(Error::Header(_))));
    let mut bad = good.clone();
    bad[20..24].copy_from_slice(&u32::MAX.to_le_bytes()); // str_len
    assert!(matches!(Btf::parse(&bad), Err(Error::Truncated(_))));
    // Unknown kind.
    let mut b = Builder::new();
    b.ty("x", 31, 0, false, 0, &[]);
    assert!(matches!(
        Btf::parse(&b.bytes(false)),
        Err(Error::BadType { id: 1, .. })
    ));
    // Dangling type reference.
    let mut b = Builder::new();
    b.ty("", 2, 0, false, 7, &[]);
    assert!(matches!(
        Btf::parse(&b.bytes(false)),
        Err(Error::BadType { id: 1, .. })
    ));
    // FUNC pointing at something else than a FUNC_PROTO.
    let mut b = Builder::new();
    b.ty("int", 1, 0, false, 4, &[32]);
    b.ty("f", 12, 0, false, 1, &[]);
    assert!(matches!(
        Btf::parse(&b.bytes(false)),
        Err(Error::BadType { id: 2, .. })
    ));
    // Name past the string section.
    let mut b = Builder::new();
    b.ty("int", 1, 0, false, 4, &[32]);
    b.words[0] = 1000;
    assert!(matches!(
        Btf::parse(&b.bytes(false)),
        Err(Error::BadType { id: 1, .. })
    ));
    // Empty type section is fine: only void.
    let btf = Btf::parse(&Builder::new().bytes(false)).unwrap();
    assert_eq!(btf.type_count(), 1);
    assert_eq!(btf.type_name(0), "void");
}

/// Runs every accessor over every id; must not panic whatever the data.

#[test]
fn corrupt_input_never_panics() {
    let good = sample().bytes(false);
    for cut in 0..good.len() {
        if let Ok(btf) = Btf::parse(&good[..cut]) {
            crate::fuzzing::exercise(&btf);
        }
    }
    // Deterministic pseudo-random mutations: 1-4 bytes set to random, boundary or
    // small-id values.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut parsed = 0;
    for _ in 0..20_000 {
        let mut bad = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % bad.len() as u64) as usize;
            bad[at] = match next() % 4 {
                0 => 0,
                1 => 0xff,
                2 => (next() % 32) as u8,
                _ => next() as u8,
            };
        }
        if let Ok(btf) = Btf::parse(&bad) {
            parsed += 1;
            crate::fuzzing::exercise(&btf);
        }
    }
    // Most single-byte changes inside names or offsets still parse: the accessors did run.
    assert!(parsed > 1000, "only {parsed} mutants parsed");
}

// ---- Against the real Debian kernel image ----

fn real_image() -> Option<PathBuf> {
    match std::env::var_os("VMPROBE_TEST_VMLINUZ") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("VMPROBE_TEST_VMLINUZ must be set in CI")
        }
        None => {
            eprintln!("note: VMPROBE_TEST_VMLINUZ unset; skipping real-image test");
            None
        }
    }
}

/// The image's `.BTF`, decompressed once per test binary (slow in debug builds).
fn real_btf_bytes() -> Option<&'static [u8]> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let img = real_image()?;
    Some(BYTES.get_or_init(|| {
        let secs = kernel_image::KernelSections::load(&img, &[".BTF"], None).unwrap();
        secs.get(".BTF").expect("image has .BTF").data.clone()
    }))
}

#[test]
fn real_image_types() {
    let Some(bytes) = real_btf_bytes() else {
        return;
    };
    let t0 = Instant::now();
    let btf = Btf::parse(bytes).unwrap();
    eprintln!(
        "parsed {} bytes of BTF, {} types, in {:?}",
        bytes.len(),
        btf.type_count(),
        t0.elapsed()
    );
    assert!(btf.type_count() > 100_000);

    // Ids and offsets change with every Debian kernel build; real_image_matches_bpftool
    // checks them against bpftool's dump of the same bytes. Here: what they mean.
    let task = btf.lookup("struct task_struct").unwrap();
    assert!(btf.size_of(task).unwrap() > 4096);
    let comm = btf.member(task, "comm").unwrap().unwrap();
    assert_eq!(comm.bit_offset, comm.offset * 8);
    assert_eq!(btf.type_name(comm.ty), "char[16]");
    assert_eq!(btf.array(comm.ty).unwrap().unwrap().count, 16);
    let pid = btf.member(task, "pid").unwrap().unwrap();
    assert!(pid.offset < comm.offset);
    assert_eq!(btf.type_name(pid.ty), "pid_t");
    assert_eq!(btf.size_of(pid.ty).unwrap(), 4);
    assert!(btf.int(pid.ty).unwrap().unwrap().signed);
    let parent = btf.member(task, "real_parent").unwrap().unwrap();
    assert_eq!(btf.type_name(parent.ty), "struct task_struct *");
    assert_eq!(btf.pointee(parent.ty).unwrap(), Some(task));

    let file = btf.lookup("struct file").unwrap();
    let f_path = btf.member(file, "f_path").unwrap().unwrap();
    assert_eq!(btf.type_name(f_path.ty), "struct path");
    assert_eq!(btf.size_of(f_path.ty).unwrap(), 16);

    let f = btf.function("ksys_write").unwrap();
    assert_eq!(btf.find("ksys_write", Kind::Func), Some(f.id));
    assert_ne!(f.proto, f.id);
    let params: Vec<(&str, String)> = f
        .params
        .iter()
        .map(|p| (p.name, btf.type_name(p.ty)))
        .collect();
    assert_eq!(
        params,
        [
            ("fd", "unsigned int".to_string()),
            ("buf", "const char *".to_string()),
            ("count", "size_t".to_string())
        ]
    );
    assert_eq!(btf.type_name(f.ret), "ssize_t");
    assert!(!f.variadic);
    let pt = btf.lookup("enum pid_type").unwrap();
    assert_eq!(btf.enum_value(pt, "PIDTYPE_PID").unwrap(), Some(0));
    assert_eq!(btf.enum_name(pt, 1).unwrap(), Some("PIDTYPE_TGID"));
    // An enum with a negative value is signed (INT_MIN first); one
    // without is not.
    assert!(!btf.enum_signed(pt).unwrap());
    let prio = btf.lookup("enum nf_ip_hook_priorities").unwrap();
    assert!(btf.enum_signed(prio).unwrap());
    assert_eq!(
        btf.enum_value(prio, "NF_IP_PRI_FIRST").unwrap(),
        Some(i64::from(i32::MIN))
    );
    // The TCP states are an anonymous enum (include/net/tcp_states.h).
    for (name, value) in [
        ("TCP_ESTABLISHED", 1),
        ("TCP_SYN_SENT", 2),
        ("TCP_FIN_WAIT1", 4),
        ("TCP_CLOSE", 7),
        ("TCP_LAST_ACK", 9),
        ("TCP_NEW_SYN_RECV", 12),
    ] {
        let (id, v) = btf.find_enumerator(name).unwrap();
        assert_eq!((btf.name(id).unwrap(), v), ("", value), "{name}");
    }

    // Type spellings as `bpftool btf dump ... format c` declares these members.
    let fops = btf.lookup("struct file_operations").unwrap();
    for (member, want) in [
        ("llseek", "loff_t (*)(struct file *, loff_t, int)"),
        (
            "read",
            "ssize_t (*)(struct file *, char *, size_t, loff_t *)",
        ),
        (
            "write",
            "ssize_t (*)(struct file *, const char *, size_t, loff_t *)",
        ),
    ] {
        let m = btf.member(fops, member).unwrap().unwrap();
        assert_eq!(btf.type_name(m.ty), want);
    }
    for (member, want) in [
        ("stack", "void *"),
        ("sched_class", "const struct sched_class *"),
        ("cpus_ptr", "const cpumask_t *"),
        ("user_cpus_ptr", "cpumask_t *"),
    ] {
        let m = btf.member(task, member).unwrap().unwrap();
        assert_eq!(btf.type_name(m.ty), want);
    }

    // Every accessor on every type: no panics, and no spurious cycles in real data.
    crate::fuzzing::exercise(&btf);
    for id in 0..btf.type_count() as TypeId {
        assert!(!matches!(btf.resolve(id), Err(Error::Cycle(_))), "[{id}]");
        assert!(
            !btf.type_name(id).contains('<'),
            "[{id}] {}",
            btf.type_name(id)
        );
    }
}

/// Every struct/union member, enumerator and function prototype against bpftool's own dump
/// of the same bytes.
#[test]
fn real_image_matches_bpftool() {
    let Some(bytes) = real_btf_bytes() else {
        return;
    };
    let dump = match bpftool_raw(bytes) {
        Some(d) => d,
        None if std::env::var_os("CI").is_some() => panic!("bpftool must be installed in CI"),
        None => {
            eprintln!("note: bpftool not found; skipping");
            return;
        }
    };
    // The comparison covers member lines, not just record lines; names find the ids,
    // which change with every kernel build.
    let btf = Btf::parse(bytes).unwrap();
    let task = btf.lookup("struct task_struct").unwrap();
    assert!(dump[&task].starts_with("STRUCT 'task_struct' "));
    let comm = btf.member(task, "comm").unwrap().unwrap();
    let line = format!(
        "\n'comm' type_id={} bits_offset={}\n",
        comm.ty, comm.bit_offset
    );
    assert!(dump[&task].contains(&line), "{line}");
    let proto = btf.function("ksys_write").unwrap().proto;
    let size_t = btf.lookup("size_t").unwrap();
    assert!(dump[&proto].ends_with(&format!("\n'count' type_id={size_t}")));
    compare_with_bpftool(bytes, dump);
}

/// The running host kernel's BTF, when it has one: a newer kernel (with kinds and flags
/// 6.1 does not use) against bpftool too.
#[test]
fn host_btf_matches_bpftool() {
    let Ok(bytes) = std::fs::read("/sys/kernel/btf/vmlinux") else {
        eprintln!("note: no /sys/kernel/btf/vmlinux; skipping");
        return;
    };
    let Some(dump) = bpftool_raw(&bytes) else {
        eprintln!("note: bpftool not found; skipping");
        return;
    };
    compare_with_bpftool(&bytes, dump);
    crate::fuzzing::exercise(&Btf::parse(&bytes).unwrap());
}

fn compare_with_bpftool(bytes: &[u8], theirs: HashMap<TypeId, String>) {
    let btf = Btf::parse(bytes).unwrap();
    let mine = render_raw(&btf);
    assert_eq!(theirs.len(), btf.type_count() - 1, "type count");
    let mut differ = Vec::new();
    for (id, text) in &mine {
        if theirs.get(id) != Some(text) {
            differ.push(*id);
        }
    }
    differ.sort();
    if let Some(&id) = differ.first() {
        panic!(
            "{} types differ; first [{id}]:\nmine:\n{}\nbpftool:\n{}",
            differ.len(),
            mine[&id],
            theirs.get(&id).map_or("(none)", String::as_str)
        );
    }
}

fn bpftool_raw(bytes: &[u8]) -> Option<HashMap<TypeId, String>> {
    // Unique per call: tests run in parallel threads of one process.
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("kernel-btf-test-{}-{seq}.btf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    // Debian installs it in /usr/sbin, which a non-root PATH may lack.
    let out = ["bpftool", "/usr/sbin/bpftool"].iter().find_map(|tool| {
        std::process::Command::new(tool)
            .args(["btf", "dump", "file"])
            .arg(&path)
            .args(["format", "raw"])
            .output()
            .ok()
            .filter(|o| o.status.success())
    });
    let _ = std::fs::remove_file(&path);
    let out = out?;
    let text = String::from_utf8(out.stdout).unwrap();
    // Keep the record line's kind and name plus the lines we render, per type.
    let mut map = HashMap::new();
    let mut cur: Option<(TypeId, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('[') {
            if let Some((id, s)) = cur.take() {
                map.insert(id, s);
            }
            let (id, tail) = rest.split_once("] ").unwrap();
            cur = Some((id.parse().unwrap(), normalize_head(tail)));
        } else if let Some((_, s)) = cur.as_mut() {
            s.push('\n');
            s.push_str(line.trim_start());
        }
    }
    if let Some((id, s)) = cur {
        map.insert(id, s);
    }
    Some(map)
}

/// bpftool's record line (`KIND 'name' fields...`), keeping only what [`render_raw`] renders.
fn normalize_head(tail: &str) -> String {
    let (kind, rest) = tail.split_once(' ').unwrap();
    let q1 = rest.find('\'').unwrap();
    let q2 = q1 + 1 + rest[q1 + 1..].find('\'').unwrap();
    let (name, rest) = (&rest[q1 + 1..q2], &rest[q2 + 1..]);
    let keep: Vec<&str> = rest
        .split(' ')
        .filter(|f| {
            [
                "size=",
                "type_id=",
                "ret_type_id=",
                "vlen=",
                "nr_elems=",
                "index_type_id=",
                "bits_offset=",
                "nr_bits=",
                "encoding=",
                "component_idx=",
            ]
            .iter()
            .any(|p| f.starts_with(p))
        })
        .map(|f| f.trim_end_matches(','))
        .collect();
    format!("{kind} '{name}' {}", keep.join(" "))
}

/// Our view in bpftool's raw syntax, for the fields [`normalize_head`] keeps and every
/// member/enumerator/parameter line (DATASEC entries are skipped: bpftool annotates them).
fn render_raw(btf: &Btf) -> HashMap<TypeId, String> {
    let mut map = HashMap::new();
    for id in 1..btf.type_count() as TypeId {
        let h = btf.hdr(id).unwrap();
        let name = match btf.name(id).unwrap() {
            "" => "(anon)",
            n => n,
        };
        let mut fields = Vec::new();
        let mut lines = Vec::new();
        use Kind::*;
        match h.kind {
            Int => {
                let i = btf.int(id).unwrap().unwrap();
                let enc = match btf.extra(&h, 0) >> 24 {
                    0 => "(none)",
                    1 => "SIGNED",
                    2 => "CHAR",
                    4 => "BOOL",
                    _ => "UNKN",
                };
                fields.push(format!(
                    "size={} bits_offset={} nr_bits={} encoding={enc}",
                    i.size, i.bit_offset, i.bits
                ));
            }
            Float => fields.push(format!("size={}", h.st)),
            Ptr | Typedef | Volatile | Const | Restrict | TypeTag | Func | Var => {
                fields.push(format!("type_id={}", h.st))
            }
            DeclTag => {
                fields.push(format!("type_id={}", h.st));
                fields.push(format!("component_idx={}", btf.extra(&h, 0) as i32));
            }
            Array => {
                let a = btf.array(id).unwrap().unwrap();
                fields.push(format!("type_id={}", a.elem));
                fields.push(format!("index_type_id={}", a.index));
                fields.push(format!("nr_elems={}", a.count));
            }
            Struct | Union => {
                fields.push(format!("size={}", h.st));
                fields.push(format!("vlen={}", h.vlen));
                for m in btf.members(id).unwrap() {
                    let n = if m.name.is_empty() { "(anon)" } else { m.name };
                    let mut l = format!("'{n}' type_id={} bits_offset={}", m.ty, m.bit_offset);
                    if m.bitfield_size != 0 {
                        l += &format!(" bitfield_size={}", m.bitfield_size);
                    }
                    lines.push(l);
                }
            }
            Enum | Enum64 => {
                let enc = if h.kind_flag { "SIGNED" } else { "UNSIGNED" };
                fields.push(format!("encoding={enc}"));
                fields.push(format!("size={}", h.st));
                fields.push(format!("vlen={}", h.vlen));
                let suffix = match (h.kind, h.kind_flag) {
                    (Enum64, true) => "LL",
                    (Enum64, false) => "ULL",
                    _ => "",
                };
                for e in btf.enumerators(id).unwrap() {
                    let v = if h.kind_flag {
                        e.value.to_string()
                    } else if h.kind == Enum {
                        (e.value as u32).to_string()
                    } else {
                        (e.value as u64).to_string()
                    };
                    lines.push(format!("'{}' val={v}{suffix}", e.name));
                }
            }
            FuncProto => {
                fields.push(format!("ret_type_id={}", h.st));
                fields.push(format!("vlen={}", h.vlen));
                let f = btf.function_by_id(id).unwrap();
                for p in &f.params {
                    let n = if p.name.is_empty() { "(anon)" } else { p.name };
                    lines.push(format!("'{n}' type_id={}", p.ty));
                }
                if f.variadic {
                    lines.push("'(anon)' type_id=0".into());
                }
            }
            Datasec => {
                fields.push(format!("size={}", h.st));
                fields.push(format!("vlen={}", h.vlen));
                for i in 0..h.vlen {
                    let w = |k| btf.extra(&h, 3 * i + k);
                    lines.push(format!(
                        "type_id={} offset={} size={} ({} '{}')",
                        w(0),
                        w(1),
                        w(2),
                        btf.kind(w(0)).unwrap(),
                        btf.name(w(0)).unwrap()
                    ));
                }
            }
            Fwd | Void => {}
        }
        let mut s = format!("{} '{name}' {}", h.kind, fields.join(" "));
        for l in lines {
            s.push('\n');
            s.push_str(&l);
        }
        map.insert(id, s);
    }
    map
}

/// Found by the `btf` fuzz target: a prototype whose parameters point back
/// at it made `type_name` spell out params^depth types (out of memory);
/// a name now stops at MAX_NAME_PARTS parts.
#[test]
fn self_referencing_prototypes_have_bounded_names() {
    let bytes = [
        0x9f, 0xeb, 0x01, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00,
        0x00, 0x28, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x07, 0x00, 0x00, 0x00, 0x0a, 0x05, 0x00, 0x00, 0x00, 0x02, 0x00, 0xff, 0xed, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x52, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00,
        0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let btf = Btf::parse(&bytes).unwrap();
    for id in 0..btf.type_count() as TypeId + 2 {
        let name = btf.type_name(id);
        assert!(name.len() < 1 << 20, "[{id}] {} bytes", name.len());
    }
}
