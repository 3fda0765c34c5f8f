//! `#include <linux/...>` reads the guest kernel's own headers, as bpftrace
//! reads the running kernel's: for the default guest, Debian's
//! linux-headers packages of its kernel, fetched on first need. Ground
//! truth is gcc preprocessing the same header tree with the same flags
//! (bpftrace's `-I`s, `-include kconfig.h`, `-D`s, our predefined macros),
//! and the C compiler evaluating what the macros expand to.

mod support;

use probe_lang::headers::{HeaderSearch, KERNEL_DEFINES, PREDEFINED};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const LIMIT: Duration = Duration::from_secs(600);

fn headers() -> (qemu_guest::GuestImage, qemu_guest::KernelHeaders) {
    let image = default_guest();
    let h = qemu_guest::ensure_default_guest_headers(
        &qemu_guest::cache_dir(),
        &image.version,
        &mut |s| eprintln!("headers: {s}"),
    )
    .expect("fetching the default guest's kernel headers");
    (image, h)
}

fn search(h: &qemu_guest::KernelHeaders) -> HeaderSearch {
    HeaderSearch::kernel(
        &h.source,
        &h.build,
        Arc::new(|p: &Path| std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned())),
    )
}

/// gcc's arguments for the same translation unit: no predefined macros of
/// its own (`-undef`) but ours, then the search's.
fn gcc_flags(s: &HeaderSearch) -> Vec<String> {
    // clang's feature tests, which gcc lacks, are 0 for this reader too
    // (gcc's own __has_attribute and __has_builtin stay gcc's).
    let mut a = vec![
        "-undef".to_string(),
        "-w".into(),
        "-D__has_feature(x)=0".into(),
        "-D__has_extension(x)=0".into(),
    ];
    for (n, v) in PREDEFINED.iter().chain(KERNEL_DEFINES) {
        // gcc keeps its standard macros; the rest are -D'd as ours.
        if !n.starts_with("__STDC") {
            a.push(format!("-D{n}={v}"));
        }
    }
    let kernel_dirs = s.dirs.len() - HeaderSearch::host_dirs().len();
    for (i, d) in s.dirs.iter().enumerate() {
        let flag = if i < kernel_dirs { "-I" } else { "-isystem" };
        a.push(format!("{flag}{}", d.display()));
    }
    for f in &s.forced {
        a.push("-include".into());
        a.push(f.display().to_string());
    }
    a
}

