//! `kprobe:F+OFFSET` must start an instruction: a breakpoint inside one
//! never fires under TCG and, where the stub writes `int3` (KVM), would
//! corrupt the guest's code. vmprobe decodes the function as it is in guest
//! memory and refuses the probe, naming the instruction it falls in.

mod support;
use support::*;

#[test]
fn offset_inside_an_instruction_is_refused_when_arming() {
    // Every function of this kernel starts with a 5-byte instruction (the
    // ftrace nop, or endbr64 then it), so +1 is inside one.
    let out = run_bounded(
        vmprobe().args([
            "run",
            "-e",
            "kprobe:vfs_read+1 { @c = count(); }",
            "--",
            "true",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("kprobe:vfs_read+1: offset 1 is inside an instruction (the one at +0 is"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
