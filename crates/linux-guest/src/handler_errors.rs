//! What a handler is told when introspection fails: the one mapping of
//! [`GuestError`] onto the runtime's error classes, for every backend.

use crate::GuestError;
use probe_runtime::ContextError;

/// A guest read that faulted is [`ContextError::Memory`] (the handler
/// reads zeroes where it read memory); any other failure is
/// [`ContextError::Guest`].
impl From<GuestError> for ContextError {
    fn from(e: GuestError) -> ContextError {
        match e {
            GuestError::Memory { addr, reason } => ContextError::Memory { addr, reason },
            e => ContextError::Guest(e.to_string()),
        }
    }
}

/// A failed read at `addr` in the address space of `task`: a guest fault
/// (the handler reads zeroes and goes on) or not (it stops).
pub fn task_read_error(task: u64, addr: u64, e: GuestError) -> ContextError {
    if e.is_guest_fault() {
        ContextError::Memory {
            addr,
            reason: format!("in task {task:#x}: {e}"),
        }
    } else {
        ContextError::Guest(format!("read at {addr:#x} in task {task:#x}: {e}"))
    }
}
