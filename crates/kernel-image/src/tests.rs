use std::path::{Path, PathBuf};
use std::time::Instant;

use super::*;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kernel-image-test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const MAP: &str = "\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81001000 T _stext
ffffffff81001000 t helper
ffffffff81002000 W weak_fn
ffffffff81003000 T ksys_write
ffffffff81003100 T __x64_sys_write
ffffffff81003200 T vfs_read
ffffffff82000000 T _etext
ffffffff82000100 D some_data
ffffffff82000200 W weak_data_outside_text
ffffffffc0000000 t modfn\t[mod]
";

fn map_syms() -> KernelSymbols {
    let d = tmpdir("map");
    let p = d.join("kallsyms.txt");
    std::fs::write(&p, MAP).unwrap();
    let ks = KernelSymbols::load(&p, None).unwrap();
    std::fs::remove_dir_all(&d).unwrap();
    ks
}

#[test]
fn map_lookup_symbolize_matching() {
    let ks = map_syms();
    assert_eq!(ks.len(), 12);
    assert!(ks.text_samples().is_empty());
    assert_eq!(ks.lookup("_text").unwrap().addr, 0xffffffff81000000);
    assert_eq!(ks.lookup("ksys_write").unwrap().kind, 'T');
    assert!(ks.lookup("modfn").is_none());
    assert!(ks.lookup("nope").is_none());
    assert!(ks.lookup("").is_none());

    let (s, off) = ks.symbolize(0xffffffff81003105).unwrap();
    assert_eq!((s.name.as_str(), off), ("__x64_sys_write", 5));
    // First alias at an address wins, like the kernel.
    assert_eq!(ks.symbolize(0xffffffff81000010).unwrap().0.name, "_text");
    assert_eq!(ks.symbolize(0xffffffff81001000).unwrap().0.name, "_stext");
    assert!(ks.symbolize(0xffffffffffff0000).is_none());

    let names: Vec<&str> = ks
        .matching("*sys_w*")
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["ksys_write", "__x64_sys_write"]);
    let names: Vec<&str> = ks
        .matching("vfs_rea?")
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["vfs_read"]);
    assert!(ks.matching("some_data").is_empty()); // data, not text
    assert!(ks.matching("weak_fn").is_empty()); // only t/T
    assert_eq!(ks.matching("*").len(), 8);

    let w = ks.lookup("weak_fn").unwrap();
    assert!(ks.is_text(w));
    assert!(!ks.is_text(ks.lookup("weak_data_outside_text").unwrap()));
    assert!(!ks.is_text(ks.lookup("some_data").unwrap()));
    assert!(ks.iter().map(|s| s.addr).is_sorted());
}

#[test]
fn glob() {
    let m = |p: &str, s: &str| glob_match(&p.chars().collect::<Vec<_>>(), s);
    assert!(m("*", ""));
    assert!(m("a*b*c", "aXXbYYc"));
    assert!(!m("a*b*c", "aXXbYY"));
    assert!(m("?", "x"));
    assert!(!m("?", ""));
    assert!(m("**a", "a"));
    assert!(!m("abc", "abcd"));
    // Pathological pattern stays fast.
    let long = "a".repeat(2000);
    assert!(!m(
        &"*a".repeat(50).to_string().replace("*a*a", "*a*b"),
        &long
    ));
}

