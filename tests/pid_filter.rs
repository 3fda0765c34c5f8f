//! `vmprobe attach -p PID`, bpftrace's -p for a guest process: every guest
//! probe counts only that process's events, and the run ends when the
//! process does. The guest kernel's own kprobe events, filtered on each
//! writer's pid, are the ground truth.

mod support;
use qemu_guest::{Accel, LaunchConfig, Vm};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// The value after `KEY=` on the console.
fn console_number(console: &str, key: &str) -> u64 {
    console
        .lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key}N on the console:\n{console}"))
}

#[test]
fn attach_with_a_pid_counts_that_process_and_ends_with_it() {
    let image = default_guest();
    let kernel = image.kernel.clone();
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.console = Some(console.clone());
    let mut vm = Vm::launch(&cfg).expect("launch");
    boot_through_stub(&mut vm);
    let from = console.lock().unwrap().len();

    // Two writers of one-byte writes, each a subshell that waits and then
    // becomes dd (exec keeps the pid that `$!` names). The wait is the time
    // the test has to attach before the first write: attaching late makes
    // the count short and the test fail, never pass. The guest kernel
    // counts each writer's ksys_write calls with an event filtered on its
    // pid.
    vm.start_workload(
        "cd /sys/kernel/tracing || exit 1; \
         (sleep 45; exec dd if=/dev/zero of=/dev/null bs=1 count=200 2>/dev/null) & A=$!; \
         (sleep 45; exec dd if=/dev/zero of=/dev/null bs=1 count=350 2>/dev/null) & B=$!; \
         echo 'p:gta ksys_write' >> kprobe_events && echo 'p:gtb ksys_write' >> kprobe_events && \
         echo \"common_pid == $A\" > events/kprobes/gta/filter && \
         echo \"common_pid == $B\" > events/kprobes/gtb/filter && \
         echo 1 > events/kprobes/gta/enable && echo 1 > events/kprobes/gtb/enable && \
         echo PIDA=$A && echo PIDB=$B; wait $A $B; \
         echo 0 > events/kprobes/gta/enable; echo 0 > events/kprobes/gtb/enable; \
         echo GTA=$(grep -c ' gta: ' trace); echo GTB=$(grep -c ' gtb: ' trace); echo GT-END",
    )
    .unwrap();
    let started = console_until(&console, from, "PIDB=", Duration::from_secs(60));
    let pid_a = console_number(&started, "PIDA=");
    let spec = format!(
        "vm0=gdb:unix:{},kernel:{}",
        vm.gdb_socket().display(),
        kernel.display()
    );
    // No --duration and no exit(): the run ends when process A exits.
    let out = run_bounded(
        vmprobe().args([
            "attach",
            "--vm",
            &spec,
            "-p",
            &pid_a.to_string(),
            "-e",
            "BEGIN { @begun = 1; } kprobe:ksys_write { @ = count(); }",
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe attach -p failed: {stderr}");
    let done = console_until(&console, from, GT_END, RUN_LIMIT);
    let (gt_a, gt_b) = (console_number(&done, "GTA="), console_number(&done, "GTB="));
    // dd's own writes plus its statistics on exit; the other writer's are
    // more (350), so a count that took them in would differ.
    assert!(gt_a >= 200 && gt_b >= 350, "{done}");
    assert_eq!(map_value(&stdout, ""), gt_a, "{stdout}\n{done}");
    // bpftrace's banner counts the program's probes, not the one that
    // watches for the exit.
    assert!(stdout.starts_with("Attaching 2 probes...\n"), "{stdout}");
    // BEGIN is not filtered.
    assert_eq!(map_value(&stdout, "begun"), 1, "{stdout}");
    assert_eq!(vm.wait_exit(RUN_LIMIT).unwrap(), 0);
    vm.shutdown(Duration::from_secs(20))
        .expect("guest powers off");
}
