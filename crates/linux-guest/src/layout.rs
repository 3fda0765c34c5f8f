//! Where the walks find things: offsets in the guest kernel's structures
//! (from BTF) and the addresses of its variables (from the symbols).

use crate::*;

/// Offsets inside `struct task_struct`, from BTF.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct TaskLayout {
    pub(crate) comm: u64,
    pub(crate) pid: u64,
    pub(crate) tgid: u64,
}

/// What reading another task's memory and its user registers needs:
/// offsets in `task_struct`, `mm_struct` and `pt_regs`, from BTF.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct MmLayout {
    pub(crate) task_mm: u64,
    pub(crate) task_stack: u64,
    pub(crate) mm_pgd: u64,
    pub(crate) regs_size: u64,
    pub(crate) regs_ip: u64,
    pub(crate) regs_bp: u64,
    pub(crate) regs_cs: u64,
}

impl MmLayout {
    pub(crate) fn from_btf(btf: &Btf) -> Option<MmLayout> {
        let off = |ty: &str, name: &str| member_offset(btf, ty, name);
        let regs = btf.struct_by_name("pt_regs")?;
        Some(MmLayout {
            task_mm: off("task_struct", "mm")?,
            task_stack: off("task_struct", "stack")?,
            mm_pgd: off("mm_struct", "pgd")?,
            // Bounded: it sizes a read (x86-64's is 168 bytes).
            regs_size: btf.size_of(regs).ok().filter(|&n| (8..=512).contains(&n))?,
            regs_ip: off("pt_regs", "ip")?,
            regs_bp: off("pt_regs", "bp")?,
            regs_cs: off("pt_regs", "cs")?,
        })
    }
}

/// Byte offset of member `name` of `struct ty`.
pub(crate) fn member_offset(btf: &Btf, ty: &str, name: &str) -> Option<u64> {
    let t = btf.struct_by_name(ty)?;
    Some(btf.member(t, name).ok()??.offset)
}

/// Where the cgroup v2 id of a task is: `task->cgroups->dfl_cgrp->kn->id`
/// (the id bpftrace's `cgroup` gives, and the inode number of the cgroup's
/// directory in cgroupfs), from BTF.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct CgroupLayout {
    pub(crate) task_cgroups: u64,
    pub(crate) css_set_dfl_cgrp: u64,
    pub(crate) cgroup_kn: u64,
    pub(crate) kn_id: u64,
}

impl CgroupLayout {
    pub(crate) fn from_btf(btf: &Btf) -> Option<CgroupLayout> {
        let off = |ty: &str, name: &str| member_offset(btf, ty, name);
        Some(CgroupLayout {
            task_cgroups: off("task_struct", "cgroups")?,
            css_set_dfl_cgrp: off("css_set", "dfl_cgrp")?,
            cgroup_kn: off("cgroup", "kn")?,
            kn_id: off("kernfs_node", "id")?,
        })
    }
}

/// What resolving a cgroup v2 id to its path needs (`cgroup_path()`), from
/// BTF and the symbol table: the default hierarchy's root
/// (`cgrp_dfl_root.kf_root`), its id-to-node table (`ino_idr`, an IDR: a
/// radix tree keyed by inode number), and each kernfs node's name and
/// parent. The path is what the kernel's own `kernfs_path_from_node()`
/// gives: the names from the hierarchy's root down, joined by `/`.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct CgroupPathLayout {
    /// Unslid address of `cgrp_dfl_root`.
    pub(crate) dfl_root: u64,
    pub(crate) root_kf_root: u64,
    pub(crate) kf_root_ino_idr: u64,
    pub(crate) idr_rt: u64,
    pub(crate) idr_base: u64,
    pub(crate) xa_head: u64,
    pub(crate) node_shift: u64,
    pub(crate) node_slots: u64,
    pub(crate) kn_id: u64,
    pub(crate) kn_parent: u64,
    pub(crate) kn_name: u64,
}

