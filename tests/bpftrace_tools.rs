//! The tools Debian's bpftrace package ships (`/usr/sbin/*.bt`), run as
//! shipped against the default guest. Each has an entry in [`TOOLS`]:
//!
//! - `Refused(TEXT)`: `vmprobe run TOOL` fails before booting anything,
//!   with an error containing TEXT (what vmprobe lacks or the guest kernel
//!   does not have). When a feature lands, its tools move to `Runs`.
//! - `Runs { .. }`: the tool attaches to ONE long-lived guest (as
//!   tests/scripts.rs does), a workload exercises it, Ctrl-C ends it, and
//!   a check compares its output with what the workload did or with the
//!   guest kernel's own kprobe counts.
//!
//! Kernel counts bracket the tool's window: `hits` before and after the
//! workload (inside the window: a lower bound) and before attaching and
//! after detaching (around it: an upper bound), from the guest kernel's
//! kprobe_profile, or uprobe_profile for a truth `u:PATH:FUNC` (the guest
//! kernel's own uprobe at FUNC's file offset in PATH, read from the default
//! guest's host copy).
//!
//! The test prints a table of tool and outcome. Without /usr/sbin/*.bt
//! (bpftrace not installed: .ci/install-deps installs it) it says so and
//! passes.
//!
//! Long file: the table of the 38 tools, their checks and the runner on
//! one guest are one harness, used only here.

mod support;

use qemu_guest::{Accel, LaunchConfig, Vm};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const TOOLS_DIR: &str = "/usr/sbin";
const ATTACH_LIMIT: Duration = Duration::from_secs(90);
const WORKLOAD_LIMIT: Duration = Duration::from_secs(60);
const DETACH_LIMIT: Duration = Duration::from_secs(60);
const STEP_LIMIT: Duration = Duration::from_secs(30);

/// What a run gives a check.
struct Run {
    stdout: String,
    console: String,
}

impl Run {
    /// `(inside, around)`: the guest kernel's hits of truth `name` during
    /// the workload, and from before attaching to after detaching.
    fn bounds(&self, name: &str) -> Result<(u64, u64), String> {
        let get = |tag: &str| {
            self.console
                .lines()
                .filter_map(|l| l.trim().strip_prefix(&format!("{tag} {name} ")))
                .find_map(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("no {tag} {name} in the console:\n{}", self.console))
        };
        let (a, b, c, d) = (get("GTA")?, get("GTB")?, get("GTC")?, get("GTD")?);
        Ok((c - b, d - a))
    }

    /// An integer the workload printed as `KEY=N`.
    fn console_value(&self, key: &str) -> Result<u64, String> {
        self.console
            .lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
            .find_map(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("the workload printed no {key}=N:\n{}", self.console))
    }

    /// A word the workload printed as `KEY=WORD`.
    fn console_value_text(&self, key: &str) -> Result<String, String> {
        self.console
            .lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("{key}=")))
            .map(|v| v.trim().to_string())
            .find(|v| !v.is_empty())
            .ok_or_else(|| format!("the workload printed no {key}=WORD:\n{}", self.console))
    }

    /// Lines of the tool's output with every word of `words`.
    fn lines_with(&self, words: &[&str]) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                words.iter().all(|x| w.contains(x))
            })
            .collect()
    }

    /// `@map[key]: N` lines of the tool's output (the last of each key).
    fn map(&self, name: &str) -> BTreeMap<String, u64> {
        let prefix = format!("@{name}[");
        let mut m = BTreeMap::new();
        for l in self.stdout.lines() {
            if let Some(rest) = l.strip_prefix(&prefix)
                && let Some((k, v)) = rest.split_once("]: ")
                && let Ok(v) = v.trim().parse()
            {
                m.insert(k.to_string(), v);
            }
        }
        m
    }
}

type Check = fn(&Run) -> Result<(), String>;

