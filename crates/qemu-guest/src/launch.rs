//! Launching QEMU for vmprobe.
//!
//! QEMU starts paused (`-S`). Its gdbstub, QMP monitor, console (ttyS0) and the
//! init control channel (ttyS1) are Unix sockets in a fresh 0700 directory, so
//! nothing listens on any network interface. QEMU runs in its own process group
//! (a terminal's Ctrl-C reaches vmprobe only, which then ends the run in order)
//! and is killed by the kernel if vmprobe dies (PR_SET_PDEATHSIG), and by `Drop`.

use crate::image::{GuestImage, require_tool};
use crate::{Error, Result, io_err};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// KVM can run a Linux guest only when /dev/kvm is usable and backed by
/// hardware virtualization (kvm_intel or kvm_amd). Some hosts offer a
/// paravirtual KVM (kvm_pvm) on which stock Linux kernels hang at boot.
pub fn kvm_usable() -> bool {
    let hw = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists());
    hw && std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[derive(Clone)]
pub struct LaunchConfig {
    pub image: GuestImage,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Where the guest console goes, besides the tail kept for error reports.
    pub console: Option<Arc<Mutex<dyn Write + Send>>>,
    /// The QEMU binary: `qemu-system-x86_64` from PATH unless set (for
    /// comparing QEMU builds, e.g. in `vmprobe bench --qemu`).
    pub qemu: PathBuf,
    /// QEMU's log file (`-D`), where its `log` trace backend writes enabled
    /// trace events (crate `qemu-vmm` follows and parses it). Also turns on
    /// `-msg timestamp=on`, without which QEMU 7.2 prints trace lines with
    /// neither thread id nor time stamp. `None` (the default): trace output,
    /// if any, goes to QEMU's stderr file as before. Trace lines can carry
    /// guest data (serial bytes, addresses): put the file in a private
    /// directory.
    pub log_file: Option<PathBuf>,
    /// Start QEMU with a gdbstub (`-gdb`, on by default). Off gives a VM as
    /// users often run it, whose stub can be opened later through QMP.
    pub gdbstub: bool,
    /// A raw disk image given to the guest as a virtio-blk device
    /// (/dev/vda in the default guest).
    pub disk: Option<PathBuf>,
    /// More raw disk images, virtio-blk devices after [`Self::disk`], in
    /// order: /dev/vdb, /dev/vdc, ... in the default guest (from /dev/vda
    /// on without `disk`).
    pub extra_disks: Vec<PathBuf>,
    /// Extra CPU features for TCG's `qemu64` model, e.g. `"+la57"` for
    /// five-level paging (empty by default).
    pub tcg_cpu_features: String,
    /// vmprobe's TCG plugin library: loaded with `-plugin LIB,sock=PATH`,
    /// its socket in the VM's private directory ([`Vm::plugin_socket`]).
    /// Needs QEMU 9.2 or later and TCG.
    pub plugin: Option<PathBuf>,
    /// Further QEMU arguments, appended after all of the above (e.g.
    /// `-plugin /abs/path.so,arg=value` for a TCG plugin).
    pub extra_args: Vec<String>,
}

impl LaunchConfig {
    pub fn new(image: GuestImage) -> Self {
        let accel = if kvm_usable() { Accel::Kvm } else { Accel::Tcg };
        LaunchConfig {
            image,
            accel,
            vcpus: 1,
            memory_mib: 512,
            console: None,
            qemu: PathBuf::from("qemu-system-x86_64"),
            log_file: None,
            gdbstub: true,
            disk: None,
            extra_disks: Vec::new(),
            tcg_cpu_features: String::new(),
            plugin: None,
            extra_args: Vec::new(),
        }
    }
}

/// Messages from the guest's init on the control channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlEvent {
    Ready,
    Exited(i32),
}

