//! The default guest: Debian's current `linux-image-amd64` kernel,
//! `busybox-static` and a glibc userland (bash, getent and their libraries,
//! [`USERLAND`]), fetched with `apt-get download` and unpacked with
//! `dpkg-deb -x` into vmprobe's cache (never installed into the host's /boot),
//! plus an initramfs whose `/init` is `guest/init` from this crate.

use crate::cpio::CpioWriter;
use crate::{Error, Result, io_err};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The init script, embedded so the binary alone can build a guest.
const INIT: &str = include_str!("../guest/init");

/// Small static programs for `vmprobe bench` and the tests, compiled on the host when the
/// guest is built (busybox has no null-syscall or fork/exec loop), installed
/// in the guest as `/bin/vmprobe-<name>`.
const BENCH_PROGRAMS: [(&str, &str); 10] = [
    ("nullsys", include_str!("../guest/bench/nullsys.c")),
    ("forkexec", include_str!("../guest/bench/forkexec.c")),
    ("mix", include_str!("../guest/bench/mix.c")),
    ("seq", include_str!("../guest/bench/seq.c")),
    ("pagewalk", include_str!("../guest/test/pagewalk.c")),
    ("fpstack", include_str!("../guest/test/fpstack.c")),
    ("hostile", include_str!("../guest/test/hostile.c")),
    ("trap", include_str!("../guest/test/trap.c")),
    ("ucount", include_str!("../guest/test/ucount.c")),
    ("usdt", include_str!("../guest/test/usdt.c")),
];

/// Test programs built as position-independent executables dynamically
/// linked against glibc (`cc -fPIE -pie`), for uprobes in a PIE and in the
/// guest's libc; installed as `/bin/vmprobe-<name>` like the others.
const PIE_PROGRAMS: [(&str, &str); 1] = [("upie", include_str!("../guest/test/upie.c"))];

/// Kernel modules packed into the initramfs, in load order (each after what
/// it depends on). Debian builds virtio as modules; with these a guest given
/// a disk ([`crate::LaunchConfig::disk`]) sees it as /dev/vda. The init
/// loads them only when QEMU gave the guest a virtio device.
const GUEST_MODULES: [&str; 6] = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
];

/// Kernel modules packed into the initramfs beside [`GUEST_MODULES`] but
/// never loaded by the init: a workload loads them (`insmod
/// /lib/modules/NAME.ko`, in this order), so a guest that does not ask
/// boots and runs exactly as without them. XFS (`xfs` needs `libcrc32c`,
/// whose init asks the crypto API for crc32c: with no modprobe in the
/// guest, `crc32c_generic` must already be there) and md's linear
/// personality (`linear` needs `md-mod`), for the tools on them.
const ON_DEMAND_MODULES: [&str; 5] = [
    "crypto/crc32c_generic.ko",
    "lib/libcrc32c.ko",
    "fs/xfs/xfs.ko",
    "drivers/md/md-mod.ko",
    "drivers/md/linear.ko",
];

/// The glibc userland of the default guest: (Debian package, what of it
/// goes into the guest, as paths in the package; a path ending in `/` is
/// every file and symlink directly in that directory). At the package's
/// own paths, so that the dynamic loader, the ld cache and bpftrace's
/// library names find them where a Debian system has them. busybox stays
/// the init's shell.
pub const USERLAND: [(&str, &[&str]); 4] = [
    ("bash", &["bin/bash"]),
    ("libc-bin", &["usr/bin/getent"]),
    (
        "libc6",
        &["lib/x86_64-linux-gnu/", "lib64/ld-linux-x86-64.so.2"],
    ),
    (
        "libtinfo6",
        &[
            "lib/x86_64-linux-gnu/libtinfo.so.6",
            "lib/x86_64-linux-gnu/libtinfo.so.6.4",
        ],
    ),
];

