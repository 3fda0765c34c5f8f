//! KVM tracepoints from a real (tiny) VM: one vCPU thread running N
//! `out 0x10, al` in real mode, traced by its thread id exactly as vmprobe
//! traces a VMM's vCPU threads. The ground truth is the VMM loop itself: it
//! sees every KVM_EXIT_IO and its port, size and value.
//!
//! Without /dev/kvm the test skips (fails under CI).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::thread;

use host_tracepoints::{
    EventSpec, FieldValue, Sample, Target, Tracefs, Tracepoint, TracepointReader,
};

// From <linux/kvm.h>; x86-64.
const KVM_GET_VCPU_MMAP_SIZE: u64 = 0xae04;
const KVM_CREATE_VM: u64 = 0xae01;
const KVM_CREATE_VCPU: u64 = 0xae41;
const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;
const KVM_RUN: u64 = 0xae80;
const KVM_GET_SREGS: u64 = 0x8138_ae83;
const KVM_SET_SREGS: u64 = 0x4138_ae84;
const KVM_SET_REGS: u64 = 0x4090_ae82;
const KVM_EXIT_IO: u32 = 2;
const KVM_EXIT_HLT: u32 = 5;

const PORT: u16 = 0x10;
const OUTS: u8 = 50;

#[repr(C)]
struct MemoryRegion {
    slot: u32,
    flags: u32,
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
}

/// `struct kvm_sregs`: 8 segments of 24 bytes; cs is the first.
#[repr(C)]
struct Sregs([u8; 312]);

#[repr(C)]
#[derive(Default)]
struct Regs {
    gpr: [u64; 16],
    rip: u64,
    rflags: u64,
}

fn ioctl<T>(fd: &impl AsRawFd, req: u64, arg: *mut T) -> i32 {
    // SAFETY: each call site passes a request whose argument type is `T` (or
    // a null/integer argument for the _IO requests), valid for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    assert!(
        rc >= 0,
        "ioctl {req:#x}: {}",
        std::io::Error::last_os_error()
    );
    rc
}

fn own(fd: i32) -> OwnedFd {
    assert!(fd >= 0);
    // SAFETY: a new descriptor from KVM that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// What the VMM saw: each OUT's value, and each exit reason.
#[derive(Debug, Default)]
struct Seen {
    outs: Vec<u8>,
    exits: Vec<u32>,
}

/// Runs the guest on the calling thread until HLT.
fn run_vm(kvm: File) -> Seen {
    let vm = own(ioctl(&kvm, KVM_CREATE_VM, std::ptr::null_mut::<u8>()));
    let mem_size = 0x10000;
    // SAFETY: a fresh anonymous private mapping, ours alone.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mem_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    // mov al,0; l: out 0x10,al; inc al; cmp al,OUTS; jne l; hlt
    let code = [
        0xb0, 0x00, 0xe6, PORT as u8, 0xfe, 0xc0, 0x3c, OUTS, 0x75, 0xf8, 0xf4,
    ];
    // SAFETY: 0x1000 + code.len() is inside the mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), (mem as *mut u8).add(0x1000), code.len())
    };
    let mut region = MemoryRegion {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem_size as u64,
        userspace_addr: mem as u64,
    };
    ioctl(&vm, KVM_SET_USER_MEMORY_REGION, &mut region);
    let vcpu = own(ioctl(&vm, KVM_CREATE_VCPU, std::ptr::null_mut::<u8>()));
    let mut sregs = Sregs([0; 312]);
    ioctl(&vcpu, KVM_GET_SREGS, &mut sregs);
    // cs.base = 0 (bytes 0..8), cs.selector = 0 (bytes 12..14): real mode at 0.
    sregs.0[..8].fill(0);
    sregs.0[12..14].fill(0);
    ioctl(&vcpu, KVM_SET_SREGS, &mut sregs);
    let mut regs = Regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    ioctl(&vcpu, KVM_SET_REGS, &mut regs);

    let run_size = ioctl(&kvm, KVM_GET_VCPU_MMAP_SIZE, std::ptr::null_mut::<u8>()) as usize;
    // SAFETY: mapping the vCPU's kvm_run area with the size KVM reported.
    let run = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            run_size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu.as_raw_fd(),
            0,
        )
    } as *const u8;
    assert_ne!(run as *mut libc::c_void, libc::MAP_FAILED);
    let mut seen = Seen::default();
    for _ in 0..10_000 {
        ioctl(&vcpu, KVM_RUN, std::ptr::null_mut::<u8>());
        // SAFETY: struct kvm_run: exit_reason u32 at 8; for KVM_EXIT_IO the
        // union at 32 is {u8 direction, size; u16 port; u32 count; u64
        // data_offset}, the data inside the same mapping. KVM does not write
        // it while we are out of KVM_RUN.
        let (reason, io) = unsafe {
            let reason = std::ptr::read_unaligned(run.add(8) as *const u32);
            let io = run.add(32);
            (reason, io)
        };
        seen.exits.push(reason);
        match reason {
            KVM_EXIT_IO => {
                // SAFETY: see above; data_offset points inside the mapping.
                let (port, off) = unsafe {
                    (
                        std::ptr::read_unaligned(io.add(2) as *const u16),
                        std::ptr::read_unaligned(io.add(8) as *const u64) as usize,
                    )
                };
                assert_eq!(port, PORT);
                assert!(off < run_size);
                // SAFETY: off < run_size, checked above.
                seen.outs.push(unsafe { *run.add(off) });
            }
            KVM_EXIT_HLT => break,
            other => panic!("unexpected exit {other}"),
        }
    }
    // SAFETY: unmapping the two mappings made above, no longer used.
    unsafe {
        libc::munmap(run as *mut _, run_size);
        libc::munmap(mem, mem_size);
    }
    seen
}

