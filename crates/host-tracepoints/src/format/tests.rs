use super::*;

/// Format files copied from this host's tracefs (kernel 6.18).
fn fixture(name: &str) -> &'static str {
    match name {
        "sched_switch" => include_str!("../../tests/formats/sched_sched_switch.format"),
        "sched_process_exec" => include_str!("../../tests/formats/sched_sched_process_exec.format"),
        "sys_enter_write" => include_str!("../../tests/formats/syscalls_sys_enter_write.format"),
        "sys_exit_write" => include_str!("../../tests/formats/syscalls_sys_exit_write.format"),
        "sys_enter_getppid" => {
            include_str!("../../tests/formats/syscalls_sys_enter_getppid.format")
        }
        "dma_map_sg" => include_str!("../../tests/formats/dma_dma_map_sg.format"),
        "ipi_send_cpumask" => include_str!("../../tests/formats/ipi_ipi_send_cpumask.format"),
        "kvm_pio" => include_str!("../../tests/formats/kvm_kvm_pio.format"),
        "kvm_emulate_insn" => include_str!("../../tests/formats/kvm_kvm_emulate_insn.format"),
        "kvm_userspace_exit" => include_str!("../../tests/formats/kvm_kvm_userspace_exit.format"),
        "kvm_exit" => include_str!("../../tests/formats/kvm_kvm_exit.format"),
        "print" => include_str!("../../tests/formats/ftrace_print.format"),
        "raw_sys_enter" => include_str!("../../tests/formats/raw_syscalls_sys_enter.format"),
        _ => unreachable!("no fixture {name}"),
    }
}

const ALL: &[&str] = &[
    "sched_switch",
    "sched_process_exec",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_getppid",
    "dma_map_sg",
    "ipi_send_cpumask",
    "kvm_pio",
    "kvm_emulate_insn",
    "kvm_userspace_exit",
    "kvm_exit",
    "print",
    "raw_sys_enter",
];

