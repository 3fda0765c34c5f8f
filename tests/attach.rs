//! `vmprobe attach` on a VM it did not start: the test plays the user, who
//! started QEMU with a gdbstub and runs a workload in the guest. vmprobe
//! attaches, counts until its script exits, and detaches; the guest carries
//! on and finishes its workload as if nothing had happened.

mod support;
use qemu_guest::{Accel, LaunchConfig, Vm};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

#[test]
fn attach_counts_then_leaves_the_vm_running() {
    attach_and_count(false);
}

/// Only QMP given: vmprobe opens a gdbstub on the running VM through the
/// monitor, on a private Unix socket, and closes it again after detach.
/// The same monitor then serves `vmm:` events next to the guest probes.
/// Before that, an attach that fails on a second VM leaves the first one
/// running, not stopped where vmprobe had armed it.
#[test]
fn attach_through_qmp_opens_and_closes_a_stub() {
    attach_and_count(true);
}

fn attach_and_count(through_qmp: bool) {
    let image = default_guest();
    let kernel = image.kernel.clone();
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.console = Some(console.clone());
    // Through QMP: a VM started without any gdbstub, with a QEMU log for
    // `vmm:` events.
    cfg.gdbstub = !through_qmp;
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("qemu.log");
    if through_qmp {
        cfg.log_file = Some(log.clone());
    }
    let mut vm = Vm::launch(&cfg).expect("launch");
    // The user's QEMU starts paused (-S); let it boot.
    if through_qmp {
        let mut qmp =
            qemu_vmm::Qmp::connect_unix_wait(&vm.qmp_socket(), Duration::from_secs(5)).unwrap();
        qmp.cont().unwrap();
        vm.wait_ready(Duration::from_secs(180))
            .expect("guest boots");
    } else {
        boot_through_stub(&mut vm);
    }

    // A workload that makes 100 one-byte writes every half second for about
    // 24 s: vmprobe attaches while it runs (a busy loop of 20,000 writes
    // ended in 2 s under TCG, before vmprobe had armed on a loaded machine).
    // Paced, the guest idles between bursts instead of taking a core.
    vm.start_workload(
        "i=0; while [ $i -lt 40 ]; do dd if=/dev/zero of=/dev/null bs=1 count=100 2>/dev/null; \
         echo tick; sleep 0.5; i=$((i+1)); done; echo WORKLOAD-DONE",
    )
    .unwrap();
    let spec = if through_qmp {
        format!(
            "vm0=qmp:{},log:{},kernel:{}",
            vm.qmp_socket().display(),
            log.display(),
            kernel.display()
        )
    } else {
        format!(
            "vm0=gdb:unix:{},kernel:{}",
            vm.gdb_socket().display(),
            kernel.display()
        )
    };
    let mut program =
        "kprobe:ksys_write /arg2 == 1/ { @writes = count(); if (@writes == 50) { exit(); } }"
            .to_string();
    if through_qmp {
        let missing = log_dir.path().join("missing.sock");
        let out = run_bounded(
            vmprobe().args([
                "attach",
                "--vm",
                &spec,
                "--vm",
                &format!(
                    "vm1=gdb:unix:{},kernel:{}",
                    missing.display(),
                    kernel.display()
                ),
                "-e",
                &program,
            ]),
            RUN_LIMIT,
        );
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("vm1"), "{stderr}");
        let mut qmp =
            qemu_vmm::Qmp::connect_unix(&vm.qmp_socket(), Duration::from_secs(5)).unwrap();
        let status = qmp.query_status().unwrap();
        assert!(status.running, "vm0 after vm1 failed: {status:?}\n{stderr}");
        drop(qmp);
        // Each `echo tick` writes its 't' to the serial port, which QEMU
        // traces: count the one-byte writes of the dd run between two ticks.
        program = "kprobe:ksys_write /arg2 == 1 && @ticks == 1/ { @writes = count(); }
            vmm:serial_write /args.addr == 0 && args.value == 0x74/ {
                @ticks = sum(1); if (@ticks == 2) { exit(); }
            }"
        .to_string();
    }
    let out = run_bounded(
        vmprobe().args(["attach", "--duration", "120", "--vm", &spec, "-e", &program]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe attach failed: {stderr}");
    assert!(stderr.contains("attached to vm0"), "{stderr}");
    let writes = if through_qmp { 100 } else { 50 };
    assert_eq!(map_value(&stdout, "writes"), writes, "{stdout}");
    // `record --vm` on the same VM, into a CTF trace: through QMP, QEMU's
    // events only (no stub; the guest never stops): three ticks' 't' bytes
    // on the serial port; else 30 of dd's writes.
    let (program, n, each) = if through_qmp {
        (
            "vmm:serial_write /args.addr == 0 && args.value == 0x74/ { trace(); \
             @t = count(); if (@t == 3) { exit(); } }",
            3,
            ["vmm:serial_write", "value = 116"],
        )
    } else {
        (
            "kprobe:ksys_write /arg2 == 1/ { trace(); @n = count(); if (@n == 30) { exit(); } }",
            30,
            // Named after ksys_write's BTF prototype, as `record` names them.
            ["kprobe:ksys_write", "count = 1"],
        )
    };
    let trace = log_dir.path().join("trace");
    let out = run_bounded(
        vmprobe()
            .args(["record", "--vm", &spec, "-o"])
            .arg(&trace)
            .args(["-e", program]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "vmprobe record --vm failed: {stderr}");
    assert!(stderr.contains(&format!("recorded {n} events")), "{stderr}");
    let lines = babeltrace(&trace);
    assert_eq!(lines.len(), n, "{lines:?}");
    assert!(
        lines.iter().all(|l| each.iter().all(|e| l.contains(e))),
        "{lines:?}"
    );
    // Detached: the guest finishes on its own, its workload intact.
    assert_eq!(vm.wait_exit(RUN_LIMIT).unwrap(), 0);
    // Its exit status can come ahead of the console's last lines.
    console_until(&console, 0, "WORKLOAD-DONE", Duration::from_secs(30));
    vm.shutdown(Duration::from_secs(20))
        .expect("guest powers off");
}

#[test]
fn attach_refuses_a_bad_vm_spec_before_connecting() {
    let out = run_bounded(
        vmprobe().args([
            "attach",
            "--vm",
            "vm0=gdb:localhost",
            "-e",
            "BEGIN { exit(); }",
        ]),
        RUN_LIMIT,
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    // clap's usage error: the first line says what is wrong.
    let first = stderr.lines().next().unwrap_or("");
    assert!(
        first.contains("'localhost': expected HOST:PORT"),
        "{stderr}"
    );
}
