//! Shared by the engine's tests against the real default guest.

#![allow(dead_code)]

use gdb_remote::Client;
use kernel_image::{KernelSections, KernelSymbols};
use linux_guest::{GuestKernel, SECTIONS};
use qemu_guest::{LaunchConfig, Vm};
use std::sync::Arc;
use std::time::Duration;

/// The default guest, or `None` (skip) where none was built, except in CI.
pub fn default_guest() -> Option<qemu_guest::GuestImage> {
    let image = qemu_guest::default_guest(&qemu_guest::cache_dir());
    if image.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must build the default guest first (vmprobe guest build)"
        );
        eprintln!("no default guest built: skipping");
    }
    image
}

/// A booted guest under TCG, stopped (interrupted) once its init is ready,
/// with its kernel's symbols and KASLR slide known.
pub struct Booted {
    pub vm: Vm,
    pub client: Client,
    pub symbols: Arc<KernelSymbols>,
    pub kernel: GuestKernel,
    pub slide: u64,
}

/// Boots the default guest (`configure` may change the launch), waits for
/// its init and stops it. `None` where no guest was built.
pub fn boot(configure: impl FnOnce(&mut LaunchConfig)) -> Option<Booted> {
    let image = default_guest()?;
    let cache = qemu_guest::cache_dir();
    let symbols =
        Arc::new(KernelSymbols::load(&image.kernel, Some(&cache.join("symbols"))).unwrap());
    let sections =
        KernelSections::load(&image.kernel, &SECTIONS, Some(&cache.join("sections"))).unwrap();
    let mut cfg = LaunchConfig::new(image);
    cfg.accel = qemu_guest::Accel::Tcg;
    configure(&mut cfg);
    let mut vm = Vm::launch(&cfg).unwrap();
    let mut client = Client::connect_unix_wait(&vm.gdb_socket(), Duration::from_secs(5)).unwrap();
    client.resume(&[]).unwrap();
    vm.wait_ready(Duration::from_secs(180)).unwrap();
    client.interrupt().unwrap();
    client
        .wait_stop(Some(Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    let slide = kernel_image::detect_slide(symbols.text_samples(), |addr, len| {
        let mut buf = vec![0u8; len];
        client.read_memory(addr, &mut buf).ok().map(|_| buf)
    })
    .expect("KASLR slide");
    let kernel = GuestKernel::from_image_sections(symbols.clone(), slide, Some(&sections));
    Some(Booted {
        vm,
        client,
        symbols,
        kernel,
        slide,
    })
}