#[test]
fn load_errors_name_the_file() {
    let d = tmpdir("err");
    let missing = d.join("missing");
    let e = KernelSymbols::load(&missing, None).unwrap_err();
    assert!(e.to_string().starts_with(&missing.display().to_string()));

    let junk = d.join("junk");
    std::fs::write(&junk, b"\x00\x01garbage\xff".repeat(100)).unwrap();
    let e = KernelSymbols::load(&junk, Some(&d)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: not a Linux kernel image (no bzImage header, ELF or symbol map)",
            junk.display()
        )
    );

    let stub = d.join("System.map");
    std::fs::write(
        &stub,
        "ffffffffffffffff B The real System.map is in the linux-image-6.1.0-56-amd64-dbg package\n",
    )
    .unwrap();
    let e = KernelSymbols::load(&stub, None).unwrap_err();
    assert!(matches!(e, Error::SymbolMap { line: 1, .. }), "{e}");

    // An ELF with no symbols and no kallsyms.
    let elf = build_elf(b"\x00".repeat(4096).as_slice(), false);
    let p = d.join("empty.elf");
    std::fs::write(&p, &elf).unwrap();
    let e = KernelSymbols::load(&p, None).unwrap_err();
    assert!(matches!(e, Error::KallsymsNotFound { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("kallsyms tables not found in .rodata")
    );

    // Truncations of a real-shaped ELF never panic.
    let blob = synthetic_blob();
    let elf = build_elf(&blob, false);
    for cut in (0..elf.len()).step_by(elf.len() / 50 + 1) {
        std::fs::write(&p, &elf[..cut]).unwrap();
        let _ = KernelSymbols::load(&p, None);
    }
    std::fs::remove_dir_all(&d).unwrap();
}

fn synthetic_blob() -> Vec<u8> {
    let owned = kallsyms::tests::sample_syms(2000);
    let syms: Vec<(u64, char, &str)> = owned.iter().map(|(a, k, s)| (*a, *k, s.as_str())).collect();
    kallsyms::tests::build_blob(&syms, false, false)
}

/// A stripped-style ELF: .text at 0xffffffff81000000 with code-like bytes, .rodata holding
/// `rodata` (a kallsyms blob), optionally a .symtab.
fn build_elf(rodata: &[u8], with_symtab: bool) -> Vec<u8> {
    use object::write::{Object, StandardSection, Symbol as WSym, SymbolSection};
    use object::{Architecture, BinaryFormat, Endianness, SymbolFlags, SymbolKind, SymbolScope};
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text_id = obj.section_id(StandardSection::Text);
    let code: Vec<u8> = (0..0x20_0000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    obj.append_section_data(text_id, &code, 4096);
    let ro_id = obj.section_id(StandardSection::ReadOnlyData);
    obj.append_section_data(ro_id, rodata, 8);
    if with_symtab {
        for (name, value, kind, scope) in [
            ("_text", 0u64, SymbolKind::Text, SymbolScope::Linkage),
            ("ksys_write", 0x3000, SymbolKind::Text, SymbolScope::Linkage),
            (
                "local_fn",
                0x4000,
                SymbolKind::Text,
                SymbolScope::Compilation,
            ),
        ] {
            obj.add_symbol(WSym {
                name: name.as_bytes().to_vec(),
                value,
                size: 0x100,
                kind,
                scope,
                weak: false,
                section: SymbolSection::Section(text_id),
                flags: SymbolFlags::None,
            });
        }
    }
    obj.write().unwrap()
}

/// Relocatable output has section addresses of 0: patch .text/.rodata sh_addr so the ELF
/// looks linked (samples and text range depend on it).
fn set_section_addrs(elf: &mut [u8], text: u64, rodata: u64) {
    let file = object::read::elf::ElfFile64::<object::Endianness>::parse(&*elf).unwrap();
    use object::read::elf::{FileHeader, SectionHeader};
    let e = file.endian();
    let hdr = file.elf_header();
    let shoff = hdr.e_shoff(e) as usize;
    let shentsize = hdr.e_shentsize(e) as usize;
    let mut patches = Vec::new();
    for (i, sh) in file.elf_section_table().iter().enumerate() {
        let name = file.elf_section_table().section_name(e, sh).unwrap();
        let addr = match name {
            b".text" => text,
            b".rodata" => rodata,
            _ => continue,
        };
        let _ = sh.sh_addr(e);
        patches.push((shoff + i * shentsize + 16, addr));
    }
    for (off, addr) in patches {
        elf[off..off + 8].copy_from_slice(&addr.to_le_bytes());
    }
}

fn synthetic_elf() -> Vec<u8> {
    let mut elf = build_elf(&synthetic_blob(), false);
    set_section_addrs(&mut elf, 0xffffffff81000000, 0xffffffff82000000);
    elf
}

fn bzimage_around(payload: &[u8]) -> Vec<u8> {
    let mut bz = vec![0u8; 5 * 512 + 0x200];
    bz[0x1f1] = 4;
    bz[0x1fe] = 0x55;
    bz[0x1ff] = 0xaa;
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    bz[0x248..0x24c].copy_from_slice(&0x200u32.to_le_bytes());
    bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32 + 4).to_le_bytes());
    bz.extend_from_slice(payload);
    bz.extend_from_slice(&[1, 2, 3, 4]); // size_append trailer, as the kernel build adds
    bz.extend_from_slice(&[0u8; 64]);
    bz
}