fn parse(name: &str) -> EventFormat {
    EventFormat::parse(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_fixture_parses_with_four_common_fields() {
    for name in ALL {
        let f = parse(name);
        let common: Vec<_> = f
            .fields
            .iter()
            .filter(|f| f.common)
            .map(|f| &f.name[..])
            .collect();
        assert_eq!(
            common,
            [
                "common_type",
                "common_flags",
                "common_preempt_count",
                "common_pid"
            ],
            "{name}"
        );
        assert!(f.event_fields().all(|g| !g.name.starts_with("common_")));
    }
}

#[test]
fn sched_switch_layout() {
    let f = parse("sched_switch");
    assert_eq!((f.name.as_str(), f.id), ("sched_switch", 372));
    let names: Vec<_> = f.event_fields().map(|g| &*g.name).collect();
    assert_eq!(
        names,
        [
            "prev_comm",
            "prev_pid",
            "prev_prio",
            "prev_state",
            "next_comm",
            "next_pid",
            "next_prio"
        ]
    );
    let comm = f.field("prev_comm").unwrap();
    assert_eq!((comm.offset, comm.size), (8, 16));
    assert_eq!(comm.layout, Layout::Array { len: 16 });
    assert_eq!(comm.element, Element::Char);
    assert_eq!(comm.type_name, "char");
    let pid = f.field("prev_pid").unwrap();
    assert_eq!((pid.offset, pid.size, pid.signed), (24, 4, true));
    assert_eq!(pid.type_name, "pid_t");
    assert_eq!(
        pid.element,
        Element::Int {
            size: 4,
            signed: true
        }
    );
    let state = f.field("prev_state").unwrap();
    assert_eq!((state.offset, state.size, state.signed), (32, 8, true));
    let ct = f.field("common_type").unwrap();
    assert!(ct.common);
    assert_eq!(ct.type_name, "unsigned short");
    assert_eq!(
        ct.element,
        Element::Int {
            size: 2,
            signed: false
        }
    );
}

#[test]
fn sys_enter_write_layout() {
    let f = parse("sys_enter_write");
    let buf = f.field("buf").unwrap();
    assert_eq!(buf.type_name, "const char *");
    assert_eq!((buf.offset, buf.size, buf.layout), (24, 8, Layout::Scalar));
    let fd = f.field("fd").unwrap();
    // `unsigned int fd` stored in 8 bytes: the size, not the type, decides.
    assert_eq!(
        fd.element,
        Element::Int {
            size: 8,
            signed: false
        }
    );
    assert_eq!(f.field("count").unwrap().type_name, "size_t");
    assert_eq!(f.field("__syscall_nr").unwrap().offset, 8);
    // getppid has no arguments.
    assert_eq!(parse("sys_enter_getppid").event_fields().count(), 1);
}

#[test]
fn dynamic_and_special_layouts() {
    let exec = parse("sched_process_exec");
    let fname = exec.field("filename").unwrap();
    assert_eq!(fname.layout, Layout::Dynamic { relative: false });
    assert_eq!((fname.element, fname.size), (Element::Char, 4));
    assert_eq!(fname.type_name, "char");

    let dma = parse("dma_map_sg");
    let phys = dma.field("phys_addrs").unwrap();
    assert_eq!(
        phys.element,
        Element::Int {
            size: 8,
            signed: false
        }
    );
    let lengths = dma.field("lengths").unwrap();
    assert_eq!(lengths.type_name, "unsigned int");
    assert_eq!(
        lengths.element,
        Element::Int {
            size: 4,
            signed: false
        }
    );
    assert_eq!(dma.field("device").unwrap().element, Element::Char);

    let ipi = parse("ipi_send_cpumask");
    let mask = ipi.field("cpumask").unwrap();
    assert_eq!(
        (mask.layout, mask.element),
        (Layout::Dynamic { relative: false }, Element::Opaque)
    );

    let insn = parse("kvm_emulate_insn");
    let i = insn.field("insn").unwrap();
    assert_eq!(
        (i.layout, i.element),
        (
            Layout::Array { len: 15 },
            Element::Int {
                size: 1,
                signed: false
            }
        )
    );

    let print = parse("print");
    let b = print.field("buf").unwrap();
    assert_eq!(
        (b.layout, b.element, b.size),
        (Layout::Trailing, Element::Char, 0)
    );

    let raw = parse("raw_sys_enter");
    let args = raw.field("args").unwrap();
    assert_eq!(
        (args.layout, args.element),
        (
            Layout::Array { len: 6 },
            Element::Int {
                size: 8,
                signed: false
            }
        )
    );

    let exit = parse("kvm_exit");
    assert_eq!(exit.field("vcpu_id").unwrap().offset, 56);
    assert_eq!(
        exit.field("guest_rip").unwrap().element,
        Element::Int {
            size: 8,
            signed: false
        }
    );
}

/// Builds a record: `size` zero bytes with the given patches.
fn record(size: usize, patches: &[(usize, &[u8])]) -> Vec<u8> {
    let mut r = vec![0u8; size];
    for (off, b) in patches {
        r[*off..*off + b.len()].copy_from_slice(b);
    }
    r
}

#[test]
fn decode_sched_switch() {
    let f = parse("sched_switch");
    let raw = record(
        64,
        &[
            (0, &372u16.to_ne_bytes()),
            (4, &1234i32.to_ne_bytes()),
            (8, b"swapper/0\0garbage"[..16].as_ref()),
            (24, &0i32.to_ne_bytes()),
            (28, &120i32.to_ne_bytes()),
            (32, &(-1i64).to_ne_bytes()),
            (40, b"0123456789abcdef"), // 16 chars, no NUL: the whole array
            (56, &(-5i32).to_ne_bytes()),
            (60, &99i32.to_ne_bytes()),
        ],
    );
    let v = f.decode(&raw).unwrap();
    let get = |n: &str| {
        v.iter()
            .find(|(k, _)| &**k == n)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("prev_comm"), FieldValue::Str("swapper/0".into()));
    assert_eq!(get("prev_prio"), FieldValue::I64(120));
    assert_eq!(get("prev_state"), FieldValue::I64(-1));
    assert_eq!(get("next_comm"), FieldValue::Str("0123456789abcdef".into()));
    assert_eq!(get("next_pid"), FieldValue::I64(-5));
    assert_eq!(get("next_prio").as_u64(), Some(99));
    assert_eq!(v.len(), 7);
    // Too short: an error naming the field, not a panic.
    let e = f.decode(&raw[..50]).unwrap_err();
    assert_eq!(e.field, "next_comm");
}

#[test]
fn decode_data_loc() {
    let exec = parse("sched_process_exec");
    // filename at offset 20, 8 bytes including the NUL.
    let loc = (8u32 << 16) | 20;
    let raw = record(
        28,
        &[
            (8, &loc.to_ne_bytes()),
            (12, &7i32.to_ne_bytes()),
            (20, b"/bin/ls\0"),
        ],
    );
    let v = exec.decode(&raw).unwrap();
    assert_eq!(v[0], ("filename".into(), FieldValue::Str("/bin/ls".into())));
    assert_eq!(v[1], ("pid".into(), FieldValue::I64(7)));
    // A location past the end is an error.
    let bad = (8u32 << 16) | 24;
    let raw2 = record(28, &[(8, &bad.to_ne_bytes())]);
    assert!(exec.decode(&raw2).is_err());

    let dma = parse("dma_map_sg");
    let phys = dma.field("phys_addrs").unwrap();
    let lengths = dma.field("lengths").unwrap();
    let mut raw = record(48, &[]);
    raw.extend_from_slice(&0x1000u64.to_ne_bytes());
    raw.extend_from_slice(&0x2000u64.to_ne_bytes());
    raw.extend_from_slice(&3u32.to_ne_bytes());
    raw[24..28].copy_from_slice(&((16u32 << 16) | 48).to_ne_bytes());
    raw[32..36].copy_from_slice(&((4u32 << 16) | 64).to_ne_bytes());
    assert_eq!(
        phys.decode(&raw).unwrap(),
        FieldValue::Array(vec![FieldValue::U64(0x1000), FieldValue::U64(0x2000)])
    );
    assert_eq!(
        lengths.decode(&raw).unwrap(),
        FieldValue::Array(vec![FieldValue::U64(3)])
    );
    // Empty device string (length 0).
    assert_eq!(
        dma.field("device").unwrap().decode(&raw).unwrap(),
        FieldValue::Str(String::new())
    );
}

#[test]
fn decode_rel_loc_and_trailing() {
    let text = "name: x\nID: 9\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\
                \tfield:__rel_loc char[] s;\toffset:8;\tsize:4;\tsigned:0;\n\
                \tfield:char tail[];\toffset:12;\tsize:0;\tsigned:0;\n\nprint fmt: \"\"\n";
    let f = EventFormat::parse(text).unwrap();
    // Relative to the end of the u32 at 8..12: data at 12 + 4 = 16.
    let loc = (3u32 << 16) | 4;
    let raw = record(19, &[(8, &loc.to_ne_bytes()), (12, b"abcdhi\0")]);
    let v = f.decode(&raw).unwrap();
    assert_eq!(v[0].1, FieldValue::Str("hi".into()));
    assert_eq!(v[1].1, FieldValue::Str("abcdhi".into()));
}

#[test]
fn decode_insn_bytes_and_args() {
    let f = parse("kvm_emulate_insn");
    let raw = record(
        40,
        &[
            (8, &0xfff0u64.to_ne_bytes()),
            (20, &[2]),
            (21, &[0xf4, 0x90]),
        ],
    );
    let v = f.decode(&raw).unwrap();
    assert_eq!(v[0].1, FieldValue::U64(0xfff0));
    let mut want = vec![0u8; 15];
    want[..2].copy_from_slice(&[0xf4, 0x90]);
    assert_eq!(v[3].1, FieldValue::Bytes(want));
    assert_eq!(v[3].1.to_string().split(' ').next(), Some("f4"));

    let f = parse("raw_sys_enter");
    let mut patches: Vec<(usize, Vec<u8>)> = vec![(8, 1i64.to_ne_bytes().to_vec())];
    for i in 0..6u64 {
        patches.push((16 + 8 * i as usize, (i * 10).to_ne_bytes().to_vec()));
    }
    let p: Vec<(usize, &[u8])> = patches.iter().map(|(o, b)| (*o, &b[..])).collect();
    let v = f.decode(&record(64, &p)).unwrap();
    assert_eq!(v[0].1, FieldValue::I64(1));
    assert_eq!(
        v[1].1,
        FieldValue::Array((0..6).map(|i| FieldValue::U64(i * 10)).collect())
    );
}

#[test]
fn errors_are_reported_with_lines() {
    let e = EventFormat::parse("name: x\nID: nope\n").unwrap_err();
    assert_eq!(e.line, 2);
    assert!(EventFormat::parse("").is_err());
    assert!(
        EventFormat::parse("name: x\nID: 1\n").is_err(),
        "no format section"
    );
    let e = EventFormat::parse("name: x\nID: 1\nformat:\n\tfield:int a;\tsize:4;\n").unwrap_err();
    assert!(e.message.contains("offset"), "{e}");
    let e = EventFormat::parse(
        "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\n\tfield:int a;\toffset:4;\tsize:4;\n",
    )
    .unwrap_err();
    assert!(e.message.contains("duplicate"), "{e}");
    assert!(
        EventFormat::parse(
            "name: x\nID: 1\nformat:\n\tfield:__data_loc char[] s;\toffset:0;\tsize:8;\n"
        )
        .is_err()
    );
    assert!(
        EventFormat::parse("name: x\nID: 1\nformat:\n\tfield:int a[;\toffset:0;\tsize:4;\n")
            .is_err()
    );
    assert!(
        EventFormat::parse("name: x\nID: 1\nformat:\n\tfield: a;\toffset:0;\tsize:4;\n").is_err()
    );
    // Older kernels: no `signed:`; guessed from the type.
    let f = EventFormat::parse("name: x\nID: 1\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\n\tfield:u32 b;\toffset:4;\tsize:4;\n").unwrap();
    assert!(f.fields[0].signed && !f.fields[1].signed);
}

/// xorshift64*: deterministic junk without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn junk_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let alphabet =
        b"field:offsetsizesigned;:[]_ \t\n0123456789-*__data_loc__rel_loc charnameID format:";
    for _ in 0..3000 {
        // Mutated real files: the likeliest junk.
        let base = fixture(ALL[rng.below(ALL.len())]).as_bytes().to_vec();
        let mut b = base.clone();
        for _ in 0..1 + rng.below(8) {
            match rng.below(4) {
                0 if !b.is_empty() => {
                    let i = rng.below(b.len());
                    b[i] = alphabet[rng.below(alphabet.len())];
                }
                1 if !b.is_empty() => {
                    let i = rng.below(b.len());
                    let n = rng.below(20).min(b.len() - i);
                    b.drain(i..i + n);
                }
                2 => {
                    let i = rng.below(b.len() + 1);
                    b.insert(i, alphabet[rng.below(alphabet.len())]);
                }
                _ => {
                    let i = rng.below(b.len() + 1);
                    b.truncate(i);
                }
            }
        }
        let text = String::from_utf8_lossy(&b);
        if let Ok(f) = EventFormat::parse(&text) {
            // And junk records against whatever parsed.
            for _ in 0..4 {
                let n = rng.below(96);
                let raw: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                let _ = f.decode(&raw);
            }
        }
        // Pure random text too.
        let n = rng.below(200);
        let junk: Vec<u8> = (0..n)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let _ = EventFormat::parse(&String::from_utf8_lossy(&junk));
    }
    // Extreme numbers.
    for s in [
        "offset:99999999999999999999",
        "offset:18446744073709551615",
        "size:65537",
    ] {
        let t = format!("name: x\nID: 1\nformat:\n\tfield:int a;\t{s};\tsize:4;\toffset:0;\n");
        let _ = EventFormat::parse(&t);
    }
}

#[test]
fn decode_random_records_for_real_formats() {
    let mut rng = Rng(42);
    for name in ALL {
        let f = parse(name);
        for _ in 0..500 {
            let n = rng.below(128);
            let raw: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let _ = f.decode(&raw);
        }
    }
}
