//! Issue 17, item 1: with umask 000, another user (uid 65534) can neither
//! list vmprobe's socket and log directories nor connect to QEMU's QMP
//! monitor, gdbstub, console or control sockets, nor to a stub vmprobe
//! opens on someone's VM through QMP; and nothing vmprobe or its QEMU
//! opened is a network socket. Runs as root (to act as the other user).

mod support;
use qemu_guest::{Accel, LaunchConfig, Vm};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

const OTHER: u32 = 65534;

fn is_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        eprintln!("skipped: needs root to act as uid {OTHER} (nobody)");
    }
    root
}

/// A world-writable, sticky directory like /tmp, as vmprobe's TMPDIR: what
/// keeps the other user out must be vmprobe's own directories.
fn shared_tmp() -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("vmprobe-umask-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    tmp
}

/// `vmprobe ARGS` under umask 000 with TMPDIR set, output collected.
fn vmprobe_umask_000(tmp: &Path, args: &[&str]) -> (std::process::Child, Collected, Collected) {
    spawn_collected(
        Command::new("sh")
            .args([
                "-c",
                "umask 000 && exec \"$0\" \"$@\"",
                env!("CARGO_BIN_EXE_vmprobe"),
            ])
            .args(args)
            .env("TMPDIR", tmp)
            .stdin(Stdio::null()),
    )
}

/// What uid 65534 gets listing each directory and connecting to each
/// socket: the error kind, or `None` when it got through. The thread drops
/// root for itself only (Linux credentials are per thread at the system
/// call level), so the test process stays root.
fn as_other_user(dirs: &[PathBuf], sockets: &[PathBuf]) -> Vec<(PathBuf, Option<ErrorKind>)> {
    let (dirs, sockets) = (dirs.to_vec(), sockets.to_vec());
    std::thread::spawn(move || {
        use rustix::process::{Gid, Uid};
        let gid = Gid::from_raw(OTHER);
        rustix::thread::set_thread_groups(&[]).unwrap();
        rustix::thread::set_thread_res_gid(gid, gid, gid).unwrap();
        let uid = Uid::from_raw(OTHER);
        rustix::thread::set_thread_res_uid(uid, uid, uid).unwrap();
        assert_eq!(rustix::process::geteuid().as_raw(), OTHER);
        let listed = dirs
            .into_iter()
            .map(|d| (std::fs::read_dir(&d).err().map(|e| e.kind()), d));
        let connected = sockets
            .into_iter()
            .map(|s| (UnixStream::connect(&s).err().map(|e| e.kind()), s));
        listed.chain(connected).map(|(e, p)| (p, e)).collect()
    })
    .join()
    .unwrap()
}

/// The socket inodes of a process's open files.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The children of `pid` (QEMU, for vmprobe run).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                // After the command's closing parenthesis: state, then ppid.
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Internet sockets (TCP, UDP, raw; IPv4 and IPv6) among `inodes`, as
/// lines of /proc/net.
fn network_sockets(inodes: &[u64]) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["tcp", "tcp6", "udp", "udp6", "raw", "raw6"] {
        let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let inode = line.split_whitespace().nth(9).and_then(|i| i.parse().ok());
            if inode.is_some_and(|i| inodes.contains(&i)) {
                found.push(format!("{table}: {line}"));
            }
        }
    }
    found
}

/// No process among `pids` has a network socket; checked against a
/// listener of the test's own first, so that the check can see one.
fn assert_no_network_sockets(pids: &[u32]) {
    let control = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mine = network_sockets(&socket_inodes(std::process::id()));
    let port = format!(":{:04X} ", control.local_addr().unwrap().port());
    assert!(mine.iter().any(|l| l.contains(&port)), "{mine:?}");
    let inodes: Vec<u64> = pids.iter().flat_map(|&p| socket_inodes(p)).collect();
    assert!(!inodes.is_empty(), "no sockets seen for {pids:?}");
    let found = network_sockets(&inodes);
    assert!(found.is_empty(), "network sockets of {pids:?}: {found:?}");
}

/// Directories in `tmp` whose name starts with `prefix`.
fn dirs_named(tmp: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect()
}

