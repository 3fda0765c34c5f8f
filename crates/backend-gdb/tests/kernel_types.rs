//! Kernel types in scripts against the real default guest: the language
//! typed by the image's own BTF (through `BtfTypes`), then run on a booted
//! guest through the engine. `sizeof`/`offsetof` equal bpftool's numbers for
//! this kernel; `str(args.filename)` at `do_sys_openat2` yields exactly the
//! paths the workload opens; `curtask->comm` equals `comm`; a bounded walk of
//! `real_parent` reaches pid 1.

mod support;

use backend_gdb::Session;
use gdb_remote::Client;
use kernel_btf::Btf;
use kernel_image::{KernelSections, KernelSymbols};
use linux_guest::{GuestKernel, SECTIONS};
use probe_engine::{BtfTypes, EndReason};
use probe_lang::{KernelTypes, compile_with_types, types::prototype_lines};
use probe_plan::resolve_probes;
use probe_runtime::{ContextError, ProbeContext};
use qemu_guest::{LaunchConfig, Vm};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::default_guest;

fn sections(image: &qemu_guest::GuestImage) -> KernelSections {
    let cache = qemu_guest::cache_dir();
    KernelSections::load(&image.kernel, &SECTIONS, Some(&cache.join("sections"))).unwrap()
}

