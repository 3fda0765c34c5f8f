//! `vmprobe list -v`: each matching kernel function with its parameters
//! from the guest kernel's BTF, laid out as `bpftrace -lv` does.

mod support;

use std::time::Duration;
use support::{default_guest, run_bounded, text, vmprobe};

#[test]
fn list_verbose_prints_btf_prototypes() {
    let _ = default_guest();
    let out = run_bounded(
        vmprobe().args(["list", "-v", "kprobe:ksys_write"]),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "kprobe:ksys_write\n    unsigned int fd\n    const char * buf\n    size_t count\n"
    );
    let out = run_bounded(
        vmprobe().args(["list", "-v", "do_sys_open*"]),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "kprobe:do_sys_openat2\n    int dfd\n    const char * filename\n    struct open_how * how\n"
        ),
        "{stdout}"
    );
    // Without -v: names only.
    let out = run_bounded(
        vmprobe().args(["list", "ksys_write"]),
        Duration::from_secs(120),
    );
    assert_eq!(text(&out.stdout), "kprobe:ksys_write\n");
}
