//! Page walks on the real guest, 4-level (the default `qemu64` CPU) and
//! 5-level (`qemu64,+la57`, where the Debian kernel turns LA57 on): every
//! translation equals QEMU's own (`gva2gpa` in its monitor), the physical
//! bytes there equal the virtual ones, and unmapped addresses are
//! `NotPresent` where QEMU says "Unmapped". Also prints the cost of a
//! physical read and of a walk through the stub (for bench/RESULTS.md;
//! never asserted).

mod support;

use backend_gdb::StopView;
use gdb_remote::Client;
use linux_guest::{GuestError, vtop};
use std::time::{Duration, Instant};
use x86_paging::{CR4_LA57, WalkError};

/// QEMU's translation of `va` on the monitor's vCPU: `Some(gpa)` or
/// `None` for "Unmapped".
fn qemu_gva2gpa(client: &mut Client, va: u64) -> Option<u64> {
    let out = client.monitor(&format!("gva2gpa {va:#x}")).unwrap();
    if out.contains("Unmapped") {
        return None;
    }
    let hex = out
        .trim()
        .strip_prefix("gpa: 0x")
        .unwrap_or_else(|| panic!("gva2gpa {va:#x}: {out}"));
    Some(u64::from_str_radix(hex, 16).unwrap())
}

fn walks_equal_qemus(cpu_features: &str, five_level: bool) {
    let Some(g) = support::boot(|cfg| cfg.tcg_cpu_features = cpu_features.into()) else {
        return;
    };
    let (mut vm, mut client, kernel) = (g.vm, g.client, g.kernel);
    let thread = client.threads().unwrap()[0];
    let regs = client.read_registers(thread).unwrap();
    let (cr3, cr4) = (regs.get("cr3").unwrap(), regs.get("cr4").unwrap());
    assert_eq!(cr4 & CR4_LA57 != 0, five_level, "cr4 {cr4:#x}");
    let sym = |name: &str| g.symbols.lookup(name).unwrap().addr + g.slide;
    let mut word = [0u8; 8];
    client
        .read_memory(sym("page_offset_base"), &mut word)
        .unwrap();
    let direct_map = u64::from_le_bytes(word);
    let addrs = [
        sym("ksys_write"),              // kernel text (2 MiB pages)
        sym("init_task") + 0x123,       // kernel data
        regs.get("rsp").unwrap() & !7,  // a kernel stack (vmalloc, 4 KiB)
        direct_map + 0x10_0000 + 0x678, // the direct map
        sym("page_offset_base"),        // a variable read above
        0x1000,                         // unmapped user address
        direct_map - 0x1000_0000,       // a hole below the direct map
    ];
    for va in addrs {
        let ours = vtop(
            &mut StopView::new(&mut client, &regs),
            Some(&kernel),
            cr3,
            va,
        );
        match (ours, qemu_gva2gpa(&mut client, va)) {
            (Ok(p), Some(q)) => {
                assert_eq!(p, q, "{va:#x}");
                let (mut v, mut ph) = ([0u8; 16], [0u8; 16]);
                client.read_memory(va, &mut v).unwrap();
                client.read_physical(p, &mut ph).unwrap();
                assert_eq!(v, ph, "bytes at {va:#x} / physical {p:#x}");
            }
            (Err(GuestError::Walk(WalkError::NotPresent { .. })), None) => {}
            (ours, theirs) => panic!("{va:#x}: ours {ours:?}, QEMU {theirs:?}"),
        }
    }

    // Costs through the stub, for bench/RESULTS.md (not asserted): the
    // median of 300 and the round trips each takes.
    let text = sym("ksys_write");
    let phys = vtop(
        &mut StopView::new(&mut client, &regs),
        Some(&kernel),
        cr3,
        text,
    )
    .unwrap();
    let cost = |client: &mut Client, f: &mut dyn FnMut(&mut Client)| {
        let rt = client.round_trips();
        let mut times: Vec<Duration> = (0..300)
            .map(|_| {
                let t = Instant::now();
                f(client);
                t.elapsed()
            })
            .collect();
        times.sort();
        let trips = (client.round_trips() - rt) as f64 / 300.0;
        format!("{:?} ({trips} round trips)", times[150])
    };
    let virt = cost(&mut client, &mut |c| {
        c.read_memory(text, &mut word).unwrap()
    });
    let physical = cost(&mut client, &mut |c| {
        c.read_physical(phys, &mut word).unwrap()
    });
    let walk = cost(&mut client, &mut |c| {
        vtop(&mut StopView::new(c, &regs), Some(&kernel), cr3, text).unwrap();
    });
    eprintln!(
        "COST {}-level: 8-byte virtual read {virt}, 8-byte physical read {physical}, vtop {walk}",
        if five_level { 5 } else { 4 }
    );
    vm.kill();
}

#[test]
fn four_level_walks_equal_qemus() {
    walks_equal_qemus("", false);
}

#[test]
fn five_level_walks_equal_qemus() {
    walks_equal_qemus("+la57", true);
}