/// A running QEMU. Dropping it kills QEMU and removes its socket directory.
pub struct Vm {
    child: Child,
    dir: tempfile::TempDir,
    control: UnixStream,
    events: Receiver<Result<ControlEvent, String>>,
    /// When the last control message arrived, stamped by the reader thread,
    /// so a workload's end is timed exactly however late it is polled.
    last_event_at: Arc<Mutex<Option<Instant>>>,
    console_tail: Arc<Mutex<Vec<u8>>>,
    log_file: Option<PathBuf>,
}

const CONSOLE_TAIL: usize = 8192;

/// TCG with every vCPU on one host thread. Multi-threaded TCG (QEMU 7.2's
/// default for x86 guests) breaks the guest kernel's own code patching
/// across vCPUs: a 2-vCPU guest that switches a kprobe event on and off on
/// `vfs_read` while two tasks call it crashed (a jump to 0 under
/// `ksys_read`, or a soft lockup in the int3 handler) in 3 of 3 runs of
/// plain QEMU, with no debugger attached, within 10-40 switches; with
/// `thread=single` 100 switches passed in 2 of 2 runs. QEMU 10.0.2's
/// multi-threaded TCG still crashed it (the same jump to 0) in 1 of 6 runs
/// of 100 switches, so it stays off there too (ARCHITECTURE.md has the
/// runs). One vCPU runs the same either way.
const TCG_ACCEL: &str = "tcg,thread=single";

