//! `vmprobe record` of kprobes and kretprobes whose prototype the guest
//! kernel's BTF knows: fields named and typed after it, read back by
//! babeltrace2 and from the Perfetto JSON, checked against the guest
//! kernel's own kprobe events.

mod support;
use support::trace_read::*;
use support::*;

/// The names of a babeltrace2 line's payload fields, in order.
fn payload_names(line: &str) -> Vec<&str> {
    let payload = line.rsplit_once("}, {").map_or("", |p| p.1);
    payload
        .trim_end_matches('}')
        .split(", ")
        .filter_map(|f| f.trim().split_once(" = ").map(|(n, _)| n))
        .collect()
}

/// As [`ground_truth_workload`], with a second event of the guest's own:
/// `gto` at `do_sys_openat2` with its `int dfd` as the kernel reads it
/// (`%di:s32`).
fn open_ground_truth_workload(workload: &str) -> String {
    format!(
        "cd /sys/kernel/tracing && echo 'p:gt ksys_write count=%dx:u64' > kprobe_events && \
         echo 'p:gto do_sys_openat2 dfd=%di:s32' >> kprobe_events && \
         echo 'count == 1 || count == {WINDOW_START} || count == {WINDOW_END}' > events/kprobes/gt/filter && \
         echo 1 > events/kprobes/gt/enable && echo 1 > events/kprobes/gto/enable && \
         dd if=/dev/zero of=/dev/null bs={WINDOW_START} count=1 2>/dev/null && {workload} && \
         dd if=/dev/zero of=/dev/null bs={WINDOW_END} count=1 2>/dev/null; \
         echo 0 > events/kprobes/gt/enable; echo 0 > events/kprobes/gto/enable; \
         grep -v '^#' trace | sed 's/^/GT /' > /tmp/gt.txt; cat /tmp/gt.txt"
    )
}

/// vmprobe's `recorded N events` line taken out of `stderr`: its N, and
/// the console as the guest wrote it. The console drains after the run
/// ends, so the line can land inside a console line; it is one write
/// (under stderr's lock), so taking it out restores that line.
fn split_recorded(stderr: &str) -> (usize, String) {
    let at = stderr
        .find("vmprobe: recorded ")
        .unwrap_or_else(|| panic!("no 'recorded N events': {stderr}"));
    let len = stderr[at..].find('\n').map_or(stderr.len() - at, |e| e + 1);
    let line = &stderr[at..at + len];
    (
        recorded_count(line),
        format!("{}{}", &stderr[..at], &stderr[at + len..]),
    )
}

/// Between the marker writes: the 1-byte writes, and the `dfd` of each
/// `do_sys_openat2` in order, from a sequence of (write count, open dfd)
/// events.
fn window(events: impl Iterator<Item = (Option<u64>, Option<i64>)>) -> Option<(u64, Vec<i64>)> {
    let mut inside: Option<(u64, Vec<i64>)> = None;
    for e in events {
        match (e, &mut inside) {
            ((Some(WINDOW_START), _), None) => inside = Some((0, Vec::new())),
            ((Some(WINDOW_END), _), Some(_)) => return inside,
            ((Some(1), _), Some((n, _))) => *n += 1,
            ((None, Some(dfd)), Some((_, dfds))) => dfds.push(dfd),
            _ => {}
        }
    }
    None
}

