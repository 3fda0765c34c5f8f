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

/// The guest's syscall tracepoints are listed from the image (no boot),
/// with `-v` their fields as the guest's tracefs declares them
/// (`syscalls/sys_enter_openat/format` of the 6.1 guest), as `bpftrace -lv`.
#[test]
fn list_guest_syscall_tracepoints() {
    let _ = default_guest();
    assert_eq!(
        list(&["-v", "tracepoint:syscalls:sys_enter_openat"]),
        "tracepoint:syscalls:sys_enter_openat\n    int __syscall_nr\n    int dfd\n    \
         const char * filename\n    int flags\n    umode_t mode\n"
    );
    assert_eq!(
        list(&["-v", "t:syscalls:sys_exit_read"]),
        "tracepoint:syscalls:sys_exit_read\n    int __syscall_nr\n    long ret\n"
    );
    let all = list(&["tracepoint:syscalls:*"]);
    let n = all.lines().count();
    // Every syscall with metadata has both events (6.1 x86-64: 430).
    assert!(n > 600 && n.is_multiple_of(2), "{n} events");
    assert!(
        all.lines()
            .all(|l| l.starts_with("tracepoint:syscalls:sys_e")),
        "{all}"
    );
    assert!(
        all.contains("tracepoint:syscalls:sys_enter_read\n"),
        "{all}"
    );
    // raw_syscalls, fields as the 6.1 guest's tracefs declares them.
    assert_eq!(
        list(&["-v", "tracepoint:raw_syscalls:*"]),
        "tracepoint:raw_syscalls:sys_enter\n    long id\n    unsigned long args[6]\n\
         tracepoint:raw_syscalls:sys_exit\n    long id\n    long ret\n"
    );
    // Without a kind, a name matches guest tracepoints too.
    assert!(list(&["*sys_exit_openat2"]).contains("tracepoint:syscalls:sys_exit_openat2\n"));
}

/// Every kind of probe is listed: QEMU's trace events with their declared
/// arguments, the host's tracepoints with their tracefs fields, and the
/// parametric kinds.
#[test]
fn list_covers_vmm_events_tracepoints_and_parametric_kinds() {
    let _ = default_guest();
    assert_eq!(
        list(&["-v", "vmm:serial_write"]),
        "vmm:serial_write\n    uint16_t addr\n    uint8_t value\n"
    );
    // No kind: every kind whose names match.
    let serial = list(&["serial_write"]);
    assert_eq!(serial, "vmm:serial_write\n", "{serial}");
    assert_eq!(
        list(&["profile:*"]),
        "profile:hz:N\n",
        "parametric kinds are listed"
    );
    if std::path::Path::new("/sys/kernel/tracing/events/sched/sched_switch").exists() {
        let tp = list(&["-v", "host:t:sched:sched_switch"]);
        assert!(
            tp.starts_with(
                "host:tracepoint:sched:sched_switch\n    char prev_comm[16]\n    pid_t prev_pid\n"
            ),
            "{tp}"
        );
    }
}

/// `kfunc:`/`kretfunc:` are listed as `bpftrace -l` lists them
/// (`kfunc:vmlinux:F`), only functions with a BTF prototype that they can
/// serve; `-v` adds the parameters and `retval`, as `bpftrace -lv`.
#[test]
fn list_kfuncs_with_their_prototypes() {
    let _ = default_guest();
    assert_eq!(
        list(&["-v", "kfunc:ksys_write"]),
        "kfunc:vmlinux:ksys_write\n    unsigned int fd\n    const char * buf\n    size_t count\n    ssize_t retval\n"
    );
    assert_eq!(
        list(&["-v", "kretfunc:vmlinux:vfs_fstatat"]),
        "kretfunc:vmlinux:vfs_fstatat\n    int dfd\n    const char * filename\n    \
         struct kstat * stat\n    int flags\n    int retval\n"
    );
    // void: no retval line.
    assert_eq!(
        list(&["-v", "kfunc:ksys_sync"]),
        "kfunc:vmlinux:ksys_sync\n"
    );
    // Seven parameters, a struct by value, no BTF (assembly): not listed.
    for name in ["do_mmap", "set_pte_vaddr", "entry_SYSCALL_64"] {
        assert_eq!(list(&[&format!("kfunc:{name}")]), "", "{name}");
    }
    // (A pattern, not `*`: the bounded runner reads stdout at the exit,
    // and some 36,000 lines would fill the pipe.)
    let all = list(&["kfunc:vfs_*"]);
    let n = all.lines().count();
    assert!(n > 50, "{n} kfuncs");
    assert!(all.lines().all(|l| l.starts_with("kfunc:vmlinux:vfs_")));
    assert!(all.contains("kfunc:vmlinux:vfs_read\n"), "{all}");
    // Only when asked for by kind, as bpftrace.
    assert!(!list(&["ksys_write"]).contains("kfunc:"));
}

/// `vmprobe list ARGS`' stdout; it must succeed.
fn list(args: &[&str]) -> String {
    let out = run_bounded(vmprobe().arg("list").args(args), Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}
