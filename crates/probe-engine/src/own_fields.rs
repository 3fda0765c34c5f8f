//! A recorded probe's own fields named and typed after the kernel's BTF
//! prototype: backends hand `arg0`..`arg5` (the argument registers) at a
//! `kprobe:F`/`kfunc:F` entry and `retval` (`rax`) at a
//! `kretprobe:F`/`kretfunc:F` return, all raw `u64`; a trace shows
//! `fd`, `buf`, `count` instead, signed where C's type is, and pointers in
//! hex. Decided once per probe before the run ([`OwnFields::new`]);
//! applying it to a hit ([`Layout::apply`]) allocates nothing.

use crate::record::RecordedEvent;
use probe_lang::{KernelTypes, TypeInfo, TypeRef};
use probe_plan::ProbeSite;
use std::collections::HashMap;
use std::sync::Arc;
use trace_formats::Value;

/// Registers the SysV x86-64 convention passes arguments in, hence the
/// most fields an entry has.
pub const MAX_ARGS: usize = 6;

/// How a raw 64-bit register becomes a field of C type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv {
    /// Signed, sign-extended from its low `bytes`: a 32-bit `int` in a
    /// 64-bit register whose upper half is not defined by the ABI.
    Signed(u8),
    /// Unsigned, its low `bytes` kept.
    Unsigned(u8),
    /// An address: all 64 bits, shown in hex.
    Ptr,
}

impl Conv {
    /// The conversion for a C type; `None` for one whose value is not one
    /// whole general-purpose register (a struct by value, a float, void).
    fn of(info: TypeInfo) -> Option<Conv> {
        match info {
            TypeInfo::Int { size, signed, .. } | TypeInfo::Enum { size, signed }
                if (1..=8).contains(&size) =>
            {
                Some(if signed {
                    Conv::Signed(size)
                } else {
                    Conv::Unsigned(size)
                })
            }
            TypeInfo::Ptr { .. } => Some(Conv::Ptr),
            _ => None,
        }
    }

    pub fn apply(self, raw: u64) -> Value<'static> {
        match self {
            Conv::Ptr => Value::Ptr(raw),
            Conv::Signed(n) => {
                let shift = 64 - 8 * u32::from(n);
                Value::I64(((raw << shift) as i64) >> shift)
            }
            Conv::Unsigned(n) => Value::U64(raw & (u64::MAX >> (64 - 8 * u32::from(n)))),
        }
    }
}

/// The fields of one probe's events, in the order the backend hands the
/// raw values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout(Vec<(Box<str>, Conv)>);

impl Layout {
    pub fn fields(&self) -> impl Iterator<Item = (&str, Conv)> {
        self.0.iter().map(|(n, c)| (&**n, *c))
    }

    /// `raw` (the backend's `u64` fields) renamed and converted into
    /// `out`; `None`, leaving the event as it is, when `raw` is not the
    /// raw shape this layout was made for.
    pub fn apply<'a>(
        &'a self,
        raw: &[(&str, Value<'_>)],
        out: &'a mut [(&'a str, Value<'a>); MAX_ARGS],
    ) -> Option<&'a [(&'a str, Value<'a>)]> {
        if raw.len() < self.0.len() {
            return None;
        }
        for ((slot, (name, conv)), (_, v)) in out.iter_mut().zip(&self.0).zip(raw) {
            let Value::U64(x) = *v else { return None };
            *slot = (name, conv.apply(x));
        }
        Some(&out[..self.0.len()])
    }
}

/// The typed layouts of a program's probes, by probe name as
/// [`RecordedEvent::probe`] gives it (`kprobe:ksys_write`). Probes not in
/// it keep the fields the backend gave.
#[derive(Clone, Debug, Default)]
pub struct OwnFields {
    by_probe: HashMap<Box<str>, Arc<Layout>>,
}

