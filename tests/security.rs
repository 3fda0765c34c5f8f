//! Security checks as tests (issue 14): while a run is active neither
//! vmprobe nor its QEMU listens on a network interface, and every socket
//! QEMU was given lives in a directory only its user can enter.

mod support;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use support::*;

/// Inodes of the sockets process `pid` holds.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// Listening TCP sockets and bound UDP sockets among `inodes`, as lines
/// of /proc/net/{tcp,tcp6,udp,udp6}.
fn network_listeners(inodes: &HashSet<u64>) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(state), Some(inode)) = (f.get(3), f.get(9)) else {
                continue;
            };
            let listening = if table.starts_with("tcp") {
                *state == "0A"
            } else {
                true
            };
            if listening && inode.parse().is_ok_and(|i: u64| inodes.contains(&i)) {
                found.push(format!("{table}: {line}"));
            }
        }
    }
    found
}

fn check_run(backend: &str) {
    let (mut child, _stdout, stderr) = spawn_collected(vmprobe().args([
        "run",
        "--backend",
        backend,
        "-e",
        "kprobe:ksys_write { @c = count(); }",
        "--",
        "sleep 5",
    ]));
    stderr.wait_for("KASLR slide", RUN_LIMIT);
    let qemu = qemu_children(child.id());
    assert_eq!(qemu.len(), 1, "one QEMU child: {qemu:?}");
    let mut inodes = socket_inodes(child.id());
    inodes.extend(socket_inodes(qemu[0]));
    assert!(!inodes.is_empty(), "no sockets seen: is /proc readable?");
    let listeners = network_listeners(&inodes);
    assert!(
        listeners.is_empty(),
        "{backend}: listening on a network: {listeners:?}"
    );
    // Every unix socket path QEMU was given: its directory is 0700.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", qemu[0])).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let mut dirs = HashSet::new();
    for word in cmdline.split([' ', ',', '=']) {
        let path = word.strip_prefix("unix:").unwrap_or(word);
        if path.starts_with('/') && path.ends_with(".sock") {
            dirs.insert(std::path::Path::new(path).parent().unwrap().to_path_buf());
        }
    }
    assert!(!dirs.is_empty(), "no socket paths in {cmdline}");
    for d in &dirs {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{backend}: {} is {mode:o}", d.display());
    }
    // Ctrl-C ends the run as a user would; QEMU goes with it.
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    wait_for_exit(&mut child, Duration::from_secs(60));
}

#[test]
fn a_run_listens_on_no_network_and_its_sockets_are_private() {
    check_run("gdb");
    if qemu10().is_some() {
        plugin_library();
        check_run("plugin");
    }
}
