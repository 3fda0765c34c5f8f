//! A guest tracepoint's hit inside QEMU: its record, by emulating the
//! tracepoint's code on the vCPU (`kernel_tracepoints`).

use super::run::Run;
use crate::tcg::Vcpu;
use std::sync::Arc;

impl Run {
    /// At a guest tracepoint's call: the record its code, emulated on this
    /// vCPU, writes; `None` when it does not fire or cannot be served (an
    /// error of each of its probes, with the reason).
    pub(super) fn event_record(
        &self,
        vcpu: &mut Vcpu<'_>,
        site: usize,
    ) -> Option<(
        Arc<kernel_tracepoints::EventRecipe>,
        kernel_tracepoints::Record,
    )> {
        let s = &self.sites[site];
        let recipe = s.event.clone()?;
        let served =
            kernel_tracepoints::registers(&recipe.name(), |n| vcpu.reg(n)).and_then(|start| {
                kernel_tracepoints::serve(&recipe, s.addr, start, &mut VcpuMemory(vcpu))
            });
        match served {
            Ok(record) => record.map(|r| (recipe, r)),
            Err(e) => {
                let errors: Vec<(String, String, u64)> = s
                    .handlers
                    .iter()
                    .map(|(_, probe)| (probe.to_string(), e.to_string(), 1))
                    .collect();
                self.interps[vcpu.index() as usize % self.interps.len()]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .add_errors(&errors);
                None
            }
        }
    }
}

/// Guest memory as the emulator reads it: this vCPU's virtual addresses.
struct VcpuMemory<'a, 'v>(&'a mut Vcpu<'v>);

impl x86_emulate::Memory for VcpuMemory<'_, '_> {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), x86_emulate::MemoryFault> {
        if self.0.read_memory(addr, buf) {
            Ok(())
        } else {
            Err(x86_emulate::MemoryFault)
        }
    }
}
