//! A guest tracepoint's hit through the stub: its record, by emulating
//! the tracepoint's code over the stopped vCPU (`kernel_tracepoints`).

use super::*;

impl Session {
    /// The record of a guest tracepoint's hit at site `index`, by emulating
    /// the tracepoint's code over the stopped vCPU (`None`: it does not
    /// fire, or could not be served, which is counted with the first
    /// reason).
    pub(super) fn serve_event(
        &mut self,
        recipe: &kernel_tracepoints::EventRecipe,
        index: usize,
        thread: ThreadId,
        regs: &mut Option<Registers>,
    ) -> Result<Option<kernel_tracepoints::Record>, String> {
        if regs.is_none() {
            *regs = Some(
                self.client
                    .read_registers(thread)
                    .map_err(|e| e.to_string())?,
            );
        }
        let r = regs.as_ref().expect("fetched above");
        let served =
            kernel_tracepoints::registers(&recipe.name(), |n| r.get(n)).and_then(|start| {
                let kernel = self.kernel.as_deref();
                let text = (
                    kernel.and_then(|k| k.kaddr("_stext")).unwrap_or(0),
                    kernel.and_then(|k| k.kaddr("_etext")).unwrap_or(0),
                );
                let lines = self
                    .event_lines
                    .get_or_insert_with(|| kernel_tracepoints::LineCache::new(text));
                lines.new_hit();
                let client = &mut self.client;
                let mut read = |a: u64, b: &mut [u8]| client.read_memory(a, b).is_ok();
                let mut mem = lines.memory(&mut read);
                kernel_tracepoints::serve(recipe, self.sites[index].addr, start, &mut mem)
            });
        if let Some(e) = self.client.lost() {
            return Err(e.to_string());
        }
        match served {
            Ok(Some(record)) => Ok(Some(record)),
            Ok(None) => {
                self.stats.events_not_fired += 1;
                Ok(None)
            }
            Err(e) => {
                self.stats.event_errors += 1;
                self.stats.event_error.get_or_insert_with(|| e.to_string());
                Ok(None)
            }
        }
    }
}
