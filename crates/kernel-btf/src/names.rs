//! C spellings of types, as bpftrace prints them.

use crate::*;

impl Btf {
    /// A C-ish spelling of the type, as bpftrace prints types: `struct file *`,
    /// `const char *`, `unsigned int`, `char[16]`, `int (*)(struct file *, int)`.
    pub fn type_name(&self, id: TypeId) -> String {
        // Depth alone does not bound the work: a prototype whose parameters
        // point back at it spells out params^depth types.
        self.name_depth(id, 0, &std::cell::Cell::new(MAX_NAME_PARTS))
    }

    pub(crate) fn name_depth(
        &self,
        id: TypeId,
        depth: usize,
        parts: &std::cell::Cell<usize>,
    ) -> String {
        if depth > MAX_DEPTH {
            return "<too deep>".into();
        }
        if parts.get() == 0 {
            return "<too big>".into();
        }
        parts.set(parts.get() - 1);
        let Ok(h) = self.hdr(id) else {
            return format!("<bad type {id}>");
        };
        let own = self.str_at(h.name).unwrap_or("");
        let anon = |s: &str| if s.is_empty() { "(anon)" } else { s }.to_string();
        let sub = |t| self.name_depth(t, depth + 1, parts);
        use Kind::*;
        match h.kind {
            Void => "void".into(),
            Int | Float | Typedef | Func | Var | Datasec => anon(own),
            Struct => format!("struct {}", anon(own)),
            Union => format!("union {}", anon(own)),
            Enum | Enum64 => format!("enum {}", anon(own)),
            Fwd => format!(
                "{} {}",
                if h.kind_flag { "union" } else { "struct" },
                anon(own)
            ),
            Ptr => {
                if self.kind(h.st).ok() == Some(FuncProto) {
                    return self.proto_name(h.st, "(*)", depth, parts);
                }
                let inner = sub(h.st);
                if inner.ends_with('*') {
                    inner + "*"
                } else {
                    inner + " *"
                }
            }
            Const | Volatile | Restrict => {
                let q = match h.kind {
                    Const => "const",
                    Volatile => "volatile",
                    _ => "restrict",
                };
                if self.kind(h.st).ok() == Some(Ptr) {
                    format!("{} {q}", sub(h.st))
                } else {
                    format!("{q} {}", sub(h.st))
                }
            }
            TypeTag | DeclTag => sub(h.st),
            Array => {
                let elem = self.extra(&h, 0);
                let inner = sub(elem);
                let dim = format!("[{}]", self.extra(&h, 2));
                // int[2][3]: this dimension goes before the element's own.
                match inner.find('[') {
                    Some(at) if self.kind(elem).ok() == Some(Array) => {
                        format!("{}{dim}{}", &inner[..at], &inner[at..])
                    }
                    _ => inner + &dim,
                }
            }
            FuncProto => self.proto_name(id, "", depth, parts),
        }
    }

    pub(crate) fn proto_name(
        &self,
        proto: TypeId,
        mid: &str,
        depth: usize,
        parts: &std::cell::Cell<usize>,
    ) -> String {
        let Ok(f) = self.function_by_id(proto) else {
            return format!("<bad type {proto}>");
        };
        let mut params: Vec<String> = f
            .params
            .iter()
            .map(|p| self.name_depth(p.ty, depth + 1, parts))
            .collect();
        if f.variadic {
            params.push("...".into());
        }
        let ret = self.name_depth(f.ret, depth + 1, parts);
        format!("{ret} {mid}({})", params.join(", "))
    }
}
