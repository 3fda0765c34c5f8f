//! The guest's kernel as vmprobe reads it before anything boots: the
//! default guest's images, the kernel's symbols, types and unwind tables,
//! and a program compiled and checked against them.

use crate::GuestArgs;
use anyhow::{Context, Result};
use kernel_image::{KernelSections, KernelSymbols};
use linux_guest::GuestKernel;
use qemu_guest::GuestImage;
use std::sync::Arc;

pub fn guest_build() -> Result<GuestImage> {
    let cache = qemu_guest::cache_dir();
    let image =
        qemu_guest::build_default_guest(&cache, &mut |step| eprintln!("vmprobe: guest: {step}"))
            .context("building the default guest")?;
    eprintln!("vmprobe: guest: kernel {}", image.kernel.display());
    eprintln!("vmprobe: guest: initrd {}", image.initrd.display());
    Ok(image)
}

/// The user's images, else the default guest, built on first use.
pub(crate) fn guest_image(args: &GuestArgs) -> Result<GuestImage> {
    let mut image = match &args.kernel {
        Some(kernel) => {
            let default = qemu_guest::default_guest(&qemu_guest::cache_dir());
            let initrd = match (&args.initrd, default) {
                (Some(initrd), _) => initrd.clone(),
                (None, Some(d)) => d.initrd,
                (None, None) => guest_build()?.initrd,
            };
            GuestImage {
                kernel: kernel.clone(),
                initrd,
                append: qemu_guest::DEFAULT_APPEND.to_string(),
                version: "custom".into(),
            }
        }
        None => match qemu_guest::default_guest(&qemu_guest::cache_dir()) {
            Some(image) => image,
            None => {
                progress!("vmprobe: preparing the default guest (first use)");
                guest_build()?
            }
        },
    };
    if let Some(append) = &args.append {
        image.append = append.clone();
    }
    Ok(image)
}

/// The default guest, built on first use.
pub fn default_image() -> Result<GuestImage> {
    guest_image(&GuestArgs::default())
}

/// Symbols from the image itself, cached.
pub fn load_image_symbols(image: &GuestImage) -> Result<KernelSymbols> {
    load_symbols(&GuestArgs::default(), image)
}

/// What vmprobe reads from a guest kernel image: symbols, plus the sections
/// behind types and stacks (absent from System.map-style symbol files).
pub struct KernelInfo {
    pub symbols: Arc<KernelSymbols>,
    /// Parsed once (BTF, ORC); each guest takes it with its own slide.
    pub guest: GuestKernel,
}

pub fn load_kernel(symbols: KernelSymbols, image: &std::path::Path) -> KernelInfo {
    let cache = qemu_guest::cache_dir().join("sections");
    let _ = std::fs::create_dir_all(&cache);
    // Types and stacks are extras: an image without them still probes.
    let sections = KernelSections::load(image, &linux_guest::SECTIONS, Some(&cache)).ok();
    let symbols = Arc::new(symbols);
    let guest = GuestKernel::from_image_sections(symbols.clone(), 0, sections.as_ref());
    KernelInfo { symbols, guest }
}

/// Compiles with the kernel's BTF as the type provider, when the image has it.
pub fn compile_typed(
    source: &str,
    source_name: &str,
    kernel: &KernelInfo,
) -> Result<probe_lang::Program, probe_lang::Diagnostics> {
    let types = kernel
        .guest
        .btf()
        .map(|btf| probe_engine::LayerTypes::new(probe_engine::BtfTypes::new(btf)));
    probe_lang::compile_with_types(
        source,
        source_name,
        types.as_ref().map(|t| t as &dyn probe_lang::KernelTypes),
    )
}

/// Checks what the program names in the kernel (`kaddr`) before booting.
pub fn check_program(program: &probe_lang::Program, symbols: &KernelSymbols) -> Result<bool> {
    if let Err(diags) = program.check_kaddrs(|s| symbols.lookup(s).is_some()) {
        eprint!("{diags}");
        return Ok(false);
    }
    if let Err((index, e)) = probe_plan::resolve_probes_at(program, symbols, 0) {
        let span = program
            .probe_spans()
            .get(index)
            .copied()
            .unwrap_or_default();
        match program.errors_at(&[(span, e.to_string())]) {
            Err(diags) => eprint!("{diags}"),
            Ok(()) => return Err(e.into()),
        }
        return Ok(false);
    }
    Ok(true)
}

pub(crate) fn load_symbols(args: &GuestArgs, image: &GuestImage) -> Result<KernelSymbols> {
    let path = args.symbols.as_ref().unwrap_or(&image.kernel);
    let cache = qemu_guest::cache_dir().join("symbols");
    let _ = std::fs::create_dir_all(&cache);
    KernelSymbols::load(path, Some(&cache)).with_context(|| "loading kernel symbols".to_string())
}
