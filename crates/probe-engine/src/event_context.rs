//! What a handler sees where no vCPU stopped for it: `BEGIN`, `END`, and
//! the events of the VMM and host layers (which arrive while the guest
//! runs). The guest kernel's symbols are there (`kaddr`, `ksym`); its
//! registers and memory are not.

use crate::layer_event::LayerValue;
use linux_guest::GuestKernel;
use probe_lang::{BlockId, Value};
use probe_runtime::{ContextError, Flow, ProbeContext, Runtime, Traced};
use std::sync::{Arc, Mutex};

pub struct EventContext<'a> {
    pub vcpu: u32,
    pub nsecs: u64,
    pub func: &'a str,
    pub probe: &'a str,
    pub kernel: Option<&'a GuestKernel>,
    pub guest: &'a str,
    /// A VMM or host event's fields (`args.NAME` in its probe's block).
    pub fields: Option<&'a [(String, LayerValue)]>,
    /// What `trace()`/`snapshot()` calls asked for, with the probe that
    /// asked.
    pub traced: Vec<(Box<str>, Traced)>,
}

impl<'a> EventContext<'a> {
    pub fn new(guest: &'a str, nsecs: u64, func: &'a str, kernel: Option<&'a GuestKernel>) -> Self {
        EventContext {
            vcpu: 0,
            nsecs,
            func,
            probe: "",
            kernel,
            guest,
            fields: None,
            traced: Vec::new(),
        }
    }

    /// Runs each handler, holding the shared runtime only while one runs.
    /// `Exit` if any called `exit()`.
    pub fn run_all(
        &mut self,
        runtime: &Mutex<Runtime>,
        handlers: &'a [(BlockId, Arc<str>)],
    ) -> Flow {
        crate::run_handlers(self, runtime, handlers, |c, p| c.probe = p)
    }

    fn no_guest(&self, what: &str) -> ContextError {
        ContextError::Unavailable(format!("{what}: {} does not stop a vCPU", self.probe))
    }
}

impl ProbeContext for EventContext<'_> {
    fn arg(&mut self, n: u8) -> Result<u64, ContextError> {
        Err(self.no_guest(&format!("arg{n}")))
    }

    fn retval(&mut self) -> Result<u64, ContextError> {
        Err(self.no_guest("retval"))
    }

    fn register(&mut self, name: &str) -> Result<u64, ContextError> {
        Err(self.no_guest(&format!("reg(\"{name}\")")))
    }

    fn read_memory(&mut self, addr: u64, _: &mut [u8]) -> Result<(), ContextError> {
        Err(self.no_guest(&format!("reading guest memory at {addr:#x}")))
    }

    fn kaddr(&self, name: &str) -> Option<u64> {
        self.kernel?.kaddr(name)
    }

    fn ksym(&self, addr: u64) -> Option<(String, u64)> {
        self.kernel?.ksym(addr)
    }

    fn guest(&self) -> &str {
        self.guest
    }

    fn trace(&mut self, what: Traced) -> Result<(), ContextError> {
        self.traced.push((self.probe.into(), what));
        Ok(())
    }

    fn probe_arg(&mut self, name: &str) -> Result<Value, ContextError> {
        let Some(fields) = self.fields else {
            return Err(ContextError::Unavailable(format!(
                "args.{name}: {} has no named arguments",
                self.probe
            )));
        };
        match fields.iter().find(|(n, _)| n == name) {
            Some((_, LayerValue::Int(v))) => Ok(Value::Int(*v)),
            Some((_, LayerValue::Str(s))) => Ok(Value::Str(s.as_str().into())),
            None => Err(ContextError::Unavailable(format!(
                "args.{name}: {} has fields {}",
                self.probe,
                fields
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    fn vcpu(&self) -> u32 {
        self.vcpu
    }

    fn nsecs(&self) -> u64 {
        self.nsecs
    }

    fn func(&self) -> &str {
        self.func
    }

    fn probe(&self) -> &str {
        self.probe
    }
}
