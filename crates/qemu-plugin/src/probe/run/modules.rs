//! Kprobes on kernel module functions inside QEMU: armed in the modules
//! loaded at the start (a vCPU walks the guest's module list) and in each
//! one loaded later, at its `do_init_module()`, before its code runs.
//! Their addresses join the run-time addresses of position-independent
//! files' sites (`user_addrs`): an exact address each, with its site.

use super::*;
use linux_guest::GuestMemory;

impl Run {
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
