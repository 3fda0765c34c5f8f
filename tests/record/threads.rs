//! `vmprobe record --format perfetto` puts each guest task's calls on its
//! own track: checked against the pids the guest prints and the calls its
//! kernel's own kprobe events count, with two tasks blocked on one vCPU.

use super::perfetto_events;
use super::support::*;

/// Two `cat`s block in reads of fifos at the same time on the one vCPU
/// (the shell holds the write ends open), then the shell writes to the
/// first, a second later to the second, and closes both: the cats'
/// blocked `vfs_read`s (each inside its `ksys_read`) overlap in time. The
/// guest kernel's own kprobe events count
/// every `ksys_read` and `vfs_read` meanwhile, with the pid of the task
/// that called it; the shell prints each cat's pid (`$!`).
fn blocked_readers_workload() -> String {
    format!(
        "cd /sys/kernel/tracing && echo 'p:gtk ksys_read' > kprobe_events && \
         echo 'p:gtv vfs_read' >> kprobe_events && echo 1 > events/kprobes/enable && \
         mkfifo /tmp/f1 /tmp/f2 || exit 1; \
         cat /tmp/f1 > /dev/null & echo PID1=$!; exec 3> /tmp/f1; \
         cat /tmp/f2 > /dev/null & echo PID2=$!; exec 4> /tmp/f2; \
         sleep 1; echo x >&3; exec 3>&-; sleep 1; echo y >&4; exec 4>&-; wait; \
         echo 0 > events/kprobes/enable; \
         grep -v '^#' trace | sed 's/^/GT /' > /tmp/gt.txt; cat /tmp/gt.txt; echo {GT_END}"
    )
}

/// The guest kernel's count of `event` (its kprobe event's name) per pid,
/// from the trace lines the workload printed (`GT cat-90 [000] ... gtk: ...`).
fn guest_calls_by_pid(console: &str, event: &str) -> std::collections::BTreeMap<u64, usize> {
    let mut counts = std::collections::BTreeMap::new();
    let tag = format!(": {event}: ");
    for line in console.lines().filter_map(|l| l.strip_prefix("GT ")) {
        if !line.contains(&tag) {
            continue;
        }
        let task = line.split_whitespace().next().unwrap_or("");
        let pid = task.rsplit_once('-').and_then(|(_, p)| p.parse().ok());
        *counts
            .entry(pid.unwrap_or_else(|| panic!("no pid in {line}")))
            .or_default() += 1;
    }
    counts
}

