//! Types for the checker across layers: the guest kernel's BTF for kernel
//! probes, and the declared fields of `vmm:` events (QEMU's installed
//! `trace-events-all`) and `host:tracepoint:` events (the host's tracefs
//! `format` files), and the guest's syscalls for its `tracepoint:syscalls:*`
//! (from the image's syscall metadata, handed in by the caller). With them
//! `args.NAME` of an event is typed (string or integer) and a name the
//! event lacks is an error before attaching.

use crate::BtfTypes;
use host_tracepoints::format::{Element, Layout};
use host_tracepoints::{Tracefs, TracepointName};
use probe_lang::{
    FieldType, KernelTypes, MemberInfo, ProbeSpec, Prototype, SyscallDecl, TypeInfo, TypeRef,
};
use qemu_vmm::catalogue::{Catalogue, Conv};
use std::sync::OnceLock;

/// [`KernelTypes`] of the guest kernel, plus the VMM's and host's events.
pub struct LayerTypes<'a> {
    /// `None` for programs with no guest probe (host and VMM events only).
    kernel: Option<BtfTypes<'a>>,
    /// Found when a `host:tracepoint:` probe first asks: most programs have none.
    host: OnceLock<Option<Tracefs>>,
    /// The guest's syscalls by name, sorted, when the caller read them.
    syscalls: Option<&'a [(String, SyscallDecl)]>,
    /// What kfunc wildcards expand to, when the caller read it.
    kfuncs: &'a [String],
    /// The guest tracepoints (other than syscalls') the program names, as
    /// the caller found them in the image: a recipe, or why not.
    guest_events: Option<&'a [GuestEvent]>,
}

/// A guest tracepoint looked up in the image: `(system, event, recipe or
/// why it cannot be served)`.
pub type GuestEvent = (
    String,
    String,
    Result<kernel_tracepoints::EventRecipe, String>,
);

impl<'a> LayerTypes<'a> {
    /// Event declarations from QEMU's installed catalogue and the host's
    /// tracefs, each found when first needed.
    pub fn new(kernel: BtfTypes<'a>) -> Self {
        Self::with_kernel(Some(kernel))
    }

    /// Event types alone, for a program of VMM and host events only: it
    /// names no kernel type, and no kernel image need be read.
    pub fn events_only() -> LayerTypes<'static> {
        LayerTypes::with_kernel(None)
    }

    fn with_kernel(kernel: Option<BtfTypes<'a>>) -> Self {
        LayerTypes {
            kernel,
            host: OnceLock::new(),
            syscalls: None,
            kfuncs: &[],
            guest_events: None,
        }
    }

    /// With the guest's syscalls (sorted by name), for `tracepoint:syscalls:*`.
    pub fn with_syscalls(mut self, syscalls: &'a [(String, SyscallDecl)]) -> Self {
        self.syscalls = Some(syscalls);
        self
    }

    /// With the functions kfunc wildcards expand to
    /// ([`KernelTypes::kfunc_names`]).
    pub fn with_kfuncs(mut self, kfuncs: &'a [String]) -> Self {
        self.kfuncs = kfuncs;
        self
    }

    /// With the guest tracepoints the program names, for their `args`.
    pub fn with_guest_events(mut self, events: &'a [GuestEvent]) -> Self {
        self.guest_events = Some(events);
        self
    }

    fn host(&self) -> Option<&Tracefs> {
        self.host.get_or_init(Tracefs::find).as_ref()
    }
}

