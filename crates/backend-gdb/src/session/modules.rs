//! Kprobes on kernel module functions: armed in the modules the guest has
//! loaded when vmprobe attaches, and in each module it loads later, at its
//! `do_init_module()`, before the module's own init runs.

use super::*;

impl Session {
    /// With sites in kernel modules (and the kernel known): arms them in
    /// the modules loaded now, and a breakpoint on the guest's
    /// `do_init_module()` to arm them in the modules it loads later. The
    /// guest must be stopped.
    pub fn arm_modules(&mut self) -> Result<()> {
        let in_modules = self.sites.iter().any(|s| s.in_module());
        let Some(kernel) = self.kernel.clone().filter(|_| in_modules) else {
            return Ok(());
        };
        let hook =
            kernel
                .module_load_hook()
                .ok_or(Error::Guest(linux_guest::GuestError::Missing(
                    "kprobes on kernel module functions",
                    "do_init_module symbol or .BTF with struct module",
                )))?;
        self.arm_own_hook("do_init_module", hook)?;
        self.module_hook = Some(hook);
        if let Some(unload) = kernel.module_unload_hook() {
            self.arm_own_hook("free_module", unload)?;
            self.module_unload_hook = Some(unload);
        }
        let mut view = crate::context::StubMemory(&mut self.client);
        match kernel.loaded_modules(&mut view) {
            Ok(modules) => {
                for m in modules {
                    self.arm_module(&kernel, m.addr, &m.name)?;
                }
            }
            Err(e) => {
                let why = format!("walking the guest's modules: {e}");
                self.site_errors(|_, s| s.in_module(), why);
            }
        }
        Ok(())
    }

    /// Arms the sites of module `name` (its `struct module` at `module`)
    /// at their addresses in it: a copy of each site there, prepared as
    /// every kernel site is. Only a module some site names is read.
    fn arm_module(&mut self, kernel: &GuestKernel, module: u64, name: &str) -> Result<()> {
        let of_this = |s: &probe_plan::ProbeSite| s.modules.iter().any(|m| &**m == name);
        let wanted: Vec<Arc<str>> = self
            .sites
            .iter()
            .filter(|s| of_this(s))
            .map(|s| s.func.clone())
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut view = crate::context::StubMemory(&mut self.client);
        let functions = match kernel
            .module_functions(&mut view, module, &|f| wanted.iter().any(|w| &**w == f))
        {
            Ok(f) => f,
            Err(e) => {
                let why = format!("reading the symbols of module {name}: {e}");
                self.site_errors(|_, s| of_this(s), why);
                return Ok(());
            }
        };
        for i in 0..self.sites.len() {
            for addr in self.sites[i].module_addrs(name, &functions) {
                if self.by_addr.contains_key(&addr) {
                    continue;
                }
                let mut at = self.sites[i].at(addr);
                self.check_instruction_boundary(&at)?;
                self.prepare_kernel_site(&mut at)?;
                self.client
                    .insert_breakpoint(BreakpointKind::Software, addr, 1)
                    .map_err(|source| Error::Arm {
                        probe: at.func.to_string(),
                        addr,
                        source,
                    })?;
                self.armed.push(addr);
                self.module_addrs.push((module, addr));
                self.by_addr.insert(addr, self.sites.len());
                self.sites.push(at);
            }
        }
        Ok(())
    }

    /// Whether `pc` is the module load or unload hook.
    pub(super) fn is_module_hook(&self, pc: u64) -> bool {
        self.module_hook == Some(pc) || self.module_unload_hook == Some(pc)
    }

    /// At `free_module(mod)`: the addresses armed in the module are
    /// disarmed while its code is still there, and forgotten (detach has
    /// nothing of them to remove or compare).
    fn disarm_module(&mut self, module: u64) -> std::result::Result<(), String> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.module_addrs)
            .into_iter()
            .partition(|(m, _)| *m == module);
        self.module_addrs = kept;
        for (_, addr) in gone {
            self.client
                .remove_breakpoint(BreakpointKind::Software, addr, 1)
                .map_err(|e| format!("disarming {addr:#x} in a module being freed: {e}"))?;
            self.armed.retain(|&a| a != addr);
            self.before.retain(|(a, _)| *a != addr);
            self.by_addr.remove(&addr);
        }
        Ok(())
    }

    /// At `do_init_module(mod)`: the guest has placed and relocated a new
    /// module and set its symbols, and has not run its code yet. The
    /// probed functions in it are armed before it can. At
    /// `free_module(mod)`, those armed in it are disarmed.
    pub(super) fn serve_module_load(
        &mut self,
        pc: u64,
        thread: ThreadId,
        regs: Option<Registers>,
        runtime: &Mutex<Runtime>,
        resume: bool,
        received: u64,
    ) -> std::result::Result<Flow, String> {
        let module = register(&mut self.client, regs.as_ref(), thread, "rdi")?;
        if self.module_unload_hook == Some(pc) {
            self.disarm_module(module)?;
        } else if let Some(kernel) = self.kernel.clone() {
            let mut view = crate::context::StubMemory(&mut self.client);
            let name = kernel.module_name(&mut view, module);
            if let Some(why) = self.client.lost() {
                return Err(why.to_string());
            }
            match name {
                Ok(name) => self
                    .arm_module(&kernel, module, &name)
                    .map_err(|e| e.to_string())?,
                Err(e) => {
                    let why = format!("reading a module being loaded: {e}");
                    self.site_errors(|_, s| s.in_module(), why);
                }
            }
        }
        self.hand_pending_errors(runtime);
        self.resume_if(resume, Resume::StepOff(thread, pc), received)
            .map(|_| Flow::Continue)
    }
}