enum Expect {
    Refused(&'static str),
    /// Served, but this test has no workload to judge it by: listed with
    /// the reason, counted neither way.
    Unjudged(&'static str),
    Runs {
        /// Shell for the guest (in /tmp).
        workload: &'static str,
        /// Shell run before the truths are armed and the tool attaches
        /// (empty for most): loads the modules whose functions the tool
        /// and its truths probe, which neither the guest kernel's kprobes
        /// nor the tool can name before they are loaded.
        setup: &'static str,
        /// (name, kernel function, or `u:PATH:FUNC` for a user function):
        /// counted by the guest's own kprobes (uprobes).
        truths: &'static [(&'static str, &'static str)],
        check: Check,
        /// What the check establishes, for the table.
        judged: &'static str,
    },
}
use Expect::*;

/// The default guest has glibc but no OpenSSL: `libssl` is in no entry of
/// its ld cache. (With libssl3 added, the libcrypto probes would still fail:
/// Debian's libcrypto.so.3 is stripped of its local symbols, and
/// `rsa_ossl_public_encrypt`, `ossl_ecdsa_sign`, ... are not in `nm -D`.)
const NO_LIBSSL: &str = "libssl: no library libssl.so* in the guest's ld cache";

/// A loopback TCP session: `nc -l -p PORT` (its pid as SPID; PORT is HEX in
/// /proc/net/tcp*, where the client waits for the listener) and a client
/// sending `hello` (its pid as CPID).
macro_rules! tcp_loopback {
    ($port:literal, $hex:literal) => {
        concat!(
            "ip link set lo up; nc -l -p ",
            $port,
            " < /dev/null > /dev/null & echo SPID=$!; \
             while ! cat /proc/net/tcp /proc/net/tcp6 | grep -q ':",
            $hex,
            " [0-9A-F]*:0000 0A'; do usleep 10000; done; \
             echo hello | nc 127.0.0.1 ",
            $port,
            " & echo CPID=$!; wait"
        )
    };
}

/// Every tool of bpftrace 0.17's package and what it does here.
const TOOLS: &[(&str, Expect)] = &[
    (
        "bashreadline",
        Runs {
            // bash -i reads its commands with readline from any input, a
            // pipe here (no terminal: readline falls back to a dumb one);
            // the last line is `exit`, so readline never returns NULL at EOF.
            workload: "printf '%s\\n' 'echo BPID=$$' 'echo RL-TWO $((6*7))' 'true RL-THREE' exit | bash --norc --noprofile -i",
            setup: "",
            truths: &[("gtrl", "u:/bin/bash:readline")],
            check: bashreadline,
            judged: "each command line the workload fed bash, once, with bash's pid; as many as the guest's own uprobe on readline counts",
        },
    ),
    (
        "biolatency",
        Refused("unknown kernel symbol 'blk_account_io_start'"),
    ),
    (
        "biosnoop",
        Refused("unknown kernel symbol 'blk_account_io_start'"),
    ),
    (
        "biostacks",
        Refused("unknown kernel symbol 'blk_account_io_start'"),
    ),
    (
        "bitesize",
        Runs {
            workload: "dd if=/dev/vda of=/dev/null bs=4096 count=16 iflag=direct 2>/dev/null",
            setup: "",
            truths: &[("gtrq", "blk_mq_start_request")],
            check: bitesize,
            judged: "dd's 16 direct 4 KiB reads of the disk in its histogram, all requests as many as the kernel counts",
        },
    ),
    (
        "capable",
        Runs {
            workload: "mknod /tmp/capnode c 1 3; rm -f /tmp/capnode",
            setup: "",
            truths: &[],
            check: capable,
            judged: "prints mknod's CAP_MKNOD check, uid 0",
        },
    ),
    (
        "cpuwalk",
        Runs {
            workload: "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
            setup: "",
            truths: &[],
            check: cpuwalk,
            judged: "samples, on CPUs 0-1 only",
        },
    ),
    (
        "dcsnoop",
        Runs {
            workload: "cat /tmp/dcsnoop-missing 2>/dev/null; true",
            setup: "",
            truths: &[],
            check: dcsnoop,
            judged: "prints cat's lookup of the missing name",
        },
    ),
    (
        "execsnoop",
        Runs {
            // By path: busybox's shell runs its own applets without exec.
            workload: "/bin/busybox ls -a /tmp > /dev/null; /bin/busybox uname -s -r > /dev/null",
            setup: "",
            truths: &[],
            check: execsnoop,
            judged: "prints each command the workload execs, with its arguments",
        },
    ),
    (
        "gethostlatency",
        Runs {
            // glibc's getent: `ahosts` calls getaddrinfo, `hosts`
            // gethostbyname2 (AF_INET6 first; /etc/hosts has ::1 localhost).
            workload: "getent ahosts localhost > /dev/null & echo GPID=$!; wait; \
                       getent hosts localhost > /dev/null & echo GPID=$!; wait",
            setup: "",
            truths: &[
                ("gtgai", "u:/lib/x86_64-linux-gnu/libc.so.6:getaddrinfo"),
                ("gtghbn", "u:/lib/x86_64-linux-gnu/libc.so.6:gethostbyname"),
                (
                    "gtghbn2",
                    "u:/lib/x86_64-linux-gnu/libc.so.6:gethostbyname2",
                ),
            ],
            check: gethostlatency,
            judged: "one line per lookup, host localhost, getent's pids; as many as the guest's own uprobes count",
        },
    ),
    (
        "killsnoop",
        Runs {
            workload: "sleep 30 & echo TPID=$!; kill -15 $!; wait",
            setup: "",
            truths: &[],
            check: killsnoop,
            judged: "prints the kill of the workload's sleep, signal 15",
        },
    ),
    (
        "loads",
        Runs {
            // The kernel's own view, every 0.5 s while the tool samples each
            // second (both change only at the kernel's 5 s updates).
            workload: "for i in 1 2 3 4 5 6; do echo LOADAVG=$(cut -d' ' -f1 /proc/loadavg | tr -d .); sleep 0.5; done",
            setup: "",
            truths: &[],
            check: loads,
            judged: "each load1 printed is one /proc/loadavg showed (to 0.02)",
        },
    ),
    (
        "mdflush",
        Runs {
            // A linear md array over /dev/vdc without mdadm, through md's
            // sysfs (Documentation/admin-guide/md.rst): no metadata, the
            // one device in slot 0 with its whole size (KiB). An fsync of
            // /dev/md0 sends md an empty REQ_PREFLUSH bio, which linear's
            // make_request hands to md_flush_request.
            workload: "d=/sys/block/md0/md; echo md0 > /sys/module/md_mod/parameters/new_array && \
                       echo none > $d/metadata_version && echo linear > $d/level && \
                       echo 1 > $d/raid_disks && cat /sys/block/vdc/dev > $d/new_dev && \
                       echo 0 > $d/dev-vdc/slot && echo $(($(cat /sys/block/vdc/size) / 2)) > $d/dev-vdc/size && \
                       echo active > $d/array_state && grep '^md0 ' /proc/mdstat && \
                       for i in 1 2 3; do dd if=/dev/zero of=/dev/md0 bs=4096 count=4 conv=fsync 2>/dev/null || exit 1; done; \
                       echo clear > $d/array_state",
            setup: MD_MODULES,
            truths: &[("gtmdf", "md_flush_request")],
            check: mdflush,
            judged: "a line per flush of md0 by dd, as many as the kernel counts md_flush_request (at least the workload's 3 fsyncs of a linear array on /dev/vdc)",
        },
    ),
    (
        "naptime",
        Runs {
            workload: "sleep 1; usleep 1000",
            setup: "",
            truths: &[("gtnap", "__x64_sys_nanosleep")],
            check: naptime,
            judged: "as many naps as the kernel counts nanosleeps (glibc sleeps with clock_nanosleep: none)",
        },
    ),
    ("oomkill", Refused("cat() would read a host file")),
    (
        "opensnoop",
        Runs {
            workload: "echo x > /tmp/opensnoop-file; cat /tmp/opensnoop-file > /dev/null; cat /tmp/opensnoop-missing 2>/dev/null; true",
            setup: "",
            truths: &[],
            check: opensnoop,
            judged: "prints the paths cat opens, ENOENT for the missing one",
        },
    ),
    (
        "pidpersec",
        Runs {
            workload: "for i in $(seq 20); do /bin/true; done; sleep 2",
            setup: "",
            truths: &[("gtclone", "kernel_clone")],
            check: pidpersec,
            judged: "new processes per second add up to the forks the kernel counts (at least the workload's 20)",
        },
    ),
    (
        "runqlat",
        Runs {
            workload: "for i in 1 2 3 4 5; do usleep 100000; done; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
            setup: "",
            truths: &[("gtsw", "finish_task_switch.isra.0")],
            check: runqlat,
            judged: "at least one run-queue latency per sleep that woke, at most one per context switch the kernel made",
        },
    ),
    (
        "runqlen",
        Runs {
            workload: "sleep 1",
            setup: "",
            truths: &[],
            check: runqlen,
            judged: "samples run queue lengths",
        },
    ),
    (
        "setuids",
        Runs {
            workload: "mkdir -p /etc; echo tooluser:x:1234:1234::/tmp:/bin/sh >> /etc/passwd; su -s /bin/sh tooluser -c true",
            setup: "",
            truths: &[],
            check: setuids,
            judged: "prints su's setuid(1234)",
        },
    ),
    ("ssllatency", Refused(NO_LIBSSL)),
    ("sslsnoop", Refused(NO_LIBSSL)),
    (
        "statsnoop",
        Runs {
            workload: "stat -f /tmp > /dev/null; stat -f /tmp/statsnoop-missing 2>/dev/null; true",
            setup: "",
            truths: &[],
            check: statsnoop,
            judged: "prints the paths stat -f passes to statfs, ENOENT for the missing one",
        },
    ),
    (
        "swapin",
        Runs {
            workload: "sleep 1",
            setup: "",
            truths: &[("gtswap", "swap_readpage")],
            check: swapin,
            judged: "counts swap-ins as the kernel does (none: no swap)",
        },
    ),
    (
        "syncsnoop",
        Runs {
            workload: "sync; sync; sync",
            setup: "",
            truths: &[("gtsync", "__x64_sys_sync")],
            check: syncsnoop,
            judged: "prints each of the 3 sync calls the kernel counts",
        },
    ),
    (
        "syscount",
        Runs {
            // The guest's own raw_syscalls event, for dd only.
            workload: "t=/sys/kernel/tracing; e=$t/events/raw_syscalls/sys_enter; \
                       echo > $t/trace; echo 'comm == \"dd\"' > $e/filter; echo 1 > $e/enable; \
                       dd if=/dev/zero of=/dev/null bs=1 count=20 2>/dev/null; \
                       echo 0 > $e/enable; echo 0 > $e/filter; \
                       echo DD_SYSCALLS=$(grep -c ' sys_enter: ' $t/trace)",
            setup: "",
            truths: &[],
            check: syscount,
            judged: "dd's syscalls equal the guest's own raw_syscalls:sys_enter events for dd",
        },
    ),
    (
        "tcpaccept",
        Runs {
            workload: tcp_loopback!("5001", "1389"),
            setup: "",
            truths: &[("gtacc", "inet_csk_accept")],
            check: tcpaccept,
            judged: "prints nc -l's accept on loopback (v4-mapped on its IPv6 socket), as many as the kernel counts",
        },
    ),
    (
        "tcpconnect",
        Runs {
            workload: tcp_loopback!("5002", "138A"),
            setup: "",
            truths: &[("gtconn", "tcp_connect")],
            check: tcpconnect,
            judged: "prints nc's connect to 127.0.0.1:5002, as many as the kernel counts",
        },
    ),
    // Served (skb:kfree_skb, emulated), but it prints only drops with a
    // reason of packets a socket owns; loopback orphans what it sends, and
    // no workload here makes such a drop.
    (
        "tcpdrop",
        Unjudged("no workload here drops a TCP packet the kernel attributes to a socket"),
    ),
    (
        "tcplife",
        Runs {
            workload: tcp_loopback!("5003", "138B"),
            setup: "",
            truths: &[],
            check: tcplife,
            judged: "prints both ends of nc's loopback session, ports and client pid as the workload had them",
        },
    ),
    (
        "tcpretrans",
        Runs {
            // A SYN into a route that loops back to no local address: the
            // kernel retransmits it until nc's 3 s connect timeout.
            workload: "ip link set lo up; ip route add 10.9.9.0/24 dev lo 2>/dev/null; \
                       nc -w 3 10.9.9.2 80 < /dev/null; true",
            setup: "",
            truths: &[("gtretr", "tcp_retransmit_skb")],
            check: tcpretrans,
            judged: "prints each retransmit of an unanswered SYN the kernel counts (at least one)",
        },
    ),
    (
        "tcpsynbl",
        Runs {
            workload: "sleep 1",
            setup: "",
            truths: &[("gtsyn", "tcp_v4_syn_recv_sock")],
            check: tcpsynbl,
            judged: "counts SYN backlogs as the kernel does (none: no network)",
        },
    ),
    // Without usym, its uprobe would fail as bpftrace 0.17's does on this
    // glibc (2.36): pthread_create moved into libc.so.6, and the guest's
    // libpthread.so.0 defines no function (`nm -D`: version symbols only).
    // glibc 2.36 moved pthread_create into libc.so.6; bpftrace fails so too.
    (
        "threadsnoop",
        Refused("libpthread.so.0) has no function 'pthread_create'"),
    ),
    (
        "undump",
        Runs {
            workload: "sleep 1",
            setup: "",
            truths: &[("gtunix", "unix_stream_read_actor")],
            check: undump,
            judged: "prints a line per unix stream read the kernel counts",
        },
    ),
    (
        "vfscount",
        Runs {
            workload: "echo x > /tmp/vfscount; cat /tmp/vfscount > /dev/null",
            setup: "",
            truths: &[("gtr", "vfs_read"), ("gtw", "vfs_write")],
            check: vfscount,
            judged: "vfs_read/vfs_write counts within the kernel's",
        },
    ),
    (
        "vfsstat",
        Runs {
            workload: "echo x > /tmp/vfsstat; for i in 1 2 3; do cat /tmp/vfsstat > /dev/null; sleep 1; done",
            setup: "",
            truths: &[("gtr", "vfs_read")],
            check: vfsstat,
            judged: "per-second vfs_read counts add up within the kernel's",
        },
    ),
    (
        "writeback",
        Runs {
            workload: "echo VDA=$(cat /sys/block/vda/dev); echo 1 > /proc/sys/vm/dirty_expire_centisecs; \
                       echo 10 > /proc/sys/vm/dirty_writeback_centisecs; \
                       dd if=/dev/zero of=/dev/vda bs=4096 count=64 2>/dev/null; sleep 2",
            setup: "",
            truths: &[("gtwb", "wb_writeback")],
            check: writeback,
            judged: "the flusher's writebacks of the disk's dirty pages, named as the guest's /sys/block/vda/dev",
        },
    ),
    (
        "xfsdist",
        Runs {
            // /dev/vdb is an XFS filesystem made on the host: 8 writes and
            // an fsync (dd), then the file read by cat and by dd (9 reads,
            // the last at the end of the file), 3 opens in all.
            workload: "mkdir -p /tmp/xfs && mount -t xfs /dev/vdb /tmp/xfs && \
                       dd if=/dev/zero of=/tmp/xfs/f bs=4096 count=8 conv=fsync 2>/dev/null && \
                       cat /tmp/xfs/f > /dev/null && dd if=/tmp/xfs/f of=/dev/null bs=4096 2>/dev/null; \
                       status=$?; umount /tmp/xfs && exit $status",
            setup: XFS_MODULES,
            truths: &XFS_TRUTHS,
            check: xfsdist,
            judged: "a latency histogram per XFS operation (read, write, open, fsync of files on /dev/vdb), each as many as the kernel counts that function",
        },
    ),
];

/// Setup of the md tool: md and its linear personality (loaded once,
/// kept), and no md0 left by an earlier run that failed.
const MD_MODULES: &str = "for m in md-mod linear; do insmod /lib/modules/$m.ko 2>/dev/null; done; \
                          grep -q '^linear ' /proc/modules && \
                          { [ ! -e /sys/block/md0/md ] || echo clear > /sys/block/md0/md/array_state; }";

/// Setup of the XFS tool: xfs after what its init needs (loaded once, kept).
const XFS_MODULES: &str = "for m in crc32c_generic libcrc32c xfs; do insmod /lib/modules/$m.ko 2>/dev/null; done; \
                           grep -q '^xfs ' /proc/modules";

/// xfsdist's functions, each with its truth and the calls the workload
/// makes at least.
const XFS_OPS: [(&str, &str, u64); 4] = [
    ("gtxr", "xfs_file_read_iter", 9),
    ("gtxw", "xfs_file_write_iter", 8),
    ("gtxo", "xfs_file_open", 3),
    ("gtxf", "xfs_file_fsync", 1),
];

const XFS_TRUTHS: [(&str, &str); 4] = [
    (XFS_OPS[0].0, XFS_OPS[0].1),
    (XFS_OPS[1].0, XFS_OPS[1].1),
    (XFS_OPS[2].0, XFS_OPS[2].1),
    (XFS_OPS[3].0, XFS_OPS[3].1),
];

fn capable(r: &Run) -> Result<(), String> {
    // UID PID COMM CAP NAME AUDIT
    let l = r.lines_with(&["mknod", "27", "CAP_MKNOD"]);
    match l.first() {
        Some(l) if l.split_whitespace().nth(1) == Some("0") => Ok(()),
        Some(l) => Err(format!("mknod's check is not uid 0: {l}")),
        None => Err("no CAP_MKNOD check by mknod".into()),
    }
}

fn cpuwalk(r: &Run) -> Result<(), String> {
    let cpus = lhist_buckets(&r.stdout, "cpu");
    if cpus.is_empty() {
        return Err("no @cpu histogram".into());
    }
    match cpus.iter().find(|(c, _)| *c > 1) {
        Some((c, _)) => Err(format!("a sample on CPU {c} of a 2-vCPU guest")),
        None => Ok(()),
    }
}

fn dcsnoop(r: &Run) -> Result<(), String> {
    // The lookup that misses: `M dcsnoop-missing` by cat.
    if r.lines_with(&["cat", "M", "dcsnoop-missing"]).is_empty() {
        return Err("no miss of dcsnoop-missing by cat".into());
    }
    Ok(())
}

fn bashreadline(r: &Run) -> Result<(), String> {
    let bpid = r.console_value("BPID")?.to_string();
    // TIME PID COMMAND
    for cmd in [
        "echo BPID=$$",
        "echo RL-TWO $((6*7))",
        "true RL-THREE",
        "exit",
    ] {
        let n = r
            .stdout
            .lines()
            .filter(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() > 2 && w[1] == bpid && l.ends_with(&format!(" {cmd}"))
            })
            .count();
        if n != 1 {
            return Err(format!("{n} lines of '{cmd}' from bash {bpid}"));
        }
    }
    let lines = r
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(&bpid))
        .count() as u64;
    let (inside, around) = r.bounds("gtrl")?;
    if !(inside <= lines && lines <= around) || lines != 4 {
        return Err(format!(
            "{lines} lines; the guest's uprobe counted {inside} readline calls inside, {around} around"
        ));
    }
    eprintln!(
        "bashreadline: {lines} lines of bash {bpid}; the guest's uprobe: {inside} inside, {around} around"
    );
    Ok(())
}