impl CgroupPathLayout {
    pub(crate) fn new(btf: &Btf, symbols: &KernelSymbols) -> Option<CgroupPathLayout> {
        let off = |ty: &str, name: &str| member_offset(btf, ty, name);
        Some(CgroupPathLayout {
            dfl_root: symbols.lookup("cgrp_dfl_root")?.addr,
            root_kf_root: off("cgroup_root", "kf_root")?,
            kf_root_ino_idr: off("kernfs_root", "ino_idr")?,
            idr_rt: off("idr", "idr_rt")?,
            idr_base: off("idr", "idr_base")?,
            // `struct radix_tree_root` is a macro for `struct xarray`.
            xa_head: off("xarray", "xa_head")?,
            node_shift: off("xa_node", "shift")?,
            node_slots: off("xa_node", "slots")?,
            kn_id: off("kernfs_node", "id")?,
            kn_parent: off("kernfs_node", "parent")?,
            kn_name: off("kernfs_node", "name")?,
        })
    }
}

/// What finding the file a task maps at an address needs (uprobes,
/// `user_maps`): the `mm`'s maple tree, VMAs, files, dentries and mounts,
/// from BTF.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct VmaLayout {
    pub(crate) task_mm: u64,
    /// `mm->mm_mt.ma_root`.
    pub(crate) mm_root: u64,
    pub(crate) range_pivot: u64,
    pub(crate) range_slot: u64,
    pub(crate) range_pivots: u64,
    pub(crate) arange_pivot: u64,
    pub(crate) arange_slot: u64,
    pub(crate) arange_pivots: u64,
    pub(crate) vm_start: u64,
    pub(crate) vm_end: u64,
    pub(crate) vm_pgoff: u64,
    pub(crate) vm_file: u64,
    /// `file->f_path.mnt` and `.dentry`.
    pub(crate) file_mnt: u64,
    pub(crate) file_dentry: u64,
    pub(crate) d_parent: u64,
    /// `dentry->d_name.len` and `.name`.
    pub(crate) d_name_len: u64,
    pub(crate) d_name_ptr: u64,
    /// `struct mount` around its `struct vfsmount mnt`.
    pub(crate) mount_mnt: u64,
    pub(crate) mount_parent: u64,
    pub(crate) mount_mountpoint: u64,
    pub(crate) vfsmount_root: u64,
    /// `vma->vm_flags` (`None`: every file mapping is taken as executable).
    #[serde(default)]
    pub(crate) vm_flags: Option<u64>,
    /// `task->tasks`, the list of processes from `init_task`.
    #[serde(default)]
    pub(crate) task_tasks: Option<u64>,
}

impl VmaLayout {
    pub(crate) fn from_btf(btf: &Btf) -> Option<VmaLayout> {
        let off = |ty: &str, name: &str| member_offset(btf, ty, name);
        let pivots = |ty: &str| -> Option<u64> {
            let t = btf.struct_by_name(ty)?;
            let m = btf.member(t, "pivot").ok()??;
            // An array of `unsigned long`: its size over 8.
            let n = btf.size_of(m.ty).ok()? / 8;
            (1..=32).contains(&n).then_some(n)
        };
        let qstr_len = off("qstr", "len")?;
        let path_mnt = off("path", "mnt")?;
        let path_dentry = off("path", "dentry")?;
        let f_path = off("file", "f_path")?;
        let d_name = off("dentry", "d_name")?;
        Some(VmaLayout {
            task_mm: off("task_struct", "mm")?,
            mm_root: off("mm_struct", "mm_mt")? + off("maple_tree", "ma_root")?,
            range_pivot: off("maple_range_64", "pivot")?,
            range_slot: off("maple_range_64", "slot")?,
            range_pivots: pivots("maple_range_64")?,
            arange_pivot: off("maple_arange_64", "pivot")?,
            arange_slot: off("maple_arange_64", "slot")?,
            arange_pivots: pivots("maple_arange_64")?,
            vm_start: off("vm_area_struct", "vm_start")?,
            vm_end: off("vm_area_struct", "vm_end")?,
            vm_pgoff: off("vm_area_struct", "vm_pgoff")?,
            vm_file: off("vm_area_struct", "vm_file")?,
            file_mnt: f_path + path_mnt,
            file_dentry: f_path + path_dentry,
            d_parent: off("dentry", "d_parent")?,
            d_name_len: d_name + qstr_len,
            d_name_ptr: d_name + off("qstr", "name")?,
            mount_mnt: off("mount", "mnt")?,
            mount_parent: off("mount", "mnt_parent")?,
            mount_mountpoint: off("mount", "mnt_mountpoint")?,
            vfsmount_root: off("vfsmount", "mnt_root")?,
            vm_flags: off("vm_area_struct", "vm_flags"),
            task_tasks: off("task_struct", "tasks"),
        })
    }
}

