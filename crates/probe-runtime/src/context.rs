//! What a handler can ask of the place its probe fired, implemented by each
//! backend (registers and memory through a GDB stub, or inside QEMU).

use probe_lang::value::Value;
use std::sync::Arc;

/// What a handler can ask about the place it fired; implemented by the
/// probe engine (registers come lazily from the stub).
///
/// Methods with a default body are what only some contexts have (a VMM
/// event stops no vCPU; BEGIN has no guest): the default is
/// [`ContextError::Unavailable`]. What a program asks of a probe kind or a
/// backend that lacks it is refused before booting, at its line:column
/// (`probe_engine::capabilities`), so these defaults are a backstop.
pub trait ProbeContext {
    /// arg0..arg5 (the engine maps them to SysV argument registers).
    fn arg(&mut self, n: u8) -> Result<u64, ContextError>;
    fn retval(&mut self) -> Result<u64, ContextError>;
    fn vcpu(&self) -> u32;
    /// Host CLOCK_MONOTONIC nanoseconds of the hit.
    fn nsecs(&self) -> u64;
    /// Function name where the probe fired.
    fn func(&self) -> &str;
    /// Full probe name, e.g. `"kprobe:ksys_write"`, `"BEGIN"`.
    fn probe(&self) -> &str;
    /// Reads guest (virtual) memory; `buf.len()` is at most a few hundred
    /// bytes.
    fn read_memory(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ContextError>;
    /// Any register by its name in the stub's target description, e.g.
    /// `"rax"`, `"rip"`, `"cr3"` (for `reg("name")`).
    fn register(&mut self, name: &str) -> Result<u64, ContextError> {
        Err(ContextError::Register(format!(
            "reg(\"{name}\") is not supported by this probe context"
        )))
    }
    /// Guest kernel address of a symbol, KASLR slide applied (`kaddr()`).
    fn kaddr(&self, _name: &str) -> Option<u64> {
        None
    }
    /// The guest kernel symbol containing `addr` and `addr`'s offset into
    /// it (`ksym()`, `kstack` frames).
    fn ksym(&self, _addr: u64) -> Option<(String, u64)> {
        None
    }
    /// Return addresses of the interrupted kernel stack, innermost first,
    /// at most `limit` (for `kstack`). The language symbolizes them with
    /// [`ProbeContext::ksym`].
    fn kstack(&mut self, _limit: usize) -> Result<Vec<u64>, ContextError> {
        Err(ContextError::Unavailable(
            "kstack is not supported by this probe context".into(),
        ))
    }
    /// Address of the current task's `task_struct` (Linux guests).
    fn curtask(&mut self) -> Result<u64, ContextError> {
        Err(ContextError::Unavailable(
            "curtask is not supported by this probe context".into(),
        ))
    }
    /// The current task's `comm` (Linux guests).
    fn comm(&mut self) -> Result<String, ContextError> {
        Err(ContextError::Unavailable(
            "comm is not supported by this probe context".into(),
        ))
    }
    /// The current process id, `task->tgid` (Linux guests).
    fn pid(&mut self) -> Result<u64, ContextError> {
        Err(ContextError::Unavailable(
            "pid is not supported by this probe context".into(),
        ))
    }
    /// The current thread id, `task->pid` (Linux guests).
    fn tid(&mut self) -> Result<u64, ContextError> {
        Err(ContextError::Unavailable(
            "tid is not supported by this probe context".into(),
        ))
    }
    /// The current task's cgroup v2 id (Linux guests), as bpftrace's `cgroup`.
    fn cgroup(&mut self) -> Result<u64, ContextError> {
        Err(ContextError::Unavailable(
            "cgroup is not supported by this probe context".into(),
        ))
    }
    /// The path of cgroup v2 id `id` in the default hierarchy (`/`,
    /// `/a/b`), `None` when no cgroup has that id (Linux guests).
    fn cgroup_path(&mut self, _id: u64) -> Result<Option<String>, ContextError> {
        Err(ContextError::Unavailable(
            "cgroup_path is not supported by this probe context".into(),
        ))
    }
    /// Named argument `args.NAME` of a `vmm:EVENT` or
    /// `tracepoint:SYSTEM:EVENT` probe (an integer, or a string where the
    /// type provider said so).
    fn probe_arg(&mut self, name: &str) -> Result<Value, ContextError> {
        Err(ContextError::Unavailable(format!(
            "args.{name} is not supported by this probe context"
        )))
    }
    /// The VM the probe fired in (`guest`).
    fn guest(&self) -> &str {
        "vm0"
    }
    /// The physical address of `vaddr` in the address space whose
    /// top-level page table is at physical address `cr3` (`vtop`).
    fn vtop(&mut self, _cr3: u64, _vaddr: u64) -> Result<u64, ContextError> {
        Err(ContextError::Unavailable(
            "vtop is not supported by this probe context".into(),
        ))
    }
    /// Reads memory at `addr` in the address space of `task` (a kernel
    /// task structure's address), whatever runs on the vCPU (`str_as`,
    /// `buf_as`, `uint_as`).
    fn read_task_memory(
        &mut self,
        _task: u64,
        _addr: u64,
        _buf: &mut [u8],
    ) -> Result<(), ContextError> {
        Err(ContextError::Unavailable(
            "reading another task's memory is not supported by this probe context".into(),
        ))
    }
    /// Return addresses of the current task's user stack, innermost first,
    /// at most `limit` (for `ustack`).
    fn ustack(&mut self, _limit: usize) -> Result<Vec<u64>, ContextError> {
        Err(ContextError::Unavailable(
            "ustack is not supported by this probe context".into(),
        ))
    }
    /// The user function holding `addr` in the current task, and the
    /// offset into it (`ustack` frames), where the context knows the
    /// file mapped there; `None` prints the address.
    fn usym(&mut self, _addr: u64) -> Option<(String, u64)> {
        None
    }
    /// `trace(...)` and `snapshot()`: hands the event (or the snapshot
    /// request) to the recorder of `vmprobe record`.
    fn trace(&mut self, _what: Traced) -> Result<(), ContextError> {
        Err(ContextError::Unavailable(
            "trace() and snapshot() work only under `vmprobe record`".into(),
        ))
    }
}

/// What a `trace(...)` or `snapshot()` call asks the recorder to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Traced {
    /// `trace()`: an event with the probe's own fields (arguments, return
    /// value, or a VMM/host event's fields), which the engine knows.
    Probe,
    /// `trace(name = expr, ...)` at call site `site`: the fields in order.
    Fields {
        site: u32,
        fields: Vec<(Arc<str>, TracedValue)>,
    },
    /// `snapshot()`.
    Snapshot,
}