fn check_synthetic(ks: &KernelSymbols) {
    assert_eq!(ks.len(), 2005);
    assert_eq!(ks.lookup("_text").unwrap().addr, 0xffffffff81000000);
    assert_eq!(ks.lookup("cpu_number").unwrap().kind, 'A');
    let f = ks.lookup("x64_sys_fn7_textxxxxxxx").unwrap();
    assert_eq!((f.addr, f.kind), (0xffffffff81001000 + 7 * 0x100, 't'));
    assert!(ks.iter().map(|s| s.addr).is_sorted());
}

#[test]
fn synthetic_elf_and_bzimages() {
    let d = tmpdir("elf");
    let elf = synthetic_elf();
    let p = d.join("vmlinux");
    std::fs::write(&p, &elf).unwrap();
    let ks = KernelSymbols::load(&p, None).unwrap();
    check_synthetic(&ks);
    // Samples are at link-time addresses and hold the .text bytes there.
    assert!(!ks.text_samples().is_empty());
    for s in ks.text_samples() {
        let off = (s.addr - 0xffffffff81000000) as usize;
        assert_eq!(s.bytes.len(), SAMPLE_LEN);
        let file = object::File::parse(&*elf).unwrap();
        use object::{Object, ObjectSection};
        let text = file.section_by_name(".text").unwrap().data().unwrap();
        assert_eq!(&text[off..off + SAMPLE_LEN], &s.bytes[..]);
    }

    let xz = {
        let mut out = Vec::new();
        let mut filters = xz2::stream::Filters::new();
        filters.x86();
        filters.lzma2(&xz2::stream::LzmaOptions::new_preset(1).unwrap());
        let stream =
            xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32).unwrap();
        let mut w = xz2::write::XzEncoder::new_stream(&mut out, stream);
        std::io::Write::write_all(&mut w, &elf).unwrap();
        w.finish().unwrap();
        out
    };
    let gz = {
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut w, &elf).unwrap();
        w.finish().unwrap()
    };
    let zst = zstd::encode_all(&elf[..], 19).unwrap();
    for (tag, payload) in [("xz", xz), ("gz", gz), ("zst", zst)] {
        let p = d.join(format!("vmlinuz-{tag}"));
        std::fs::write(&p, bzimage_around(&payload)).unwrap();
        let ks = KernelSymbols::load(&p, None).unwrap_or_else(|e| panic!("{tag}: {e}"));
        check_synthetic(&ks);
        assert_eq!(
            ks.text_samples(),
            KernelSymbols::load(&p, None).unwrap().text_samples()
        );
    }

    // .symtab takes precedence when present.
    let mut with_symtab = build_elf(&synthetic_blob(), true);
    set_section_addrs(&mut with_symtab, 0xffffffff81000000, 0xffffffff82000000);
    std::fs::write(&p, &with_symtab).unwrap();
    let ks = KernelSymbols::load(&p, None).unwrap();
    assert_eq!(ks.lookup("ksys_write").unwrap().kind, 'T');
    assert_eq!(ks.lookup("local_fn").unwrap().kind, 't');
    assert!(ks.lookup("cpu_number").is_none());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn cache_roundtrip_and_corruption() {
    let d = tmpdir("cache");
    let cache = d.join("cache");
    let p = d.join("vmlinux");
    std::fs::write(&p, synthetic_elf()).unwrap();
    let a = KernelSymbols::load(&p, Some(&cache)).unwrap();
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(files.len(), 1, "one cache file, no temp leftovers");
    let cf = files[0].as_ref().unwrap().path();
    let b = KernelSymbols::load(&p, Some(&cache)).unwrap();
    assert_same(&a, &b);

    // Corrupt caches are ignored and rebuilt.
    let good = std::fs::read(&cf).unwrap();
    for bad in [
        Vec::new(),
        good[..good.len() / 2].to_vec(),
        good[..good.len() - 4].to_vec(),
        b"vmprobe-kernel-symbols 0\n".to_vec(),
        good.iter()
            .map(|&c| if c == b'f' { b'g' } else { c })
            .collect(),
        vec![0xff; 1000],
    ] {
        std::fs::write(&cf, &bad).unwrap();
        let c = KernelSymbols::load(&p, Some(&cache)).unwrap();
        assert_same(&a, &c);
        assert_eq!(std::fs::read(&cf).unwrap(), good, "cache rebuilt");
    }
    // An unwritable cache location doesn't fail the load.
    let blocker = d.join("file-not-dir");
    std::fs::write(&blocker, b"x").unwrap();
    assert_same(&a, &KernelSymbols::load(&p, Some(&blocker)).unwrap());
    std::fs::remove_dir_all(&d).unwrap();
}