/// Files of the guest's /etc: `hosts` (for getent and gethostlatency),
/// `nsswitch.conf` asking only the files (no DNS server to wait for), and
/// the users `passwd` and `group` name (root, and nobody for a workload
/// that drops privileges with `su`).
const ETC: [(&str, &str); 4] = [
    (
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    ),
    ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    (
        "etc/hosts",
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ),
    (
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\nnetworks: files\n",
    ),
];

/// The directories ldconfig reads on Debian (its ld.so.conf, then the
/// trusted directories), in order: what the guest's ld cache lists.
const LD_DIRS: [&str; 4] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// Where the guest's files are on the host, below `<guest dir>`: the
/// userland, /etc and the ld cache as the initramfs has them.
const ROOT_DIR: &str = "root";

/// The initramfs file name, keyed by everything vmprobe puts into it, so
/// that a changed init or bench program rebuilds a cached guest.
fn initrd_name() -> String {
    // FNV-1a: a stable cache key, nothing to defend against.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let parts = std::iter::once(INIT)
        .chain(BENCH_PROGRAMS.iter().flat_map(|(n, c)| [*n, *c]))
        .chain(PIE_PROGRAMS.iter().flat_map(|(n, c)| [*n, *c]))
        .chain(GUEST_MODULES)
        .chain(ON_DEMAND_MODULES)
        .chain(
            USERLAND
                .iter()
                .flat_map(|(p, f)| std::iter::once(*p).chain(f.iter().copied())),
        )
        .chain(ETC.iter().flat_map(|(n, c)| [*n, *c]))
        .chain(LD_DIRS);
    for part in parts {
        for b in part.bytes().chain([0]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("initrd-{h:016x}.cpio")
}

/// Boot arguments of the default guest. KASLR stays on, as on real systems.
pub const DEFAULT_APPEND: &str = "console=ttyS0 panic=-1 quiet";

/// What QEMU boots.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
    /// Kernel package version, e.g. "6.1.0-56-amd64"; "custom" for user images.
    pub version: String,
}

/// `$XDG_CACHE_HOME/vmprobe`, else `~/.cache/vmprobe`.
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("vmprobe");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/vmprobe")
}

/// The default guest: as built before, else built now.
pub fn ensure_default_guest(cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<GuestImage> {
    match default_guest(cache) {
        Some(image) => Ok(image),
        None => build_default_guest(cache, progress),
    }
}

/// The default guest if it was built before, without touching apt.
pub fn default_guest(cache: &Path) -> Option<GuestImage> {
    let manifest = std::fs::read_to_string(cache.join("guest/current")).ok()?;
    let version = manifest.trim().to_string();
    let dir = cache.join("guest").join(&version);
    let image = GuestImage {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join(initrd_name()),
        append: DEFAULT_APPEND.to_string(),
        version,
    };
    (image.kernel.is_file() && image.initrd.is_file()).then_some(image)
}

/// Builds (or refreshes) the default guest in `cache`, reporting each step
/// through `progress`. Idempotent: packages already unpacked are reused.
pub fn build_default_guest(cache: &Path, progress: &mut dyn FnMut(&str)) -> Result<GuestImage> {
    require_tool(
        "apt-get",
        "the default guest is built from Debian packages; on other systems pass --kernel and --initrd",
    )?;
    require_tool("dpkg-deb", "install dpkg (Debian: apt-get install dpkg)")?;

    std::fs::create_dir_all(cache).map_err(io_err(cache))?;
    // Concurrent builds (parallel tests, two shells) take turns.
    let lock_path = cache.join("guest.lock");
    let lock = std::fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).map_err(|e| Error::Io {
        path: lock_path.clone(),
        source: e.into(),
    })?;

    progress("resolving the current linux-image-amd64 package");
    let kernel_pkg = current_kernel_package()?;
    let version = kernel_pkg.trim_start_matches("linux-image-").to_string();
    let dir = cache.join("guest").join(&version);
    let debs = cache.join("debs");
    for d in [&dir, &debs] {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }

    let kernel_root = unpack(&debs, &kernel_pkg, progress)?;
    let busybox_root = unpack(&debs, "busybox-static", progress)?;

    let vmlinuz = kernel_root.join(format!("boot/vmlinuz-{version}"));
    let kernel = dir.join("vmlinuz");
    std::fs::copy(&vmlinuz, &kernel).map_err(io_err(&vmlinuz))?;

    progress("compiling the benchmark programs (cc -static)");
    let programs = compile_bench_programs(&dir)?;
    progress("writing the initramfs");
    let busybox_path = busybox_root.join("bin/busybox");
    let busybox = std::fs::read(&busybox_path).map_err(io_err(&busybox_path))?;
    let modules_dir = kernel_root.join(format!("lib/modules/{version}/kernel"));
    let mut files = programs;
    for module in GUEST_MODULES.iter().chain(&ON_DEMAND_MODULES) {
        let path = modules_dir.join(module);
        // Another kernel may build one in: the guest then needs no module.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let name = Path::new(module).file_name().unwrap_or_default();
        files.push((format!("lib/modules/{}", name.to_string_lossy()), bytes));
    }
    progress("assembling the glibc userland and its ld cache");
    let root = userland_root(&debs, &dir, progress)?;
    let initrd = dir.join(initrd_name());
    write_initramfs(&initrd, &busybox, &files, &root)?;

    let current = cache.join("guest/current");
    write_atomically(&current, version.as_bytes())?;
    progress(&format!("default guest ready: kernel {version}"));
    Ok(GuestImage {
        kernel,
        initrd,
        append: DEFAULT_APPEND.to_string(),
        version,
    })
}

