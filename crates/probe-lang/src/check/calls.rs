//! Builtins: the identifiers (`pid`, `arg0`, `retval`, `curtask`) and
//! the functions, as statements (`print`, `clear`, `delete`, ...) and as
//! expressions (`str`, `kaddr`, `has_key`, ...), each with its argument
//! rules. `printf` and `trace` have files of their own.

use super::{AggKind, Checker};
use crate::ast::{Expr, ExprKind, INT_TYPES, Type};
use crate::diag::Span;
use crate::types::{TypeInfo, TypeRef};

/// Builtin identifiers.
const BUILTINS: &[&str] = &[
    "arg0", "arg1", "arg2", "arg3", "arg4", "arg5", "func", "probe", "vcpu", "cpu", "nsecs",
    "retval", "elapsed", "rand", "kstack", "comm", "pid", "tid", "cgroup", "curtask", "guest",
    "ustack",
];

/// Functions usable as expressions, with their (min, max) argument counts.
const EXPR_FUNCS: &[(&str, usize, usize)] = &[
    ("len", 1, 1),
    ("has_key", 2, 9),
    ("str", 1, 2),
    ("buf", 2, 2),
    ("ksym", 1, 1),
    ("usym", 1, 1),
    ("cgroup_path", 1, 2),
    ("kaddr", 1, 1),
    ("reg", 1, 1),
    ("strncmp", 3, 3),
    ("ntop", 1, 2),
    ("bswap", 1, 1),
    ("kptr", 1, 1),
    ("uptr", 1, 1),
    ("sizeof", 1, 1),
    ("strftime", 2, 2),
    ("kstack", 1, 1),
    // Other address spaces and user stacks (x86-64 paging; see README).
    ("vtop", 2, 2),
    ("str_as", 2, 3),
    ("buf_as", 3, 3),
    ("uint_as", 3, 3),
    ("ustack", 1, 1),
];

/// Default bytes a string holds, its NUL included (bpftrace's default
/// BPFTRACE_STRLEN is 64).
pub const STR_MAX: u64 = 64;

/// The largest BPFTRACE_STRLEN bpftrace 0.17 accepts (its BPF stack
/// bounds strings to 200 bytes).
pub const STR_LEN_LIMIT: u64 = 200;

/// Frames `kstack` keeps (bpftrace's limit for BPF stack maps).
pub const KSTACK_MAX: u64 = 127;

/// Maximum bytes `buf()` reads.
pub const BUF_MAX: u64 = 64;

impl Checker<'_, '_> {
    fn arity(&mut self, f: &str, n: usize, min: usize, max: usize, span: Span) -> bool {
        if (min..=max).contains(&n) {
            return true;
        }
        let want = if min == max {
            format!("{min} argument{}", if min == 1 { "" } else { "s" })
        } else {
            format!("{min} to {max} arguments")
        };
        self.r.error(span, format!("{f}() takes {want}, got {n}"));
        false
    }

