//! Other address spaces and user stacks on the real guest: `str_as` and
//! `vtop` walk a sleeping process's page tables from another process's
//! system call (checked against the string it holds and against the
//! physical addresses its kernel reports in /proc/self/pagemap); `ustack`
//! follows frame pointers through a host-built workload (checked against
//! `nm` of that very binary, taken out of the guest's initramfs); wild and
//! unmapped addresses are counted errors that read as zeroes.

mod support;
use std::collections::BTreeMap;
use support::*;

/// Where vmprobe-pagewalk puts its string: 12 bytes before a page end.
const ADDR: u64 = 0x5a5a_0ff4;

/// The task-list walk of tests/introspection.rs, finding the task named
/// `comm` into `$t` (then running `body`).
fn find_task(comm: &str, body: &str) -> String {
    format!(
        r#"$t = (struct task_struct *)kaddr("init_task");
    $i = 0;
    while ($i < 500) {{
        $t = (struct task_struct *)((uint64)$t->tasks.next - offsetof(struct task_struct, tasks));
        if ($t->comm == "{comm}") {{ {body} break; }}
        $i++;
    }}"#
    )
}

#[test]
fn another_process_memory_through_its_page_tables() {
    let token = format!(
        "vmprobe-{:016x}",
        std::process::id() as u64 * 0x9e37_79b9 + 7
    );
    assert_eq!(token.len(), 24, "crosses the page boundary at ADDR + 12");
    let walk = find_task(
        "vmprobe-pagewal",
        &format!(
            r#"$cr3 = (uint64)$t->mm->pgd - *(uint64 *)kaddr("page_offset_base");
            @seen[$t->pid, str_as($t, {ADDR:#x})] = count();
            @phys0[vtop($cr3, {ADDR:#x})] = count();
            @phys1[vtop($cr3, {:#x})] = count();
            @tail[uint_as($t, {:#x}, 4)] = count();"#,
            ADDR + 12,
            ADDR + 8
        ),
    );
    let program = format!(
        r#"
kprobe:ksys_write /comm == "dd" && arg2 == 1/ {{ @dd[pid] = count(); {walk} }}
kprobe:ksys_write /comm == "dd" && arg2 == 1/ {{ @kthread = str_as((struct task_struct *)kaddr("init_task"), 0x400000); }}
kprobe:ksys_write /comm == "dd" && arg2 == 1/ {{ @unmapped = str_as(curtask, 0x1000); }}
kprobe:ksys_write /comm == "dd" && arg2 == 1/ {{ printf("@wild %r\n", buf_as(curtask, 0x00007fffdead0000, 8)); }}
kprobe:ksys_write /comm == "dd" && arg2 == 1/ {{ @here = str({ADDR:#x}); }}
"#
    );
    let workload = format!(
        "vmprobe-pagewalk {token} 60 > /tmp/pw & i=0; \
         while [ ! -s /tmp/pw ] && [ $i -lt 100 ]; do sleep 1; i=$((i+1)); done; cat /tmp/pw; \
         dd if=/dev/zero of=/dev/null bs=1 count=3 2>/dev/null; kill $!"
    );
    let out = run_bounded(
        vmprobe().args(["run", "--console", "-e", &program, "--", &workload]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_partial(&out);
    let line = stderr
        .lines()
        .find_map(|l| l.split("PAGEWALK ").nth(1))
        .unwrap_or_else(|| panic!("the workload did not report itself: {stderr}"));
    let field = |name: &str| -> u64 {
        let v = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"));
        let v = v.trim_start_matches("0x");
        u64::from_str_radix(v, if name == "pid" { 10 } else { 16 }).expect("number")
    };
    let (pid, phys0, phys1) = (field("pid"), field("phys0"), field("phys1"));
    assert_eq!(field("addr"), ADDR);
    assert!(phys0 != 0 && phys1 != 0, "pagemap gave no frames: {line}");
    let dd = keyed_map(&stdout, "dd");
    assert_eq!(dd.values().copied().collect::<Vec<_>>(), [3], "{stdout}");
    // The string, read in dd's system calls from the other process's
    // address space, across its page boundary.
    assert!(
        stdout.contains(&format!("@seen[{pid}, {token}]: 3")),
        "pid {pid}, {token}:\n{stdout}\n{stderr}"
    );
    // Translations equal the guest kernel's own pagemap.
    assert_eq!(
        keyed_map(&stdout, "phys0"),
        BTreeMap::from([(phys0 + 0xff4, 3)]),
        "{stdout}"
    );
    assert_eq!(
        keyed_map(&stdout, "phys1"),
        BTreeMap::from([(phys1, 3)]),
        "{stdout}"
    );
    // Bytes 8..12 of the token, little-endian.
    let tail = u32::from_le_bytes(token.as_bytes()[8..12].try_into().unwrap()) as u64;
    assert_eq!(
        keyed_map(&stdout, "tail"),
        BTreeMap::from([(tail, 3)]),
        "{stdout}"
    );
    // A kernel thread, an unmapped page, a wild user pointer, and the same
    // address in dd's own address space: counted errors that read as
    // zeroes, as bpftrace's probe_read (the handlers go on).
    for line in ["@kthread: \n", "@unmapped: \n", "@here: \n"] {
        assert!(stdout.contains(line), "{line:?}:\n{stdout}");
    }
    assert_eq!(
        stdout
            .matches("@wild \\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\n")
            .count(),
        3,
        "{stdout}"
    );
    for msg in [
        "has no address space (mm is NULL",
        "0x1000 is not mapped",
        "0x7fffdead0000 is not mapped",
        &format!("failed to read memory at {ADDR:#x}"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(msg) && l.ends_with("(3 times)")),
            "{msg}: {stderr}"
        );
    }
}

/// The symbols of a program in the guest, read with `nm` from the binary
/// in the guest's own initramfs.
fn guest_program_symbols(name: &str) -> Vec<(u64, String)> {
    let initrd = default_guest().initrd;
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cpio -i --quiet --to-stdout bin/vmprobe-{name} < '{}' > '{}/bin'",
            initrd.display(),
            dir.path().display()
        ))
        .output()
        .expect("cpio");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let nm = std::process::Command::new("nm")
        .arg(dir.path().join("bin"))
        .output()
        .expect("nm (binutils)");
    assert!(nm.status.success(), "{}", text(&nm.stderr));
    let mut syms: Vec<(u64, String)> = text(&nm.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (a, kind, n) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "T" | "t")
                .then(|| Some((u64::from_str_radix(a, 16).ok()?, n.to_string())))?
        })
        .collect();
    syms.sort();
    syms
}

fn symbolize(syms: &[(u64, String)], addr: u64) -> &str {
    syms.iter()
        .rev()
        .find(|(a, _)| *a <= addr)
        .map_or("?", |(_, n)| n.as_str())
}

#[test]
fn ustack_by_frame_pointers_matches_the_binary() {
    let syms = guest_program_symbols("fpstack");
    let program = r#"kprobe:ksys_write /comm == "vmprobe-fpstack"/ { @u[ustack] = count(); @u2[ustack(2)] = count(); }"#;
    let out = run_bounded(
        vmprobe().args(["run", "-e", program, "--", "vmprobe-fpstack 4"]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    let stack = |map: &str| -> (Vec<String>, String) {
        let head = format!("@{map}[");
        let mut lines = stdout.lines().skip_while(|l| !l.starts_with(&head));
        lines
            .next()
            .unwrap_or_else(|| panic!("no @{map}:\n{stdout}"));
        let frames: Vec<String> = lines
            .by_ref()
            .take_while(|l| !l.starts_with(']'))
            .map(|l| {
                let a = u64::from_str_radix(l.trim().trim_start_matches("0x"), 16)
                    .unwrap_or_else(|_| panic!("frame {l:?}:\n{stdout}"));
                symbolize(&syms, a).to_string()
            })
            .collect();
        let tail = stdout
            .lines()
            .skip_while(|l| !l.starts_with(&head))
            .find(|l| l.starts_with(']'))
            .unwrap_or("")
            .to_string();
        (frames, tail)
    };
    let (frames, tail) = stack("u");
    assert!(
        frames.len() >= 3 && frames[..3] == ["f2", "f1", "main"],
        "{frames:?}\n{stdout}"
    );
    assert_eq!(tail, "]: 4", "one stack, all four writes:\n{stdout}");
    let (frames, tail) = stack("u2");
    assert_eq!(frames, ["f2", "f1"]);
    assert_eq!(tail, "]: 4");
    assert!(!stderr.contains("ustack"), "{stderr}");
}

/// Samples taken while the vCPU runs the workload's user code (a spin in
/// f2) walk from the vCPU's own registers: f2, f1, main as well.
#[test]
fn ustack_in_user_mode_samples() {
    let syms = guest_program_symbols("fpstack");
    let program = r#"profile:hz:50 /comm == "vmprobe-fpstack"/ { @mode[reg("cs") & 3] = count(); @u[ustack(3)] = count(); }"#;
    let out = run_bounded(
        vmprobe().args(["run", "-e", program, "--", "vmprobe-fpstack 40 spin"]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    let modes = keyed_map(&stdout, "mode");
    assert!(
        modes.get(&3).copied().unwrap_or(0) > 0,
        "no sample in user mode: {stdout}"
    );
    // Each @u entry: frames up to "]: N"; the spin's stack dominates.
    let mut spin_samples = 0;
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("@u["));
    while let Some(l) = lines.next() {
        if !l.starts_with("@u[") {
            continue;
        }
        let frames: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with(']'))
            .map(|l| {
                let a = u64::from_str_radix(l.trim().trim_start_matches("0x"), 16).unwrap();
                symbolize(&syms, a)
            })
            .collect();
        if frames.first() == Some(&"f2") {
            assert_eq!(frames, ["f2", "f1", "main"], "{stdout}");
            spin_samples += 1;
        }
    }
    assert!(spin_samples > 0, "{stdout}");
}
