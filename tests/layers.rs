//! One script across the guest and the VMM (issue 5): a guest kprobe on
//! dd's one-byte writes to the serial console, QEMU's own `serial_write`
//! trace event and its port write (`memory_region_ops_write` on the
//! "serial" region) for each byte, on one clock. Every byte is seen in both
//! layers, the latency between them is reported, and no event of the VMM
//! layer comes before the guest write that caused it. The event's fields
//! carry the names of QEMU's source (`serial_write(uint16_t addr, uint8_t
//! value)`), read through its installed `trace-events-all`.

mod support;
use support::*;

#[test]
fn guest_write_then_vmm_serial_event_in_causal_order() {
    let program = r#"
kprobe:ksys_write /comm == "dd" && arg2 == 1/ { @start = nsecs; @writes = count(); }
vmm:memory_region_ops_write /args.name == "serial" && args.addr == 0x3f8 && args.value == 90/ {
    @pio = count();
}
vmm:serial_write /args.value == 90 && args.addr == 0/ {
    @serial = count();
    if (@start == 0 || nsecs < @start) { @acausal = count(); }
    @latency_ns = hist(nsecs - @start);
    @start = 0;
}
"#;
    let workload = "printf ZZZZZZZZZZ > /tmp/z && dd if=/tmp/z of=/dev/ttyS0 bs=1 2>/dev/null";
    let out = run_bounded(
        vmprobe().args(["run", "-e", program, "--", workload]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    assert_eq!(map_value(&stdout, "writes"), 10, "{stdout}");
    assert_eq!(
        map_value(&stdout, "serial"),
        10,
        "one QEMU event per byte: {stdout}"
    );
    assert_eq!(
        map_value(&stdout, "pio"),
        10,
        "one port write to the UART's data register per byte: {stdout}"
    );
    assert!(
        stdout
            .lines()
            .all(|l| !l.starts_with("@acausal: ") || l == "@acausal: 0"),
        "a VMM event before its guest write:\n{stdout}"
    );
    assert!(stdout.contains("@latency_ns:"), "{stdout}");
}
