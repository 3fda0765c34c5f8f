//! Guest tracepoints other than syscalls', served from outside by
//! emulating the kernel's own tracepoint code at each call: their records
//! equal what the guest kernel's own tracefs records for the same events,
//! on both backends.
//!
//! The workload switches the events on in the guest's tracefs while it
//! forks: the guest's trace is the ground truth, and vmprobe's breakpoint
//! on the same call (now a jump, not a no-op) must still give the record.

mod support;
use std::collections::BTreeSet;
use support::*;

const FORKS: usize = 5;

/// `(parent_pid, parent_comm, child_pid, child_comm)` of the forks of the
/// workload's shell, and `(pid, prio)` of the new tasks woken.
type Events = (BTreeSet<(u64, String, u64, String)>, BTreeSet<(u64, u64)>);

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
}

/// The guest's tracefs lines (`GT ... sched_process_fork: comm=sh pid=88
/// child_comm=sh child_pid=89`).
fn guest_events(console: &str, shell: u64) -> Events {
    let (mut forks, mut woken) = (BTreeSet::new(), BTreeSet::new());
    for l in console.lines().filter(|l| l.starts_with("GT ")) {
        let num = |n: &str| field(l, n).and_then(|v| v.parse::<u64>().ok());
        if l.contains("sched_process_fork:") {
            if let (Some(pid), Some(child)) = (num("pid"), num("child_pid"))
                && pid == shell
            {
                let comm = field(l, "comm").unwrap_or("").to_string();
                let ccomm = field(l, "child_comm").unwrap_or("").to_string();
                forks.insert((pid, comm, child, ccomm));
            }
        } else if l.contains("sched_wakeup_new:")
            && let (Some(pid), Some(prio)) = (num("pid"), num("prio"))
        {
            woken.insert((pid, prio));
        }
    }
    (forks, woken)
}

/// vmprobe's lines (`FORK 88 sh 89 sh`, `NEW 89 120`).
fn our_events(stdout: &str, shell: u64, children: &BTreeSet<u64>) -> Events {
    let (mut forks, mut woken) = (BTreeSet::new(), BTreeSet::new());
    for l in stdout.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        let num = |i: usize| w.get(i).and_then(|v| v.parse::<u64>().ok());
        match w.first() {
            Some(&"FORK") if w.len() == 5 && num(1) == Some(shell) => {
                forks.insert((shell, w[2].into(), num(3).unwrap_or(0), w[4].into()));
            }
            Some(&"NEW") if num(1).is_some_and(|p| children.contains(&p)) => {
                woken.insert((num(1).unwrap_or(0), num(2).unwrap_or(0)));
            }
            _ => {}
        }
    }
    (forks, woken)
}