/// Offsets in `struct module` and `struct mod_kallsyms`, from BTF, and
/// the unslid address of the `modules` list head.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ModuleLayout {
    pub(crate) head: u64,
    pub(crate) list: u64,
    pub(crate) name: u64,
    pub(crate) name_len: u64,
    pub(crate) state: u64,
    /// `module.core_kallsyms` plus `mod_kallsyms.symtab`, `.num_symtab`
    /// and `.strtab`.
    pub(crate) symtab: u64,
    pub(crate) num_symtab: u64,
    pub(crate) strtab: u64,
}

impl ModuleLayout {
    pub(crate) fn new(btf: &Btf, symbols: &KernelSymbols) -> Option<ModuleLayout> {
        let off = |ty: &str, name: &str| member_offset(btf, ty, name);
        let module = btf.struct_by_name("module")?;
        let name = btf.member(module, "name").ok()??;
        let name_len = btf
            .size_of(name.ty)
            .ok()
            .filter(|&n| (8..=256).contains(&n))?;
        let kallsyms = off("module", "core_kallsyms")?;
        Some(ModuleLayout {
            head: symbols.lookup("modules")?.addr,
            list: off("module", "list")?,
            name: name.offset,
            name_len,
            state: off("module", "state")?,
            symtab: kallsyms + off("mod_kallsyms", "symtab")?,
            num_symtab: kallsyms + off("mod_kallsyms", "num_symtab")?,
            strtab: kallsyms + off("mod_kallsyms", "strtab")?,
        })
    }
}

/// Where things are in the kernel's structures: offsets from BTF and a
/// few symbols, computed once from the image. Serialisable, so a process
/// without the image (the QEMU plugin) gets the same knowledge.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct KernelLayout {
    pub(crate) task: Option<TaskLayout>,
    /// Per-CPU offset of `current_task` (not moved by KASLR).
    pub(crate) current_task: Option<u64>,
    pub(crate) mm: Option<MmLayout>,
    pub(crate) cgroup: Option<CgroupLayout>,
    pub(crate) cgroup_path: Option<CgroupPathLayout>,
    pub(crate) thread_size: u64,
    /// The files tasks map (uprobes).
    #[serde(default)]
    pub(crate) vma: Option<VmaLayout>,
    /// Loaded modules and their symbols (module kprobes).
    #[serde(default)]
    pub(crate) module: Option<ModuleLayout>,
}

impl KernelLayout {
    /// What the kernel's BTF (if any) and symbols say of its structures.
    pub fn new(btf: Option<&Btf>, symbols: &KernelSymbols) -> KernelLayout {
        let task = btf.and_then(|btf| {
            let t = btf.struct_by_name("task_struct")?;
            let off = |name: &str| Some(btf.member(t, name).ok()??.offset);
            Some(TaskLayout {
                comm: off("comm")?,
                pid: off("pid")?,
                tgid: off("tgid")?,
            })
        });
        // KASAN doubles the kernel stacks; its runtime is in the image.
        let thread_size = if symbols.lookup("__asan_load8").is_some() {
            2 * THREAD_SIZE
        } else {
            THREAD_SIZE
        };
        KernelLayout {
            task,
            current_task: symbols.lookup("current_task").map(|s| s.addr),
            mm: btf.and_then(MmLayout::from_btf),
            cgroup: btf.and_then(CgroupLayout::from_btf),
            cgroup_path: btf.and_then(|b| CgroupPathLayout::new(b, symbols)),
            thread_size,
            vma: btf.and_then(VmaLayout::from_btf),
            module: btf.and_then(|b| ModuleLayout::new(b, symbols)),
        }
    }
}