/// Compiles each bench program statically (the initramfs has no libc),
/// with frame pointers so that `ustack` can walk them. The binaries stay
/// in `<guest dir>/bench-src/` for tests that resolve their symbols.
fn compile_bench_programs(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    require_tool(
        "cc",
        "the default guest's benchmark programs are C (Debian: apt-get install gcc libc6-dev)",
    )?;
    let src_dir = dir.join("bench-src");
    std::fs::create_dir_all(&src_dir).map_err(io_err(&src_dir))?;
    require_sdt_h(&src_dir)?;
    let mut out = Vec::new();
    let all = BENCH_PROGRAMS
        .iter()
        .map(|p| (p, &["-static"][..]))
        .chain(PIE_PROGRAMS.iter().map(|p| (p, &["-fPIE", "-pie"][..])));
    for ((name, source), link) in all {
        let src = src_dir.join(format!("{name}.c"));
        let bin = src_dir.join(name);
        std::fs::write(&src, source).map_err(io_err(&src))?;
        run(Command::new("cc")
            .args(link)
            .args(["-O2", "-fno-omit-frame-pointer", "-o"])
            .arg(&bin)
            .arg(&src))?;
        out.push((
            format!("bin/vmprobe-{name}"),
            std::fs::read(&bin).map_err(io_err(&bin))?,
        ));
    }
    Ok(out)
}

/// The usdt test program's `<sys/sdt.h>` (SystemTap's header, which only
/// `STAP_PROBEn` needs): its absence is named before anything compiles.
fn require_sdt_h(src_dir: &Path) -> Result<()> {
    let probe = src_dir.join("sdt-h.c");
    std::fs::write(&probe, "#include <sys/sdt.h>\n").map_err(io_err(&probe))?;
    let found = Command::new("cc")
        .args(["-E", "-o", "/dev/null"])
        .arg(&probe)
        .output()
        .is_ok_and(|o| o.status.success());
    let _ = std::fs::remove_file(&probe);
    if found {
        Ok(())
    } else {
        Err(Error::MissingTool {
            tool: "<sys/sdt.h>",
            hint: "the default guest's usdt test program includes it (Debian: apt-get install systemtap-sdt-dev)",
        })
    }
}

