//! Issue 4 through the language: `comm`, `pid`, `tid`, `str()` and `kstack`
//! in scripts, checked against what the guest's workload says of itself and
//! what it opens.

mod support;
use support::*;

#[test]
fn comm_pid_str_and_kstack_match_the_workload() {
    let program = r#"
kprobe:ksys_write /comm == "dd" && arg2 == 1/ { @writes[comm, pid, tid] = count(); @stack[kstack] = count(); }
kprobe:do_sys_openat2 /comm == "cat"/ { @opened[str(arg1)] = count(); }
"#;
    let workload = "sh -c 'echo WORKLOAD-PID $$; exec dd if=/dev/zero of=/dev/null bs=1 count=25 2>/dev/null'; \
                    cat /proc/version /etc/vmprobe-none /proc/uptime > /dev/null 2>&1; true";
    let out = run_bounded(
        vmprobe().args(["run", "--console", "-e", program, "--", workload]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    let pid: u64 = stderr
        .lines()
        .find_map(|l| l.split("WORKLOAD-PID ").nth(1))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the workload did not print its pid: {stderr}"));
    assert!(
        stdout.contains(&format!("@writes[dd, {pid}, {pid}]: 25")),
        "comm, pid and tid of dd's 25 writes (pid {pid}):\n{stdout}"
    );
    // Exactly the paths cat was asked to open, the missing one included.
    for path in ["/proc/version", "/etc/vmprobe-none", "/proc/uptime"] {
        assert!(
            stdout.contains(&format!("@opened[{path}]: 1")),
            "{path} not seen opened once:\n{stdout}"
        );
    }
    // The stack of a write(2): ksys_write at the top, then the system call
    // path, innermost first (as bpftrace prints kstack).
    let frames: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("@stack["))
        .skip(1)
        .take_while(|l| !l.starts_with(']'))
        .map(|l| l.trim().split('+').next().unwrap_or(""))
        .collect();
    assert_eq!(frames.first(), Some(&"ksys_write"), "{stdout}");
    let syscall = frames.iter().position(|f| *f == "do_syscall_64");
    let entry = frames
        .iter()
        .position(|f| f.starts_with("entry_SYSCALL_64"));
    assert!(syscall.is_some() && entry > syscall, "{frames:?}");
}

/// A bounded walk of the kernel's task list (from `init_task`, through
/// `tasks.next`, typed by the image's BTF) finds the workload by name with
/// the pid the `pid` builtin gives; a wild pointer in the same handler is
/// a counted, reported error, and the run goes on.
#[test]
fn task_list_walk_finds_the_workload_and_wild_pointers_are_counted() {
    let program = r#"
kprobe:ksys_write /comm == "dd" && arg2 == 1/ {
    $t = (struct task_struct *)kaddr("init_task");
    $i = 0;
    while ($i < 500) {
        $n = $t->tasks.next;
        $t = (struct task_struct *)((uint64)$n - offsetof(struct task_struct, tasks));
        if ($t->comm == "dd") { @found[$t->comm, $t->pid] = count(); break; }
        $i++;
    }
    @me[pid] = count();
    $wild = (struct task_struct *)0xdead000000000000;
    @wild[$wild->pid] = count();
}
"#;
    let out = run_bounded(
        vmprobe().args([
            "run",
            "-e",
            program,
            "--",
            "dd if=/dev/zero of=/dev/null bs=1 count=7 2>/dev/null",
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_partial(&out);
    let pid = keyed_map(&stdout, "me");
    assert_eq!(pid.len(), 1, "{stdout}");
    let (&pid, &n) = pid.iter().next().unwrap();
    assert_eq!(n, 7);
    assert!(
        stdout.contains(&format!("@found[dd, {pid}]: 7")),
        "the walk found dd (pid {pid}) at every write:\n{stdout}"
    );
    // As bpftrace's probe_read: the failed read gives 0, the handler goes on.
    assert!(
        stdout.contains("@wild[0]: 7"),
        "a wild pointer's member reads as 0: {stdout}"
    );
    assert!(
        stderr.contains("0xdead00000000") && stderr.contains("(7 times)"),
        "the wild reads are counted and reported: {stderr}"
    );
}

/// A handler that walks a cyclic kernel structure without end (the task
/// list is circular) stops at its step budget at every hit; the errors are
/// counted and reported, the guest runs on, and the run completes.
#[test]
fn endless_walk_of_a_cyclic_list_stops_at_the_budget() {
    let program = r#"
kprobe:ksys_write /comm == "dd" && arg2 == 1/ {
    @calls = count();
    $t = (struct task_struct *)kaddr("init_task");
    $n = 0;
    while ($t != 0) {
        $t = (struct task_struct *)((uint64)$t->tasks.next - offsetof(struct task_struct, tasks));
        $n++;
        @laps = max($n);
    }
}
"#;
    let out = run_bounded(
        vmprobe().args([
            "run",
            "-e",
            program,
            "--",
            "dd if=/dev/zero of=/dev/null bs=1 count=3 2>/dev/null; echo done",
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_partial(&out);
    assert_eq!(map_value(&stdout, "calls"), 3, "{stdout}");
    assert!(
        map_value(&stdout, "laps") > 100,
        "walked far around the cycle: {stdout}"
    );
    assert!(
        stderr.contains("exceeded its step budget") && stderr.contains("(3 times)"),
        "{stderr}"
    );
}

/// `cgroup` is the current task's cgroup v2 id, as in bpftrace: the inode
/// number of its directory in cgroupfs, which the guest reports itself.
/// `cgroup_path(id)` is that cgroup's path as the guest kernel gives it in
/// `/proc/self/cgroup`, in bpftrace's `unified:PATH` form; an unknown id or
/// a filter that excludes the hierarchy gives an empty string.
#[test]
fn cgroup_id_and_path_equal_the_guests_own() {
    let workload = "mount -t cgroup2 none /sys/fs/cgroup && mkdir -p /sys/fs/cgroup/probed/inner && \
        echo $$ > /sys/fs/cgroup/probed/inner/cgroup.procs && \
        echo CGID $(stat -c %i /sys/fs/cgroup/probed/inner) && \
        echo ROOTID $(stat -c %i /sys/fs/cgroup) && \
        echo CGPATH $(cat /proc/self/cgroup) && \
        dd if=/dev/zero of=/dev/null bs=1 count=5 2>/dev/null";
    let program = r#"kprobe:ksys_write /comm == "dd"/ {
        @writes[cgroup] = count();
        @paths[cgroup_path(cgroup), cgroup_path(1), cgroup_path(0xdead0000beef),
               cgroup_path(cgroup, "cpu*")] = count();
    }"#;
    let out = run_bounded(
        vmprobe().args(["run", "--console", "-e", program, "--", workload]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    let guest_says = |key: &str| {
        stderr
            .lines()
            .find_map(|l| l.split(&format!("{key} ")).nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {key} from the guest: {stderr}"))
    };
    let theirs: u64 = guest_says("CGID").parse().unwrap();
    // dd's 5 one-byte writes and its record counts, all in that cgroup.
    let writes = keyed_map(&stdout, "writes");
    assert_eq!(writes.keys().collect::<Vec<_>>(), [&theirs], "{stdout}");
    assert!(writes[&theirs] >= 5, "{stdout}");

    // `0::/probed/inner`: hierarchy 0 is cgroup v2's.
    let path = guest_says("CGPATH");
    let path = path.strip_prefix("0::").expect("a cgroup v2 line");
    assert_eq!(path, "/probed/inner");
    // The hierarchy's root directory is the cgroup with id 1.
    assert_eq!(guest_says("ROOTID"), "1");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("@paths["))
        .unwrap_or_else(|| panic!("no @paths: {stdout}"));
    assert_eq!(
        line.split("]:").next().unwrap(),
        format!("@paths[unified:{path}, unified:/, , "),
        "{stdout}"
    );
}

/// The deepest member chain the parser accepts runs in a handler serving
/// hits after boot (a longer one is refused before booting, see
/// `bad_input.rs`): following `parent` from dd ends at the idle task, pid 0,
/// whose parent is itself.
#[test]
fn deepest_accepted_member_chain_serves_hits() {
    let chain = |n: usize| {
        format!(
            "kprobe:ksys_write /comm == \"dd\" && arg2 == 1/ {{ @pid[curtask{}->pid] = count(); }}",
            "->parent".repeat(n)
        )
    };
    let n = (0..=probe_lang::parser::MAX_NESTING)
        .rev()
        .find(|&n| probe_lang::parser::parse(&chain(n)).is_ok())
        .unwrap();
    assert!(n > 50, "{n} links");
    let out = run_bounded(
        vmprobe().args([
            "run",
            "-e",
            &chain(n),
            "--",
            "dd if=/dev/zero of=/dev/null bs=1 count=5",
        ]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("@pid[0]: 5"),
        "{n} links:\n{stdout}\n{stderr}"
    );
}