#[test]
fn sched_records_equal_the_guest_kernels_own_trace() {
    let program = "tracepoint:sched:sched_process_fork { printf(\"FORK %d %s %d %s\\n\", args.parent_pid, args.parent_comm, args.child_pid, args.child_comm); }\n\
                   tracepoint:sched:sched_wakeup_new { printf(\"NEW %d %d\\n\", args.pid, args.prio); }\n\
                   tracepoint:sched:sched_switch { printf(\"SW %d\\n\", args.next_pid); }";
    let workload = format!(
        "cd /sys/kernel/tracing && echo 1 > events/sched/sched_process_fork/enable && \
         echo 1 > events/sched/sched_wakeup_new/enable && echo SHELL=$$ && \
         for i in $(seq {FORKS}); do /bin/true; done; \
         echo 0 > events/sched/sched_wakeup_new/enable; echo 0 > events/sched/sched_process_fork/enable; \
         grep -v '^#' trace | sed 's/^/GT /' > /tmp/gt.txt; cat /tmp/gt.txt; echo {GT_END}"
    );
    for (backend, args) in backends() {
        let mut cmd = vmprobe();
        cmd.args(["run", "--console"])
            .args(&args)
            .args(["-e", program, "--", &workload]);
        let out = run_bounded(&mut cmd, RUN_LIMIT);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{backend}: {stderr}");
        let shell: u64 = stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("SHELL="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{backend}: no SHELL= on the console:\n{stderr}"));
        let theirs = guest_events(&stderr, shell);
        let children: BTreeSet<u64> = theirs.0.iter().map(|f| f.2).collect();
        let mut ours = our_events(&stdout, shell, &children);
        // vmprobe also sees the forks after the guest switched its events
        // off: compare the window the guest traced (pids are handed out
        // in order, so a missed or invented fork inside it still shows).
        let (lo, hi) = (children.first().copied(), children.last().copied());
        ours.0.retain(|f| Some(f.2) >= lo && Some(f.2) <= hi);
        eprintln!(
            "{backend}: the guest traced {} forks of its shell and {} new tasks woken",
            theirs.0.len(),
            theirs.1.len()
        );
        // The loop's children, and the one `seq` runs in.
        assert!(theirs.0.len() > FORKS, "{backend}: {theirs:?}\n{stderr}");
        assert_eq!(ours.0, theirs.0, "{backend}: forks differ\n{stdout}");
        let woken: BTreeSet<_> = theirs
            .1
            .iter()
            .filter(|(p, _)| children.contains(p))
            .cloned()
            .collect();
        assert_eq!(woken.len(), children.len(), "{backend}: {theirs:?}");
        assert_eq!(ours.1, woken, "{backend}: new tasks woken differ\n{stdout}");
        // Each child ran, so was switched to. With the guest's tracing on,
        // its own probe (comm recording) is on sched_switch alone, and x86
        // calls it straight from the tracepoint's block: the emulation
        // must stop at the call's place, not at a known target.
        let switched_to: BTreeSet<u64> = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("SW ")?.trim().parse().ok())
            .collect();
        assert!(
            children.is_subset(&switched_to),
            "{backend}: children {children:?} not all switched to"
        );
    }
}

/// A tracepoint the kernel has only as a bare tracepoint (no trace event,
/// so no fields) and one that does not exist are errors before booting,
/// at the probe's line:column.
#[test]
fn unservable_guest_tracepoints_are_refused_before_booting() {
    for (probe, why) in [
        (
            "tracepoint:sched:no_such_event",
            "the guest kernel has no tracepoint 'no_such_event'",
        ),
        (
            "tracepoint:sched:sched_update_nr_running_tp",
            "without a trace event",
        ),
        (
            "tracepoint:block:sched_switch",
            "'sched_switch' is in system 'sched', not 'block'",
        ),
    ] {
        let program = format!("BEGIN {{ }}\n{probe} {{ @ = count(); }}");
        let out = run_bounded(
            vmprobe().args(["run", "-e", &program, "--", "true"]),
            RUN_LIMIT,
        );
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{probe}: {stderr}");
        assert!(stderr.contains(why), "{probe}: {stderr}");
        assert!(
            stderr.contains("<stdin>:2:1") || stderr.contains(":2:1"),
            "{probe}: {stderr}"
        );
        assert!(!stderr.contains("booting"), "{probe}: {stderr}");
    }
}

/// `(name, offset, size, signed)` of each field of each event
/// (`system/event`) the guest's tracefs declares, from the lines `E
/// sys/event` and `F sys/event DECLARATION OFFSET SIZE SIGNED` the
/// workload printed (common fields left out).
fn guest_formats(
    console: &str,
) -> std::collections::BTreeMap<String, Vec<(String, u32, u32, bool)>> {
    let mut all = std::collections::BTreeMap::new();
    for l in console.lines() {
        if let Some(e) = l.strip_prefix("E ") {
            all.entry(e.trim().trim_end_matches('/').to_string())
                .or_insert_with(Vec::new);
        } else if let Some(rest) = l.strip_prefix("F ") {
            // `sched/sched_switch char prev_comm[16] 8 16 1`: the name is
            // the declaration's last word.
            let w: Vec<&str> = rest.split_whitespace().collect();
            let n = w.len();
            if n < 6 {
                continue;
            }
            let name = w[n - 4].split('[').next().unwrap_or("").to_string();
            let num = |i: usize| w[i].parse::<u32>().unwrap_or(u32::MAX);
            all.entry(w[0].to_string()).or_insert_with(Vec::new).push((
                name,
                num(n - 3),
                num(n - 2),
                w[n - 1] == "1",
            ));
        }
    }
    all
}

