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
