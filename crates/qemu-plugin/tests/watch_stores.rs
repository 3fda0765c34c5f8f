//! A plugin-side write watchpoint (the `watch_stores` example: a memory
//! callback on every store) against the guest kernel's own count, and what
//! it costs the guest: the measurement issue 13 asks for before choosing
//! how vmprobe serves watchpoints (it serves them through the stub). The
//! timings are printed for bench/RESULTS.md, not asserted.

mod support;
use support::*;

/// Forks between the two reads of the kernel's fork counter.
const FORKS: u32 = 200;

/// `processes N` from the guest's /proc/stat, the kernel's `total_forks`.
fn forks_in(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("processes "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// Guest-side wall time of `time CMD` (busybox: `real 0m 2.45s`).
fn real_secs(console: &str) -> Vec<f64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("real"))
        .filter_map(|t| {
            let t = t.trim().trim_end_matches('s');
            let (m, s) = t.split_once('m')?;
            Some(m.trim().parse::<f64>().ok()? * 60.0 + s.trim().parse::<f64>().ok()?)
        })
        .collect()
}

const TIMED: &str = "time vmprobe-mix 5000000 0; time vmprobe-nullsys 500000; \
                     time vmprobe-forkexec 200";

#[test]
fn store_callbacks_count_the_kernels_forks_and_cost_the_guest() {
    let Some(qemu) = qemu10() else { return };
    let plugin = example_plugin("watch_stores");
    let image = default_guest();
    let total_forks = kernel_symbol(&image, "total_forks");
    let dir = scratch();
    let out = dir.path().join("report");
    let args = format!("addr={total_forks:#x},len=8,out={}", out.display());

    let mut bare = Guest::boot(&qemu, None);
    let (status, _) = bare.run(TIMED);
    assert_eq!(status, 0, "{}", bare.console());
    let without = real_secs(&bare.shutdown());

    let mut guest = Guest::boot(&qemu, Some((&plugin, &args)));
    let (status, _) = guest.run(&format!(
        "grep processes /proc/stat; vmprobe-forkexec {FORKS}; grep processes /proc/stat; {TIMED}"
    ));
    assert_eq!(status, 0, "{}", guest.console());
    let console = guest.shutdown();
    let with = real_secs(&console);
    let report = Report::read(&out);
    eprintln!("{}", report.text);
    eprintln!(
        "guest seconds (mix, nullsys, forkexec): without {without:?}, with store callbacks {with:?}"
    );

    // The kernel counts each fork once, with one store to total_forks; the
    // plugin saw every store since boot (the kernel's clearing of .bss
    // among them, a few more), and nothing after the last fork of the run.
    let counts = forks_in(&console);
    assert_eq!(counts.len(), 2, "{console}");
    assert_eq!(
        counts[1] - counts[0],
        u64::from(FORKS) + 2,
        "the shell's fork of vmprobe-forkexec, its forks, the second grep's"
    );
    // After the second read: the timed part's vmprobe-forkexec 200 at least.
    let hits = report.scalar("hits");
    let least = counts[1] + 200;
    assert!(
        (least..least + 64).contains(&hits),
        "{hits} stores to total_forks; the kernel counted {} forks before the timed part",
        counts[1]
    );
    assert!(report.scalar("stores") > hits);
}