impl KernelTypes for LayerTypes<'_> {
    fn function(&self, name: &str) -> Option<Prototype> {
        self.kernel?.function(name)
    }

    fn lookup(&self, c_name: &str) -> Option<TypeRef> {
        self.kernel?.lookup(c_name)
    }

    fn enumerator(&self, name: &str) -> Option<i64> {
        self.kernel?.enumerator(name)
    }

    fn info(&self, ty: TypeRef) -> TypeInfo {
        self.kernel.map_or(TypeInfo::Other, |k| k.info(ty))
    }

    fn member(&self, ty: TypeRef, name: &str) -> Option<MemberInfo> {
        self.kernel?.member(ty, name)
    }

    fn type_name(&self, ty: TypeRef) -> String {
        self.kernel.map_or_else(String::new, |k| k.type_name(ty))
    }

    fn event_fields(&self, probe: &ProbeSpec) -> Option<Vec<(String, FieldType)>> {
        match probe {
            ProbeSpec::Vmm { event } => vmm_fields(Catalogue::installed()?.as_ref(), event),
            ProbeSpec::HostTracepoint { system, event } => {
                let name = TracepointName::new(system, event).ok()?;
                let format = self.host()?.format(&name).ok()?;
                Some(
                    format
                        .event_fields()
                        .map(|f| {
                            let ty = match (f.layout, f.element) {
                                (Layout::Scalar, Element::Int { signed, .. }) => {
                                    FieldType::Int { signed }
                                }
                                // Strings, arrays and opaque bytes reach
                                // handlers as text (layers::LayerValue).
                                _ => FieldType::Str,
                            };
                            (f.name.to_string(), ty)
                        })
                        .collect(),
                )
            }
            ProbeSpec::GuestTracepoint { system, event } => self.guest_event(system, event)?.ok(),
            _ => None,
        }
    }

    fn guest_event(
        &self,
        system: &str,
        event: &str,
    ) -> Option<Result<Vec<(String, FieldType)>, String>> {
        let (_, _, found) = self
            .guest_events?
            .iter()
            .find(|(s, e, _)| s == system && e == event)?;
        Some(found.as_ref().map_err(Clone::clone).map(|recipe| {
            recipe
                .fields
                .iter()
                .map(|f| {
                    let ty = match f.kind {
                        kernel_tracepoints::FieldKind::Int => FieldType::Int { signed: f.signed },
                        _ => FieldType::Str,
                    };
                    (f.name.clone(), ty)
                })
                .collect()
        }))
    }

    fn guest_event_names(&self) -> Vec<String> {
        self.guest_events
            .unwrap_or_default()
            .iter()
            .filter(|(_, _, found)| found.is_ok())
            .map(|(s, e, _)| format!("{s}:{e}"))
            .collect()
    }

    fn knows_syscalls(&self) -> bool {
        self.syscalls.is_some_and(|s| !s.is_empty())
    }

    fn syscall(&self, name: &str) -> Option<SyscallDecl> {
        let all = self.syscalls?;
        let i = all.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok()?;
        Some(all[i].1.clone())
    }

    fn syscall_names(&self) -> Vec<String> {
        self.syscalls
            .map(|all| all.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }

    fn kfunc_names(&self) -> Vec<String> {
        self.kfuncs.to_vec()
    }
}

/// A `vmm:` event's fields as [`qemu_vmm::catalogue::EventDecl::match_message`]
/// gives them. Patterns (`vmm:serial_*`) have no one declaration.
fn vmm_fields(catalogue: &Catalogue, event: &str) -> Option<Vec<(String, FieldType)>> {
    let fields = catalogue.get(event)?.fields()?;
    Some(
        fields
            .into_iter()
            .map(|(name, conv)| {
                let ty = match conv {
                    Conv::Signed => FieldType::Int { signed: true },
                    Conv::Unsigned | Conv::Hex { .. } | Conv::Octal | Conv::Pointer => {
                        FieldType::Int { signed: false }
                    }
                    Conv::Str | Conv::Char | Conv::Float => FieldType::Str,
                };
                (name, ty)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_fields_follow_the_format() {
        let cat = Catalogue::parse(
            r#"serial_write(uint16_t addr, uint8_t value) "write addr 0x%02x val 0x%02x"
memory_region_ops_read(int cpu_index, void *mr, uint64_t addr, uint64_t value, unsigned size, const char *name) "cpu %d mr %p addr 0x%"PRIx64" value 0x%"PRIx64" size %u name '%s'"
"#,
        );
        let u = FieldType::Int { signed: false };
        assert_eq!(
            vmm_fields(&cat, "serial_write"),
            Some(vec![("addr".into(), u), ("value".into(), u)])
        );
        let f = vmm_fields(&cat, "memory_region_ops_read").unwrap();
        assert_eq!(f[0], ("cpu_index".into(), FieldType::Int { signed: true }));
        assert_eq!(f[5], ("name".into(), FieldType::Str));
        assert_eq!(vmm_fields(&cat, "serial_*"), None);
    }
}