fn assert_same(a: &KernelSymbols, b: &KernelSymbols) {
    assert_eq!(a.symbols, b.symbols);
    assert_eq!(a.by_name, b.by_name);
    assert_eq!(a.text_range, b.text_range);
    assert_eq!(a.samples, b.samples);
}

/// A fake guest: the image's .text mapped at `slide`, with some bytes patched.
fn fake_guest(
    text_addr: u64,
    text: &[u8],
    slide: u64,
    patch_every: usize,
) -> impl FnMut(u64, usize) -> Option<Vec<u8>> {
    let mut mem = text.to_vec();
    if patch_every > 0 {
        for b in mem.iter_mut().step_by(patch_every) {
            *b ^= 0xff;
        }
    }
    move |addr, len| {
        let off = addr.checked_sub(text_addr + slide)? as usize;
        mem.get(off..off + len).map(<[u8]>::to_vec)
    }
}

#[test]
fn slide_detection() {
    let text_addr = 0xffffffff81000000u64;
    let text: Vec<u8> = (0..0x40_0000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    let samples: Vec<TextSample> = (0..8u64)
        .map(|i| {
            let off = (i * 0x7_0000 + 0x123) as usize;
            TextSample {
                addr: text_addr + off as u64,
                bytes: text[off..off + 40].to_vec(),
            }
        })
        .collect();
    assert_eq!(
        detect_slide(&samples, fake_guest(text_addr, &text, 0, 0)),
        Some(0)
    );
    let s = 0x1a0_0000 * 4; // 26 MiB * 4, 2 MiB aligned
    assert_eq!(
        detect_slide(&samples, fake_guest(text_addr, &text, s, 0)),
        Some(s)
    );
    // 1 byte in 8 patched: still found.
    assert_eq!(
        detect_slide(&samples, fake_guest(text_addr, &text, s, 8)),
        Some(s)
    );
    // Half the bytes differ: rejected.
    assert_eq!(
        detect_slide(&samples, fake_guest(text_addr, &text, s, 2)),
        None
    );
    // Nothing mapped, no samples.
    assert_eq!(detect_slide(&samples, |_, _| None), None);
    assert_eq!(detect_slide(&[], |_, _| Some(vec![0; 64])), None);
    // Memory that is all the same byte never matches.
    assert_eq!(detect_slide(&samples, |_, n| Some(vec![0xcc; n])), None);
    // Short reads are treated as misses, not panics.
    assert_eq!(detect_slide(&samples, |_, _| Some(vec![1])), None);
    // A failed read (a stub gone silent, an interrupt) ends the search
    // there, where unmapped memory only rules out one slide.
    let mut reads = 0;
    let failed = try_detect_slide(&samples, |_, _| {
        reads += 1;
        if reads == 3 { Err("silent") } else { Ok(None) }
    });
    assert_eq!((failed, reads), (Err("silent"), 3));
    let mut guest = fake_guest(text_addr, &text, s, 0);
    assert_eq!(
        try_detect_slide(&samples, |a, n| Ok::<_, ()>(guest(a, n))),
        Ok(Some(s))
    );
}

// ---- Tests against the real Debian kernel image ----

/// The real image from VMPROBE_TEST_VMLINUZ; fails under CI when unset.
fn real_image() -> Option<PathBuf> {
    match std::env::var_os("VMPROBE_TEST_VMLINUZ") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("VMPROBE_TEST_VMLINUZ must be set in CI")
        }
        None => {
            eprintln!("note: VMPROBE_TEST_VMLINUZ unset; skipping real-image test");
            None
        }
    }
}

const TEXT: u64 = 0xffffffff81000000;

