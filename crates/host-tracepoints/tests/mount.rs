//! `Tracefs::open` mounts tracefs when it is absent. Tested in a private
//! mount namespace (`unshare -m`) with tracefs unmounted there, so the host's
//! mounts are never touched.

use std::process::Command;

use host_tracepoints::Tracefs;

const INNER: &str = "HOST_TRACEPOINTS_PRIVATE_NS";

#[test]
fn mounts_tracefs_when_absent() {
    if std::env::var_os(INNER).is_some() {
        // Inside the namespace: nothing mounted yet.
        assert!(Tracefs::find().is_none(), "tracefs still mounted");
        let t = Tracefs::open().unwrap();
        assert_eq!(t.root(), std::path::Path::new("/sys/kernel/tracing"));
        assert!(t.root().join("events/sched/sched_switch/format").exists());
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        if std::env::var_os("CI").is_some() {
            panic!("this test needs root under CI");
        }
        return eprintln!("note: skipping, not root");
    }
    let exe = std::env::current_exe().unwrap();
    // `unshare` runs the script only once the private namespace exists, so
    // the umounts cannot reach the host.
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; \
             umount /sys/kernel/tracing 2>/dev/null; \
             exec \"$0\" --exact mounts_tracefs_when_absent --nocapture --test-threads=1",
        )
        .arg(&exe)
        .env(INNER, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "inner run failed: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