/// `record` of kprobes and kretprobes names each event's fields after the
/// kernel function's BTF prototype and types them: ksys_write's `fd`,
/// `buf` (an address, in hex), `count`; do_sys_openat2's `int dfd` signed
/// (AT_FDCWD is -100); returns signed as `ssize_t`/`long` are. The writes
/// and opens between the markers are those the guest kernel's own kprobe
/// events saw, with the same dfd values, on both backends (the stub's run
/// through the flight recorder).
#[test]
fn recorded_fields_are_named_and_typed_after_the_btf_prototype() {
    let n = 20;
    let probes = [
        "kprobe:ksys_write",
        "kretprobe:ksys_write",
        "kprobe:do_sys_openat2",
        "kretprobe:do_sys_openat2",
    ];
    let workload = open_ground_truth_workload(&format!(
        "dd if=/dev/zero of=/dev/null bs=1 count={n} 2>/dev/null && \
         echo -n ABC > /tmp/vmprobe-typed && cat /tmp/vmprobe-typed"
    ));
    for (backend, args) in backends() {
        let dir = tempfile::tempdir().unwrap();
        let ring = backend == "gdb";
        let mut cmd = vmprobe();
        cmd.args(["record", "--console"]).args(&args);
        if ring {
            cmd.args(["--ring", "16M"]);
        }
        let out = run_bounded(
            cmd.arg("-o")
                .arg(dir.path())
                .args(probes)
                .args(["--", &workload]),
            RUN_LIMIT,
        );
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{backend}: {stderr}");
        let (recorded, console) = split_recorded(&stderr);
        let trace = if ring {
            dir.path().join("snapshot-1")
        } else {
            dir.path().to_path_buf()
        };
        let lines = babeltrace(&trace);
        assert_eq!(lines.len(), recorded, "{backend}");
        let of = |probe: &str| -> Vec<&String> {
            let tag = format!(" {probe}: ");
            lines.iter().filter(|l| l.contains(&tag)).collect()
        };
        let (writes, opens) = (of(probes[0]), of(probes[2]));
        assert!(
            !writes.is_empty() && !opens.is_empty(),
            "{backend}: {lines:?}"
        );
        for (probe, names, pointers) in [
            (probes[0], &["fd", "buf", "count"][..], &["buf"][..]),
            (probes[1], &["retval"], &[]),
            (probes[2], &["dfd", "filename", "how"], &["filename", "how"]),
            (probes[3], &["retval"], &[]),
        ] {
            for l in of(probe) {
                assert_eq!(payload_names(l), names, "{backend}: {l}");
                for p in pointers {
                    let v = field_text(l, p).unwrap_or("");
                    assert!(
                        v.starts_with("0x") && u64::from_str_radix(&v[2..], 16).is_ok(),
                        "{backend}: {p} in hex: {l}"
                    );
                }
            }
        }
        // Sign-extended from the int's 32 bits: AT_FDCWD, or a real fd.
        let dfds: Vec<i64> = opens
            .iter()
            .map(|l| field_text(l, "dfd").unwrap().parse().unwrap())
            .collect();
        assert!(dfds.contains(&-100), "{backend}: {opens:?}");
        assert!(dfds.iter().all(|&d| d == -100 || (0..1 << 20).contains(&d)));
        // The guest's own events, and vmprobe's, between the markers.
        let guest = window(console.lines().filter(|l| l.starts_with("GT ")).map(|l| {
            let after = |k: &str| l.rsplit(k).next().map(str::trim);
            if l.contains(" gto: ") {
                (None, after("dfd=").and_then(|d| d.parse().ok()))
            } else {
                (after("count=").and_then(|c| c.parse().ok()), None)
            }
        }));
        let traced = window(lines.iter().map(|l| {
            if l.contains(" kprobe:ksys_write: ") {
                (event_field(l, "count"), None)
            } else if l.contains(" kprobe:do_sys_openat2: ") {
                (None, field_text(l, "dfd").and_then(|d| d.parse().ok()))
            } else {
                (None, None)
            }
        }));
        let (guest, traced) = (
            guest.expect("the guest's window"),
            traced.expect("the trace's"),
        );
        eprintln!("{backend}: guest {guest:?}, trace {traced:?}");
        assert_eq!(guest.0, n, "{backend}");
        assert!(guest.1.contains(&-100), "{backend}: {guest:?}");
        assert_eq!(traced, guest, "{backend}: trace and guest kernel disagree");
        // dd's writes of one byte go to its stdout, /dev/null.
        let one_byte: Vec<&&String> = writes
            .iter()
            .filter(|l| event_field(l, "count") == Some(1))
            .collect();
        assert!(one_byte.iter().all(|l| event_field(l, "fd") == Some(1)));
        let returned_one = of(probes[1])
            .iter()
            .filter(|l| field_text(l, "retval") == Some("1"))
            .count();
        assert_eq!(returned_one, one_byte.len(), "{backend}");
        // An open returns a file descriptor or -errno, a negative number.
        let rets: Vec<i64> = of(probes[3])
            .iter()
            .map(|l| field_text(l, "retval").unwrap().parse().unwrap())
            .collect();
        assert!(rets.iter().any(|&r| r >= 0), "{backend}: {rets:?}");
        assert!(rets.iter().all(|&r| r > -4096), "{backend}: {rets:?}");
        assert_time_ordered(&lines);
    }
}