#[test]
fn real_image_symbols_and_cache() {
    let Some(img) = real_image() else { return };
    let d = tmpdir("real");
    let t0 = Instant::now();
    let ks = KernelSymbols::load(&img, Some(&d)).unwrap();
    let cold = t0.elapsed();
    eprintln!("cold load: {cold:?}, {} symbols", ks.len());

    assert!(ks.len() > 50_000, "only {} symbols", ks.len());
    assert!(ks.iter().map(|s| s.addr).is_sorted());
    assert_eq!(ks.lookup("_text").unwrap().addr, TEXT);
    assert_eq!(ks.lookup("startup_64").unwrap().addr, TEXT);
    let (lo, hi) = ks.text_range.expect("text range");
    assert_eq!(lo, TEXT);
    for f in ["ksys_write", "vfs_read", "__x64_sys_write"] {
        let s = ks.lookup(f).unwrap_or_else(|| panic!("{f} missing"));
        assert!(matches!(s.kind, 'T' | 't'), "{f}: {}", s.kind);
        assert!(
            (lo..hi).contains(&s.addr),
            "{f} at {:#x} outside .text",
            s.addr
        );
        assert!(ks.is_text(s));
        assert_eq!(ks.symbolize(s.addr + 3).unwrap(), (s, 3));
    }
    assert!(!ks.matching("__x64_sys_*").is_empty());
    let samples = ks.text_samples();
    assert!(samples.len() >= 4, "{} samples", samples.len());
    assert!(samples.iter().all(|s| (lo..hi).contains(&s.addr)));

    let t1 = Instant::now();
    let warm_ks = KernelSymbols::load(&img, Some(&d)).unwrap();
    let warm = t1.elapsed();
    eprintln!("warm (cached) load: {warm:?}");
    assert_same(&ks, &warm_ks);
    assert!(warm < cold, "cache not faster: {warm:?} vs {cold:?}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Ground truth: compares with /proc/kallsyms of this kernel booted under QEMU (TCG, nokaslr).
///
/// Make the dump once:
/// ```sh
/// mkdir -p r/bin && cp /path/to/static/busybox r/bin/busybox && ln -s busybox r/bin/sh
/// printf '#!/bin/busybox sh\n/bin/busybox mkdir -p /proc; /bin/busybox mount -t proc proc /proc; /bin/busybox cat /proc/kallsyms; /bin/busybox poweroff -f\n' > r/init; chmod +x r/init
/// (cd r && find . | cpio -o -H newc) > initrd.cpio
/// qemu-system-x86_64 -M pc -accel tcg -cpu qemu64 -m 512 -nodefaults -no-user-config \
///   -display none -serial stdio -kernel $VMPROBE_TEST_VMLINUZ -initrd initrd.cpio \
///   -append 'console=ttyS0 nokaslr panic=-1 quiet' -no-reboot | tr -d '\r' > kallsyms.txt
/// ```
/// then `VMPROBE_TEST_KALLSYMS=kallsyms.txt cargo test -p kernel-image -- --ignored`.
#[test]
#[ignore = "needs a /proc/kallsyms dump from a booted guest (see doc comment)"]
fn real_image_matches_guest_kallsyms() {
    let Some(img) = real_image() else { return };
    let dump =
        PathBuf::from(std::env::var_os("VMPROBE_TEST_KALLSYMS").expect("VMPROBE_TEST_KALLSYMS"));
    let ks = KernelSymbols::load(&img, None).unwrap();
    let (total, matched, first_diff) = compare_with_dump(&ks, &dump);
    eprintln!("{matched}/{total} guest symbols match; first difference: {first_diff:?}");
    assert_eq!(total, ks.len());
    assert_eq!(matched, total);
}

/// Compares (addr, type, name) line by line, in order, against non-module dump lines.
fn compare_with_dump(ks: &KernelSymbols, dump: &Path) -> (usize, usize, Option<String>) {
    let text = std::fs::read_to_string(dump).unwrap();
    let guest: Vec<(u64, char, String)> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_end_matches('\r');
            let mut it = l.split_ascii_whitespace();
            let (a, k, n) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || k.len() != 1 || a.len() != 16 {
                return None; // module/bpf symbols, console noise
            }
            Some((
                u64::from_str_radix(a, 16).ok()?,
                k.chars().next()?,
                n.to_string(),
            ))
        })
        .collect();
    let mine: Vec<(u64, char, String)> = ks
        .iter()
        .map(|s| (s.addr, s.kind, s.name.clone()))
        .collect();
    let matched = guest.iter().zip(&mine).filter(|(g, m)| g == m).count();
    let first_diff = guest
        .iter()
        .zip(&mine)
        .find(|(g, m)| g != m)
        .map(|(g, m)| format!("guest {g:x?} vs image {m:x?}"));
    (guest.len(), matched, first_diff)
}