#[test]
fn kvm_pio_and_userspace_exits_of_a_vcpu_thread() {
    let kvm = match File::options().read(true).write(true).open("/dev/kvm") {
        Ok(f) => f,
        Err(e) if std::env::var_os("CI").is_some() => panic!("/dev/kvm under CI: {e}"),
        Err(e) => return eprintln!("note: skipping, no /dev/kvm: {e}"),
    };
    let t = match Tracefs::open() {
        Ok(t) => t,
        Err(e) if std::env::var_os("CI").is_some() => panic!("{e}"),
        Err(e) => return eprintln!("note: skipping: {e}"),
    };
    let pio = Tracepoint::resolve(&t, "kvm:kvm_pio").unwrap();
    let exit = Tracepoint::resolve(&t, "kvm:kvm_userspace_exit").unwrap();

    let (tid_tx, tid_rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let vcpu = thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        go_rx.recv().unwrap();
        run_vm(kvm)
    });
    let tid = tid_rx.recv().unwrap();
    let target = Target::Threads(vec![tid]);
    // Both tracepoints into the vCPU thread's one ring: in order as they
    // happened, without sorting.
    let specs = [pio, exit].map(|tracepoint| EventSpec {
        tracepoint,
        filter: None,
    });
    let mut r = match TracepointReader::open_many(&specs, &target, 64) {
        Ok(r) => r,
        Err(e) if std::env::var_os("CI").is_none() => {
            drop(go);
            vcpu.join().ok();
            return eprintln!("note: skipping: {e}");
        }
        Err(e) => panic!("{e}"),
    };
    go.send(()).unwrap();
    let seen = vcpu.join().unwrap();
    assert_eq!(seen.outs, (0..OUTS).collect::<Vec<_>>());

    let mut s: Vec<Sample> = Vec::new();
    r.read(&mut s).unwrap();
    assert_eq!(r.lost(), 0);
    assert!(s.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    assert_eq!(r.hits().unwrap(), s.len() as u64);
    assert!(s.iter().all(|x| x.tid == tid));

    let pios: Vec<&Sample> = s.iter().filter(|x| &*x.name == "kvm:kvm_pio").collect();
    let vals: Vec<u64> = pios
        .iter()
        .map(|x| x.field("val").unwrap().as_u64().unwrap())
        .collect();
    assert_eq!(vals, (0..OUTS as u64).collect::<Vec<_>>());
    for x in &pios {
        assert_eq!(x.field("port"), Some(&FieldValue::U64(PORT as u64)));
        assert_eq!(
            x.field("rw"),
            Some(&FieldValue::U64(1)),
            "an OUT is a write"
        );
        assert_eq!(x.field("size"), Some(&FieldValue::U64(1)));
        assert_eq!(x.field("count"), Some(&FieldValue::U64(1)));
    }
    let exits: Vec<u32> = s
        .iter()
        .filter(|x| &*x.name == "kvm:kvm_userspace_exit")
        .map(|x| x.field("reason").unwrap().as_u64().unwrap() as u32)
        .collect();
    assert_eq!(exits, seen.exits);
    // Each OUT's kvm_pio comes before the user-space exit it causes.
    let order: Vec<&str> = s.iter().map(|x| &*x.name).collect();
    for pair in order.chunks(2).take(OUTS as usize) {
        assert_eq!(pair, ["kvm:kvm_pio", "kvm:kvm_userspace_exit"]);
    }
}
