use super::*;

#[test]
fn probe_parsing() {
    assert_eq!(
        parse_probe("kprobe:f+0x10").unwrap(),
        ProbeSpec::Kprobe {
            target: KprobeTarget::Function("f".into()),
            offset: 16
        }
    );
    assert_eq!(
        parse_probe("kprobe:0x10").unwrap(),
        ProbeSpec::Kprobe {
            target: KprobeTarget::Address(16),
            offset: 0
        }
    );
    assert!(parse_probe("kprobe:").is_err());
    let kfunc = |f: &str| ProbeSpec::Kfunc { function: f.into() };
    assert_eq!(
        parse_probe("kfunc:ksys_write").unwrap(),
        kfunc("ksys_write")
    );
    assert_eq!(
        parse_probe("f:vmlinux:ksys_write").unwrap(),
        kfunc("ksys_write")
    );
    assert_eq!(
        parse_probe("fr:vfs_read").unwrap(),
        ProbeSpec::Kretfunc {
            function: "vfs_read".into()
        }
    );
    assert_eq!(kfunc("f").name(), "kfunc:f");
    assert_eq!(
        parse_probe("kretfunc:vmlinux:vfs_rea?*").unwrap(),
        ProbeSpec::Kretfunc {
            function: "vfs_rea?*".into()
        }
    );
    assert!(
        parse_probe("kfunc:ext4:f")
            .unwrap_err()
            .contains("module 'ext4'")
    );
    assert!(parse_probe("kretfunc:").is_err());
    assert!(parse_probe("fexit:f").unwrap_err().contains("kretfunc:"));
    // A first segment that is no probe kind, before one, names a guest.
    assert_eq!(split_guest("vm1:kprobe:f"), (Some("vm1"), "kprobe:f"));
    assert_eq!(
        split_guest("web-1:t:syscalls:sys_enter_read"),
        (Some("web-1"), "t:syscalls:sys_enter_read")
    );
    assert_eq!(split_guest("kprobe:f"), (None, "kprobe:f"));
    assert_eq!(split_guest("vmm:serial_write"), (None, "vmm:serial_write"));
    assert_eq!(
        split_guest("host:tracepoint:kvm:kvm_exit"),
        (None, "host:tracepoint:kvm:kvm_exit")
    );
    // A typo of a kind is not taken for a guest.
    assert_eq!(
        split_guest("tracepointt:syscalls:sys_enter_read"),
        (None, "tracepointt:syscalls:sys_enter_read")
    );
    assert!(per_guest(Some("vm1"), parse_probe("interval:s:1").unwrap()).is_err());
    assert!(per_guest(Some("vm1"), parse_probe("kfunc:f").unwrap()).is_ok());
    assert!(parse_probe("kprobe:f+zz").is_err());
    assert!(parse_probe("kretprobe:f+1").is_err());
    assert!(parse_probe("BEGINX").is_err());
}

#[test]
fn uprobe_parsing() {
    let p = parse_probe("uprobe:/bin/vmprobe-ucount:ucount_step").unwrap();
    assert_eq!(
        p,
        ProbeSpec::Uprobe {
            path: "/bin/vmprobe-ucount".into(),
            target: UprobeTarget::Symbol("ucount_step".into()),
            ret: false,
            resolved: None,
            also: Vec::new(),
        }
    );
    assert_eq!(p.name(), "uprobe:/bin/vmprobe-ucount:ucount_step");
    assert!(p.is_entry() && !p.is_return());
    let p = parse_probe("ur:/bin/x:f").unwrap();
    assert_eq!(p.name(), "uretprobe:/bin/x:f");
    assert!(p.is_return() && !p.is_entry());
    let p = parse_probe("u:/bin/x:0x401000").unwrap();
    assert_eq!(p.name(), "uprobe:/bin/x:0x401000");
    let p = parse_probe("uprobe:/bin/x:f+0x10").unwrap();
    assert_eq!(p.name(), "uprobe:/bin/x:f+16");
    assert_eq!(
        parse_probe("uprobe:/bin/x:f+0").unwrap().name(),
        "uprobe:/bin/x:f"
    );
    let p = parse_probe("uprobe:libc:getaddrinfo").unwrap();
    assert_eq!(p.name(), "uprobe:libc:getaddrinfo");
    for (bad, why) in [
        ("uprobe:lib c:f", "library name"),
        ("uprobe:x/y:f", "absolute path"),
        ("uprobe:/bin/x", "look like"),
        ("uprobe:/bin/x:", "look like"),
        ("uprobe:/bin/x:f*", "wildcards"),
        ("uretprobe:/bin/x:f+4", "not an offset into one"),
        ("uprobe:/bin/x:f+x", "invalid uprobe offset"),
        ("uprobe:/bin/x:+4", "invalid uprobe function"),
        ("uretprobe:/bin/x:0x10", "names a function"),
        ("uprobe:/bin/../x:f", "canonical"),
        ("uprobe:/bin/x:0xzz", "invalid uprobe address"),
        ("uprobe:/bin/x:f-g", "invalid uprobe function"),
    ] {
        let e = parse_probe(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn tracepoint_layers() {
    assert_eq!(
        parse_probe("host:tracepoint:kvm:kvm_exit").unwrap(),
        ProbeSpec::HostTracepoint {
            system: "kvm".into(),
            event: "kvm_exit".into()
        }
    );
    assert_eq!(
        parse_probe("host:t:kvm:kvm_exit").unwrap().name(),
        "host:tracepoint:kvm:kvm_exit"
    );
    let p = parse_probe("tracepoint:syscalls:sys_enter_openat").unwrap();
    assert_eq!(p.name(), "tracepoint:syscalls:sys_enter_openat");
    assert_eq!(p.syscall_event(), Some(("openat", false)));
    let p = parse_probe("t:syscalls:sys_exit_read").unwrap();
    assert_eq!(p.syscall_event(), Some(("read", true)));
    // Any other event parses; whether the kernel can serve it is
    // checked with the types.
    assert_eq!(
        parse_probe("tracepoint:sched:sched_switch").unwrap(),
        ProbeSpec::GuestTracepoint {
            system: "sched".into(),
            event: "sched_switch".into()
        }
    );
    assert!(parse_probe("tracepoint:sched:sched*").is_ok());
    assert!(parse_probe("tracepoint:*:sched_switch").is_err());
    assert!(parse_probe("tracepoint:syscalls:sys_enter_").is_err());
    assert!(parse_probe("tracepoint:syscalls:foo").is_err());
    assert!(parse_probe("tracepoint:syscalls:sys_enter_open*").is_ok());
    assert!(parse_probe("host:kprobe:f").is_err());
    assert!(parse_probe("host:tracepoint:kvm").is_err());
}
