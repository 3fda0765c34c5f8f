//! Kernel type information for the language: what the checker asks of the
//! guest kernel's types (from its BTF, through [`KernelTypes`]) to type
//! `args.NAME`, struct casts, `->`/`.` member access, `[i]`, `sizeof` and
//! `offsetof`. The language knows nothing of BTF itself; the engine (or a
//! test) implements the trait. Every answer is used at compile time only:
//! the compiled program holds plain offsets and sizes.

use crate::ProbeSpec;

/// An opaque type id of the provider (for BTF: the BTF type id; 0 = void).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TypeRef(pub u32);

/// A type with typedefs and qualifiers (`const`, `volatile`) resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeInfo {
    Void,
    /// Integers, `char` and `_Bool`; `size` in bytes (1..=8).
    Int {
        size: u8,
        signed: bool,
        char: bool,
    },
    Enum {
        size: u8,
        signed: bool,
    },
    Ptr {
        pointee: TypeRef,
    },
    Array {
        elem: TypeRef,
        count: u32,
    },
    Struct {
        size: u64,
    },
    Union {
        size: u64,
    },
    /// Functions, floats and anything else a script cannot use.
    Other,
}

/// A struct/union member as C finds it (through anonymous members).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub ty: TypeRef,
    /// From the start of the struct the lookup began at.
    pub bit_offset: u64,
    /// Width for a bitfield, 0 otherwise.
    pub bitfield_size: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub ty: TypeRef,
}

/// A kernel function's prototype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prototype {
    pub params: Vec<Param>,
    /// `TypeRef(0)` for `void`.
    pub ret: TypeRef,
}

/// The type of a named field of a non-kernel probe (`vmm:EVENT`,
/// `tracepoint:SYS:EVENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Int { signed: bool },
    Str,
}

/// A guest syscall as its `syscalls:sys_enter_NAME` tracepoint declares
/// it (from the kernel's own syscall metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallDecl {
    /// Its number, when known (`args.__syscall_nr`).
    pub nr: Option<u32>,
    /// (C type as tracefs prints it, name), in order: `("const char *",
    /// "filename")`.
    pub params: Vec<(String, String)>,
}

impl SyscallDecl {
    /// bpftrace's `-lv` listing of `syscalls:sys_enter_NAME` (`exit`:
    /// `sys_exit_NAME`): each field of the tracefs event as `    TYPE NAME`.
    pub fn field_lines(&self, exit: bool) -> Vec<String> {
        let mut v = vec!["    int __syscall_nr".to_string()];
        if exit {
            v.push("    long ret".into());
        } else {
            v.extend(self.params.iter().map(|(t, n)| format!("    {t} {n}")));
        }
        v
    }
}

/// Kernel types for the checker. Implementations must not panic on any
/// name or id (ids come only from earlier answers of the same provider).
pub trait KernelTypes {
    /// Prototype of a kernel function by name.
    fn function(&self, name: &str) -> Option<Prototype>;
    /// A type by its C name: `struct task_struct`, `union u`, `enum e`, or
    /// a typedef/base type name such as `pid_t`.
    fn lookup(&self, c_name: &str) -> Option<TypeRef>;
    /// What a type is, typedefs and qualifiers resolved.
    fn info(&self, ty: TypeRef) -> TypeInfo;
    /// Member `name` of struct/union `ty` (anonymous members searched).
    fn member(&self, ty: TypeRef, name: &str) -> Option<MemberInfo>;
    /// C spelling of a type, for messages and `vmprobe list -v`.
    fn type_name(&self, ty: TypeRef) -> String;
    /// Type of field `field` of a `vmm:`/`tracepoint:` probe. `None`: not
    /// known, the field is read as an integer.
    fn event_field(&self, probe: &ProbeSpec, field: &str) -> Option<FieldType> {
        self.event_fields(probe)?
            .into_iter()
            .find_map(|(n, t)| (n == field).then_some(t))
    }
    /// Every field of a `vmm:`/`tracepoint:` probe, when the event's
    /// declaration is known: a name outside it is an error before attaching.
    fn event_fields(&self, _probe: &ProbeSpec) -> Option<Vec<(String, FieldType)>> {
        None
    }
    /// A guest tracepoint other than a syscall's (`sched:sched_switch`):
    /// its record's fields, or why it cannot be served; `None` when these
    /// types know no guest events.
    fn guest_event(
        &self,
        _system: &str,
        _event: &str,
    ) -> Option<Result<Vec<(String, FieldType)>, String>> {
        None
    }
    /// Every guest tracepoint other than syscalls' these types know, as
    /// `SYSTEM:EVENT` (what a wildcard such as `tracepoint:sched:sched*`
    /// expands to).
    fn guest_event_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether [`KernelTypes::syscall`] knows the guest's syscalls: then a
    /// `tracepoint:syscalls:*` on a name it does not know is an error.
    fn knows_syscalls(&self) -> bool {
        false
    }
    /// A guest syscall by name (`openat`).
    fn syscall(&self, _name: &str) -> Option<SyscallDecl> {
        None
    }
    /// The names of every guest syscall [`KernelTypes::syscall`] knows.
    fn syscall_names(&self) -> Vec<String> {
        Vec::new()
    }
    /// The functions a `kfunc:`/`kretfunc:` wildcard expands to: those
    /// ftrace can trace (the image's mcount table) with a BTF prototype a
    /// kfunc can serve ([`kfunc_servable`]). Empty: not known.
    fn kfunc_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// The value of an enumerator of the guest kernel's enums by name
    /// (`TCP_FIN_WAIT1`): the first enum that has it, as bpftrace takes it.
    fn enumerator(&self, _name: &str) -> Option<i64> {
        None
    }
}

/// Whether a `kfunc`/`kretfunc` can serve a function of this prototype:
/// at most six parameters, none a struct or union by value (SysV x86-64
/// passes those six in registers, where its `args` are read).
pub fn kfunc_servable(types: &dyn KernelTypes, proto: &Prototype) -> bool {
    proto.params.len() <= 6
        && proto.params.iter().all(|p| {
            !matches!(
                types.info(p.ty),
                TypeInfo::Struct { .. } | TypeInfo::Union { .. }
            )
        })
}

/// bpftrace's `-lv` listing of one kernel function's parameters:
/// `    TYPE NAME` per line (a pointer's `*` stays on the type, as
/// `const char * buf`).
pub fn prototype_lines(types: &dyn KernelTypes, proto: &Prototype) -> Vec<String> {
    proto
        .params
        .iter()
        .map(|p| format!("    {} {}", types.type_name(p.ty), p.name))
        .collect()
}
