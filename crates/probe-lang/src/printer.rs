//! Output formatting, kept apart from execution: the interpreter emits
//! events (a printf with its values, a map snapshot) and the [`Printer`]
//! turns them into bpftrace 0.17's exact text output.
//!
//! Map format (captured from bpftrace 0.17):
//! * each entry is `@name: value` or `@name[k1, k2]: value`, one per line,
//!   sorted by value ascending (signed if the aggregated values are);
//! * a printed map is terminated by one `\n` after its last entry, so an
//!   empty map prints a lone blank line;
//! * `avg()` maps print one extra `\n` after that;
//! * at exit bpftrace prints `\n\n` (after END) and then every map in name
//!   order.

use crate::ast::Type;
use crate::check::{AggKind, MapDecl};
use crate::format::Format;
use crate::value::{Key, KeyPart, Value};
use std::fmt::Write as _;
use std::io::Write;

pub struct Printer {
    out: Box<dyn Write + Send>,
    buf: String,
}

/// Renders an integer the way a value of `signed`-ness is printed.
fn int(buf: &mut String, v: u64, signed: bool) {
    let _ = if signed {
        write!(buf, "{}", v as i64)
    } else {
        write!(buf, "{v}")
    };
}

impl Printer {
    pub fn new(out: Box<dyn Write + Send>) -> Printer {
        Printer {
            out,
            buf: String::new(),
        }
    }

    fn emit(&mut self) {
        // Output errors (closed pipe) must not abort tracing; drop them.
        let _ = self.out.write_all(self.buf.as_bytes());
        let _ = self.out.flush();
        self.buf.clear();
    }

    pub fn printf(&mut self, fmt: &Format, args: &[Value]) {
        fmt.render(args, &mut self.buf);
        self.emit();
    }

    /// The separator bpftrace prints after END, before the exit-time maps.
    pub fn exit_separator(&mut self) {
        self.buf.push_str("\n\n");
        self.emit();
    }

    /// Prints one map; `entries` hold the reduced value (count, sum, min,
    /// max or the average) and are sorted here.
    pub fn map(&mut self, decl: &MapDecl, entries: &mut [(Key, u64)]) {
        let signed = decl.signed && decl.kind != AggKind::Count;
        // bpftrace sorts by value; ties are in hash order there, by key here.
        entries.sort_by(|(ka, a), (kb, b)| {
            let ord = if signed {
                (*a as i64).cmp(&(*b as i64))
            } else {
                a.cmp(b)
            };
            ord.then_with(|| ka.cmp(kb))
        });
        for (key, v) in entries.iter() {
            self.buf.push('@');
            self.buf.push_str(&decl.name);
            self.key(key, &decl.keys);
            self.buf.push_str(": ");
            int(&mut self.buf, *v, signed);
            self.buf.push('\n');
        }
        if entries.is_empty() {
            self.buf.push('\n');
        }
        if decl.kind == AggKind::Avg {
            self.buf.push('\n');
        }
        self.emit();
    }

    fn key(&mut self, key: &Key, tys: &[Type]) {
        let part = |buf: &mut String, p: &KeyPart, ty: Option<&Type>| match p {
            KeyPart::Int(v) => int(buf, *v, ty == Some(&Type::SIGNED)),
            KeyPart::Str(s) => buf.push_str(s),
        };
        match key {
            Key::None => {}
            Key::Int(v) => {
                self.buf.push('[');
                part(&mut self.buf, &KeyPart::Int(*v), tys.first());
                self.buf.push(']');
            }
            Key::Str(s) => {
                self.buf.push('[');
                self.buf.push_str(s);
                self.buf.push(']');
            }
            Key::Multi(parts) => {
                self.buf.push('[');
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        self.buf.push_str(", ");
                    }
                    part(&mut self.buf, p, tys.get(i));
                }
                self.buf.push(']');
            }
        }
    }
}