impl Vm {
    /// Starts QEMU. Call it from a thread that lives as long as the VM:
    /// the kernel's parent-death signal, which keeps QEMU from outliving
    /// vmprobe, fires when the *thread* that forked QEMU exits.
    pub fn launch(cfg: &LaunchConfig) -> Result<Vm> {
        if cfg.qemu.as_os_str() == "qemu-system-x86_64" {
            require_tool(
                "qemu-system-x86_64",
                "install QEMU (Debian: apt-get install qemu-system-x86)",
            )?;
        }
        // Only this user can reach the sockets (QMP runs host commands).
        let dir = crate::private_dir("vmprobe-")?;
        let sock = |name: &str| dir.path().join(name);
        let stderr_path = sock("qemu.stderr");
        let stderr = std::fs::File::create(&stderr_path).map_err(io_err(&stderr_path))?;
        let unix_server = |name: &str| format!("unix:{},server=on,wait=off", sock(name).display());

        let mut cmd = Command::new(&cfg.qemu);
        cmd.args([
            "-M",
            "pc",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-S",
        ]);
        match cfg.accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg if cfg.tcg_cpu_features.is_empty() => {
                cmd.args(["-accel", TCG_ACCEL, "-cpu", "qemu64"])
            }
            Accel::Tcg => cmd.args([
                "-accel".to_string(),
                TCG_ACCEL.into(),
                "-cpu".into(),
                format!("qemu64,{}", cfg.tcg_cpu_features.trim_start_matches(',')),
            ]),
        };
        cmd.args([
            "-m",
            &cfg.memory_mib.to_string(),
            "-smp",
            &cfg.vcpus.to_string(),
        ])
        .args(["-qmp", &unix_server("qmp.sock")])
        .args([
            "-chardev",
            &format!(
                "socket,id=con,path={},server=on,wait=off",
                sock("con.sock").display()
            ),
        ])
        .args(["-serial", "chardev:con"])
        .args([
            "-chardev",
            &format!(
                "socket,id=ctl,path={},server=on,wait=off",
                sock("ctl.sock").display()
            ),
        ])
        .args(["-serial", "chardev:ctl"])
        .arg("-kernel")
        .arg(&cfg.image.kernel)
        .arg("-initrd")
        .arg(&cfg.image.initrd)
        .args(["-append", &cfg.image.append]);
        if let Some(log) = &cfg.log_file {
            cmd.arg("-D").arg(log).args(["-msg", "timestamp=on"]);
        }
        cmd.args(disk_args(cfg));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and calls only
        // prctl(2), which is async-signal-safe; it touches no Rust state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        if cfg.gdbstub {
            cmd.args(["-gdb", &unix_server("gdb.sock")]);
        }
        if let Some(lib) = &cfg.plugin {
            // The option parser splits at commas: a comma in a path is doubled.
            let lib = lib.to_string_lossy().replace(',', ",,");
            let socket = sock("plugin.sock").to_string_lossy().replace(',', ",,");
            cmd.args(["-plugin", &format!("{lib},sock={socket}")]);
        }
        cmd.args(&cfg.extra_args);
        let mut child = cmd.spawn().map_err(io_err(&cfg.qemu))?;

        let exited = |child: &mut Child| -> Option<Error> {
            match child.try_wait() {
                Ok(Some(_)) => Some(Error::QemuExited {
                    stderr: last_lines(&stderr_path),
                }),
                _ => None,
            }
        };
        let connect = |child: &mut Child, name: &str| -> Result<UnixStream> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(s) = UnixStream::connect(sock(name)) {
                    return Ok(s);
                }
                if let Some(e) = exited(child) {
                    return Err(e);
                }
                if Instant::now() > deadline {
                    return Err(Error::Timeout {
                        what: "QEMU's sockets",
                        seconds: 10,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let connected = connect(&mut child, "con.sock")
            .and_then(|con| Ok((con, connect(&mut child, "ctl.sock")?)));
        // The gdbstub and QMP sockets come up after the serial ones; wait for
        // them to exist without connecting (the gdbstub serves one client).
        // QEMU binds a socket before it listens on it: clients connect with
        // `connect_unix_wait`, which retries a refused connection.
        let connected = connected.and_then(|pair| {
            let deadline = Instant::now() + Duration::from_secs(10);
            // Without a gdbstub (bound last) the plugin's socket may come
            // after QMP's: wait for every one.
            let bound = |name: &str, wanted: bool| !wanted || sock(name).exists();
            while !(bound("gdb.sock", cfg.gdbstub)
                && bound("plugin.sock", cfg.plugin.is_some())
                && bound("qmp.sock", true))
            {
                if let Some(e) = exited(&mut child) {
                    return Err(e);
                }
                if Instant::now() > deadline {
                    return Err(Error::Timeout {
                        what: "QEMU's sockets",
                        seconds: 10,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(pair)
        });
        // QEMU bound the sockets: check nobody swapped the directory or a
        // socket in the meantime.
        let connected = connected.and_then(|pair| {
            let mut names = vec!["con.sock", "ctl.sock", "qmp.sock"];
            if cfg.gdbstub {
                names.push("gdb.sock");
            }
            // vmprobe's plugin binds its socket when QEMU loads it, before
            // the machine starts.
            if cfg.plugin.is_some() {
                names.push("plugin.sock");
            }
            for name in names {
                crate::check_private_socket(&sock(name))?;
            }
            Ok(pair)
        });
        let (console, control) = match connected {
            Ok(pair) => pair,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };

        let console_tail = Arc::new(Mutex::new(Vec::new()));
        spawn_console_reader(console, console_tail.clone(), cfg.console.clone());
        let last_event_at = Arc::new(Mutex::new(None));
        let events = spawn_control_reader(
            control.try_clone().map_err(io_err(sock("ctl.sock")))?,
            last_event_at.clone(),
        );
        Ok(Vm {
            child,
            dir,
            control,
            events,
            last_event_at,
            console_tail,
            log_file: cfg.log_file.clone(),
        })
    }

    pub fn gdb_socket(&self) -> PathBuf {
        self.dir.path().join("gdb.sock")
    }

    /// vmprobe's plugin's socket (with [`LaunchConfig::plugin`]).
    pub fn plugin_socket(&self) -> PathBuf {
        self.dir.path().join("plugin.sock")
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.path().join("qmp.sock")
    }

    /// QEMU's log file (`-D`), if [`LaunchConfig::log_file`] set one.
    pub fn log_file(&self) -> Option<&Path> {
        self.log_file.as_deref()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether QEMU is stopped (SIGSTOP, a debugger attached to it): then
    /// the guest, its stub and its plugin answer nothing until it goes on.
    pub fn is_stopped(&self) -> bool {
        process_stopped(self.child.id())
    }

    /// Waits for the guest's init to report it is up.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        match self.next_event(timeout, "the guest to boot")? {
            ControlEvent::Ready => Ok(()),
            other => Err(Error::Protocol(format!("{other:?} before READY"))),
        }
    }

    /// When the most recent control message (READY, EXIT) arrived.
    pub fn last_event_at(&self) -> Option<Instant> {
        self.last_event_at.lock().ok().and_then(|at| *at)
    }

    /// Sends the workload's shell command line to init.
    pub fn start_workload(&mut self, command_line: &str) -> Result<()> {
        if command_line.contains('\n') {
            return Err(Error::Protocol(
                "the workload command must be one line".into(),
            ));
        }
        self.send_line(command_line)
    }

    /// The workload's exit status, if it has finished. Never blocks.
    pub fn poll_exit(&mut self) -> Result<Option<i32>> {
        match self.events.try_recv() {
            Ok(Ok(ControlEvent::Exited(status))) => Ok(Some(status)),
            Ok(Ok(other)) => Err(Error::Protocol(format!(
                "{other:?} while the workload runs"
            ))),
            Ok(Err(line)) => Err(Error::Protocol(line)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Error::ControlClosed {
                what: "the workload to finish",
                detail: self.why_gone(),
            }),
        }
    }

    /// Blocks until the workload finishes.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        match self.next_event(timeout, "the workload to finish")? {
            ControlEvent::Exited(status) => Ok(status),
            other => Err(Error::Protocol(format!(
                "{other:?} while the workload runs"
            ))),
        }
    }

    /// Tells init it may power off, and waits (bounded) for QEMU to exit.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<()> {
        let _ = self.send_line("poweroff");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(Error::Timeout {
            what: "the guest to power off",
            seconds: timeout.as_secs(),
        })
    }

    /// Whether the QEMU process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines the guest printed on its console.
    pub fn console_tail(&self) -> String {
        let tail = self.console_tail.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&tail).into_owned()
    }

    fn next_event(&mut self, timeout: Duration, what: &'static str) -> Result<ControlEvent> {
        match self.events.recv_timeout(timeout) {
            Ok(Ok(ev)) => Ok(ev),
            Ok(Err(line)) => Err(Error::Protocol(line)),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout {
                what,
                seconds: timeout.as_secs(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(Error::ControlClosed {
                what,
                detail: self.why_gone(),
            }),
        }
    }

    /// What is known of a VM whose control channel closed: whether QEMU
    /// exited (and how), its last error lines, the console's last lines.
    fn why_gone(&mut self) -> String {
        let qemu = match self.child.try_wait() {
            Ok(Some(status)) => format!("QEMU {status}"),
            Ok(None) => "QEMU still running".to_string(),
            Err(e) => format!("QEMU state unknown ({e})"),
        };
        let stderr = last_lines(&self.dir.path().join("qemu.stderr"));
        let console = self.console_tail();
        let lines: Vec<&str> = console.lines().filter(|l| !l.trim().is_empty()).collect();
        let console = lines[lines.len().saturating_sub(3)..].join(" | ");
        format!("{qemu}; QEMU said: {stderr}; console: {console}")
    }

    fn send_line(&mut self, line: &str) -> Result<()> {
        let mut msg = Vec::with_capacity(line.len() + 1);
        msg.extend_from_slice(line.as_bytes());
        msg.push(b'\n');
        self.control
            .write_all(&msg)
            .map_err(io_err(self.dir.path().join("ctl.sock")))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `-drive` and `-device` arguments for [`LaunchConfig::disk`] then
/// [`LaunchConfig::extra_disks`]: the guest finds the virtio-blk devices in
/// PCI order, which is the order of the `-device` arguments.
fn disk_args(cfg: &LaunchConfig) -> Vec<String> {
    let mut args = Vec::new();
    for (i, disk) in cfg.disk.iter().chain(&cfg.extra_disks).enumerate() {
        // QEMU splits -drive options at commas: a comma in the path is doubled.
        let file = disk.to_string_lossy().replace(',', ",,");
        args.extend([
            "-drive".to_string(),
            format!("file={file},if=none,id=disk{i},format=raw"),
            "-device".to_string(),
            format!("virtio-blk-pci,drive=disk{i}"),
        ]);
    }
    args
}

#[cfg(test)]
mod disk_tests {
    use super::*;

    fn config() -> LaunchConfig {
        LaunchConfig::new(GuestImage {
            kernel: "/k".into(),
            initrd: "/i".into(),
            append: String::new(),
            version: "custom".into(),
        })
    }

    #[test]
    fn no_disk_gives_no_drive() {
        assert!(disk_args(&config()).is_empty());
    }

    #[test]
    fn the_disk_comes_first_then_the_extra_disks_in_order() {
        let mut cfg = config();
        cfg.disk = Some("/d/a.img".into());
        cfg.extra_disks = vec!["/d/b,1.img".into(), "/d/c.img".into()];
        assert_eq!(
            disk_args(&cfg),
            [
                "-drive",
                "file=/d/a.img,if=none,id=disk0,format=raw",
                "-device",
                "virtio-blk-pci,drive=disk0",
                "-drive",
                "file=/d/b,,1.img,if=none,id=disk1,format=raw",
                "-device",
                "virtio-blk-pci,drive=disk1",
                "-drive",
                "file=/d/c.img,if=none,id=disk2,format=raw",
                "-device",
                "virtio-blk-pci,drive=disk2",
            ]
        );
    }

    #[test]
    fn extra_disks_alone_start_at_the_first_device() {
        let mut cfg = config();
        cfg.extra_disks = vec!["/d/b.img".into()];
        assert_eq!(
            disk_args(&cfg),
            [
                "-drive",
                "file=/d/b.img,if=none,id=disk0,format=raw",
                "-device",
                "virtio-blk-pci,drive=disk0",
            ]
        );
    }
}

fn spawn_console_reader(
    mut console: UnixStream,
    tail: Arc<Mutex<Vec<u8>>>,
    sink: Option<Arc<Mutex<dyn Write + Send>>>,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = console.read(&mut buf) {
            if let Some(sink) = &sink {
                let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
                let _ = sink.write_all(&buf[..n]);
                let _ = sink.flush();
            }
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > CONSOLE_TAIL {
                let cut = tail.len() - CONSOLE_TAIL;
                tail.drain(..cut);
            }
        }
    });
}

fn spawn_control_reader(
    control: UnixStream,
    last_event_at: Arc<Mutex<Option<Instant>>>,
) -> Receiver<Result<ControlEvent, String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(control).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut at) = last_event_at.lock() {
                *at = Some(Instant::now());
            }
            let line = line.trim();
            let event = if line.is_empty() {
                continue;
            } else if line == "VMPROBE:READY" {
                Ok(ControlEvent::Ready)
            } else if let Some(status) = line.strip_prefix("VMPROBE:EXIT ") {
                status
                    .trim()
                    .parse()
                    .map(ControlEvent::Exited)
                    .map_err(|_| line.to_string())
            } else {
                Err(line.to_string())
            };
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    rx
}

fn last_lines(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    let joined = lines[start..].join(" | ");
    if joined.is_empty() {
        "no error output".into()
    } else {
        joined
    }
}

/// Whether process `pid` is stopped: state `T` or `t` in `/proc/PID/stat`
/// (after the command name, which may itself hold parentheses).
pub fn process_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            Some(rest.trim_start().starts_with(['T', 't']))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod stopped_tests {
    #[test]
    fn a_stopped_process_is_seen_stopped_and_a_running_one_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!super::process_stopped(pid));
        let kill = |sig: &str| {
            std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .unwrap()
        };
        kill("-STOP");
        let start = std::time::Instant::now();
        while !super::process_stopped(pid) {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        kill("-CONT");
        while super::process_stopped(pid) {
            assert!(start.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(!super::process_stopped(u32::MAX));
    }
}