/// A typed `trace()` field value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TracedValue {
    U64(u64),
    I64(i64),
    Str(Arc<str>),
    Bytes(Arc<[u8]>),
}

/// Why a context could not give a handler what it asked for. Every class
/// but [`ContextError::Lost`] is counted and ends only that handler run.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The context does not have it: its probe kind (a VMM event stops no
    /// vCPU) or its backend lacks it, or it does not apply (`arg7`).
    #[error("{0}")]
    Unavailable(String),
    #[error("failed to read register: {0}")]
    Register(String),
    /// The guest faulted on a read (unmapped, non-canonical, a bad page
    /// table): the interpreter counts it and reads zeroes, as bpftrace's
    /// `probe_read`. Backends use it for guest faults only (a broken stub
    /// is `Lost`; other failures are `Guest`).
    #[error("failed to read memory at {addr:#x}: {reason}")]
    Memory { addr: u64, reason: String },
    /// The guest kernel's structures did not give the answer: a missing
    /// layout, a task without an address space, a failed page walk, a
    /// corrupt list. The text says which.
    #[error("{0}")]
    Guest(String),
    /// The connection to the VM broke (a closed or desynchronised stub):
    /// nothing more can be served through it, so the backend ends that
    /// VM's run with what was collected.
    #[error("{0}")]
    Lost(String),
}

impl ContextError {
    /// Whether the backend must stop serving the VM after this.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ContextError::Lost(_))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The handler called `exit()`.
    Exit,
}

/// `args.NAME` of a guest tracepoint's hit, from the record its emulated
/// code wrote (`kernel_tracepoints::serve`): what a backend's
/// [`ProbeContext::probe_arg`] answers at such a hit.
pub fn guest_event_arg(
    recipe: &kernel_tracepoints::EventRecipe,
    record: &kernel_tracepoints::Record,
    name: &str,
) -> Result<Value, ContextError> {
    use kernel_tracepoints::FieldValue;
    let field = recipe.field(name).ok_or_else(|| {
        ContextError::Unavailable(format!("{} has no field '{name}'", recipe.name()))
    })?;
    Ok(match record.value(field) {
        FieldValue::Int(v) => Value::Int(v),
        FieldValue::Str(s) => Value::Str(s.into()),
        // Typed as a string by the checker, as host events' arrays are.
        FieldValue::Bytes(b) => Value::Str(
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
                .into(),
        ),
    })
}