#[test]
fn sections_from_elf_and_bzimage_with_cache() {
    let d = tmpdir("sections");
    let cache = d.join("cache");
    let elf = synthetic_elf();
    let gz = {
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut w, &elf).unwrap();
        w.finish().unwrap()
    };
    let (pe, pb) = (d.join("vmlinux"), d.join("vmlinuz"));
    std::fs::write(&pe, &elf).unwrap();
    std::fs::write(&pb, bzimage_around(&gz)).unwrap();
    let names = [".rodata", ".text", ".BTF"];
    let a = KernelSections::load(&pe, &names, None).unwrap();
    let ro = a.get(".rodata").unwrap();
    assert_eq!(ro.addr, 0xffffffff82000000);
    assert_eq!(&ro.data[..], &synthetic_blob()[..]);
    assert_eq!(a.get(".text").unwrap().addr, TEXT);
    assert!(a.get(".BTF").is_none(), "absent, not an error");
    assert!(a.get(".data").is_none(), "not requested");
    for round in 0..2 {
        let b = KernelSections::load(&pb, &names, Some(&cache)).unwrap();
        assert_eq!(b.get(".rodata"), a.get(".rodata"), "round {round}");
        assert_eq!(b.get(".text"), a.get(".text"));
        assert!(b.get(".BTF").is_none());
        assert_ne!(
            b.image_key(),
            a.image_key(),
            "keyed by the file, not the ELF"
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let key = KernelSections::load(&pb, &[], Some(&cache))
        .unwrap()
        .image_key()
        .to_string();
    assert_eq!(
        files,
        [
            format!("{key}.BTF.sec"),
            format!("{key}.rodata.sec"),
            format!("{key}.text.sec")
        ]
    );
    // A corrupt cache file is a miss: the section comes from the image again and is rewritten.
    let f = cache.join(format!("{key}.rodata.sec"));
    let good = std::fs::read(&f).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    std::fs::write(&f, &bad).unwrap();
    let c = KernelSections::load(&pb, &names, Some(&cache)).unwrap();
    assert_eq!(c.get(".rodata"), a.get(".rodata"));
    assert_eq!(std::fs::read(&f).unwrap(), good);

    std::fs::write(d.join("junk"), b"junk").unwrap();
    assert!(matches!(
        KernelSections::load(&d.join("junk"), &names, None),
        Err(Error::NotKernel { .. })
    ));
    assert!(matches!(
        KernelSections::load(&d.join("missing"), &names, None),
        Err(Error::Io { .. })
    ));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn real_image_sections() {
    let Some(img) = real_image() else { return };
    let d = tmpdir("real-sections");
    let names = [".BTF", ".orc_unwind_ip", ".orc_unwind", ".text"];
    let t0 = Instant::now();
    let a = KernelSections::load(&img, &names, Some(&d)).unwrap();
    let cold = t0.elapsed();
    let t1 = Instant::now();
    let b = KernelSections::load(&img, &names, Some(&d)).unwrap();
    let warm = t1.elapsed();
    eprintln!("sections: cold {cold:?}, warm (cached) {warm:?}");
    for n in names {
        assert!(a.get(n).is_some(), "{n} missing");
        assert_eq!(a.get(n), b.get(n), "{n}");
    }
    assert_eq!(a.get(".text").unwrap().addr, TEXT);
    let btf = &a.get(".BTF").unwrap().data;
    assert_eq!(&btf[..2], &0xeb9fu16.to_le_bytes(), "BTF magic");
    let (ip, orc) = (
        a.get(".orc_unwind_ip").unwrap(),
        a.get(".orc_unwind").unwrap(),
    );
    assert_eq!(
        ip.data.len() / 4,
        orc.data.len() / 6,
        "one ORC entry per ip"
    );
    assert!(warm < cold, "cache not faster: {warm:?} vs {cold:?}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// The syscalls' metadata of the real image: declarations as the guest's tracefs prints them
/// (`syscalls/sys_enter_openat/format` of the booted 6.1 guest), numbers as in its unistd_64.h.
#[test]
fn real_image_syscalls() {
    let Some(img) = real_image() else { return };
    let d = tmpdir("syscalls");
    let syms = KernelSymbols::load(&img, Some(&d)).unwrap();
    let all = crate::load_syscalls(&img, &syms, Some(&d)).unwrap();
    assert!(all.len() > 300, "{} syscalls", all.len());
    let get = |n: &str| all.iter().find(|s| s.name == n).unwrap();
    let decl = |n: &str| {
        get(n)
            .params
            .iter()
            .map(|p| format!("{} {}", p.ty, p.name))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        decl("openat"),
        [
            "int dfd",
            "const char * filename",
            "int flags",
            "umode_t mode"
        ]
    );
    assert_eq!(
        decl("read"),
        ["unsigned int fd", "char * buf", "size_t count"]
    );
    assert_eq!(get("read").nr, Some(0));
    assert_eq!(get("openat").nr, Some(257));
    assert_eq!(get("exit_group").nr, Some(231));
    assert!(decl("getpid").is_empty());
}
