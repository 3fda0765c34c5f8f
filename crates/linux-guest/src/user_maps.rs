//! Which file the current task maps at a user address (uprobes): its
//! `mm`'s VMA tree (a maple tree since 6.1, as `find_vma()` walks it), the
//! VMA's `vm_file`, and the file's path from its dentry up through its
//! mounts (as `d_path()` builds it). Every walk is bounded: tree height,
//! path components and name lengths.

use crate::layout::VmaLayout;
use crate::*;

/// Maple tree levels walked at most (the kernel's `MAPLE_HEIGHT_MAX`).
const MAX_TREE_HEIGHT: usize = 31;
/// Path components (dentries and mount crossings) followed at most.
const MAX_PATH_PARTS: usize = 64;
/// Longest name of one path component (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// `enum maple_type`: leaves are below `maple_range_64`.
const MAPLE_RANGE_64: u64 = 2;
const MAPLE_ARANGE_64: u64 = 3;

/// Processes walked at most from `init_task` (the default `pid_max`).
const MAX_TASKS: usize = 32_768;
/// Maple tree nodes and VMAs visited at most in one `mm`.
const MAX_NODES: usize = 8_192;
const MAX_VMAS: usize = 65_530;
/// `VM_EXEC` in `vm_flags`.
const VM_EXEC: u64 = 0x4;

/// An executable file mapping: [start, end) holds the file from byte
/// `offset` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

/// The file a task maps at an address, and where in the file that
/// address is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    pub path: String,
    pub file_offset: u64,
}

impl GuestKernel {
    fn vma_layout(&self) -> Result<VmaLayout, GuestError> {
        self.layout.vma.ok_or(GuestError::Missing(
            "uprobes (the files a task maps)",
            ".BTF with a maple-tree mm_struct (Linux 6.1 or later), vm_area_struct, file, dentry and mount",
        ))
    }

    /// The file the task running on `cpu` maps at user address `addr`,
    /// with its guest path; `None` where nothing, or anonymous memory, is
    /// mapped there, or the task is a kernel thread.
    pub fn mapped_file(
        &self,
        cpu: &mut dyn GuestVcpu,
        addr: u64,
    ) -> Result<Option<MappedFile>, GuestError> {
        let l = self.vma_layout()?;
        let task = self.current_task(cpu)?;
        let mm = read_u64(cpu, task.wrapping_add(l.task_mm))?;
        if mm == 0 {
            return Ok(None);
        }
        let Some(vma) = find_vma(cpu, &l, mm, addr)? else {
            return Ok(None);
        };
        let start = read_u64(cpu, vma.wrapping_add(l.vm_start))?;
        let end = read_u64(cpu, vma.wrapping_add(l.vm_end))?;
        if !(start <= addr && addr < end) {
            return Err(GuestError::Corrupt(format!(
                "the VMA found for {addr:#x} spans {start:#x}..{end:#x}"
            )));
        }
        let file = read_u64(cpu, vma.wrapping_add(l.vm_file))?;
        if file == 0 {
            return Ok(None);
        }
        let pgoff = read_u64(cpu, vma.wrapping_add(l.vm_pgoff))?;
        let path = file_path(cpu, &l, file)?;
        Ok(Some(MappedFile {
            path,
            file_offset: (addr - start).wrapping_add(pgoff.wrapping_mul(4096)),
        }))
    }
}

impl GuestKernel {
    /// The executable file mapping VMA `vma` (a `struct vm_area_struct *`,
    /// such as `uprobe_mmap()`'s argument) makes; `None` for anonymous or
    /// non-executable memory (whose file's path is then not read).
    pub fn vma_mapping(
        &self,
        mem: &mut dyn GuestMemory,
        vma: u64,
    ) -> Result<Option<FileMapping>, GuestError> {
        let l = self.vma_layout()?;
        vma_mapping(mem, &l, vma, &mut Vec::new())
    }

