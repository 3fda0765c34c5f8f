//! Acceptance (c): guest memory at every probe address is byte-identical
//! before attach and after detach, read through a fresh connection to the
//! stub once vmprobe's session has detached; and no breakpoint is left: the
//! guest then runs the probed functions without a single stop.

mod support;
use backend_gdb::Session;
use gdb_remote::Client;
use probe_engine::EndReason;
use probe_plan::resolve_probes;
use qemu_guest::{Accel, LaunchConfig, Vm};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn read_sites(client: &mut Client, addrs: &[u64]) -> Vec<Vec<u8>> {
    addrs
        .iter()
        .map(|&a| {
            let mut buf = vec![0u8; 32];
            client.read_memory(a, &mut buf).expect("read probe site");
            buf
        })
        .collect()
}

#[test]
fn probe_sites_are_unchanged_after_detach() {
    let image = support::default_guest();
    let symbols = kernel_image::KernelSymbols::load(&image.kernel, None).expect("symbols");
    let program = Arc::new(
        probe_lang::compile(
            "kprobe:ksys_write, kprobe:vfs_read, kprobe:vfs_write { @[func] = count(); }\n\
             kretprobe:vfs_read, kretprobe:ksys_write { @ret = count(); }",
            "test",
        )
        .expect("compiles"),
    );
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = Accel::Tcg;
    let mut vm = Vm::launch(&cfg).expect("launch");
    let timeout = Duration::from_secs(5);
    let mut session =
        Session::new(Client::connect_unix_wait(&vm.gdb_socket(), timeout).expect("connect"));
    session.resume().unwrap();
    vm.wait_ready(Duration::from_secs(180))
        .expect("guest boots");
    session.pause().unwrap();
    let slide = session.detect_slide(&symbols).expect("slide");
    let sites = resolve_probes(&program, &symbols, slide).expect("resolve");
    let addrs: Vec<u64> = sites.iter().map(|s| s.addr).collect();
    assert_eq!(addrs.len(), 3);
    let before = read_sites(session.client(), &addrs);

    session.arm(sites).expect("arm");
    let runtime = Mutex::new(probe_output::printing_runtime(
        program.executable().clone(),
        Box::new(std::io::sink()),
        probe_output::OutputFormat::Text,
    ));
    session.resume().unwrap();
    vm.start_workload("cat /proc/version > /dev/null; dd if=/dev/zero of=/dev/null bs=1 count=50")
        .unwrap();
    let reason = session.run(&runtime, &mut || {
        vm.poll_exit().ok().flatten().map(EndReason::WorkloadExited)
    });
    assert_eq!(reason, EndReason::WorkloadExited(0));
    assert!(
        session.stats.hits >= 50,
        "probes fired: {}",
        session.stats.hits
    );
    session.detach().expect("detach restores every site");

    // A new debugger connection, as GDB would make, sees the original bytes.
    let mut fresh =
        Client::connect_unix_wait(&vm.gdb_socket(), timeout).expect("reconnect after detach");
    let after = read_sites(&mut fresh, &addrs);
    assert_eq!(before, after);
    // Sanity: we compared code, not an unmapped page of zeros.
    assert!(
        before.iter().all(|b| b.iter().any(|&x| x != 0)),
        "{before:02x?}"
    );
    // The same workload again, with a debugger attached but nothing armed
    // by it: any stop would be a breakpoint vmprobe left behind.
    fresh.resume(&[]).unwrap();
    vm.start_workload("dd if=/dev/zero of=/dev/null bs=1 count=50")
        .unwrap();
    assert_eq!(vm.wait_exit(Duration::from_secs(120)).unwrap(), 0);
    assert_eq!(
        fresh.wait_stop(Some(Duration::from_millis(200))).unwrap(),
        None,
        "a breakpoint survived the detach"
    );
    fresh.interrupt().unwrap();
    fresh.wait_stop(Some(Duration::from_secs(5))).unwrap();
    fresh.detach().unwrap();
    vm.shutdown(Duration::from_secs(20))
        .expect("guest powers off after detach");
}