    pub(super) fn call_stmt(&mut self, name: &str, name_span: Span, args: &mut [Expr], span: Span) {
        match name {
            "printf" => self.printf(args, span),
            "exit" => {
                self.arity(name, args.len(), 0, 0, span);
            }
            "join" => {
                if !self.arity(name, args.len(), 1, 2, span) {
                    return;
                }
                for a in args.iter_mut() {
                    self.expr(a);
                }
                if !args[0].ty.is_int() && args[0].ty != Type::Unknown {
                    self.r.error(
                        args[0].span,
                        format!(
                            "join() takes an array of string pointers, found {}",
                            args[0].ty.name()
                        ),
                    );
                }
                if let Some(d) = args.get(1)
                    && !matches!(d.kind, ExprKind::Str(_))
                {
                    self.r
                        .error(d.span, "join: the delimiter must be a string literal");
                }
            }
            "snapshot" => {
                self.arity(name, args.len(), 0, 0, span);
                self.recording_call(name, span);
            }
            "time" => {
                if !self.arity(name, args.len(), 0, 1, span) {
                    return;
                }
                if let Some(a) = args.first_mut() {
                    self.expr(a);
                    if !matches!(a.kind, ExprKind::Str(_)) {
                        self.r
                            .error(a.span, "time: the argument must be a string literal");
                    }
                }
            }
            "print" => {
                if !self.arity(name, args.len(), 1, 3, span) {
                    return;
                }
                let (m, rest) = args.split_first_mut().expect("arity checked");
                if !matches!(m.kind, ExprKind::Map { .. }) && rest.is_empty() {
                    // `print(value)`
                    self.expr(m);
                    if m.ty == Type::Buf {
                        self.r
                            .error(m.span, "print() cannot print a buffer; use printf(\"%r\")");
                    }
                    if let Type::Kernel { ptr: 0, .. } = m.ty {
                        self.r.error(
                            m.span,
                            "print() cannot print a struct, union or array; print its members",
                        );
                    }
                } else {
                    self.map_arg(name, m, false);
                }
                for a in rest {
                    self.expr(a);
                    self.want_int(a, "print() top/div argument");
                }
            }
            "clear" | "zero" => {
                if self.arity(name, args.len(), 1, 1, span) {
                    self.map_arg(name, &mut args[0], false);
                }
            }
            "delete" => {
                if self.arity(name, args.len(), 1, 1, span) {
                    // `delete(self->x)` unsets a thread-local variable.
                    if let ExprKind::SelfVar(_) = args[0].kind {
                        self.expr(&mut args[0]);
                    } else {
                        self.map_arg(name, &mut args[0], true);
                    }
                }
            }
            _ if AggKind::from_name(name).is_some() => self.r.error(
                span,
                format!("{name}() must be assigned to a map, e.g. @x = {name}(...)"),
            ),
            _ if EXPR_FUNCS.iter().any(|f| f.0 == name) => {
                self.r.error(
                    span,
                    format!("the value of {name}() is unused; assign it or print it"),
                );
            }
            _ => self.r.error(name_span, unknown_function(name)),
        }
    }