/// Every event vmprobe finds in the image is one the guest's tracefs has,
/// with the same fields at the same offsets and sizes (and signedness for
/// integers): what handlers read from an emulated record is laid out as
/// the guest kernel lays out its own. `vmprobe list -v` prints them.
#[test]
fn every_event_found_in_the_image_is_laid_out_as_the_guests_tracefs_says() {
    let Some(image) = std::env::var_os("VMPROBE_TEST_VMLINUZ") else {
        eprintln!("VMPROBE_TEST_VMLINUZ unset: skipped");
        return;
    };
    let workload = format!(
        "cd /sys/kernel/tracing/events && ls -d */*/ | sed 's/^/E /' > /tmp/f.txt && \
         grep -H 'field:' */*/format | grep -v common_ | \
         sed -n 's|^\\(.*\\)/format:.*field:\\(.*\\);.*offset:\\([0-9]*\\);.*size:\\([0-9]*\\);.*signed:\\([0-9]\\);.*|F \\1 \\2 \\3 \\4 \\5|p' >> /tmp/f.txt; \
         cat /tmp/f.txt; echo {GT_END}"
    );
    // The console is large: to a file, not a pipe nobody reads until the end.
    let console = tempfile::NamedTempFile::new().unwrap();
    let mut child = vmprobe()
        .args([
            "run",
            "--console",
            "-e",
            "tracepoint:sched:sched_process_exec { @ = count(); }",
            "--",
            &workload,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(console.reopen().unwrap())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, RUN_LIMIT);
    let stderr = std::fs::read_to_string(console.path()).unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {stderr}");
    assert!(stderr.contains(GT_END), "{stderr}");
    let guest = guest_formats(&stderr);
    let path = std::path::PathBuf::from(image);
    let symbols = kernel_image::KernelSymbols::load(&path, None).unwrap();
    let mut names = kernel_tracepoints::SECTIONS.to_vec();
    names.push(".BTF");
    let sections = kernel_image::KernelSections::load(&path, &names, None).unwrap();
    let btf = kernel_btf::Btf::parse(&sections.get(".BTF").unwrap().data).unwrap();
    let finder = kernel_tracepoints::EventFinder::new(&symbols, &sections, &btf);
    let ours = finder.events();
    let (mut compared, mut fields) = (0, 0);
    for (system, event) in &ours {
        if system == "syscalls" || system == "raw_syscalls" {
            continue;
        }
        let key = format!("{system}/{event}");
        let theirs = guest.get(&key).unwrap_or_else(|| {
            panic!("{key}: vmprobe finds it, the guest's tracefs has no such event")
        });
        let recipe = finder
            .find(system, event)
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let mine: Vec<(String, u32, u32, bool)> = recipe
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.offset, f.size, f.signed))
            .collect();
        let strip = |v: &[(String, u32, u32, bool)],
                     ints: &[bool]|
         -> Vec<(String, u32, u32, Option<bool>)> {
            v.iter()
                .zip(ints)
                .map(|((n, o, s, g), &int)| (n.clone(), *o, *s, int.then_some(*g)))
                .collect()
        };
        let ints: Vec<bool> = recipe
            .fields
            .iter()
            .map(|f| f.kind == kernel_tracepoints::FieldKind::Int)
            .collect();
        assert_eq!(
            mine.len(),
            theirs.len(),
            "{key}: fields\n ours {mine:?}\n guest {theirs:?}"
        );
        assert_eq!(strip(&mine, &ints), strip(theirs, &ints), "{key}");
        compared += 1;
        fields += mine.len();
    }
    eprintln!(
        "{compared} events ({fields} fields) equal the guest's tracefs; the guest's tracefs has {} events in all",
        guest.len()
    );
    assert!(compared > 500, "{compared}");
    let listed = run_bounded(
        vmprobe().args(["list", "-v", "tracepoint:sched:sched_switch"]),
        RUN_LIMIT,
    );
    assert_eq!(
        text(&listed.stdout),
        "tracepoint:sched:sched_switch\n    char prev_comm[16]\n    pid_t prev_pid\n    int prev_prio\n    long prev_state\n    char next_comm[16]\n    pid_t next_pid\n    int next_prio\n"
    );
}