fn gethostlatency(r: &Run) -> Result<(), String> {
    let pids: Vec<String> = r
        .console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("GPID="))
        .map(|p| p.trim().to_string())
        .collect();
    if pids.len() != 2 {
        return Err(format!("the workload printed {} GPID=N", pids.len()));
    }
    // TIME PID COMM LATms HOST
    let lines: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() == 5 && w[2] == "getent" && w[4] == "localhost"
        })
        .collect();
    for p in &pids {
        if !lines.iter().any(|l| l.split_whitespace().nth(1) == Some(p)) {
            return Err(format!("no lookup of localhost by getent {p}"));
        }
    }
    let (mut inside, mut around) = (0, 0);
    for t in ["gtgai", "gtghbn", "gtghbn2"] {
        let (i, a) = r.bounds(t)?;
        inside += i;
        around += a;
    }
    let n = lines.len() as u64;
    if !(inside <= n && n <= around) || inside == 0 {
        return Err(format!(
            "{n} lookups printed; the guest's uprobes counted {inside} inside, {around} around"
        ));
    }
    eprintln!(
        "gethostlatency: {n} lookups by {pids:?}; the guest's uprobes: {inside} inside, {around} around"
    );
    Ok(())
}

fn execsnoop(r: &Run) -> Result<(), String> {
    // TIME PID ARGS: the arguments as joined by join(args->argv).
    for cmd in ["/bin/busybox ls -a /tmp", "/bin/busybox uname -s -r"] {
        if !r.stdout.lines().any(|l| l.ends_with(&format!(" {cmd}"))) {
            return Err(format!("no exec of '{cmd}'"));
        }
    }
    Ok(())
}

