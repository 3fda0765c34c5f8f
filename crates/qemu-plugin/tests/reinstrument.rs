//! `request_reinstrument` from a thread of the plugin's own (not a vCPU):
//! a vCPU must reset QEMU's code cache (within 60 s, or the test fails), on an idle
//! guest and on a busy one, and afterwards no block may call the old probes.
//! Checked three ways: as vmprobe runs QEMU (single-threaded TCG) with the
//! immediate wake-up, with the doorbell blocks alone, and under
//! multi-threaded TCG with the plugin API alone (resume callbacks). The
//! delays are printed, not asserted: timings belong in `vmprobe bench`,
//! and a loaded CI machine would make a bound either flaky or meaningless.

mod support;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::*;

/// Switches per guest state: enough to see each path taken more than once.
const SWITCHES: usize = 3;

/// Creates the trigger file and waits for the plugin to remove it (the
/// switch took effect).
fn switch(trigger: &Path) {
    let start = Instant::now();
    std::fs::write(trigger, b"").unwrap();
    while trigger.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the switch did not take effect within 60 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn summary(name: &str, delays: &[Duration]) {
    let mut ms: Vec<f64> = delays.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let list: Vec<String> = ms.iter().map(|m| format!("{m:.2}")).collect();
    eprintln!(
        "doorbell delay, {name}: median {:.2} ms, max {:.2} ms (request to `reinstrumented`, {} switches: {})",
        ms[ms.len() / 2],
        ms[ms.len() - 1],
        ms.len(),
        list.join(" ")
    );
}

/// Boots the guest with the example counting ksys_write, switches
/// `SWITCHES` times while it idles and as many while a vCPU runs a
/// CPU-bound user loop, then once more to ksys_read and reads 300 bytes one
/// at a time; checks the counts and prints the delays.
fn scenario(name: &str, qemu: &Path, plugin_args: &str, vcpus: u32) {
    // One guest at a time: these are timings, on a 2-core machine.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let plugin = example_plugin("count_insns");
    let image = default_guest();
    let (write, read) = (
        kernel_symbol(&image, "ksys_write"),
        kernel_symbol(&image, "ksys_read"),
    );
    let dir = scratch();
    let (out, trigger) = (dir.path().join("report"), dir.path().join("switch"));
    let mut args = format!(
        "addr={write:#x},switch={read:#x},trigger={},out={}",
        trigger.display(),
        out.display()
    );
    if !plugin_args.is_empty() {
        args = format!("{args},{plugin_args}");
    }
    let mut guest = Guest::boot_vcpus(qemu, Some((&plugin, &args)), vcpus);

    // Idle: init waits on its control port, the kernel halts between ticks.
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..SWITCHES {
        switch(&trigger);
        std::thread::sleep(Duration::from_millis(300));
    }
    // Busy: a CPU-bound user-space loop, no system calls.
    let (status, _) = guest.run("vmprobe-mix 4000000000 0 >/dev/null 2>&1 & echo $! > /tmp/busy");
    assert_eq!(status, 0);
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..SWITCHES {
        switch(&trigger);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (status, _) = guest.run("kill $(cat /tmp/busy)");
    assert_eq!(status, 0);
    // An even number of switches so far: counting ksys_write. One more, to
    // ksys_read, then reads of one byte.
    switch(&trigger);
    let (status, _) = guest.run("dd if=/dev/zero of=/dev/null bs=1 count=300");
    assert_eq!(status, 0, "{}", guest.console());
    guest.shutdown();

    let report = Report::read(&out);
    let switches = report.switches();
    assert_eq!(switches.len(), 2 * SWITCHES + 1, "{}", report.text);
    let delays: Vec<Duration> = switches
        .iter()
        .map(|&(req, done)| {
            assert!(done >= req, "a switch never took effect: {switches:?}");
            Duration::from_nanos(done - req)
        })
        .collect();
    eprintln!(
        "{name}: {vcpus} vCPU(s), immediate wake {}",
        report.scalar("immediate_wake")
    );
    summary(&format!("{name}, idle guest"), &delays[..SWITCHES]);
    summary(
        &format!("{name}, busy guest"),
        &delays[SWITCHES..2 * SWITCHES],
    );
    assert_eq!(
        report.scalar("stale_hits"),
        0,
        "old probes ran after a reset"
    );
    assert_eq!(report.scalar("panics"), 0);
    assert!(report.scalar("resets") > 2 * SWITCHES as u64);
    assert!(report.hits(write, "total") > 0, "{}", report.text);
    let reads = report.hist(read);
    assert!(reads.get("1").copied().unwrap_or(0) >= 300, "{reads:?}");
}

/// vmprobe's configuration: single-threaded TCG, wake-up on.
#[test]
fn reinstruments_idle_or_busy_and_old_probes_never_run() {
    let Some(qemu) = qemu10() else { return };
    scenario("single-threaded TCG, wake-up", &qemu, "", 1);
}

/// The plugin API alone under single-threaded TCG: a busy guest answers at
/// its next kernel entry or exit; an idle one at its next interrupt.
#[test]
fn doorbell_blocks_alone_answer() {
    let Some(qemu) = qemu10() else { return };
    scenario(
        "single-threaded TCG, doorbell blocks only",
        &qemu,
        "wake=off",
        1,
    );
}

/// A wrapper that runs `qemu` with multi-threaded TCG (vmprobe's launcher
/// asks for `thread=single`).
fn mttcg_wrapper(qemu: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("qemu-mttcg");
    let script = format!(
        "#!/bin/bash\nargs=()\nfor a in \"$@\"; do args+=(\"${{a/thread=single/thread=multi}}\"); done\nexec {:?} \"${{args[@]}}\"\n",
        qemu
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Multi-threaded TCG, two vCPUs (one idle, one busy in the busy phase):
/// with the wake-up, and with the plugin API alone, where a halted vCPU is
/// woken by a callback registration and answers in its resume callback.
#[test]
fn multi_threaded_tcg_answers() {
    let Some(qemu) = qemu10() else { return };
    let dir = scratch();
    let wrapper = mttcg_wrapper(&qemu, dir.path());
    scenario("multi-threaded TCG, wake-up", &wrapper, "", 2);
    scenario(
        "multi-threaded TCG, plugin API only",
        &wrapper,
        "wake=off",
        2,
    );
}
