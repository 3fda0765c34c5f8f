//! The gdbstub backend on QEMU 10.0 (Debian's bookworm-backports build, as
//! `.ci/install-deps` unpacks it; `$VMPROBE_QEMU10` names another). Skipped
//! when this machine has none, unless `VMPROBE_REQUIRE_QEMU10=1` (CI), where
//! a missing QEMU 10 fails the test.

mod support;
use support::*;

/// Every stop of a run on QEMU 10 that ends in an interrupt: an `interval`
/// timer mid-run, and the end of the run after the workload. QEMU 10 once
/// stopped silently there (a late ack taken as an interrupt; see
/// gdb-remote's fake-stub test of the same packets), after every hit had
/// been counted. The count must equal the guest kernel's own.
#[test]
fn probes_count_and_interrupt_on_qemu10() {
    let Some(qemu) = qemu10() else { return };
    let version = qemu_guest::QemuVersion::of(&qemu).expect("QEMU 10's -version");
    assert_eq!((version.major, version.minor), (10, 0), "{version}");
    let n = 300;
    let workload = ground_truth_workload(&format!(
        "dd if=/dev/zero of=/dev/null bs=1 count={n} && sleep 1"
    ));
    let program = format!(
        "{}\ninterval:ms:200 {{ @ticks = count(); }}",
        windowed_count_program()
    );
    let out = run_bounded(
        vmprobe()
            .args(["run", "--console", "--stats", "--qemu"])
            .arg(&qemu)
            .args(["-e", &program, "--", &workload]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "vmprobe failed on QEMU {version}: {stderr}"
    );
    let ours = map_value(&stdout, "writes");
    assert_eq!(ours, ground_truth_hits(&stderr), "{stderr}");
    assert_eq!(ours, n, "{stderr}");
    assert!(map_value(&stdout, "ticks") >= 2, "{stdout}");
}

/// The guest patching its own code on two vCPUs while probed, as in
/// `kprobe_count.rs`, on QEMU 10 (single-threaded TCG: QEMU 10.0.2's
/// multi-threaded TCG crashes this guest as 7.2's does, see `qemu-guest`).
#[test]
fn guest_switches_its_own_kprobes_on_two_vcpus_on_qemu10() {
    let Some(qemu) = qemu10() else { return };
    guest_switches_its_own_kprobes_while_probed(vmprobe().args(["run", "--qemu"]).arg(&qemu));
}