fn killsnoop(r: &Run) -> Result<(), String> {
    let tpid = r.console_value("TPID")?.to_string();
    // PID COMM SIG TPID RESULT
    let l = r
        .stdout
        .lines()
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 6 && w[3] == "15" && w[4] == tpid && w[5] == "0"
        })
        .count();
    match l {
        1 => Ok(()),
        n => Err(format!("{n} lines of signal 15 to {tpid} with result 0")),
    }
}

fn loads(r: &Run) -> Result<(), String> {
    // `load averages: 0.123 ...`; /proc/loadavg rounds to 2 decimals.
    let proc: Vec<f64> = r
        .console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LOADAVG="))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .map(|v| v as f64 / 100.0)
        .collect();
    let tool: Vec<f64> = r
        .stdout
        .lines()
        .filter_map(|l| l.split("load averages: ").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    if tool.is_empty() || proc.is_empty() {
        return Err(format!(
            "{} load lines, {} /proc/loadavg reads",
            tool.len(),
            proc.len()
        ));
    }
    for t in &tool {
        if !proc.iter().any(|p| (t - p).abs() <= 0.02) {
            return Err(format!("load1 {t}, and /proc/loadavg showed {proc:?}"));
        }
    }
    Ok(())
}

fn mdflush(r: &Run) -> Result<(), String> {
    if !r.console.contains("md0 : active linear vdc[0]") {
        return Err("/proc/mdstat showed no active linear md0 on vdc".into());
    }
    // TIME PID COMM DEVICE
    let rows = rows(r, 4, 1);
    if let Some(w) = rows.iter().find(|w| w[3] != "md0" || w[2] != "dd") {
        return Err(format!(
            "a flush of {} by {}: only dd flushes md0",
            w[3], w[2]
        ));
    }
    let n = rows.len() as u64;
    let (inside, _) = r.bounds("gtmdf")?;
    if inside < 3 {
        return Err(format!(
            "the kernel counted {inside} md_flush_request calls; the workload fsynced md0 3 times"
        ));
    }
    within(r, n, "flushes of md0", "gtmdf")?;
    eprintln!(
        "mdflush: {n} flushes of md0 printed; the kernel counted {inside} during the workload"
    );
    Ok(())
}

fn xfsdist(r: &Run) -> Result<(), String> {
    for (truth, func, least) in XFS_OPS {
        let n = hist_total(&r.stdout, &format!("@us[{func}]:"));
        let (inside, _) = r.bounds(truth)?;
        if inside < least {
            return Err(format!(
                "the kernel counted {inside} calls of {func}; the workload made at least {least}"
            ));
        }
        within(r, n, &format!("@us[{func}] samples"), truth)?;
        eprintln!(
            "xfsdist: @us[{func}]: {n} samples; the kernel counted {inside} during the workload"
        );
    }
    Ok(())
}

fn naptime(r: &Run) -> Result<(), String> {
    // PPID PCOMM PID COMM SECONDS, after the header.
    let naps = r
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().count() == 5 && !l.starts_with("TIME"))
        .count() as u64;
    within(r, naps, "naps", "gtnap")
}

