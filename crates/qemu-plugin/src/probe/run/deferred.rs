//! Sites whose addresses the guest gives as it runs, inside QEMU:
//! uprobes in position-independent files (each process's mapping of the
//! file, walked at the start and seen at `uprobe_mmap()`), and kprobes on
//! kernel module functions (the modules loaded at the start, walked on a
//! vCPU, and each one loaded later, at its `do_init_module()` before its
//! code runs). Each run-time address is in `user_addrs`, with its site.

use super::*;
use linux_guest::GuestMemory;

impl Run {
    /// Arms the run-time addresses of the processes running now (their
    /// executable file mappings) and of the modules loaded now; later ones
    /// come through `uprobe_mmap` and `do_init_module`. Whether an address
    /// is new.
    pub fn scan_guest(&self, vcpu: &mut Vcpu<'_>) -> bool {
        if !self.scan_pending.swap(false, Ordering::AcqRel) {
            return false;
        }
        let modules = self.scan_modules(vcpu);
        if !self.sites.iter().any(|s| s.relocatable()) {
            return modules;
        }
        let index = vcpu.index() as usize;
        let mut view = super::super::context::VcpuView(vcpu);
        match self
            .kernel
            .exec_file_mappings(&mut view, MAX_USER_ADDRS * 4)
        {
            Ok(maps) => maps
                .iter()
                .fold(modules, |new, m| self.arm_mapping(index, m) | new),
            Err(e) => {
                for s in self.sites.iter().filter(|s| s.relocatable()) {
                    self.add_site_errors(index, s, format!("walking the processes' mappings: {e}"));
                }
                modules
            }
        }
    }

    /// Arms the run-time addresses a file mapping gives the sites of
    /// position-independent files; whether one is new (the caller then
    /// has QEMU translate everything again).
    pub(super) fn arm_mapping(&self, vcpu: usize, m: &linux_guest::FileMapping) -> bool {
        let mut new = false;
        for (i, s) in self.sites.iter().enumerate() {
            for addr in s.run_time_addrs(&m.path, m.start, m.end, m.offset) {
                let mut addrs = self.user_addrs.write().unwrap_or_else(|e| e.into_inner());
                if addrs.0.contains_key(&addr) {
                    continue;
                }
                if addrs.1.len() >= MAX_USER_ADDRS {
                    drop(addrs);
                    let why = format!(
                        "more than {MAX_USER_ADDRS} run-time addresses of uprobes in position-independent files: {} at {addr:#x} not armed",
                        m.path
                    );
                    self.add_site_errors(vcpu, s, why);
                    continue;
                }
                let at = addrs.1.len() as u32;
                addrs.1.push((addr, i as u32));
                addrs.0.insert(addr, at);
                self.arm_user_offset(addr);
                new = true;
            }
        }
        new
    }

    /// At `uprobe_mmap(vma)`: a process maps a file (an exec, the dynamic
    /// loader mapping a library). An executable mapping of a probed
    /// position-independent file arms its run-time addresses. The code
    /// there is translated only once this returns, but QEMU keys its
    /// translations by virtual address and physical page, and an earlier
    /// process may have run the same page at the same address before it
    /// was armed: its code would be reused without our callback, so a new
    /// address asks for a full flush (once per mapping of a probed file,
    /// not per hit).
    pub(super) fn mapped(&self, vcpu: &mut Vcpu<'_>) -> bool {
        let Some(vma) = vcpu.reg_id(Reg::Rdi) else {
            return false;
        };
        let index = vcpu.index() as usize;
        let mut view = super::super::context::VcpuView(vcpu);
        match self.kernel.vma_mapping(&mut view, vma) {
            Ok(Some(m)) => self.arm_mapping(index, &m),
            _ => false,
        }
    }

    /// Arms the module sites in the modules the guest has loaded; whether
    /// an address is new.
    pub(super) fn scan_modules(&self, vcpu: &mut Vcpu<'_>) -> bool {
        if !self.sites.iter().any(|s| s.in_module()) {
            return false;
        }
        let index = vcpu.index() as usize;
        let mut view = super::super::context::VcpuView(vcpu);
        match self.kernel.loaded_modules(&mut view) {
            Ok(modules) => modules.iter().fold(false, |new, m| {
                self.arm_module(index, &mut view, m.addr, &m.name) | new
            }),
            Err(e) => {
                self.module_errors(index, None, format!("walking the guest's modules: {e}"));
                false
            }
        }
    }