/// The guest's userland under `<guest dir>/root` (rebuilt each time): the
/// [`USERLAND`] packages' files at their paths, [`ETC`], and an
/// `/etc/ld.so.cache` of the libraries, written as ldconfig writes it
/// (`ldconfig -r` would need chroot, hence root).
fn userland_root(debs: &Path, dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let root = dir.join(ROOT_DIR);
    let _ = std::fs::remove_dir_all(&root);
    for (pkg, paths) in USERLAND {
        let pkg_root = unpack(debs, pkg, progress)?;
        for path in paths {
            let from = pkg_root.join(path.trim_end_matches('/'));
            let names: Vec<String> = if path.ends_with('/') {
                let list = std::fs::read_dir(&from).map_err(io_err(&from))?;
                let mut names: Vec<String> = list
                    .filter_map(|e| {
                        let e = e.ok()?;
                        let t = e.file_type().ok()?;
                        (t.is_file() || t.is_symlink()).then_some(e.file_name().into_string().ok()?)
                    })
                    .map(|n| format!("{path}{n}"))
                    .collect();
                names.sort();
                names
            } else {
                vec![path.to_string()]
            };
            for name in names {
                copy_entry(&pkg_root.join(&name), &root.join(&name))?;
            }
        }
    }
    for (name, text) in ETC {
        let path = root.join(name);
        create_parent(&path)?;
        std::fs::write(&path, text).map_err(io_err(&path))?;
    }
    let entries = kernel_image::ld_cache::ld_cache_entries(&root, &LD_DIRS);
    let cache = root.join("etc/ld.so.cache");
    std::fs::write(&cache, kernel_image::ld_cache::write_ld_cache(&entries))
        .map_err(io_err(&cache))?;
    Ok(root)
}

/// Copies a file (with its mode) or a symlink (as a symlink).
fn copy_entry(from: &Path, to: &Path) -> Result<()> {
    create_parent(to)?;
    let meta = from.symlink_metadata().map_err(io_err(from))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).map_err(io_err(from))?;
        std::os::unix::fs::symlink(&target, to).map_err(io_err(to))
    } else {
        std::fs::copy(from, to).map(|_| ()).map_err(io_err(from))
    }
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) => std::fs::create_dir_all(p).map_err(io_err(p)),
        None => Ok(()),
    }
}

/// The host copy of the default guest's root filesystem as far as vmprobe
/// knows it (its glibc userland, /etc and ld cache), if it was built.
pub fn default_guest_root(cache: &Path) -> Option<PathBuf> {
    let image = default_guest(cache)?;
    let root = cache.join("guest").join(&image.version).join(ROOT_DIR);
    root.join("etc/ld.so.cache").is_file().then_some(root)
}

/// The module files of the default guest's kernel (its package's
/// `lib/modules/VERSION/kernel`) and where the functions they define are
/// kept between runs, if the guest was built.
pub fn default_guest_modules(cache: &Path) -> Option<(PathBuf, PathBuf)> {
    let image = default_guest(cache)?;
    let version = &image.version;
    let dir = cache.join("debs").join(format!(
        "linux-image-{version}.root/lib/modules/{version}/kernel"
    ));
    let index = cache.join("guest").join(version).join("module-functions");
    dir.is_dir().then_some((dir, index))
}

/// The default guest's own programs: (path in the guest, host copy), for
/// the programs built into its current initramfs (`bench-src/`) and
/// busybox, where they are on this host. Uprobes read their symbols here.
pub fn default_guest_files(cache: &Path) -> Vec<(String, PathBuf)> {
    let Some(image) = default_guest(cache) else {
        return Vec::new();
    };
    let dir = cache.join("guest").join(&image.version).join("bench-src");
    let mut files: Vec<(String, PathBuf)> = BENCH_PROGRAMS
        .iter()
        .chain(&PIE_PROGRAMS)
        .map(|(name, _)| (format!("/bin/vmprobe-{name}"), dir.join(name)))
        .collect();
    files.push((
        "/bin/busybox".into(),
        cache.join("debs/busybox-static.root/bin/busybox"),
    ));
    files.retain(|(_, host)| host.is_file());
    files
}