fn opensnoop(r: &Run) -> Result<(), String> {
    // PID COMM FD ERR PATH
    let found = r.lines_with(&["cat", "/tmp/opensnoop-file"]);
    if !found
        .iter()
        .any(|l| l.split_whitespace().nth(3) == Some("0"))
    {
        return Err("no successful open of /tmp/opensnoop-file by cat".into());
    }
    let missing = r.lines_with(&["cat", "-1", "2", "/tmp/opensnoop-missing"]);
    if missing.is_empty() {
        return Err("no ENOENT open of /tmp/opensnoop-missing by cat".into());
    }
    Ok(())
}

fn runqlen(r: &Run) -> Result<(), String> {
    let b = lhist_buckets(&r.stdout, "runqlen");
    if b.iter().map(|(_, n)| n).sum::<u64>() == 0 {
        return Err("no @runqlen samples".into());
    }
    Ok(())
}

fn setuids(r: &Run) -> Result<(), String> {
    // PID COMM UID setuid uid=NEW (RET): su was root until then.
    if r.lines_with(&["su", "0", "setuid", "uid=1234", "(0)"])
        .is_empty()
    {
        return Err("no setuid(1234) by su".into());
    }
    Ok(())
}

fn statsnoop(r: &Run) -> Result<(), String> {
    // PID COMM ERR PATH
    if r.lines_with(&["stat", "0", "/tmp"]).is_empty() {
        return Err("no successful statfs of /tmp by stat".into());
    }
    if r.lines_with(&["stat", "2", "/tmp/statsnoop-missing"])
        .is_empty()
    {
        return Err("no ENOENT statfs of /tmp/statsnoop-missing by stat".into());
    }
    Ok(())
}

/// A count the tool keeps in `@name` (0 when it prints none) lies within
/// the kernel's bounds for `truth`.
fn within(r: &Run, count: u64, what: &str, truth: &str) -> Result<(), String> {
    let (inside, around) = r.bounds(truth)?;
    if count < inside || count > around {
        return Err(format!(
            "{what}: {count}, the guest kernel's {inside} during the workload, {around} around the run"
        ));
    }
    Ok(())
}

