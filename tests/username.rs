//! `username`: the current uid's name in the guest's /etc/passwd (the
//! default guest's host copy), as bpftrace names it from its own. Judged
//! by the guest: busybox's `whoami` prints the name it finds for its uid,
//! as root and after `su` to nobody, and vmprobe's `username` at that
//! whoami's write must be the same name.

mod support;
use support::*;

const PROGRAM: &str = r#"tracepoint:syscalls:sys_enter_write /comm == "whoami"/ { printf("U %d %s\n", uid, username); }"#;

fn names_equal_whoami(backend: &str) {
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--backend",
            backend,
            "--console",
            "-e",
            PROGRAM,
            "--",
            "whoami | sed 's/^/W /'; su -s /bin/sh nobody -c whoami | sed 's/^/W /'",
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{backend}: {stderr}");
    let theirs: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split("W ").nth(1))
        .map(str::trim)
        .collect();
    let ours: Vec<(u64, &str)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("U "))
        .filter_map(|l| {
            let (uid, name) = l.split_once(' ')?;
            Some((uid.parse().ok()?, name.trim()))
        })
        .collect();
    assert_eq!(theirs, ["root", "nobody"], "{backend}: {stderr}");
    assert_eq!(
        ours,
        [(0, "root"), (65534, "nobody")],
        "{backend}: {stdout}"
    );
}

#[test]
fn username_names_the_uid_as_the_guest_does_through_the_stub() {
    names_equal_whoami("gdb");
}

#[test]
fn username_names_the_uid_as_the_guest_does_in_qemu() {
    if qemu10().is_none() {
        return;
    }
    names_equal_whoami("plugin");
}

#[test]
fn username_without_a_guest_root_is_refused_before_booting() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--guest-root",
            &dir.path().to_string_lossy(),
            "-e",
            "kprobe:vfs_read { @[username] = count(); }",
            "--",
            "true",
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("username needs the guest's /etc/passwd"),
        "{stderr}"
    );
    assert!(!stderr.contains("booting"), "{stderr}");
}