/// The same names in Perfetto's args: addresses as "0x..." text, the
/// signed dfd and return values as numbers.
#[test]
fn perfetto_args_are_named_after_the_prototype_with_addresses_in_hex() {
    let n = 15;
    for (backend, args) in backends() {
        let dir = tempfile::tempdir().unwrap();
        let out = run_bounded(
            vmprobe()
                .args(["record", "--format", "perfetto"])
                .args(&args)
                .arg("-o")
                .arg(dir.path())
                .args([
                    "kprobe:ksys_write",
                    "kretprobe:ksys_write",
                    "kprobe:do_sys_openat2",
                    "kretprobe:do_sys_openat2",
                    "--",
                    &format!(
                        "dd if=/dev/zero of=/dev/null bs=1 count={n} 2>/dev/null && \
                         echo -n ABC > /tmp/vmprobe-typed"
                    ),
                ]),
            RUN_LIMIT,
        );
        assert!(out.status.success(), "{backend}: {}", text(&out.stderr));
        let events = perfetto_events(dir.path());
        let named = |ph: &str, name: &str| -> Vec<&serde_json::Value> {
            events
                .iter()
                .filter(|e| e["ph"] == ph && e["name"] == name)
                .collect()
        };
        let keys = |e: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = e["args"].as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let hex = |v: &serde_json::Value| {
            v.as_str()
                .and_then(|s| s.strip_prefix("0x"))
                .is_some_and(|h| u64::from_str_radix(h, 16).is_ok())
        };
        let writes = named("i", "kprobe:ksys_write");
        let opens = named("i", "kprobe:do_sys_openat2");
        assert!(!writes.is_empty() && !opens.is_empty(), "{backend}");
        for w in &writes {
            // Every Perfetto event also carries the vCPU it ran on.
            assert_eq!(keys(w), ["buf", "count", "fd", "vcpu"], "{backend}: {w}");
            assert!(hex(&w["args"]["buf"]), "{backend}: {w}");
            assert!(
                w["args"]["count"].is_u64() && w["args"]["fd"].is_u64(),
                "{w}"
            );
        }
        let one_byte = writes
            .iter()
            .filter(|w| w["args"]["count"] == 1 && w["args"]["fd"] == 1)
            .count();
        assert_eq!(one_byte, n, "{backend}");
        for o in &opens {
            assert_eq!(
                keys(o),
                ["dfd", "filename", "how", "vcpu"],
                "{backend}: {o}"
            );
            assert!(hex(&o["args"]["filename"]) && hex(&o["args"]["how"]), "{o}");
            let dfd = o["args"]["dfd"].as_i64().unwrap_or_else(|| panic!("{o}"));
            assert!(dfd == -100 || (0..1 << 20).contains(&dfd), "{backend}: {o}");
        }
        assert!(
            opens.iter().any(|o| o["args"]["dfd"] == -100),
            "{backend}: AT_FDCWD: {opens:?}"
        );
        // Returns close their call's slice with the typed retval.
        let written = named("X", "ksys_write");
        assert!(written.iter().all(|s| keys(s) == ["retval", "vcpu"]));
        assert_eq!(
            written.iter().filter(|s| s["args"]["retval"] == 1).count(),
            n,
            "{backend}"
        );
        let opened = named("X", "do_sys_openat2");
        assert!(
            opened
                .iter()
                .all(|s| s["args"]["retval"].as_i64().is_some_and(|r| r > -4096)),
            "{backend}: {opened:?}"
        );
        assert!(
            opened
                .iter()
                .any(|s| s["args"]["retval"].as_i64() >= Some(0)),
            "{backend}: {opened:?}"
        );
    }
}