fn btf(sections: &KernelSections) -> Btf {
    Btf::parse(&sections.get(".BTF").expect(".BTF").data).unwrap()
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A BEGIN context that has no guest.
struct NoGuest;

impl ProbeContext for NoGuest {
    fn arg(&mut self, _: u8) -> Result<u64, ContextError> {
        Err(ContextError::Unavailable("no args".into()))
    }
    fn retval(&mut self) -> Result<u64, ContextError> {
        Err(ContextError::Unavailable("no retval".into()))
    }
    fn vcpu(&self) -> u32 {
        0
    }
    fn nsecs(&self) -> u64 {
        0
    }
    fn func(&self) -> &str {
        ""
    }
    fn probe(&self) -> &str {
        "BEGIN"
    }
    fn read_memory(&mut self, addr: u64, _: &mut [u8]) -> Result<(), ContextError> {
        Err(ContextError::Memory {
            addr,
            reason: "no guest".into(),
        })
    }
}

#[test]
fn sizes_offsets_and_prototypes_from_the_image_btf() {
    let Some(image) = default_guest() else { return };
    let btf = btf(&sections(&image));
    let types = BtfTypes::new(&btf);
    let p = Arc::new(
        compile_with_types(
            "BEGIN { printf(\"%d %d %d\\n\", sizeof(struct task_struct), offsetof(struct task_struct, comm), sizeof(struct file)); }",
            "t",
            Some(&types),
        )
        .unwrap_or_else(|d| panic!("{d}")),
    );
    let cap = Capture::default();
    let mut rt = printing(&p, cap.clone());
    rt.run(p.block_of(0), &mut NoGuest);
    // bpftool btf dump: struct task_struct size=9792, comm bits_offset=23808.
    let file = btf.size_of(btf.lookup("struct file").unwrap()).unwrap();
    assert_eq!(cap.text(), format!("9792 2976 {file}\n"));

    let proto = types.function("ksys_write").unwrap();
    assert_eq!(
        prototype_lines(&types, &proto),
        [
            "    unsigned int fd",
            "    const char * buf",
            "    size_t count"
        ]
    );

    let e = compile_with_types(
        "kprobe:do_sys_openat2 { printf(\"%d\\n\", args.nope); }",
        "t",
        Some(&types),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("has no parameter named 'nope' (parameters: dfd, filename, how)"),
        "{e}"
    );
    // Typed args, members and curtask all check against the real types.
    compile_with_types(
        "kprobe:do_sys_openat2 { printf(\"%s %d %d %s\\n\", str(args.filename), args.how->flags, curtask->mm->map_count, curtask->parent->comm); }",
        "t",
        Some(&types),
    )
    .unwrap_or_else(|d| panic!("{d}"));
}

#[test]
fn typed_args_curtask_and_task_walk_on_the_real_guest() {
    let Some(image) = default_guest() else { return };
    let cache = qemu_guest::cache_dir();
    let symbols =
        Arc::new(KernelSymbols::load(&image.kernel, Some(&cache.join("symbols"))).unwrap());
    let sections = sections(&image);
    let btf = btf(&sections);
    let types = BtfTypes::new(&btf);
    let program = Arc::new(
        compile_with_types(
            r#"kprobe:do_sys_openat2 /comm == "cat"/ { printf("open %s\n", str(args->filename)); }
kprobe:ksys_write /comm == "cat"/ {
    printf("comm %s %s\n", curtask->comm, comm);
    $t = curtask; $i = 0;
    while ($i < 64) { if ($t->pid == 1) { break; } $t = $t->real_parent; $i++; }
    printf("top %d %s %d\n", $t->pid, $t->comm, $i);
}"#,
            "t",
            Some(&types),
        )
        .unwrap_or_else(|d| panic!("{d}")),
    );

    let mut cfg = LaunchConfig::new(image);
    cfg.accel = qemu_guest::Accel::Tcg;
    let mut vm = Vm::launch(&cfg).unwrap();
    let mut client = Client::connect_unix_wait(&vm.gdb_socket(), Duration::from_secs(5)).unwrap();
    client.set_stub_ignores_acks(true);
    let mut session = Session::new(client);
    session.resume().unwrap();
    vm.wait_ready(Duration::from_secs(180)).unwrap();
    session.pause().unwrap();
    let slide = session.detect_slide(&symbols).unwrap();
    session
        .arm(resolve_probes(&program, &symbols, slide).unwrap())
        .unwrap();
    session.set_kernel(Arc::new(GuestKernel::from_image_sections(
        symbols.clone(),
        slide,
        Some(&sections),
    )));
    let cap = Capture::default();
    let runtime = Mutex::new(printing(&program, cap.clone()));
    session.resume().unwrap();
    vm.start_workload("cat /proc/version /etc/nonexistent; cat /proc/1/comm > /dev/ttyS0")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    let end = session.run(&runtime, &mut || {
        if Instant::now() > deadline {
            return Some(EndReason::Interrupted);
        }
        vm.poll_exit().ok().flatten().map(EndReason::WorkloadExited)
    });
    assert!(matches!(end, EndReason::WorkloadExited(_)), "{end:?}");
    session.detach().unwrap();
    let out = cap.text();
    let errors = runtime.lock().unwrap().errors();
    assert!(errors.is_empty(), "{errors:?}\n{out}");

    let opens: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("open "))
        .collect();
    assert_eq!(
        opens,
        ["/proc/version", "/etc/nonexistent", "/proc/1/comm"],
        "{out}"
    );
    let comms: Vec<&str> = out.lines().filter(|l| l.starts_with("comm ")).collect();
    assert!(!comms.is_empty(), "{out}");
    assert!(comms.iter().all(|l| *l == "comm cat cat"), "{out}");
    // The guest's pid 1 names itself on the console; every walk ends there.
    let console = vm.console_tail();
    let tops: Vec<&str> = out.lines().filter(|l| l.starts_with("top ")).collect();
    assert!(!tops.is_empty(), "{out}");
    for t in &tops {
        let f: Vec<&str> = t.split(' ').collect();
        assert_eq!(f[1], "1", "{out}");
        assert!(
            console.lines().any(|l| l.trim() == f[2]),
            "pid 1 named '{}', but the guest's /proc/1/comm says otherwise: {console}",
            f[2]
        );
        let steps: u32 = f[3].parse().unwrap();
        assert!((1..64).contains(&steps), "{out}");
    }
    eprintln!("{out}");
}

/// A runtime printing as bpftrace to `out`.
fn printing(p: &probe_lang::Program, out: Capture) -> probe_runtime::Runtime {
    probe_output::printing_runtime(
        p.executable().clone(),
        Box::new(out),
        probe_output::OutputFormat::Text,
    )
}