/// The counts of the histogram printed under `head` (`@[dd]:`, `@usecs:`).
fn hist_total(stdout: &str, head: &str) -> u64 {
    let mut inside = false;
    let mut n = 0;
    for l in stdout.lines() {
        if l.starts_with('@') {
            inside = l.starts_with(head);
        } else if inside && l.starts_with('[') {
            n += l
                .split_once([')', ']'])
                .and_then(|(_, r)| r.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    n
}

fn bitesize(r: &Run) -> Result<(), String> {
    let dd = hist_total(&r.stdout, "@[dd]:");
    if dd < 16 {
        return Err(format!(
            "{dd} requests of dd in its histogram; it made 16 reads"
        ));
    }
    let all: u64 = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("@[")?.split_once("]:"))
        .map(|(k, _)| hist_total(&r.stdout, &format!("@[{k}]:")))
        .sum();
    within(r, all, "block requests issued", "gtrq")
}

fn runqlat(r: &Run) -> Result<(), String> {
    // A sample per switch to a task seen woken or preempted: each of the 5
    // usleeps wakes once; switches to idle give none, so the kernel's
    // count of switches bounds it from above only.
    let n = hist_total(&r.stdout, "@usecs:");
    let (_, around) = r.bounds("gtsw")?;
    if n < 5 || n > around {
        return Err(format!(
            "{n} @usecs samples; 5 sleeps woke, the guest kernel switched {around} times around the run"
        ));
    }
    Ok(())
}

fn pidpersec(r: &Run) -> Result<(), String> {
    // `HH:MM:SS PIDs/sec: @: N` each second.
    let n: u64 = r
        .stdout
        .lines()
        .filter_map(|l| l.split_once("PIDs/sec: @: "))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum();
    if n < 20 {
        return Err(format!("{n} new processes printed; the workload made 20"));
    }
    within(r, n, "new processes", "gtclone")
}

fn writeback(r: &Run) -> Result<(), String> {
    let dev = r.console_value_text("VDA")?;
    // TIME DEVICE PAGES REASON ms
    let n = r.lines_with(&[&dev]).len() as u64;
    let (inside, around) = r.bounds("gtwb")?;
    if n == 0 || inside == 0 {
        return Err(format!(
            "{n} writebacks of {dev} printed; the kernel ran wb_writeback {inside} times"
        ));
    }
    // writeback_written fires once per pass of wb_writeback's loop.
    if n > 2 * around.max(1) * 64 {
        return Err(format!(
            "{n} writebacks printed, {around} wb_writeback calls"
        ));
    }
    Ok(())
}

fn swapin(r: &Run) -> Result<(), String> {
    let n = r.map("").values().sum();
    within(r, n, "swap-ins", "gtswap")
}

fn syncsnoop(r: &Run) -> Result<(), String> {
    // PID COMM EVENT; busybox's shell may run `sync` itself (comm sh).
    let n = r
        .stdout
        .lines()
        .filter(|l| l.ends_with(" tracepoint:syscalls:sys_enter_sync"))
        .count() as u64;
    let (inside, _) = r.bounds("gtsync")?;
    if inside != 3 || n != 3 {
        return Err(format!(
            "{n} sync calls printed; the kernel counted {inside} in the workload, which made 3"
        ));
    }
    within(r, n, "sync calls", "gtsync")
}

/// The tool's data lines: `n` words with a number (the pid) as word `pid`
/// (not the header, nor the "Tracing ..." line).
fn rows(r: &Run, n: usize, pid: usize) -> Vec<Vec<&str>> {
    r.stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == n && w[pid].parse::<u64>().is_ok())
        .collect()
}

fn tcpaccept(r: &Run) -> Result<(), String> {
    // TIME PID COMM RADDR RPORT LADDR LPORT BL
    let spid = r.console_value("SPID")?.to_string();
    let rows = rows(r, 8, 1);
    let lo = "::ffff:127.0.0.1";
    if !rows
        .iter()
        .any(|w| w[1] == spid && w[2] == "nc" && w[3] == lo && w[5] == lo && w[6] == "5001")
    {
        return Err(format!("no accept by nc -l (pid {spid}) on port 5001"));
    }
    within(r, rows.len() as u64, "accepts", "gtacc")
}

fn tcpconnect(r: &Run) -> Result<(), String> {
    // TIME PID COMM SADDR SPORT DADDR DPORT
    let cpid = r.console_value("CPID")?.to_string();
    let rows = rows(r, 7, 1);
    if !rows.iter().any(|w| {
        w[1] == cpid && w[2] == "nc" && w[3] == "127.0.0.1" && w[5] == "127.0.0.1" && w[6] == "5002"
    }) {
        return Err(format!("no connect by nc (pid {cpid}) to 127.0.0.1:5002"));
    }
    within(r, rows.len() as u64, "connects", "gtconn")
}

fn tcplife(r: &Run) -> Result<(), String> {
    // PID COMM LADDR LPORT RADDR RPORT TX_KB RX_KB MS: the client's socket
    // (its pid cached at SYN_SENT) and the server's, 5 bytes each way at
    // most (0 KB).
    let cpid = r.console_value("CPID")?.to_string();
    let rows = rows(r, 9, 0);
    let client = rows
        .iter()
        .find(|w| w[0] == cpid && w[1] == "nc" && w[2] == "127.0.0.1" && w[5] == "5003")
        .ok_or_else(|| format!("no session of nc (pid {cpid}) to port 5003"))?;
    let server = rows
        .iter()
        .find(|w| w[3] == "5003" && w[5] == client[3])
        .ok_or_else(|| format!("no server end of port 5003 from port {}", client[3]))?;
    for w in [client, server] {
        if w[6] != "0" || w[7] != "0" {
            return Err(format!("{} KB sent, {} KB received: {w:?}", w[6], w[7]));
        }
    }
    Ok(())
}

fn tcpretrans(r: &Run) -> Result<(), String> {
    // TIME PID LADDR:LPORT RADDR:RPORT STATE
    let n = r.lines_with(&["10.9.9.2:80", "SYN_SENT"]).len() as u64;
    let (inside, _) = r.bounds("gtretr")?;
    if inside == 0 {
        return Err("the kernel retransmitted nothing during the workload".into());
    }
    within(r, n, "retransmits of the SYN to 10.9.9.2:80", "gtretr")
}

fn tcpsynbl(r: &Run) -> Result<(), String> {
    let n = lhist_buckets(&r.stdout, "backlog")
        .iter()
        .map(|(_, n)| n)
        .sum();
    within(r, n, "SYN backlog samples", "gtsyn")
}

fn undump(r: &Run) -> Result<(), String> {
    // One `HH:MM:SS COMM PID SIZE DATA` line per read.
    let timed = |l: &&str| {
        let b = l.as_bytes();
        b.len() > 9 && b[2] == b':' && b[5] == b':' && b[8] == b' '
    };
    let n = r.stdout.lines().filter(timed).count() as u64;
    within(r, n, "unix stream reads", "gtunix")
}

fn syscount(r: &Run) -> Result<(), String> {
    let truth = r.console_value("DD_SYSCALLS")?;
    let dd = r.map("process").get("dd").copied().unwrap_or(0);
    if dd != truth || truth < 40 {
        return Err(format!(
            "@process[dd]: {dd}; the guest's raw_syscalls events for dd: {truth} (at least its 20 reads and 20 writes)"
        ));
    }
    Ok(())
}

fn vfscount(r: &Run) -> Result<(), String> {
    let m = r.map("");
    let get = |f: &str| m.get(f).copied().unwrap_or(0);
    within(r, get("vfs_read"), "vfs_read", "gtr")?;
    within(r, get("vfs_write"), "vfs_write", "gtw")
}

fn vfsstat(r: &Run) -> Result<(), String> {
    // One `@[vfs_read]: N` per second, each cleared after printing.
    let total: u64 = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("@[vfs_read]: "))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
    let (_, around) = r.bounds("gtr")?;
    if total == 0 || total > around {
        return Err(format!(
            "vfs_read per second adds up to {total}; the kernel's count around the run is {around}"
        ));
    }
    Ok(())
}

/// `[lo, hi)  N |@@@|` buckets of an `@name` (l)hist: (lo, N).
fn lhist_buckets(stdout: &str, name: &str) -> Vec<(u64, u64)> {
    let mut in_map = false;
    let mut out = Vec::new();
    for l in stdout.lines() {
        if l.starts_with('@') {
            in_map = l.starts_with(&format!("@{name}:"));
            continue;
        }
        if !in_map {
            continue;
        }
        let Some(rest) = l.strip_prefix('[') else {
            continue;
        };
        let lo = rest
            .split([',', ']', ')'])
            .next()
            .and_then(|v| v.trim().parse().ok());
        let n = rest
            .split_once([')', ']'])
            .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok());
        if let (Some(lo), Some(n)) = (lo, n) {
            out.push((lo, n));
        }
    }
    out
}