/// The program's output after "Attaching N probes...".
fn last_line(stdout: &[u8]) -> String {
    let t = text(stdout);
    t.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

fn gcc(args: &[String], input: &Path) -> String {
    let out = Command::new("gcc").args(args).arg(input).output().unwrap();
    assert!(out.status.success(), "gcc {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Every integer macro this reader takes from `<linux/sched.h>` of the
/// guest's kernel has the value gcc gives it on the same tree.
#[test]
fn guest_kernel_header_macros_agree_with_gcc() {
    let (_, h) = headers();
    let s = search(&h);
    let m = probe_lang::headers::read(&s, &[("linux/sched.h".into(), false)]);
    assert!(m.notes.is_empty(), "{:?}", m.notes);
    let ints: BTreeMap<&str, i128> = m.ints.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    assert_eq!(ints.get("TASK_RUNNING"), Some(&0));
    assert_eq!(ints.get("TASK_UNINTERRUPTIBLE"), Some(&2));
    assert!(ints.len() > 5000, "{} macros", ints.len());
    eprintln!(
        "linux/sched.h: {} files, {} bytes read; {} integer macros, {} others",
        m.files,
        m.bytes,
        ints.len(),
        m.others.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let flags = gcc_flags(&s);
    // The set: every name we give gcc defines as an object-like macro.
    let unit = dir.path().join("u.c");
    std::fs::write(&unit, "#include <linux/sched.h>\n").unwrap();
    let mut dm = flags.clone();
    dm.extend(["-E".into(), "-dM".into()]);
    let defined: BTreeSet<String> = gcc(&dm, &unit)
        .lines()
        .filter_map(|l| l.strip_prefix("#define "))
        .filter_map(|l| {
            l.split([' ', '('])
                .next()
                .filter(|n| !l[n.len()..].starts_with('('))
        })
        .map(str::to_string)
        .collect();
    let missing: Vec<&&str> = ints.keys().filter(|n| !defined.contains(**n)).collect();
    assert!(missing.is_empty(), "gcc does not define {missing:?}");
    // The values: gcc expands each name, then C evaluates the expansion.
    let mut c = String::from("#include <linux/sched.h>\n");
    for n in ints.keys() {
        // The name in a string literal, which is not expanded.
        c.push_str(&format!("@@ \"{n}\" {n}\n"));
    }
    std::fs::write(&unit, c).unwrap();
    let mut e = flags.clone();
    e.extend(["-E".into(), "-P".into()]);
    let expanded = gcc(&e, &unit);
    let mut prog = String::from("#include <stdio.h>\nint main(void) {\n");
    let mut names = Vec::new();
    for l in expanded.lines() {
        let Some(rest) = l.strip_prefix("@@ \"") else {
            continue;
        };
        let (name, body) = rest.split_once('"').unwrap();
        names.push(name.to_string());
        prog.push_str(&format!(
            "printf(\"%llu\\n\", (unsigned long long)({}));\n",
            body.trim()
        ));
    }
    prog.push_str("return 0; }\n");
    assert_eq!(names.len(), ints.len());
    let src = dir.path().join("v.c");
    let exe = dir.path().join("v");
    std::fs::write(&src, prog).unwrap();
    let out = Command::new("gcc")
        .args(["-w", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&Command::new(&exe).output().unwrap().stdout);
    let (mut agree, mut int32) = (0, Vec::new());
    for (line, name) in printed.lines().zip(&names) {
        let v = ints[name.as_str()];
        // In C `(1<<31)` is an int, negative, and `~0x03U` an unsigned int
        // 4294967292; bpftrace evaluates the
        // expanded text in 64 bits, as the reader does.
        let c_int = (v as u32 as i32) as i64 as u64;
        let c_unsigned = v as u32 as u64;
        if line != (v as u64).to_string()
            && (line == c_int.to_string() || line == c_unsigned.to_string())
        {
            int32.push(name.as_str());
            continue;
        }
        assert_eq!(line, (v as u64).to_string(), "{name}");
        agree += 1;
    }
    assert_eq!(agree + int32.len(), ints.len());
    assert!(int32.len() < 10, "{int32:?}");
    eprintln!(
        "{agree} of {} integer macros equal gcc's ({} differ only as C's 32-bit int or unsigned int: {int32:?}); gcc defines {} object-like macros",
        ints.len(),
        int32.len(),
        defined.len()
    );
}

/// The program sees the guest kernel's macros, as its values, through the
/// binary: `TASK_RUNNING` of `<linux/sched.h>` (absent from the host's
/// UAPI header) and `HZ`, from the kernel's own config.
#[test]
fn programs_read_the_guest_kernels_headers() {
    let (_, h) = headers();
    let config = std::fs::read_to_string(h.build.join(".config")).unwrap();
    let hz = config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .expect("CONFIG_HZ in the kernel's .config");
    let prog = "#include <linux/sched.h>\nBEGIN { printf(\"%d %d %d\\n\", TASK_RUNNING, TASK_UNINTERRUPTIBLE, HZ); exit(); }";
    let out = run_bounded(vmprobe().args(["run", "-e", prog]), LIMIT);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(last_line(&out.stdout), format!("0 2 {hz}"));
}

/// bpftrace 0.17's runqlat.bt: `args->prev_state == TASK_RUNNING` no
/// longer stops it (whatever else its sched tracepoints need).
#[test]
fn runqlat_finds_task_running() {
    let tool = Path::new("/usr/sbin/runqlat.bt");
    if !tool.is_file() {
        eprintln!("no /usr/sbin/runqlat.bt (bpftrace not installed): skipping");
        return;
    }
    headers();
    let out = run_bounded(vmprobe().args(["run", "-d"]).arg(tool), LIMIT);
    let err = text(&out.stderr);
    assert!(!err.contains("TASK_RUNNING"), "{err}");
    // The same header, with a probe served today: TASK_RUNNING is the 0
    // in the compiled comparison.
    let prog = "#include <linux/sched.h>\nkprobe:finish_task_switch { if (curtask->__state == TASK_RUNNING) { @r = count(); } }";
    let out = run_bounded(vmprobe().args(["run", "-d", "-e", prog]), LIMIT);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A kernel of the user's own reads the host's headers only, and says so,
/// unless --kernel-headers names its tree (here, the default guest's, laid
/// out as /lib/modules/VERSION is).
#[test]
fn own_kernels_read_the_headers_named() {
    let (image, h) = headers();
    let prog = "#include <linux/sched.h>\nBEGIN { printf(\"%d\\n\", TASK_RUNNING); exit(); }";
    let out = run_bounded(
        vmprobe()
            .args(["run", "--kernel"])
            .arg(&image.kernel)
            .args(["-e", prog]),
        LIMIT,
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unknown identifier 'TASK_RUNNING'")
            && err.contains("the headers read are the host's only (/usr/local/include, /usr/include, /usr/include/x86_64-linux-gnu): --kernel-headers DIR gives the guest kernel's"),
        "{err}"
    );
    let modules = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&h.source, modules.path().join("source")).unwrap();
    std::os::unix::fs::symlink(&h.build, modules.path().join("build")).unwrap();
    let out = run_bounded(
        vmprobe()
            .args(["run", "--kernel"])
            .arg(&image.kernel)
            .arg("--kernel-headers")
            .arg(modules.path())
            .args(["-e", prog]),
        LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(last_line(&out.stdout), "0");
    let out = run_bounded(
        vmprobe().args([
            "run",
            "--kernel-headers",
            "/nonexistent/headers",
            "-e",
            prog,
        ]),
        LIMIT,
    );
    assert!(
        text(&out.stderr).contains("--kernel-headers /nonexistent/headers: not a directory"),
        "{}",
        text(&out.stderr)
    );
}