/// `files`: (path in the guest, bytes), each installed executable; `root`:
/// a tree copied as it is (directories, files with their modes, symlinks).
fn write_initramfs(
    path: &Path,
    busybox: &[u8],
    files: &[(String, Vec<u8>)],
    root: &Path,
) -> Result<()> {
    let mut w = CpioWriter::new(Vec::with_capacity(busybox.len() + 4096));
    let build = |w: &mut CpioWriter<Vec<u8>>| -> std::io::Result<()> {
        for d in [
            "bin",
            "sbin",
            "usr",
            "usr/bin",
            "usr/sbin",
            "proc",
            "sys",
            "dev",
            "tmp",
            "lib",
            "lib/modules",
        ] {
            w.dir(d)?;
        }
        w.file("bin/busybox", 0o755, busybox)?;
        w.symlink("bin/sh", "busybox")?;
        for (path, bytes) in files {
            w.file(path, 0o755, bytes)?;
        }
        copy_tree(w, root, "")?;
        w.file("init", 0o755, INIT.as_bytes())
    };
    build(&mut w)
        .and_then(|_| w.finish())
        .map_err(io_err(path))
        .and_then(|bytes| write_atomically(path, &bytes))
}

/// `dir` (the tree below `root` at `rel`) into the archive, in name order.
fn copy_tree(w: &mut CpioWriter<Vec<u8>>, root: &Path, rel: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let meta = e.path().symlink_metadata()?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path())?;
            w.symlink(&path, &target.to_string_lossy())?;
        } else if meta.is_dir() {
            w.dir(&path)?;
            copy_tree(w, root, &path)?;
        } else {
            w.file(
                &path,
                meta.permissions().mode() & 0o7777,
                &std::fs::read(e.path())?,
            )?;
        }
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// `linux-image-amd64` is a metapackage; its dependency names the real kernel.
fn current_kernel_package() -> Result<String> {
    let out = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p != &"linux-image-amd64")
        .map(str::to_string)
        .ok_or_else(|| Error::Command {
            command: "apt-cache depends linux-image-amd64".into(),
            detail: "no linux-image-* dependency listed (run `apt-get update` first)".into(),
        })
}

/// Downloads `pkg`'s .deb into `debs` and unpacks it to `debs/<pkg>.root`.
pub(crate) fn unpack(debs: &Path, pkg: &str, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let root = debs.join(format!("{pkg}.root"));
    let stamp = root.join(".unpacked");
    if stamp.exists() {
        return Ok(root);
    }
    progress(&format!("downloading {pkg} (apt-get download)"));
    run(Command::new("apt-get")
        .args(["download", pkg])
        .current_dir(debs))
    .map_err(|e| match e {
        Error::Command { command, detail } => Error::Command {
            command,
            detail: format!("{detail} (is the package list current? try `apt-get update`)"),
        },
        e => e,
    })?;
    let deb = std::fs::read_dir(debs)
        .map_err(io_err(debs))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(&format!("{pkg}_")) && name.ends_with(".deb")
        })
        .max()
        .ok_or_else(|| Error::Command {
            command: format!("apt-get download {pkg}"),
            detail: "no .deb file appeared".into(),
        })?;
    progress(&format!(
        "unpacking {} (dpkg-deb -x)",
        deb.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&root);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::write(&stamp, b"").map_err(io_err(&stamp))?;
    Ok(root)
}

fn run(cmd: &mut Command) -> Result<String> {
    let command = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| Error::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("W:"));
        return Err(Error::Command {
            command,
            detail: last.unwrap_or("failed").trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn require_tool(tool: &'static str, hint: &'static str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(Error::MissingTool { tool, hint })
    }
}