fn tool_path(name: &str) -> PathBuf {
    Path::new(TOOLS_DIR).join(format!("{name}.bt"))
}

/// The refusal: before any guest boots, with the named difference.
fn refused(name: &str, text: &str) -> Result<String, String> {
    let out = run_bounded(
        vmprobe()
            .arg("run")
            .arg(tool_path(name))
            .args(["--", "true"]),
        Duration::from_secs(120),
    );
    let err = support::text(&out.stderr);
    if out.status.success() {
        return Err(format!("ran, but is expected to be refused with '{text}'"));
    }
    if err.contains("booting") {
        return Err(format!("booted a guest before failing:\n{err}"));
    }
    if !err.contains(text) {
        return Err(format!("refused, but not with '{text}':\n{err}"));
    }
    let first = err
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ");
    Ok(format!("refused before boot: {first}"))
}

/// Runs `cmd` in the guest with nothing attached; Err unless it exits 0.
fn step(g: &mut LongGuest, cmd: &str) -> Result<(), String> {
    g.vm.start_workload(cmd).map_err(|e| e.to_string())?;
    match g.vm.wait_exit(STEP_LIMIT) {
        Ok(0) => Ok(()),
        other => Err(format!(
            "guest step {cmd:?}: {other:?}\n{}",
            g.vm.console_tail()
        )),
    }
}

const TRACING: &str = "/sys/kernel/tracing";

/// `echo TAG NAME HITS` for every truth.
fn hits(tag: &str, truths: &[(&str, &str)]) -> String {
    truths
        .iter()
        .map(|(n, f)| {
            if f.starts_with("u:") {
                // `  PATH NAME HITS`
                format!(
                    "echo {tag} {n} $(awk '$2==\"{n}\"{{print $3}}' {TRACING}/uprobe_profile); "
                )
            } else {
                format!(
                    "echo {tag} {n} $(awk '$1==\"{n}\"{{print $2}}' {TRACING}/kprobe_profile); "
                )
            }
        })
        .collect()
}

/// The guest kernel's probe definition of truth `f` named `n`, and the
/// tracefs file it goes into: `p:NAME FUNC` (kprobe_events), or for
/// `u:PATH:FUNC` `p:NAME PATH:0xOFFSET` (uprobe_events), FUNC's file
/// offset from the default guest's copy of PATH.
fn truth_event(n: &str, f: &str) -> Result<(String, &'static str), String> {
    let Some(user) = f.strip_prefix("u:") else {
        return Ok((format!("p:{n} {f}"), "kprobe"));
    };
    let (path, func) = user.rsplit_once(':').ok_or("u:PATH:FUNC")?;
    let root = qemu_guest::default_guest_root(&qemu_guest::cache_dir())
        .ok_or("the default guest has no host root")?;
    let elf = kernel_image::UserElf::load(&root.join(path.trim_start_matches('/')))
        .map_err(|e| e.to_string())?;
    let sym = elf
        .lookup(func)
        .ok_or_else(|| format!("no {func} in {path}"))?;
    let off = elf
        .file_offset(sym.addr)
        .ok_or_else(|| format!("{func} of {path} is in no segment"))?;
    Ok((format!("p:{n} {path}:{off:#x}"), "uprobe"))
}

/// Attaches the tool, runs its workload, Ctrl-C, detaches.
fn run_tool(
    g: &mut LongGuest,
    name: &str,
    index: usize,
    workload: &str,
    setup: &str,
    truths: &[(&str, &str)],
) -> Result<Run, String> {
    let from = g.console_len();
    let marker = format!("TOOL-DONE-{index}");
    if !setup.is_empty() {
        step(g, setup)?;
    }
    // The guest's own kprobes, enabled before the tool attaches; what an
    // earlier tool's failure left enabled goes first (an enabled event
    // keeps `kprobe_events` from being cleared).
    let mut setup = format!(
        "for e in {TRACING}/events/kprobes/enable {TRACING}/events/uprobes/enable; do [ -e $e ] && echo 0 > $e; done; \
         echo > {TRACING}/kprobe_events; echo > {TRACING}/uprobe_events; "
    );
    for (n, f) in truths {
        let (event, kind) = truth_event(n, f)?;
        setup.push_str(&format!(
            "echo '{event}' >> {TRACING}/{kind}_events && echo 1 > {TRACING}/events/{kind}s/{n}/enable && "
        ));
    }
    setup.push_str(&hits("GTA", truths));
    // The wrapper goes into a file first, unprobed (init reads a command
    // line a byte at a time, each read a hit for tools on reads).
    let wrapper = format!(
        "cd /tmp; {} ( {workload} ); status=$?; {} echo {marker}; exit $status",
        hits("GTB", truths),
        hits("GTC", truths)
    );
    step(
        g,
        &format!(
            "{setup} printf '%s\\n' '{}' > /tmp/w.sh",
            wrapper.replace('\'', "'\\''")
        ),
    )?;
    let mut child = vmprobe()
        .args(["attach", "--vm", &g.attach_spec()])
        .arg(tool_path(name))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning vmprobe: {e}"))?;
    let (stdout, _, out_reader) = collect_lines(child.stdout.take().unwrap());
    let (stderr, lines, err_reader) = collect_lines(child.stderr.take().unwrap());
    let deadline = Instant::now() + ATTACH_LIMIT;
    loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(l) if l.contains("probes live") || l.contains("attached to vm0") => break,
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let _ = wait_child(&mut child, DETACH_LIMIT);
                return Err(format!(
                    "vmprobe ended before attaching:\n{}",
                    stderr.lock().unwrap()
                ));
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("no attach within {ATTACH_LIMIT:?}"));
        }
    }
    g.vm.start_workload("sh /tmp/w.sh")
        .map_err(|e| e.to_string())?;
    let status = g.vm.wait_exit(WORKLOAD_LIMIT);
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::INT,
    );
    let exit = wait_child(&mut child, DETACH_LIMIT);
    let _ = out_reader.join();
    let _ = err_reader.join();
    let err = stderr.lock().unwrap().clone();
    match status {
        Ok(0) => {}
        other => {
            return Err(format!(
                "the workload: {other:?}\n{}",
                g.console_since(from)
            ));
        }
    }
    if !exit.is_some_and(|s| s.success()) {
        return Err(format!("vmprobe exited with {exit:?}:\n{err}"));
    }
    // After detaching: the kernel's count around the run, then its probes go.
    let mut teardown = hits("GTD", truths);
    for (n, f) in truths {
        let kind = if f.starts_with("u:") {
            "uprobe"
        } else {
            "kprobe"
        };
        teardown.push_str(&format!("echo 0 > {TRACING}/events/{kind}s/{n}/enable; "));
    }
    teardown.push_str(&format!(
        "echo > {TRACING}/kprobe_events; echo > {TRACING}/uprobe_events; echo TEARDOWN-{index}"
    ));
    step(g, &teardown)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.console_since(from).contains(&format!("TEARDOWN-{index}")) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Run {
        stdout: stdout.lock().unwrap().clone(),
        console: g.console_since(from),
    })
}