    /// At `do_init_module(mod)`: the guest has placed, relocated and named
    /// a new module; its probed functions are armed before its init runs.
    pub(super) fn module_loaded(&self, vcpu: &mut Vcpu<'_>) -> bool {
        let Some(module) = vcpu.reg_id(Reg::Rdi) else {
            return false;
        };
        let index = vcpu.index() as usize;
        let mut view = super::super::context::VcpuView(vcpu);
        match self.kernel.module_name(&mut view, module) {
            Ok(name) => self.arm_module(index, &mut view, module, &name),
            Err(e) => {
                self.module_errors(index, None, format!("reading a module being loaded: {e}"));
                false
            }
        }
    }

    /// At `free_module(mod)`: the addresses armed in the module no longer
    /// get callbacks (its memory goes back to the allocator, and another
    /// module may be loaded there); whether any did (the caller then has
    /// QEMU translate everything again, dropping theirs).
    pub(super) fn module_freed(&self, vcpu: &mut Vcpu<'_>) -> bool {
        let Some(module) = vcpu.reg_id(Reg::Rdi) else {
            return false;
        };
        let gone: Vec<u64> = {
            let mut armed = self.module_addrs.lock().unwrap_or_else(|e| e.into_inner());
            let (gone, kept) = std::mem::take(&mut *armed)
                .into_iter()
                .partition(|(m, _)| *m == module);
            *armed = kept;
            gone.into_iter().map(|(_, a)| a).collect()
        };
        if gone.is_empty() {
            return false;
        }
        let mut addrs = self.user_addrs.write().unwrap_or_else(|e| e.into_inner());
        for addr in &gone {
            // Its place in the list stays: a pending return may name it.
            addrs.0.remove(addr);
        }
        true
    }

    /// Arms the sites of module `name` (its `struct module` at `module`)
    /// at their addresses in it; whether one is new. Only a module some
    /// site names is read.
    fn arm_module(&self, vcpu: usize, mem: &mut dyn GuestMemory, module: u64, name: &str) -> bool {
        let of_this = |s: &ProbeSite| s.modules.iter().any(|m| &**m == name);
        let wanted: Vec<&str> = self
            .sites
            .iter()
            .filter(|s| of_this(s))
            .map(|s| &*s.func)
            .collect();
        if wanted.is_empty() {
            return false;
        }
        let functions = match self
            .kernel
            .module_functions(mem, module, &|f| wanted.contains(&f))
        {
            Ok(f) => f,
            Err(e) => {
                let why = format!("reading the symbols of module {name}: {e}");
                self.module_errors(vcpu, Some(name), why);
                return false;
            }
        };
        let mut new = false;
        for (i, s) in self.sites.iter().enumerate() {
            for addr in s.module_addrs(name, &functions) {
                let mut addrs = self.user_addrs.write().unwrap_or_else(|e| e.into_inner());
                if addrs.0.contains_key(&addr) || self.site_at.contains_key(&addr) {
                    continue;
                }
                if addrs.1.len() >= MAX_USER_ADDRS {
                    drop(addrs);
                    let why = format!(
                        "more than {MAX_USER_ADDRS} run-time addresses armed: {} in module {name} at {addr:#x} not armed",
                        s.func
                    );
                    self.add_site_errors(vcpu, s, why);
                    continue;
                }
                let at = addrs.1.len() as u32;
                addrs.1.push((addr, i as u32));
                addrs.0.insert(addr, at);
                self.module_addrs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((module, addr));
                new = true;
            }
        }
        new
    }

    /// An error of the probes of the module sites (of module `name`, or
    /// of every module), counted in `vcpu`'s shard.
    fn module_errors(&self, vcpu: usize, name: Option<&str>, why: String) {
        let sites = self
            .sites
            .iter()
            .filter(|s| s.in_module() && name.is_none_or(|n| s.modules.iter().any(|m| &**m == n)));
        for s in sites {
            self.add_site_errors(vcpu, s, why.clone());
        }
    }
}