    /// The executable file mappings of every process (the list from
    /// `init_task`, each `mm` once), up to `limit` of them; each `mm`'s VMA
    /// tree walked whole, bounded as [`MAX_TASKS`], [`MAX_NODES`] and
    /// [`MAX_VMAS`] say. A process whose structures do not read is skipped
    /// (it may be exiting while the guest runs).
    pub fn exec_file_mappings(
        &self,
        mem: &mut dyn GuestMemory,
        limit: usize,
    ) -> Result<Vec<FileMapping>, GuestError> {
        let l = self.vma_layout()?;
        let tasks_off = l.task_tasks.ok_or(GuestError::Missing(
            "the list of processes",
            ".BTF with task_struct.tasks",
        ))?;
        let init = self.kaddr("init_task").ok_or(GuestError::Missing(
            "the list of processes",
            "init_task symbol",
        ))?;
        let head = init.wrapping_add(tasks_off);
        let mut out = Vec::new();
        let mut mms: Vec<u64> = Vec::new();
        let mut paths: Vec<(u64, String)> = Vec::new();
        let mut next = read_u64(mem, head)?;
        for _ in 0..MAX_TASKS {
            if next == head || !is_kernel_address(next) || out.len() >= limit {
                break;
            }
            let task = next.wrapping_sub(tasks_off);
            next = read_u64(mem, next)?;
            let Ok(mm) = read_u64(mem, task.wrapping_add(l.task_mm)) else {
                continue;
            };
            if mm == 0 || mms.contains(&mm) {
                continue;
            }
            mms.push(mm);
            let Ok(vmas) = all_vmas(mem, &l, mm) else {
                continue;
            };
            for vma in vmas {
                if let Ok(Some(m)) = vma_mapping(mem, &l, vma, &mut paths)
                    && out.len() < limit
                {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }
}

/// What [`GuestKernel::vma_mapping`] reads; `paths` caches paths by `file`.
fn vma_mapping(
    mem: &mut dyn GuestMemory,
    l: &VmaLayout,
    vma: u64,
    paths: &mut Vec<(u64, String)>,
) -> Result<Option<FileMapping>, GuestError> {
    let file = read_u64(mem, vma.wrapping_add(l.vm_file))?;
    if file == 0 {
        return Ok(None);
    }
    let start = read_u64(mem, vma.wrapping_add(l.vm_start))?;
    let end = read_u64(mem, vma.wrapping_add(l.vm_end))?;
    let pgoff = read_u64(mem, vma.wrapping_add(l.vm_pgoff))?;
    let exec = match l.vm_flags {
        Some(off) => read_u64(mem, vma.wrapping_add(off))? & VM_EXEC != 0,
        None => true,
    };
    if !exec {
        return Ok(None);
    }
    let path = match paths.iter().find(|(f, _)| *f == file) {
        Some((_, p)) => p.clone(),
        None => {
            let p = file_path(mem, l, file)?;
            paths.push((file, p.clone()));
            p
        }
    };
    Ok(Some(FileMapping {
        start,
        end,
        offset: pgoff.wrapping_mul(4096),
        path,
    }))
}

/// Every VMA of `mm`'s maple tree, in address order: each node's slots up
/// to its data's end as [`find_vma`] reads it (a slot past a zero pivot is
/// the last).
fn all_vmas(mem: &mut dyn GuestMemory, l: &VmaLayout, mm: u64) -> Result<Vec<u64>, GuestError> {
    let root = read_u64(mem, mm.wrapping_add(l.mm_root))?;
    let mut out = Vec::new();
    if !is_root_node(root) {
        if is_vma(root) {
            out.push(root);
        }
        return Ok(out);
    }
    // Nodes to visit: the root, then the children of internal nodes (see
    // `find_vma`).
    let mut stack = vec![(root, 0usize)];
    let mut nodes = 0;
    while let Some((entry, depth)) = stack.pop() {
        if !is_kernel_address(entry) {
            continue;
        }
        nodes += 1;
        if nodes > MAX_NODES || depth >= MAX_TREE_HEIGHT {
            return Err(GuestError::Corrupt(format!(
                "mm {mm:#x}: the VMA tree has more than {MAX_NODES} nodes or {MAX_TREE_HEIGHT} levels"
            )));
        }
        let node = entry & !0xff;
        let kind = (entry >> 3) & 0xf;
        let (pivot_at, slot_at, pivots) = match kind {
            MAPLE_ARANGE_64 => (l.arange_pivot, l.arange_slot, l.arange_pivots),
            _ => (l.range_pivot, l.range_slot, l.range_pivots),
        };
        let n = pivots as usize;
        let mut raw = vec![0u8; n * 8];
        mem.read(node.wrapping_add(pivot_at), &mut raw)?;
        let mut slots = vec![0u8; (n + 1) * 8];
        mem.read(node.wrapping_add(slot_at), &mut slots)?;
        let word =
            |b: &[u8], i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8"));
        let mut children = Vec::new();
        for i in 0..=n {
            let slot = word(&slots, i);
            if kind < MAPLE_RANGE_64 {
                // A leaf's slot: a VMA, or empty (a gap).
                if is_vma(slot) && out.len() < MAX_VMAS {
                    out.push(slot);
                }
            } else {
                children.push((slot, depth + 1));
            }
            if i == n || (i > 0 && word(&raw, i) == 0) {
                break;
            }
        }
        // Depth first, lowest addresses first.
        stack.extend(children.into_iter().rev());
    }
    out.dedup();
    Ok(out)
}

/// `xa_is_node()` of `mm->mm_mt.ma_root`: the tree's root is a node (low
/// bits 10, above 4096), not a lone entry.
fn is_root_node(entry: u64) -> bool {
    entry & 3 == 2 && entry > 4096
}

/// A leaf's slot holding a VMA (a kernel pointer; empty slots are gaps).
fn is_vma(entry: u64) -> bool {
    entry != 0 && entry & 3 == 0 && is_kernel_address(entry)
}

/// The VMA whose range holds `addr` in `mm`'s maple tree, as
/// `mtree_range_walk()` descends: in each node the first slot whose pivot
/// (its range's last index) is at least `addr`; unused pivots past the
/// node's data are 0, and the last slot's pivot is the node's maximum.
fn find_vma(
    mem: &mut dyn GuestMemory,
    l: &VmaLayout,
    mm: u64,
    addr: u64,
) -> Result<Option<u64>, GuestError> {
    let mut entry = read_u64(mem, mm.wrapping_add(l.mm_root))?;
    if !is_root_node(entry) {
        // A lone entry at index 0.
        return Ok(is_vma(entry).then_some(entry));
    }
    for _ in 0..MAX_TREE_HEIGHT {
        if !is_kernel_address(entry) {
            return Ok(None);
        }
        let node = entry & !0xff;
        let kind = (entry >> 3) & 0xf;
        let (pivot_at, slot_at, pivots) = match kind {
            MAPLE_ARANGE_64 => (l.arange_pivot, l.arange_slot, l.arange_pivots),
            _ => (l.range_pivot, l.range_slot, l.range_pivots),
        };
        let mut raw = vec![0u8; pivots as usize * 8];
        mem.read(node.wrapping_add(pivot_at), &mut raw)?;
        let pivot = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().expect("8"));
        let mut slot = pivots as usize;
        for i in 0..pivots as usize {
            let p = pivot(i);
            if i > 0 && p == 0 {
                // Past the node's data: the previous slot ended below addr.
                slot = i;
                break;
            }
            if addr <= p {
                slot = i;
                break;
            }
        }
        entry = read_u64(mem, node.wrapping_add(slot_at + slot as u64 * 8))?;
        if kind < MAPLE_RANGE_64 {
            // A leaf's slot: the VMA itself, or empty (a gap).
            return Ok(is_vma(entry).then_some(entry));
        }
        // An internal node's slot is a child node (`mt_mk_node()`: the
        // node, its type << 3, and MAPLE_ENODE_NULL, 0x4; only the root
        // pointer carries `xa_is_node()`'s low bits 10).
    }
    Err(GuestError::Corrupt(format!(
        "mm {mm:#x}: the VMA tree is deeper than {MAX_TREE_HEIGHT} levels"
    )))
}

/// `file`'s path as `d_path()` gives it: names from the dentry up to its
/// mount's root, then on from the mount point in the parent mount, up to
/// the root mount (its own parent).
fn file_path(mem: &mut dyn GuestMemory, l: &VmaLayout, file: u64) -> Result<String, GuestError> {
    let mut dentry = read_u64(mem, file.wrapping_add(l.file_dentry))?;
    let vfsmount = read_u64(mem, file.wrapping_add(l.file_mnt))?;
    let mut mount = vfsmount.wrapping_sub(l.mount_mnt);
    let mut names: Vec<String> = Vec::new();
    for _ in 0..MAX_PATH_PARTS {
        let root = read_u64(mem, mount.wrapping_add(l.mount_mnt + l.vfsmount_root))?;
        if dentry == root {
            let parent = read_u64(mem, mount.wrapping_add(l.mount_parent))?;
            if parent == mount || parent == 0 {
                names.reverse();
                return Ok(format!("/{}", names.join("/")));
            }
            dentry = read_u64(mem, mount.wrapping_add(l.mount_mountpoint))?;
            mount = parent;
            continue;
        }
        let parent = read_u64(mem, dentry.wrapping_add(l.d_parent))?;
        let len = read_u32(mem, dentry.wrapping_add(l.d_name_len))? as usize;
        let name_ptr = read_u64(mem, dentry.wrapping_add(l.d_name_ptr))?;
        let name = read_cstr(mem, name_ptr, len.min(NAME_MAX))?;
        if parent == dentry {
            // A filesystem's root that is no mount's root (a detached
            // tree): what d_path() shows is the names so far.
            names.reverse();
            return Ok(format!("/{}", names.join("/")));
        }
        names.push(name);
        dentry = parent;
    }
    Err(GuestError::Corrupt(format!(
        "file {file:#x}: path deeper than {MAX_PATH_PARTS} components"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A fake guest: memory as 8-byte words and strings at addresses.
    #[derive(Default)]
    struct Fake {
        mem: HashMap<u64, u8>,
        gs: u64,
    }

    impl Fake {
        fn put(&mut self, addr: u64, v: u64) {
            for (i, b) in v.to_le_bytes().into_iter().enumerate() {
                self.mem.insert(addr + i as u64, b);
            }
        }
        fn put_str(&mut self, addr: u64, s: &str) {
            for (i, b) in s.bytes().chain([0]).enumerate() {
                self.mem.insert(addr + i as u64, b);
            }
        }
    }

    impl GuestMemory for Fake {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), GuestError> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = *self
                    .mem
                    .get(&(addr + i as u64))
                    .ok_or_else(|| GuestError::Memory {
                        addr,
                        reason: "unmapped".into(),
                    })?;
            }
            Ok(())
        }
    }

    impl VcpuRegisters for Fake {
        fn get(&mut self, reg: Reg) -> Option<u64> {
            match reg {
                Reg::GsBase => Some(self.gs),
                _ => Some(0),
            }
        }
    }

    const L: VmaLayout = VmaLayout {
        task_mm: 0x10,
        mm_root: 0x8,
        range_pivot: 8,
        range_slot: 128,
        range_pivots: 15,
        arange_pivot: 8,
        arange_slot: 80,
        arange_pivots: 9,
        vm_start: 0,
        vm_end: 8,
        vm_pgoff: 16,
        vm_file: 24,
        file_mnt: 0,
        file_dentry: 8,
        d_parent: 0,
        d_name_len: 12,
        d_name_ptr: 16,
        mount_mnt: 32,
        mount_parent: 8,
        mount_mountpoint: 16,
        vfsmount_root: 0,
        vm_flags: Some(32),
        task_tasks: Some(0x20),
    };
    const K: u64 = 0xffff_8880_0000_0000;

    /// A root mount `/` holding `/bin/prog`, a tmpfs mounted at `/tmp`
    /// holding `/tmp/prog`; an mm whose tree is one arange root over two
    /// leaves: [0x400000, 0x401000) maps `file`, then a gap, then a VMA at
    /// 0x7f0000000000 with no file.
    fn guest(file_in_tmp: bool) -> Fake {
        let mut f = Fake::default();
        let (root_mnt, tmp_mnt) = (K + 0x1000, K + 0x2000);
        let (root_d, bin_d, prog_d, tmp_d, tmproot_d, tprog_d) = (
            K + 0x3000,
            K + 0x3100,
            K + 0x3200,
            K + 0x3300,
            K + 0x3400,
            K + 0x3500,
        );
        let dentry = |f: &mut Fake, d: u64, parent: u64, name: &str, at: u64| {
            f.put(d + L.d_parent, parent);
            f.put(d + 8, (name.len() as u64) << 32);
            f.put(d + L.d_name_ptr, at);
            f.put_str(at, name);
        };
        dentry(&mut f, root_d, root_d, "/", K + 0x9000);
        dentry(&mut f, bin_d, root_d, "bin", K + 0x9100);
        dentry(&mut f, prog_d, bin_d, "prog", K + 0x9200);
        dentry(&mut f, tmp_d, root_d, "tmp", K + 0x9300);
        dentry(&mut f, tmproot_d, tmproot_d, "/", K + 0x9400);
        dentry(&mut f, tprog_d, tmproot_d, "prog", K + 0x9500);
        // Mounts: root is its own parent; tmpfs is mounted on /tmp.
        f.put(root_mnt + L.mount_parent, root_mnt);
        f.put(root_mnt + L.mount_mnt + L.vfsmount_root, root_d);
        f.put(tmp_mnt + L.mount_parent, root_mnt);
        f.put(tmp_mnt + L.mount_mountpoint, tmp_d);
        f.put(tmp_mnt + L.mount_mnt + L.vfsmount_root, tmproot_d);
        let file = K + 0x4000;
        let (mnt, d) = if file_in_tmp {
            (tmp_mnt, tprog_d)
        } else {
            (root_mnt, prog_d)
        };
        f.put(file + L.file_mnt, mnt + L.mount_mnt);
        f.put(file + L.file_dentry, d);
        // VMAs.
        let (vma1, vma2) = (K + 0x5000, K + 0x5100);
        f.put(vma1 + L.vm_start, 0x40_0000);
        f.put(vma1 + L.vm_end, 0x40_1000);
        f.put(vma1 + L.vm_pgoff, 0);
        f.put(vma1 + L.vm_file, file);
        f.put(vma2 + L.vm_start, 0x7f00_0000_0000);
        f.put(vma2 + L.vm_end, 0x7f00_0000_1000);
        f.put(vma2 + L.vm_pgoff, 0);
        f.put(vma2 + L.vm_file, 0);
        // Leaves (maple_leaf_64, type 1): [0, 0x3fffff] gap,
        // [0x400000, 0x400fff] vma1, then up to the node max a gap.
        let (leaf1, leaf2, root) = (K + 0x6000, K + 0x6100, K + 0x6200);
        for i in 0..15 {
            f.put(leaf1 + 8 + i * 8, 0);
            f.put(leaf2 + 8 + i * 8, 0);
        }
        for i in 0..16 {
            f.put(leaf1 + 128 + i * 8, 0);
            f.put(leaf2 + 128 + i * 8, 0);
        }
        f.put(leaf1 + 8, 0x3f_ffff);
        f.put(leaf1 + 16, 0x40_0fff);
        f.put(leaf1 + 128 + 8, vma1);
        // leaf2 covers [0x10_0000_0000, max]: gap, vma2, gap.
        f.put(leaf2 + 8, 0x7eff_ffff_ffff);
        f.put(leaf2 + 16, 0x7f00_0000_0fff);
        f.put(leaf2 + 128 + 8, vma2);
        // Root (maple_arange_64, type 3): leaf1 up to 0xf_ffff_ffff, leaf2 after.
        for i in 0..9 {
            f.put(root + 8 + i * 8, 0);
        }
        for i in 0..10 {
            f.put(root + 80 + i * 8, 0);
        }
        f.put(root + 8, 0xf_ffff_ffff);
        // Children as `mt_mk_node()` encodes them: type << 3 | 0x4.
        f.put(root + 80, leaf1 | (1 << 3) | 4);
        f.put(root + 88, leaf2 | (1 << 3) | 4);
        let (mm, task, percpu) = (K + 0x7000, K + 0x8000, K + 0xa000);
        f.put(mm + L.mm_root, root | (3 << 3) | 2);
        f.put(task + L.task_mm, mm);
        f.gs = percpu;
        f.put(percpu + 0x100, task);
        f
    }

    fn kernel() -> GuestKernel {
        let mut k = GuestKernel::new(
            Arc::new(KernelSymbols::from_symbols(Vec::new())),
            0,
            None,
            None,
        );
        k.layout.vma = Some(L);
        k.layout.current_task = Some(0x100);
        k
    }

    #[test]
    fn finds_the_file_mapped_at_an_address_through_the_tree_and_mounts() {
        let k = kernel();
        let mut g = guest(false);
        let m = k.mapped_file(&mut g, 0x40_0123).unwrap().unwrap();
        assert_eq!(m.path, "/bin/prog");
        assert_eq!(m.file_offset, 0x123);
        // The gap before, and anonymous memory, map no file.
        assert_eq!(k.mapped_file(&mut g, 0x3f_0000).unwrap(), None);
        assert_eq!(k.mapped_file(&mut g, 0x7f00_0000_0010).unwrap(), None);
        assert_eq!(k.mapped_file(&mut g, 0x7f10_0000_0000).unwrap(), None);
        // The same file name on a tmpfs mounted at /tmp.
        let mut g = guest(true);
        let m = k.mapped_file(&mut g, 0x40_0000).unwrap().unwrap();
        assert_eq!(m.path, "/tmp/prog");
    }

    #[test]
    fn every_processes_executable_mappings_through_the_task_list() {
        let mut g = guest(false);
        // vma1 executable, vma2 (anonymous) too; init_task's list holds the
        // task (its mm) and a kernel thread (no mm).
        g.put(K + 0x5000 + 32, 0x5);
        g.put(K + 0x5100 + 32, 0x5);
        let (init, task, kthread) = (K + 0xb000, K + 0x8000, K + 0xc000);
        g.put(init + 0x20, task + 0x20);
        g.put(task + 0x20, kthread + 0x20);
        g.put(kthread + 0x20, init + 0x20);
        g.put(kthread + L.task_mm, 0);
        g.put(init + L.task_mm, 0);
        let k = kernel_with_init(init);
        let maps = k.exec_file_mappings(&mut g, 16).unwrap();
        assert_eq!(
            maps,
            [FileMapping {
                start: 0x40_0000,
                end: 0x40_1000,
                offset: 0,
                path: "/bin/prog".into(),
            }]
        );
        let m = k.vma_mapping(&mut g, K + 0x5000).unwrap().unwrap();
        assert_eq!(m.path, "/bin/prog");
        // Not executable: not listed, nor a mapping of its own.
        g.put(K + 0x5000 + 32, 0x1);
        assert!(k.exec_file_mappings(&mut g, 16).unwrap().is_empty());
        assert_eq!(k.vma_mapping(&mut g, K + 0x5000).unwrap(), None);
        assert_eq!(k.vma_mapping(&mut g, K + 0x5100).unwrap(), None);
        // A list that loops back on itself ends at the bound.
        g.put(K + 0x5000 + 32, 0x5);
        g.put(kthread + 0x20, task + 0x20);
        assert_eq!(k.exec_file_mappings(&mut g, 16).unwrap().len(), 1);
    }

    fn kernel_with_init(init: u64) -> GuestKernel {
        let mut k = GuestKernel::new(
            Arc::new(KernelSymbols::from_symbols(vec![kernel_image::Symbol {
                name: "init_task".into(),
                addr: init,
                kind: 'D',
            }])),
            0,
            None,
            None,
        );
        k.layout.vma = Some(L);
        k.layout.current_task = Some(0x100);
        k
    }

    #[test]
    fn hostile_structures_end_in_errors() {
        let k = kernel();
        // A dentry that is its own parent's child forever: a cycle.
        let mut g = guest(false);
        g.put(K + 0x3100 + L.d_parent, K + 0x3200);
        let e = k.mapped_file(&mut g, 0x40_0000).unwrap_err();
        assert!(e.to_string().contains("deeper than"), "{e}");
        // A tree node pointing at itself.
        let mut g = guest(false);
        g.put(K + 0x6200 + 80, (K + 0x6200) | (3 << 3) | 4);
        let e = k.mapped_file(&mut g, 0x40_0000).unwrap_err();
        assert!(e.to_string().contains("deeper than"), "{e}");
        // A VMA whose range does not hold the address.
        let mut g = guest(false);
        g.put(K + 0x5000 + L.vm_start, 0x40_0800);
        assert!(k.mapped_file(&mut g, 0x40_0000).is_err());
        // Pointers into nothing are memory errors, never panics.
        let mut g = guest(false);
        g.put(K + 0x7000 + L.mm_root, (K + 0xdead_0000) | (3 << 3) | 2);
        assert!(k.mapped_file(&mut g, 0x40_0000).is_err());
        // A root that is no kernel pointer maps nothing.
        g.put(K + 0x7000 + L.mm_root, 0xdead_0000 | (3 << 3) | 2);
        assert_eq!(k.mapped_file(&mut g, 0x40_0000).unwrap(), None);
    }
}