    pub(super) fn call_expr(&mut self, name: &str, args: &mut [Expr], span: Span) -> Type {
        // `username`, rewritten as a lookup of `uid` (see `Checker::expr`).
        if name == "username" && self.users && args.len() == 1 {
            self.expr(&mut args[0]);
            self.want_int(&args[0], "uid");
            return Type::Str;
        }
        let Some(&(_, min, max)) = EXPR_FUNCS.iter().find(|f| f.0 == name) else {
            for a in args.iter_mut() {
                self.expr(a);
            }
            let m = if AggKind::from_name(name).is_some() {
                format!("{name}() can only be used as a map value, e.g. @x = {name}(...)")
            } else if matches!(
                name,
                "printf" | "print" | "clear" | "zero" | "delete" | "exit" | "time" | "join"
            ) {
                format!("{name}() is a statement and has no value")
            } else {
                unknown_function(name)
            };
            self.r.error(span, m);
            return Type::Unknown;
        };
        if !self.arity(name, args.len(), min, max, span) {
            for a in args.iter_mut() {
                self.expr(a);
            }
            return Type::Unknown;
        }
        match name {
            "len" => {
                self.map_arg(name, &mut args[0], false);
                return Type::UNSIGNED;
            }
            "sizeof" => {
                if let ExprKind::Ident(t) = &args[0].kind
                    && INT_TYPES.iter().any(|x| x.0 == t)
                {
                    args[0].ty = Type::UNSIGNED;
                    return Type::UNSIGNED;
                }
                self.expr(&mut args[0]);
                if !matches!(args[0].ty, Type::Unknown) && !args[0].ty.is_int() {
                    self.r.error(
                        args[0].span,
                        "sizeof() takes an integer type (e.g. uint32) or an integer expression",
                    );
                }
                return Type::UNSIGNED;
            }
            "has_key" => {
                let (m, keys) = args.split_first_mut().expect("arity checked");
                let ExprKind::Map { keys: mk, .. } = &m.kind else {
                    self.map_arg(name, m, false);
                    return Type::Unknown;
                };
                if !mk.is_empty() {
                    self.r.error(
                        m.span,
                        "has_key() takes the map without a key: has_key(@m, k)",
                    );
                    return Type::Unknown;
                }
                let i = self.map_arg(name, m, false);
                let key_tys = self.keys(keys);
                if let (Some(i), Some(k)) = (i, key_tys) {
                    let n = self.maps[i].name.clone();
                    let span = m.span.to(keys[keys.len() - 1].span);
                    self.check_keys(&n, &k, span);
                }
                return Type::SIGNED;
            }
            _ => {}
        }
        for a in args.iter_mut() {
            self.expr(a);
        }
        let lit = |e: &Expr| match &e.kind {
            ExprKind::Str(s) => Some(s.clone()),
            _ => None,
        };
        match name {
            "str" | "buf" => {
                if name == "buf" && self.kernel_array(args[0].ty).is_some() {
                    // An array in guest memory: read from where it is.
                } else {
                    self.want_int(&args[0], &format!("pointer argument of {name}()"));
                }
                if let Some(l) = args.get(1) {
                    self.want_int(l, &format!("length argument of {name}()"));
                }
                if name == "str" { Type::Str } else { Type::Buf }
            }
            "ksym" | "usym" => {
                self.want_int(&args[0], &format!("argument of {name}()"));
                Type::Str
            }
            // Address-space annotations; addresses are used as they are.
            "kptr" | "uptr" => {
                self.want_int(&args[0], &format!("argument of {name}()"));
                if args[0].ty.is_int() {
                    args[0].ty
                } else {
                    Type::Unknown
                }
            }
            "kstack" | "ustack" => match args[0].kind {
                ExprKind::Int(n) if (1..=KSTACK_MAX).contains(&n) => Type::Stack,
                _ => {
                    self.r.error(
                        args[0].span,
                        format!("{name}() takes a frame count literal from 1 to {KSTACK_MAX}"),
                    );
                    Type::Unknown
                }
            },
            "vtop" => {
                self.want_int(&args[0], "cr3 argument of vtop()");
                self.want_int(&args[1], "address argument of vtop()");
                Type::UNSIGNED
            }
            "str_as" | "buf_as" | "uint_as" => {
                self.want_int(&args[0], &format!("task argument of {name}()"));
                self.want_int(&args[1], &format!("address argument of {name}()"));
                if name == "uint_as" {
                    if !matches!(args[2].kind, ExprKind::Int(1 | 2 | 4 | 8)) {
                        self.r.error(
                            args[2].span,
                            "uint_as() takes a size literal of 1, 2, 4 or 8 bytes",
                        );
                    }
                    return Type::UNSIGNED;
                }
                if let Some(l) = args.get(2) {
                    self.want_int(l, &format!("length argument of {name}()"));
                }
                if name == "str_as" {
                    Type::Str
                } else {
                    Type::Buf
                }
            }
            "cgroup_path" => {
                self.want_int(&args[0], "cgroup id argument of cgroup_path()");
                if let Some(f) = args.get(1)
                    && lit(f).is_none()
                {
                    self.r.error(
                        f.span,
                        "cgroup_path() takes a string literal hierarchy filter, e.g. cgroup_path(cgroup, \"unified\")",
                    );
                }
                Type::Str
            }
            "strftime" => {
                if lit(&args[0]).is_none() {
                    self.r.error(
                        args[0].span,
                        "strftime() takes a string literal format, e.g. strftime(\"%H:%M:%S\", nsecs)",
                    );
                }
                self.want_int(&args[1], "timestamp argument of strftime()");
                Type::Str
            }
            "reg" if lit(&args[0]) == Some("orig_ax".into()) => {
                self.r.error(
                    args[0].span,
                    "reg(\"orig_ax\"): a probe's stop has no orig_ax (the saved pt_regs slot of a \
                     syscall or an exception); a syscall's number is args.id in \
                     tracepoint:raw_syscalls:sys_enter",
                );
                Type::Unknown
            }
            "kaddr" | "reg" => match lit(&args[0]) {
                Some(s) if !s.is_empty() => {
                    if name == "kaddr" {
                        self.kaddrs.push((s, args[0].span));
                    } else {
                        self.regs
                            .push((register_name(&s).to_string(), args[0].span));
                    }
                    Type::UNSIGNED
                }
                _ => {
                    self.r.error(
                        args[0].span,
                        format!(
                            "{name}() takes a string literal, e.g. {name}(\"{}\")",
                            if name == "reg" { "rax" } else { "jiffies" }
                        ),
                    );
                    Type::Unknown
                }
            },
            "strncmp" => {
                for a in &args[..2] {
                    if a.ty != Type::Str && a.ty != Type::Unknown {
                        self.r.error(
                            a.span,
                            format!("strncmp() compares strings, found {}", a.ty.name()),
                        );
                    }
                }
                self.want_int(&args[2], "length argument of strncmp()");
                Type::SIGNED
            }
            "bswap" => {
                self.want_int(&args[0], "argument of bswap()");
                let size = self.int_size(&args[0]);
                self.bswaps.insert((span.start, span.end), size);
                Type::UNSIGNED
            }
            "ntop" => {
                if let Some(a) = args.last_mut() {
                    self.array_as_buf(a, "ntop()", &[4, 16]);
                }
                let (af, addr) = match args {
                    [a] => (None, &*a),
                    [f, a] => (Some(f), &*a),
                    _ => return Type::Unknown,
                };
                if let Some(f) = af {
                    self.want_int(f, "address family of ntop()");
                }
                if !addr.ty.is_int() && addr.ty != Type::Buf && addr.ty != Type::Unknown {
                    self.r.error(
                        addr.span,
                        format!(
                            "ntop() takes an integer (IPv4) or a buffer (IPv4/IPv6), found {}",
                            addr.ty.name()
                        ),
                    );
                }
                Type::Str
            }
            _ => Type::Unknown,
        }
    }