fn assert_all_denied(results: &[(PathBuf, Option<ErrorKind>)]) {
    let through: Vec<_> = results
        .iter()
        .filter(|(_, e)| *e != Some(ErrorKind::PermissionDenied))
        .collect();
    assert!(through.is_empty(), "uid {OTHER} got through: {through:?}");
}

#[test]
fn run_sockets_and_logs_are_private_under_umask_000() {
    if !is_root() {
        return;
    }
    let tmp = shared_tmp();
    let (mut child, stdout, stderr) = vmprobe_umask_000(
        tmp.path(),
        &[
            "run",
            "-e",
            "kprobe:ksys_write { @w = count(); } BEGIN { printf(\"armed\\n\"); }",
            "--",
            "sleep 6",
        ],
    );
    stdout.wait_for("armed", RUN_LIMIT);
    let sockets_dir = dirs_named(tmp.path(), "vmprobe-")
        .into_iter()
        .find(|d| d.join("qmp.sock").exists())
        .unwrap_or_else(|| panic!("no socket directory: {}", stderr.text()));
    let logs = dirs_named(tmp.path(), "vmprobe-logs-");
    assert_eq!(logs.len(), 1, "{logs:?}");
    let dirs = [sockets_dir.clone(), logs[0].clone()];
    for d in &dirs {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    let sockets: Vec<PathBuf> = ["qmp.sock", "gdb.sock", "con.sock", "ctl.sock"]
        .iter()
        .map(|s| sockets_dir.join(s))
        .collect();
    assert!(sockets.iter().all(|s| s.exists()), "{sockets:?}");
    assert_all_denied(&as_other_user(&dirs, &sockets));
    let vmprobe = child.id();
    let mut pids = children(vmprobe);
    assert!(!pids.is_empty(), "QEMU not found among vmprobe's children");
    pids.push(vmprobe);
    assert_no_network_sockets(&pids);

    let status = child.wait().unwrap();
    let err = stderr.finish();
    assert!(status.success(), "{err}");
    assert!(stdout.finish().contains("@w: "), "{err}");
    assert!(dirs_named(tmp.path(), "vmprobe-").is_empty(), "left behind");
}

#[test]
fn a_stub_opened_through_qmp_is_private_under_umask_000() {
    if !is_root() {
        return;
    }
    // The user's VM, started without a gdbstub; vmprobe opens one.
    let image = default_guest();
    let kernel = image.kernel.clone();
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.gdbstub = false;
    let mut vm = Vm::launch(&cfg).expect("launch");
    let mut qmp =
        qemu_vmm::Qmp::connect_unix_wait(&vm.qmp_socket(), Duration::from_secs(5)).unwrap();
    qmp.cont().unwrap();
    drop(qmp);
    vm.wait_ready(Duration::from_secs(180))
        .expect("guest boots");
    vm.start_workload("sleep 600").unwrap();

    let tmp = shared_tmp();
    let spec = format!(
        "vm0=qmp:{},kernel:{}",
        vm.qmp_socket().display(),
        kernel.display()
    );
    let (mut child, stdout, stderr) = vmprobe_umask_000(
        tmp.path(),
        &[
            "attach",
            "--duration",
            "8",
            "--vm",
            &spec,
            "-e",
            "kprobe:ksys_write { @w = count(); } BEGIN { printf(\"armed\\n\"); }",
        ],
    );
    stdout.wait_for("armed", RUN_LIMIT);
    let dirs = dirs_named(tmp.path(), "vmprobe-attach-");
    assert_eq!(dirs.len(), 1, "{dirs:?}: {}", stderr.text());
    let mode = std::fs::metadata(&dirs[0]).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    let stub = dirs[0].join("vm0.gdb");
    assert!(stub.exists(), "{}", stderr.text());
    assert_all_denied(&as_other_user(&dirs, &[stub]));
    assert_no_network_sockets(&[child.id(), vm.pid()]);

    let status = child.wait().unwrap();
    let err = stderr.finish();
    assert!(status.success(), "{err}");
    assert!(dirs_named(tmp.path(), "vmprobe-").is_empty(), "left behind");
    vm.kill();
}
