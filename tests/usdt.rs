//! usdt probes in guest processes (default guest, TCG), on both backends:
//! `vmprobe-usdt` fires `STAP_PROBE2(vmprobe, step, i, total)` (i in a
//! register, total on the stack: `-8@%rbx -8@-56(%rbp)` in its note) and
//! `STAP_PROBE1(vmprobe, neg, neg)` (a negative int in a 32-bit register)
//! and `vmprobe:twice`, inlined into two places that keep its argument in
//! different registers (`-8@%rbx`, `-8@%rsi`), and prints every value itself; vmprobe's counts and arguments must equal
//! them. A copy of the same file under another path runs first and must
//! count nothing. Probes the ELF lacks, and probes with a semaphore, fail
//! before booting at their line:column.

mod support;
use std::collections::BTreeMap;
use support::*;

const PROGRAM: &str =
    "usdt:/bin/vmprobe-usdt:vmprobe:step { @n = count(); @args[arg0, arg1] = count(); }
usdt:/bin/vmprobe-usdt:step { @m = count(); @noprov[arg0, arg1] = count(); }
usdt:/bin/vmprobe-usdt:vmprobe:neg { @neg[arg0] = count(); }
usdt:/bin/vmprobe-usdt:twice { @twice[arg0] = count(); }
";

const WORKLOAD: &str = "mkdir -p /tmp/bin && cp /bin/vmprobe-usdt /tmp/bin/vmprobe-usdt && \
    /tmp/bin/vmprobe-usdt 9 > /dev/null && /bin/vmprobe-usdt 7 | sed 's/^/REAL /'";

#[test]
fn usdt_probes_count_and_read_the_arguments_the_program_printed_on_both_backends() {
    default_guest();
    for (backend, flags) in backends() {
        let out = run_bounded(
            vmprobe()
                .args(["run", "--console"])
                .args(&flags)
                .args(["-e", PROGRAM, "--", WORKLOAD]),
            RUN_LIMIT,
        );
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{backend}: vmprobe failed: {stderr}");
        let real: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .filter_map(|l| l.split("REAL ").nth(1))
            .collect();
        let mut steps: BTreeMap<(i64, i64), u64> = BTreeMap::new();
        let mut negs: BTreeMap<i64, u64> = BTreeMap::new();
        let mut twice: BTreeMap<u64, u64> = BTreeMap::new();
        let mut fired = None;
        for l in &real {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["usdt", "step", i, t] => {
                    *steps
                        .entry((i.parse().unwrap(), t.parse().unwrap()))
                        .or_default() += 1
                }
                ["usdt", "neg", v] => *negs.entry(v.parse().unwrap()).or_default() += 1,
                ["usdt", "twice", v] => *twice.entry(v.parse().unwrap()).or_default() += 1,
                ["usdt", "fired", n] => fired = Some(n.parse::<u64>().unwrap()),
                _ => {}
            }
        }
        assert_eq!(fired, Some(7), "{backend}: the program's output: {real:?}");
        assert_eq!(steps.len(), 7, "{real:?}");
        assert!(negs.keys().all(|v| *v < 0), "{real:?}");
        // Only /bin/vmprobe-usdt's 7 fired, not the copy's 9.
        assert_eq!(map_value(&stdout, "n"), 7, "{backend}: {stdout}");
        assert_eq!(map_value(&stdout, "m"), 7, "{backend}: {stdout}");
        for map in ["args", "noprov"] {
            let seen: BTreeMap<(i64, i64), u64> = keyed_map_str(&stdout, map)
                .into_iter()
                .map(|(k, v)| {
                    let (a, b) = k.split_once(", ").expect("two keys");
                    ((a.parse().unwrap(), b.parse().unwrap()), v)
                })
                .collect();
            assert_eq!(seen, steps, "{backend} @{map}: {stdout}");
        }
        let seen: BTreeMap<i64, u64> = keyed_map_str(&stdout, "neg")
            .into_iter()
            .map(|(k, v)| (k.parse().unwrap(), v))
            .collect();
        assert_eq!(seen, negs, "{backend} @neg: {stdout}");
        // Both locations of `twice`, each argument from its own register.
        assert_eq!(twice.values().sum::<u64>(), 14, "{real:?}");
        let seen: BTreeMap<u64, u64> = keyed_map_str(&stdout, "twice")
            .into_iter()
            .map(|(k, v)| (k.parse().unwrap(), v))
            .collect();
        assert_eq!(seen, twice, "{backend} @twice: {stdout}");
        eprintln!("{backend}: @n 7 @args {steps:?} @neg {negs:?} @twice {twice:?}");
    }
}