    /// The size in bytes of an integer expression as bpftrace types it: a
    /// field or element read, a cast, a variable (its first value), a
    /// `bswap()` of one; any other integer is 8.
    pub(super) fn int_size(&self, e: &Expr) -> u8 {
        use crate::ast::Access;
        match &e.kind {
            ExprKind::Member { access, .. } | ExprKind::Index { access, .. } => match access {
                Access::Load { size, .. } | Access::Bits { size, .. } => *size,
                _ => 8,
            },
            ExprKind::Cast {
                size, ptr: false, ..
            } => *size,
            ExprKind::Var(n) => self.var_sizes.get(n).copied().unwrap_or(8),
            ExprKind::Call { name, args } if name == "bswap" && args.len() == 1 => {
                self.int_size(&args[0])
            }
            _ => 8,
        }
    }

    /// The size of a kernel array type (an array member read in place).
    fn kernel_array(&self, ty: Type) -> Option<u64> {
        match ty {
            Type::Kernel { id, ptr: 0 }
                if matches!(self.info(TypeRef(id)), TypeInfo::Array { .. }) =>
            {
                self.size_of(TypeRef(id))
            }
            _ => None,
        }
    }

    /// An array argument (`skc_v6_daddr.in6_u.u6_addr8`) becomes the
    /// buffer of its bytes, `buf(ARRAY, SIZE)`, as bpftrace takes an array
    /// of one of `sizes` bytes.
    fn array_as_buf(&mut self, a: &mut Expr, what: &str, sizes: &[u64]) {
        let Some(size) = self.kernel_array(a.ty) else {
            return;
        };
        if !sizes.contains(&size) {
            self.r.error(
                a.span,
                format!("{what} takes an array of {sizes:?} bytes, found one of {size}"),
            );
            return;
        }
        let span = a.span;
        let place = std::mem::replace(
            a,
            Expr {
                kind: ExprKind::Int(0),
                span,
                ty: Type::Unknown,
            },
        );
        let len = Expr {
            kind: ExprKind::Int(size),
            span,
            ty: Type::SIGNED,
        };
        *a = Expr {
            kind: ExprKind::Call {
                name: "buf".into(),
                args: vec![place, len],
            },
            span,
            ty: Type::Buf,
        };
    }

    /// The value of enumerator `name` of the guest's enums, unless `name`
    /// is a builtin (bpftrace lexes those apart).
    pub(super) fn enumerator(&self, name: &str) -> Option<i64> {
        if BUILTINS.contains(&name) || matches!(name, "self" | "args" | "username") {
            return None;
        }
        self.types?.enumerator(name)
    }