impl OwnFields {
    /// The layouts of the kernel-function probes among `sites` whose
    /// prototype `types` knows: entries (`kprobe:F`, not `F+OFFSET`, where
    /// the registers are no longer the arguments; `kfunc:F`) and returns
    /// (`kretprobe:F`, `kretfunc:F`).
    pub fn new(types: &dyn KernelTypes, sites: &[ProbeSite]) -> OwnFields {
        let mut by_probe = HashMap::new();
        for site in sites {
            let probes = site
                .handlers
                .iter()
                .map(|h| (h, false))
                .chain(site.ret_handlers.iter().map(|h| (h, true)));
            for ((_, probe), at_return) in probes {
                let Some(func) = function_of(probe, at_return) else {
                    continue;
                };
                if by_probe.contains_key(&**probe) {
                    continue;
                }
                let layout = if at_return {
                    return_layout(types, func)
                } else {
                    entry_layout(types, func)
                };
                if let Some(l) = layout {
                    by_probe.insert(Box::from(&**probe), Arc::new(l));
                }
            }
        }
        OwnFields { by_probe }
    }

    /// The layout of `event`'s fields, if they are its probe's own (not a
    /// `trace(name = ...)` call's) and the prototype is known.
    pub fn layout(&self, event: &RecordedEvent<'_>) -> Option<&Arc<Layout>> {
        if event.site.is_some() {
            return None;
        }
        self.by_probe.get(event.probe)
    }

    pub fn is_empty(&self) -> bool {
        self.by_probe.is_empty()
    }
}

/// The kernel function of a probe name the resolver wrote
/// (`probe_plan`), when it is one whose own fields are the prototype's.
fn function_of(probe: &str, at_return: bool) -> Option<&str> {
    let kinds: &[&str] = if at_return {
        &["kretprobe:", "kretfunc:"]
    } else {
        &["kprobe:", "kfunc:"]
    };
    let func = kinds.iter().find_map(|k| probe.strip_prefix(k))?;
    // `kprobe:F+OFFSET` is inside F; `kprobe:0xADDR` names no function.
    let plain = !func.is_empty() && !func.contains('+') && !func.starts_with("0x");
    plain.then_some(func)
}

/// `arg0`..: the parameters' names, as many as the prototype has (at most
/// six). `None` (keep `arg0`..`arg5`) when a parameter is not passed in one
/// register, as then the registers after it are not the parameters after
/// it.
fn entry_layout(types: &dyn KernelTypes, func: &str) -> Option<Layout> {
    let proto = types.function(func)?;
    let mut fields: Vec<(Box<str>, Conv)> = Vec::new();
    for (i, p) in proto.params.iter().take(MAX_ARGS).enumerate() {
        let conv = Conv::of(types.info(p.ty))?;
        let name = if is_identifier(&p.name) {
            p.name.clone()
        } else {
            format!("arg{i}")
        };
        fields.push((name.into(), conv));
    }
    let unique = fields
        .iter()
        .enumerate()
        .all(|(i, (n, _))| fields[..i].iter().all(|(m, _)| m != n));
    unique.then_some(Layout(fields))
}

/// `retval`, typed by the return type (a `void` function's `rax` stays as
/// it is).
fn return_layout(types: &dyn KernelTypes, func: &str) -> Option<Layout> {
    let proto = types.function(func)?;
    if proto.ret == TypeRef(0) {
        return None;
    }
    let conv = Conv::of(types.info(proto.ret))?;
    Some(Layout(vec![("retval".into(), conv)]))
}