/// Records `ksys_read` and `vfs_read` calls of [`blocked_readers_workload`]
/// as Perfetto JSON and checks its tracks against the guest's own view.
fn calls_nest_on_guest_thread_tracks(backend: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_bounded(
        vmprobe()
            .args(["record", "--console", "--format", "perfetto"])
            .args(backend)
            .arg("-o")
            .arg(dir.path())
            .args([
                "kprobe:ksys_read",
                "kretprobe:ksys_read",
                "kprobe:vfs_read",
                "kretprobe:vfs_read",
                "--",
                &blocked_readers_workload(),
            ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "vmprobe record failed: {stderr}");
    assert!(stderr.contains(GT_END), "the guest's whole trace: {stderr}");
    let said = |key: &str| -> u64 {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("the guest printed no {key}: {stderr}"))
    };
    let cats = [said("PID1="), said("PID2=")];
    let events = perfetto_events(dir.path());
    let id = |e: &serde_json::Value, k: &str| e[k].as_u64().unwrap();
    let ns = |v: &serde_json::Value| (v.as_f64().unwrap() * 1000.0).round() as u64;
    // The last name Perfetto is given for each (pid, tid), and each pid.
    let mut thread_names = std::collections::HashMap::new();
    let mut process_names = std::collections::HashMap::new();
    for e in events.iter().filter(|e| e["ph"] == "M") {
        let name = e["args"]["name"].as_str().unwrap_or("").to_string();
        match e["name"].as_str() {
            Some("thread_name") => thread_names.insert((id(e, "pid"), id(e, "tid")), name),
            Some("process_name") => process_names.insert(id(e, "pid"), name),
            _ => None,
        };
    }
    let of =
        |ph: &str| -> Vec<&serde_json::Value> { events.iter().filter(|e| e["ph"] == ph).collect() };
    let slices = of("X");
    // Every call ran in a task: all are on guest-thread tracks (ids of
    // guest tasks, below 2^22), none on a vCPU track; where it ran is an
    // arg (the guest has one vCPU).
    for e in slices.iter().chain(&of("i")).chain(&of("B")) {
        assert!(id(e, "pid") < 1 << 22 && id(e, "tid") < 1 << 22, "{e}");
        assert!(
            thread_names.contains_key(&(id(e, "pid"), id(e, "tid"))),
            "a named thread: {e}"
        );
        assert_eq!(e["args"]["vcpu"], 0, "{e}");
    }
    // Each cat's calls are on the track whose pid and tid are the ones
    // its shell printed, named after it, and as many as the guest kernel
    // counted for that pid.
    let ksys = guest_calls_by_pid(&stderr, "gtk");
    let vfs = guest_calls_by_pid(&stderr, "gtv");
    for pid in cats {
        assert_eq!(
            thread_names.get(&(pid, pid)).map(String::as_str),
            Some("cat")
        );
        assert_eq!(
            process_names.get(&pid).map(String::as_str),
            Some(format!("vm0 pid {pid} (cat)").as_str())
        );
        let on_track = |name: &str| {
            slices
                .iter()
                .filter(|e| id(e, "pid") == pid && id(e, "tid") == pid && e["name"] == name)
                .count()
        };
        let guest = (ksys.get(&pid).copied(), vfs.get(&pid).copied());
        assert!(guest.0 >= Some(2), "a blocked read and the EOF: {ksys:?}");
        assert_eq!(
            (Some(on_track("ksys_read")), Some(on_track("vfs_read"))),
            guest,
            "cat {pid}: slices on its track, and the guest kernel's count"
        );
    }
    // On every thread track, slices nest: sorted by start (the longer
    // first), each ends before the enclosing one does or starts after it.
    let mut tracks: std::collections::BTreeMap<(u64, u64), Vec<(u64, u64)>> = Default::default();
    for e in &slices {
        let start = ns(&e["ts"]);
        tracks
            .entry((id(e, "pid"), id(e, "tid")))
            .or_default()
            .push((start, start + ns(&e["dur"])));
    }
    for (track, calls) in &mut tracks {
        calls.sort_by_key(|&(start, end)| (start, std::cmp::Reverse(end)));
        let mut open: Vec<(u64, u64)> = Vec::new();
        for &(start, end) in calls.iter() {
            while open.last().is_some_and(|&(_, e)| e <= start) {
                open.pop();
            }
            if let Some(&outer) = open.last() {
                assert!(
                    end <= outer.1,
                    "{track:?}: {outer:?} and {:?} overlap",
                    (start, end)
                );
            }
            open.push((start, end));
        }
    }
    // The case one vCPU track could not hold: a blocked read of one cat
    // overlaps one of the other's, neither inside the other (the second
    // cat holds the first fifo's write end too, so the first cat's last
    // read ends only when the second cat exits).
    let partial = |a: &(u64, u64), b: &(u64, u64)| a.0 < b.0 && b.0 < a.1 && a.1 < b.1;
    let (first, second) = (&tracks[&(cats[0], cats[0])], &tracks[&(cats[1], cats[1])]);
    assert!(
        first
            .iter()
            .any(|a| second.iter().any(|b| partial(a, b) || partial(b, a))),
        "no two calls of the cats overlap: {first:?} {second:?}"
    );
}

#[test]
fn perfetto_calls_nest_on_guest_thread_tracks_through_the_stub() {
    calls_nest_on_guest_thread_tracks(&["--backend", "gdb"]);
}

#[test]
fn perfetto_calls_nest_on_guest_thread_tracks_inside_qemu() {
    let Some(qemu) = qemu10() else { return };
    plugin_library();
    let qemu = qemu.to_string_lossy().into_owned();
    calls_nest_on_guest_thread_tracks(&["--backend", "plugin", "--qemu", &qemu]);
}