/// A run that fails before booting, with `needle` in its error.
fn fails_before_boot(args: &[&str], needle: &str) -> String {
    let out = run_bounded(vmprobe().args(args), RUN_LIMIT);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in:\n{stderr}");
    assert!(!stderr.contains("booting"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn probes_the_elf_lacks_or_cannot_serve_fail_before_booting_at_their_attach_point() {
    default_guest();
    let e = fails_before_boot(
        &[
            "run",
            "-e",
            "BEGIN { }\n  usdt:/bin/vmprobe-usdt:vmprobe:nope { @n = count(); }",
            "--",
            "true",
        ],
        "has no usdt probe vmprobe:nope",
    );
    assert!(e.contains(" --> stdin:2:3\n"), "{e}");
    let e = fails_before_boot(
        &[
            "run",
            "-e",
            "usdt:/bin/vmprobe-usdt:step { @n = arg2; }",
            "--",
            "true",
        ],
        "arg2: the probe has 2 argument(s) ('-8@%rbx -8@-56(%rbp)')",
    );
    assert!(e.contains(" --> stdin:1:1\n"), "{e}");
    fails_before_boot(
        &[
            "run",
            "-e",
            "usdt:/bin/vmprobe-usdt:step, uprobe:/bin/vmprobe-ucount:ucount_step { @n = arg0; }",
            "--",
            "true",
        ],
        "shares a block reading argN with usdt probe",
    );
}

/// A probe guarded by a semaphore (`_SDT_HAS_SEMAPHORES`) fires only while
/// a tracer raises its counter in the process: vmprobe refuses it rather
/// than write guest memory. Compiled on the host under a --guest-root.
#[test]
fn a_probe_with_a_semaphore_is_refused_before_booting() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    let src = root.path().join("gated.c");
    std::fs::write(
        &src,
        "#define _SDT_HAS_SEMAPHORES 1\n#include <sys/sdt.h>\n\
         unsigned short vmprobe_gated_semaphore __attribute__((section(\".probes\")));\n\
         int main(int c, char **v) { (void)v; STAP_PROBE1(vmprobe, gated, c); return 0; }\n",
    )
    .unwrap();
    let built = std::process::Command::new("cc")
        .args(["-O2", "-o"])
        .arg(root.path().join("bin/gated"))
        .arg(&src)
        .status()
        .expect("cc");
    assert!(built.success(), "cc with <sys/sdt.h> (systemtap-sdt-dev)");
    let e = fails_before_boot(
        &[
            "run",
            "--guest-root",
            root.path().to_str().unwrap(),
            "-e",
            "usdt:/bin/gated:vmprobe:gated { @n = count(); }",
            "--",
            "true",
        ],
        "usdt:/bin/gated:vmprobe:gated: the probe has a semaphore (at 0x",
    );
    assert!(
        e.contains("a write to guest memory that vmprobe never makes"),
        "{e}"
    );
    assert!(e.contains(" --> stdin:1:1\n"), "{e}");
}

/// `vmprobe list 'usdt:PATH:*'` lists what bpftrace 0.17's `-l` lists of
/// the same file (its host copy), under the guest's path.
#[test]
fn list_names_the_probes_as_bpftrace_lists_them() {
    let cache = {
        default_guest();
        qemu_guest::cache_dir()
    };
    let host = qemu_guest::default_guest_files(&cache)
        .into_iter()
        .find(|(g, _)| g == "/bin/vmprobe-usdt")
        .expect("the default guest's vmprobe-usdt")
        .1;
    let ours = run_bounded(
        vmprobe().args(["list", "usdt:/bin/vmprobe-usdt:*"]),
        RUN_LIMIT,
    );
    assert!(ours.status.success(), "{}", text(&ours.stderr));
    let ours = text(&ours.stdout);
    assert_eq!(
        ours,
        "usdt:/bin/vmprobe-usdt:vmprobe:neg\nusdt:/bin/vmprobe-usdt:vmprobe:step\nusdt:/bin/vmprobe-usdt:vmprobe:twice\n"
    );
    let theirs = std::process::Command::new("bpftrace")
        .arg("-l")
        .arg(format!("usdt:{}:*", host.display()))
        .output()
        .expect("bpftrace (.ci/install-deps installs it)");
    let theirs = text(&theirs.stdout).replace(&host.display().to_string(), "/bin/vmprobe-usdt");
    let mut theirs: Vec<&str> = theirs.lines().collect();
    theirs.sort_unstable();
    assert_eq!(ours.lines().collect::<Vec<_>>(), theirs);
    let one = run_bounded(
        vmprobe().args(["list", "usdt:/bin/vmprobe-usdt:step"]),
        RUN_LIMIT,
    );
    assert_eq!(text(&one.stdout), "usdt:/bin/vmprobe-usdt:vmprobe:step\n");
}