#[test]
fn the_table_names_every_shipped_tool() {
    let names: Vec<&str> = TOOLS.iter().map(|(n, _)| *n).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(names, sorted, "TOOLS is sorted, without duplicates");
    assert_eq!(TOOLS.len(), 38, "bpftrace 0.17 ships 38 tools");
    let Ok(dir) = std::fs::read_dir(TOOLS_DIR) else {
        return;
    };
    let shipped: Vec<String> = dir
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .into_string()
                .ok()?
                .strip_suffix(".bt")
                .map(String::from)
        })
        .collect();
    for s in &shipped {
        assert!(names.contains(&s.as_str()), "{s}.bt has no entry in TOOLS");
    }
}

#[test]
fn bpftraces_tools_as_shipped() {
    let present = TOOLS.iter().filter(|(n, _)| tool_path(n).is_file()).count();
    if present == 0 {
        eprintln!(
            "no {TOOLS_DIR}/*.bt (bpftrace not installed; .ci/install-deps installs it): skipping"
        );
        return;
    }
    let only = std::env::var("VMPROBE_TOOLS").ok();
    let chosen = |n: &str| only.as_ref().is_none_or(|o| o.split(',').any(|x| x == n));
    let mut table: Vec<(&str, Result<String, String>)> = Vec::new();
    for (name, e) in TOOLS {
        if let Unjudged(why) = e
            && chosen(name)
        {
            table.push((name, Ok(format!("not judged: {why}"))));
        }
        if let Refused(text) = e
            && chosen(name)
            && tool_path(name).is_file()
        {
            table.push((name, refused(name, text)));
        }
    }
    let runs: Vec<_> = TOOLS
        .iter()
        .filter(|(n, e)| matches!(e, Runs { .. }) && chosen(n) && tool_path(n).is_file())
        .collect();
    if !runs.is_empty() {
        let image = default_guest();
        let kernel = image.kernel.clone();
        let console = Arc::new(Mutex::new(Vec::new()));
        let mut cfg = LaunchConfig::new(image);
        cfg.accel = Accel::Tcg;
        cfg.vcpus = 2;
        cfg.console = Some(console.clone());
        // A disk for the block tools (bitesize, writeback): /dev/vda.
        let disk = tempfile::NamedTempFile::new().expect("disk file");
        disk.as_file().set_len(32 << 20).expect("disk size");
        cfg.disk = Some(disk.path().to_path_buf());
        // /dev/vdb: an XFS filesystem for xfsdist (xfsprogs 6.1 makes none
        // below 300 MB; the file stays sparse past what mkfs writes).
        let xfs = tempfile::NamedTempFile::new().expect("XFS disk file");
        xfs.as_file().set_len(300 << 20).expect("XFS disk size");
        let mkfs = std::process::Command::new("mkfs.xfs")
            .arg("-q")
            .arg(xfs.path())
            .output();
        let why = match &mkfs {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(support::text(&out.stderr)),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = why {
            panic!(
                "mkfs.xfs {} (xfsprogs; .ci/install-deps installs it): {why}",
                xfs.path().display()
            );
        }
        // /dev/vdc: the one device of mdflush's md array.
        let md = tempfile::NamedTempFile::new().expect("md disk file");
        md.as_file().set_len(16 << 20).expect("md disk size");
        cfg.extra_disks = vec![xfs.path().to_path_buf(), md.path().to_path_buf()];
        let qemu = qemu10();
        let plugin = qemu.is_some();
        if let Some(q) = qemu {
            cfg.qemu = q;
            cfg.plugin = Some(plugin_library());
        }
        let mut vm = Vm::launch(&cfg).expect("launch");
        let mut qmp =
            qemu_vmm::Qmp::connect_unix_wait(&vm.qmp_socket(), Duration::from_secs(5)).unwrap();
        qmp.cont().unwrap();
        vm.wait_ready(Duration::from_secs(180))
            .expect("guest boots");
        let mut g = LongGuest {
            vm,
            kernel,
            console,
            plugin,
            qmp: false,
        };
        for (i, (name, e)) in runs.iter().enumerate() {
            let Runs {
                workload,
                setup,
                truths,
                check,
                judged,
            } = e
            else {
                unreachable!("filtered")
            };
            let t = Instant::now();
            let result = run_tool(&mut g, name, i, workload, setup, truths).and_then(|r| {
                check(&r)
                    .map_err(|e| format!("{e}\n--- stdout\n{}--- console\n{}", r.stdout, r.console))
            });
            eprintln!("tool {name}: {:.1} s", t.elapsed().as_secs_f64());
            table.push((name, result.map(|()| format!("runs, agrees: {judged}"))));
        }
        let _ = g.vm.shutdown(Duration::from_secs(20));
    }
    table.sort_by_key(|(n, _)| *n);
    let agree = table
        .iter()
        .filter(|(_, r)| r.as_ref().is_ok_and(|s| s.starts_with("runs")))
        .count();
    // Written to stderr itself, not through eprintln!, which the test
    // harness captures: the table shows in every run's output.
    let mut out = format!("\n{:<16} outcome\n", "tool");
    for (n, r) in &table {
        match r {
            Ok(s) => out.push_str(&format!("{n:<16} {s}\n")),
            Err(e) => out.push_str(&format!(
                "{n:<16} FAILED: {}\n",
                e.lines().next().unwrap_or("")
            )),
        }
    }
    out.push_str(&format!("{agree} of {} run and agree\n", table.len()));
    let _ = std::io::stderr().write_all(out.as_bytes());
    let failed: Vec<String> = table
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("=== {n}\n{e}")))
        .collect();
    assert!(
        failed.is_empty(),
        "{} tools failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