    /// Why `name` is not known: what the `#include`s missed, if anything.
    fn unknown_identifier(&self, name: &str) -> String {
        let h = &self.headers;
        let mut m = format!("unknown identifier '{name}'");
        if let Some(file) = h.others.get(name) {
            m.push_str(&format!(
                ": {file} defines it, but not as an integer constant"
            ));
            return m;
        }
        m.push_str(if self.types.is_some() {
            ": no #include'd header defines it as an integer and no enum of the guest kernel has it"
        } else {
            ": no #include'd header defines it as an integer (the guest kernel's enums need its BTF)"
        });
        for n in &h.notes {
            m.push_str(&format!("; {n}"));
        }
        m.push_str(&format!("; #define {name} VALUE"));
        m
    }

    pub(super) fn builtin(&mut self, name: &str, span: Span) -> Type {
        if name == "self" {
            self.r.error(
                span,
                "self is used with a variable name: self->NAME (a thread-local variable)",
            );
            return Type::Unknown;
        }
        if name == "args" {
            self.r.error(
                span,
                "args is used with a field name: args.NAME or args->NAME",
            );
            return Type::Unknown;
        }
        if name == "username" {
            self.r.error(
                span,
                "username needs the guest's /etc/passwd: give --guest-root DIR (a host copy of the guest's files), or use uid",
            );
            return Type::Unknown;
        }
        if !BUILTINS.contains(&name)
            && name.len() > 1
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            // bpftrace takes such names from the C headers it #includes
            // and from the guest's enums (BTF).
            self.r.error(span, self.unknown_identifier(name));
            return Type::Unknown;
        }
        if !BUILTINS.contains(&name) {
            self.r.error(span, format!("unknown builtin '{name}'"));
            return Type::Unknown;
        }
        match name {
            "func" | "probe" | "comm" | "guest" => Type::Str,
            "kstack" | "ustack" => Type::Stack,
            "curtask" => match self.types.and_then(|t| t.lookup("struct task_struct")) {
                Some(id) => Type::Kernel { id: id.0, ptr: 1 },
                None => Type::UNSIGNED,
            },
            "retval" if !self.all_kretprobe => {
                self.r.error(
                    span,
                    "the retval builtin can only be used in kretprobe, kretfunc and uretprobe blocks",
                );
                Type::Unknown
            }
            n if n.starts_with("arg") && !self.all_kprobe => {
                self.r.error(
                    span,
                    format!("the {n} builtin can only be used in kprobe and uprobe blocks"),
                );
                Type::Unknown
            }
            // bpftrace 0.17 types a usdt probe's arguments int64, whatever
            // their size and sign in the note (`8@%rdi` holding ~0 is -1).
            n if n.starts_with("arg")
                && !self.specs.is_empty()
                && self.specs.iter().all(|s| {
                    matches!(
                        s,
                        crate::ProbeSpec::Uprobe {
                            target: crate::UprobeTarget::Usdt { .. },
                            ..
                        }
                    )
                }) =>
            {
                Type::SIGNED
            }
            _ => Type::UNSIGNED,
        }
    }
}

/// bpftrace's builtins that act on the host or change the guest are not
/// provided (vmprobe only observes): said by name, with why.
fn unknown_function(name: &str) -> String {
    match name {
        "system" => "system() would run a command on the host, which a vmprobe script never does".into(),
        "cat" => "cat() would read a host file, which a vmprobe script never does".into(),
        "signal" => "signal() would send a signal inside the guest: vmprobe only observes, it changes nothing there".into(),
        "override" => "override() would change a guest function's return value: vmprobe only observes, it changes nothing there".into(),
        _ => format!("unknown function '{name}'"),
    }
}

/// `reg(NAME)`: bpftrace's names are the x86-64 `pt_regs` fields (`ip`,
/// `sp`, `ax`, `flags`, ...); the backends read registers by the GDB
/// stub's names (`rip`, `rsp`, `rax`, `eflags`, ...), which are accepted as
/// they are.
pub fn register_name(name: &str) -> &str {
    match name {
        "ip" => "rip",
        "sp" => "rsp",
        "bp" => "rbp",
        "ax" => "rax",
        "bx" => "rbx",
        "cx" => "rcx",
        "dx" => "rdx",
        "si" => "rsi",
        "di" => "rdi",
        "flags" => "eflags",
        other => other,
    }
}