/// A C identifier: what CTF field names and Perfetto arg keys share.
fn is_identifier(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|f| f.is_ascii_alphanumeric() || f == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_lang::{BlockId, MemberInfo, Param, Prototype};

    /// `ssize_t ksys_write(unsigned int fd, const char *buf, size_t count)`,
    /// `long do_sys_openat2(int dfd, const char *filename, struct open_how
    /// *how)`, `void f(struct s by_value, int x)`, `bool g(bool b, enum e
    /// e, u8 __x, int 2bad)`.
    struct Types;
    const INT: u32 = 1;
    const UINT: u32 = 2;
    const LONG: u32 = 3;
    const ULONG: u32 = 4;
    const PTR: u32 = 5;
    const STRUCT: u32 = 6;
    const BOOL: u32 = 7;
    const ENUM: u32 = 8;
    const U8: u32 = 9;

    impl KernelTypes for Types {
        fn function(&self, name: &str) -> Option<Prototype> {
            let p = |params: &[(&str, u32)], ret: u32| Prototype {
                params: params
                    .iter()
                    .map(|(n, t)| Param {
                        name: n.to_string(),
                        ty: TypeRef(*t),
                    })
                    .collect(),
                ret: TypeRef(ret),
            };
            match name {
                "ksys_write" => Some(p(&[("fd", UINT), ("buf", PTR), ("count", ULONG)], LONG)),
                "do_sys_openat2" => Some(p(&[("dfd", INT), ("filename", PTR), ("how", PTR)], LONG)),
                "f" => Some(p(&[("by_value", STRUCT), ("x", INT)], 0)),
                "g" => Some(p(
                    &[("b", BOOL), ("e", ENUM), ("__x", U8), ("2bad", INT)],
                    BOOL,
                )),
                "seven" => Some(p(
                    &[
                        ("a", INT),
                        ("b", INT),
                        ("c", INT),
                        ("d", INT),
                        ("e", INT),
                        ("f", INT),
                        ("g", INT),
                    ],
                    INT,
                )),
                "twice" => Some(p(&[("a", INT), ("a", INT)], PTR)),
                _ => None,
            }
        }
        fn lookup(&self, _: &str) -> Option<TypeRef> {
            None
        }
        fn info(&self, ty: TypeRef) -> TypeInfo {
            let int = |size, signed| TypeInfo::Int {
                size,
                signed,
                char: false,
            };
            match ty.0 {
                INT => int(4, true),
                UINT => int(4, false),
                LONG => int(8, true),
                ULONG => int(8, false),
                PTR => TypeInfo::Ptr {
                    pointee: TypeRef(INT),
                },
                STRUCT => TypeInfo::Struct { size: 16 },
                BOOL | U8 => int(1, false),
                ENUM => TypeInfo::Enum {
                    size: 4,
                    signed: false,
                },
                _ => TypeInfo::Void,
            }
        }
        fn member(&self, _: TypeRef, _: &str) -> Option<MemberInfo> {
            None
        }
        fn type_name(&self, _: TypeRef) -> String {
            String::new()
        }
    }

    fn site(func: &str, entry: &[&str], ret: &[&str]) -> ProbeSite {
        let h = |p: &[&str]| p.iter().map(|p| (BlockId(0), Arc::from(*p))).collect();
        ProbeSite {
            addr: 0,
            func: func.into(),
            handlers: h(entry),
            ret_handlers: h(ret),
            offset: 0,
            skippable: None,
            entry_args: false,
            user: Vec::new(),
            event: None,
            modules: Vec::new(),
        }
    }

    fn own() -> OwnFields {
        OwnFields::new(
            &Types,
            &[
                site(
                    "ksys_write",
                    &["kprobe:ksys_write"],
                    &["kretprobe:ksys_write"],
                ),
                site("do_sys_openat2", &["kfunc:do_sys_openat2"], &[]),
                site("f", &["kprobe:f"], &["kretprobe:f"]),
                site("g", &["kprobe:g"], &["kretfunc:g"]),
                site("seven", &["kprobe:seven"], &[]),
                site("twice", &["kprobe:twice"], &["kretprobe:twice"]),
                site("ksys_read", &["kprobe:ksys_read"], &[]),
                site("ksys_write+4", &["kprobe:ksys_write+4"], &[]),
                site("ksys_write", &["tracepoint:syscalls:sys_enter_write"], &[]),
                site("ksys_write", &["uprobe:/bin/sh:ksys_write"], &[]),
            ],
        )
    }

    fn names(o: &OwnFields, probe: &str) -> Option<Vec<(String, Conv)>> {
        let l = o.by_probe.get(probe)?;
        Some(l.fields().map(|(n, c)| (n.to_string(), c)).collect())
    }

    fn named(fields: &[(&str, Conv)]) -> Option<Vec<(String, Conv)>> {
        Some(fields.iter().map(|(n, c)| (n.to_string(), *c)).collect())
    }

    #[test]
    fn prototypes_name_and_type_the_fields() {
        use Conv::*;
        let o = own();
        assert_eq!(
            names(&o, "kprobe:ksys_write"),
            named(&[("fd", Unsigned(4)), ("buf", Ptr), ("count", Unsigned(8))])
        );
        assert_eq!(
            names(&o, "kretprobe:ksys_write"),
            named(&[("retval", Signed(8))])
        );
        assert_eq!(
            names(&o, "kfunc:do_sys_openat2"),
            named(&[("dfd", Signed(4)), ("filename", Ptr), ("how", Ptr)])
        );
        // bool, an enum and a u8 are their ints; a name C could not have
        // keeps its register's.
        assert_eq!(
            names(&o, "kprobe:g"),
            named(&[
                ("b", Unsigned(1)),
                ("e", Unsigned(4)),
                ("__x", Unsigned(1)),
                ("arg3", Signed(4))
            ])
        );
        assert_eq!(names(&o, "kretfunc:g"), named(&[("retval", Unsigned(1))]));
        // Six registers, six fields.
        let seven = names(&o, "kprobe:seven").unwrap();
        assert_eq!(seven.len(), 6);
        assert_eq!(seven[5].0, "f");
        assert_eq!(names(&o, "kretprobe:twice"), named(&[("retval", Ptr)]));
    }

    #[test]
    fn what_btf_cannot_say_keeps_the_raw_fields() {
        let o = own();
        for probe in [
            // A struct by value shifts the registers; void has no retval.
            "kprobe:f",
            "kretprobe:f",
            // Two parameters of one name.
            "kprobe:twice",
            // No prototype; inside a function; not a kernel function.
            "kprobe:ksys_read",
            "kprobe:ksys_write+4",
            "tracepoint:syscalls:sys_enter_write",
            "uprobe:/bin/sh:ksys_write",
        ] {
            assert_eq!(names(&o, probe), None, "{probe}");
        }
    }

    #[test]
    fn registers_are_sign_extended_or_masked_from_the_c_size() {
        // An int of -100 in a register whose upper half is garbage.
        assert_eq!(
            Conv::Signed(4).apply(0xdead_beef_ffff_ff9c),
            Value::I64(-100)
        );
        assert_eq!(
            Conv::Signed(4).apply(0x7fff_ffff),
            Value::I64(i32::MAX.into())
        );
        assert_eq!(Conv::Signed(8).apply(u64::MAX), Value::I64(-1));
        assert_eq!(Conv::Signed(1).apply(0x180), Value::I64(-128));
        assert_eq!(Conv::Signed(2).apply(0x1_7fff), Value::I64(0x7fff));
        assert_eq!(
            Conv::Unsigned(4).apply(0xdead_beef_0000_0001),
            Value::U64(1)
        );
        assert_eq!(Conv::Unsigned(1).apply(0x101), Value::U64(1));
        assert_eq!(Conv::Unsigned(8).apply(u64::MAX), Value::U64(u64::MAX));
        assert_eq!(
            Conv::Ptr.apply(0xffff_8880_03a1_c000),
            Value::Ptr(0xffff_8880_03a1_c000)
        );
    }

    #[test]
    fn a_hit_is_renamed_only_where_the_probe_has_a_layout() {
        let o = own();
        let raw: Vec<(&str, Value<'_>)> = [
            0xffff_ffff_ffff_ff9c,
            0x7ffd_1000,
            0xffff_8880_0000_0000,
            4,
            5,
            6,
        ]
        .iter()
        .zip(["arg0", "arg1", "arg2", "arg3", "arg4", "arg5"])
        .map(|(v, n)| (n, Value::U64(*v)))
        .collect();
        let event = |probe, site| RecordedEvent {
            guest: "vm0",
            ts_ns: 0,
            vcpu: Some(0),
            layer: trace_formats::Layer::Guest,
            probe,
            func: "do_sys_openat2",
            entry_ns: None,
            site,
            fields: &raw,
            thread: None,
        };
        let layout = o.layout(&event("kfunc:do_sys_openat2", None)).unwrap();
        let mut out = [("", Value::U64(0)); MAX_ARGS];
        assert_eq!(
            layout.apply(&raw, &mut out).unwrap(),
            [
                ("dfd", Value::I64(-100)),
                ("filename", Value::Ptr(0x7ffd_1000)),
                ("how", Value::Ptr(0xffff_8880_0000_0000)),
            ]
        );
        // What a trace(name = ...) call traced is the script's own.
        assert!(o.layout(&event("kfunc:do_sys_openat2", Some(0))).is_none());
        assert!(o.layout(&event("kprobe:ksys_read", None)).is_none());
        // Not the raw shape (a backend that typed them already): left as is.
        let typed = [("dfd", Value::I64(-100))];
        let mut out = [("", Value::U64(0)); MAX_ARGS];
        assert!(layout.apply(&typed, &mut out).is_none());
    }
}
