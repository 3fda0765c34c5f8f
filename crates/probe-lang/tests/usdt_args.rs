//! usdt blocks: `argN` rewritten from the note's operands at bind time and
//! read through a fake context (registers, stack memory, sign and size),
//! one operand set per location chosen by the pc's page offset.

mod support;

use probe_lang::{UprobeTarget, UserAddr, Value, compile};
use std::sync::Arc;
use support::{Capture, FakeCtx};

fn at(vaddr: u64, args: &str) -> UserAddr {
    UserAddr {
        vaddr,
        file_offset: vaddr - 0x400000,
        func: "main".into(),
        relocatable: false,
        file: "/bin/x".into(),
        usdt_args: Some(args.into()),
    }
}

fn bound(
    src: &str,
    locations: Vec<UserAddr>,
) -> Result<probe_lang::Program, probe_lang::Diagnostics> {
    let mut p = compile(src, "t").unwrap_or_else(|d| panic!("{d}"));
    p.bind_uprobes(|_, target| {
        assert!(matches!(target, UprobeTarget::Usdt { .. }));
        Ok(locations.clone())
    })?;
    Ok(p)
}

#[test]
fn args_read_registers_memory_and_immediates_with_their_size_and_sign() {
    let p = bound(
        "usdt:/bin/x:p:n { @[arg0, arg1, arg2, arg3] = count(); }",
        vec![at(0x401545, "-8@%rbx -4@-56(%rbp) 4@$5 -4@%r15d")],
    )
    .unwrap();
    let p = Arc::new(p);
    let mut rt = support::new_runtime(&p, Capture::default());
    let mut ctx = FakeCtx::new("usdt:/bin/x:p:n");
    ctx.args = [111; 6]; // the ABI's registers: never what argN reads here
    ctx.registers = vec![
        ("rbx".into(), 9),
        ("rbp".into(), 0x7ff0_0100),
        ("r15".into(), 0xdead_beef_ffff_fffe),
        ("rip".into(), 0x401545),
    ];
    ctx.memory
        .push((0x7ff0_0100 - 56, 300u32.to_le_bytes().to_vec()));
    rt.run(p.block_of(0), &mut ctx);
    assert_eq!(
        rt.map_value(
            "",
            &[
                Value::Int(9),
                Value::Int(300),
                Value::Int(5),
                Value::Int(-2i64 as u64)
            ]
        ),
        Some(1)
    );
}

#[test]
fn locations_with_different_operands_are_told_apart_by_page_offset() {
    let src = "usdt:/bin/x:p:twice { @[arg0] = count(); }";
    let p = Arc::new(bound(src, vec![at(0x401569, "-8@%rbx"), at(0x40157c, "-8@%rsi")]).unwrap());
    let mut rt = support::new_runtime(&p, Capture::default());
    for (rip, rbx, rsi) in [(0x401569u64, 3, 50), (0x40157c, 4, 60)] {
        let mut ctx = FakeCtx::new("usdt:/bin/x:p:twice");
        // A PIE's run-time pc: moved by whole pages.
        ctx.registers = vec![
            ("rip".into(), rip + 0x5555_5550_0000),
            ("rbx".into(), rbx),
            ("rsi".into(), rsi),
        ];
        rt.run(p.block_of(0), &mut ctx);
    }
    assert_eq!(rt.map_value("", &[Value::Int(3)]), Some(1));
    assert_eq!(rt.map_value("", &[Value::Int(60)]), Some(1));
    assert_eq!(rt.map_value("", &[Value::Int(50)]).unwrap_or(0), 0);
    // The same page offset cannot tell them apart: refused.
    let e = bound(src, vec![at(0x401569, "-8@%rbx"), at(0x402569, "-8@%rsi")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("at the same offset in a page") && e.contains("t:1:1"),
        "{e}"
    );
    // Without argN, no operand matters.
    bound(
        "usdt:/bin/x:p:twice { @ = count(); }",
        vec![at(0x401569, "-8@%xmm0")],
    )
    .unwrap();
    let e = bound(
        "usdt:/bin/x:p:twice { @ = arg0; }",
        vec![at(0x401569, "-8@%xmm0")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("arg0 is not served: '-8@%xmm0': register '%xmm0' is not served"),
        "{e}"
    );
}
