//! Kernel symbols from the image plus the KASLR slide vmprobe detects equal
//! the running guest's own /proc/kallsyms (KASLR on).

mod support;
use support::*;

#[test]
fn image_symbols_plus_detected_slide_equal_guest_kallsyms() {
    let funcs = [
        "ksys_write",
        "vfs_read",
        "do_sys_openat2",
        "schedule",
        "__x64_sys_write",
    ];
    let pattern = funcs
        .iter()
        .map(|f| format!(" {f}$"))
        .collect::<Vec<_>>()
        .join("|");
    let workload = format!("grep -E '{pattern}' /proc/kallsyms | sed 's/^/KSYM /'");
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--console",
            "-e",
            "kprobe:do_sys_openat2 { @n = count(); }",
            "--",
            &workload,
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let slide = stderr
        .split("KASLR slide ")
        .nth(1)
        .and_then(|s| s.split(|c: char| c.is_whitespace() || c == ',').next())
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("no slide reported:\n{stderr}"));

    let image = default_guest();
    let symbols = kernel_image::KernelSymbols::load(&image.kernel, None).expect("symbols");
    let mut checked = 0;
    for line in stderr.lines().filter_map(|l| l.strip_prefix("KSYM ")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let guest_addr = u64::from_str_radix(f[0], 16).unwrap();
        let sym = symbols
            .lookup(f[2])
            .unwrap_or_else(|| panic!("{} missing from image symbols", f[2]));
        assert_eq!(
            sym.addr + slide,
            guest_addr,
            "{}: image {:#x} + slide {slide:#x} != guest {guest_addr:#x}",
            f[2],
            sym.addr
        );
        checked += 1;
    }
    assert_eq!(checked, funcs.len(), "guest printed:\n{stderr}");
}

/// `vmprobe list 'kprobe:*'` names the functions ftrace can trace, from
/// the image's mcount table: exactly the distinct names of the guest's own
/// `available_filter_functions`, less its `__ftrace_invalid_address___N`
/// placeholders (sites the kernel found no function name for). The guest
/// prints their count and SHA-256 (sorted, one per line); the test hashes
/// vmprobe's list the same way.
#[test]
fn listed_kprobes_are_the_guests_available_filter_functions() {
    let workload = "f=/sys/kernel/tracing/available_filter_functions; \
         echo \"AFF-LINES $(wc -l < $f)\"; \
         grep -v '^__ftrace_invalid_address___' $f | sort -u > /tmp/names; \
         echo \"AFF-NAMES $(wc -l < /tmp/names) $(sha256sum < /tmp/names)\"";
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--console",
            "-e",
            "kprobe:do_nanosleep { @n = count(); }",
            "--",
            workload,
        ]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("AFF-NAMES "))
        .unwrap_or_else(|| panic!("no AFF-NAMES line:\n{stderr}"));
    let mut words = line.split_whitespace();
    let (guest_count, guest_sha): (usize, &str) = (
        words.next().unwrap().parse().unwrap(),
        words.next().unwrap(),
    );

    // output() reads while it waits: the list is larger than a pipe holds.
    let listed = vmprobe().args(["list", "kprobe:*"]).output().unwrap();
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let names: std::collections::BTreeSet<String> = text(&listed.stdout)
        .lines()
        .map(|l| l.strip_prefix("kprobe:").expect("kprobe:NAME").to_string())
        .collect();
    let mut joined = names.iter().cloned().collect::<Vec<_>>().join("\n");
    joined.push('\n');
    let mut sha = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    use std::io::Write;
    sha.stdin
        .take()
        .unwrap()
        .write_all(joined.as_bytes())
        .unwrap();
    let ours = text(&sha.wait_with_output().unwrap().stdout);
    let ours = ours.split_whitespace().next().unwrap().to_string();
    eprintln!(
        "guest: {} ({guest_count} names), vmprobe list: {} names",
        stderr
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("AFF-LINES "))
            .map(|n| format!("{n} lines"))
            .unwrap_or_default(),
        names.len()
    );
    assert_eq!(names.len(), guest_count);
    assert_eq!(ours, guest_sha, "the same names");
}
