//! probe-output: a program's output as bpftrace 0.17 prints it. The
//! runtime emits events (a printf with its values, a map's entries) and
//! the [`Printer`] turns them into bpftrace's exact text (or `-f json`)
//! output; it knows nothing of how or where the program ran.
//!
//! Map format (captured from bpftrace 0.17):
//! * each entry is `@name: value` or `@name[k1, k2]: value`, one per line,
//!   sorted by value ascending (signed if the aggregated values are);
//!   string-valued maps are sorted by key, `stats()` by average and
//!   histograms by their total count;
//! * `print(@m, top, div)` keeps the last `top` entries (0: all) and
//!   divides the printed values (histogram bars still use the raw counts;
//!   `lhist` maps ignore `div`, `stats` maps ignore both);
//! * an empty map prints a lone blank line (nothing in JSON);
//! * `avg()` and `stats()` maps print one extra `\n` after their entries;
//! * a histogram entry is `@name[key]: ` and its bucket lines from the
//!   first to the last non-empty bucket, then a blank line;
//! * at exit bpftrace prints `\n\n` (after END) and then every map in name
//!   order.

#![forbid(unsafe_code)]
use probe_lang::ast::Type;
use probe_lang::check::{AggKind, LhistParams, MapDecl};
use probe_lang::format::{escape_buf, stack_text};
use probe_lang::value::{Key, KeyPart, Value};
use probe_lang::{Executable, format::Format};
use probe_runtime::{Output, OutputEvent, Shown, store::avg};
use std::fmt::Write as _;
use std::io::Write;
use std::sync::Arc;

/// Output mode of a [`Printer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// bpftrace's default text output.
    #[default]
    Text,
    /// `bpftrace -f json`: one JSON object per line.
    Json,
}

pub struct Printer {
    out: Box<dyn Write + Send>,
    buf: String,
    format: OutputFormat,
    /// The program whose output this is: its maps, formats and tuple types.
    exec: Arc<Executable>,
}

/// Renders an integer the way a value of `signed`-ness is printed.
fn int(buf: &mut String, v: u64, signed: bool) {
    let _ = if signed {
        write!(buf, "{}", v as i64)
    } else {
        write!(buf, "{v}")
    };
}

/// `v / div` in the value's signedness; a zero divisor leaves `v` as is.
fn divide(v: u64, div: u64, signed: bool) -> u64 {
    match div {
        0 | 1 => v,
        d if signed => (v as i64).wrapping_div(d as i64) as u64,
        d => v / d,
    }
}

/// JSON string body (without quotes), escaped as bpftrace 0.17 does.
pub fn json_escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Label of a power of two as bpftrace's hist prints it: 1K, 2M, 1G...
fn hist_label(power: u32) -> String {
    let (suffix, p) = match power {
        40.. => ("T", power - 40),
        30.. => ("G", power - 30),
        20.. => ("M", power - 20),
        10.. => ("K", power - 10),
        _ => ("", power),
    };
    format!("{}{suffix}", 1u64 << p.min(63))
}

/// lhist bound label: K/M suffixes only when the step is a multiple of 1K.
fn lhist_label(n: u64, step: u64) -> String {
    const K: u64 = 1024;
    const M: u64 = 1024 * 1024;
    if !step.is_multiple_of(K) || n == 0 {
        n.to_string()
    } else if n.is_multiple_of(M) {
        format!("{}M", n / M)
    } else if n.is_multiple_of(K) {
        format!("{}K", n / K)
    } else {
        n.to_string()
    }
}

/// Bucket `i` of a histogram: text label, and the JSON (min, max) bounds.
fn bucket(i: usize, n: usize, lhist: Option<LhistParams>) -> (String, Option<i64>, Option<i64>) {
    match lhist {
        None => match i {
            0 => ("(..., 0)".into(), None, Some(-1)),
            1 => ("[0]".into(), Some(0), Some(0)),
            2 => ("[1]".into(), Some(1), Some(1)),
            _ => {
                let p = i as u32 - 2;
                (
                    format!("[{}, {})", hist_label(p), hist_label(p + 1)),
                    Some(1i64 << p),
                    Some((1i64 << (p + 1)) - 1),
                )
            }
        },
        Some(l) => {
            let (min, max, step) = (l.min, l.max, l.step);
            if i == 0 {
                (
                    format!("(..., {})", lhist_label(min, step)),
                    None,
                    Some(min as i64 - 1),
                )
            } else if i == n - 1 {
                (
                    format!("[{}, ...)", lhist_label(max, step)),
                    Some(max as i64),
                    None,
                )
            } else {
                let lo = (i as u64 - 1) * step + min;
                let hi = i as u64 * step + min;
                (
                    format!("[{}, {})", lhist_label(lo, step), lhist_label(hi, step)),
                    Some(lo as i64),
                    Some(hi as i64 - 1),
                )
            }
        }
    }
}

impl Printer {
    pub fn new(out: Box<dyn Write + Send>, exec: Arc<Executable>) -> Printer {
        Printer {
            out,
            buf: String::new(),
            format: OutputFormat::Text,
            exec,
        }
    }

    /// Text (default, like `bpftrace`) or JSON (like `bpftrace -f json`).
    pub fn with_format(mut self, f: OutputFormat) -> Printer {
        self.format = f;
        self
    }

    /// Renders one event.
    pub fn render(&mut self, event: OutputEvent) {
        match event {
            OutputEvent::Printf { fmt, args } => {
                let exec = Arc::clone(&self.exec);
                if let Some(f) = exec.ir.formats.get(fmt as usize) {
                    self.printf(f, &args);
                }
            }
            OutputEvent::Time(s) => self.time(&s),
            OutputEvent::Value { value, ty } => self.value(&value, ty),
            OutputEvent::Map {
                map,
                mut entries,
                top,
                div,
            } => {
                let exec = Arc::clone(&self.exec);
                if let Some(decl) = exec.ir.maps.get(map as usize) {
                    self.map(decl, &mut entries, top, div);
                }
            }
            OutputEvent::ExitSeparator => self.exit_separator(),
            // Resolved into maps before they reach a printer.
            OutputEvent::MapOp { .. } => {}
        }
    }

    /// A value as text (`print(v)`, map values): tuples as `(1, a)`.
    fn value_text(&self, v: &Value, ty: Type, out: &mut String) {
        match v {
            Value::Stack(f) => out.push_str(&stack_text(f, 8)),
            Value::Int(i) => int(out, *i, ty == Type::SIGNED),
            Value::Str(s) => out.push_str(s),
            Value::Buf(b) => escape_buf(b, out),
            Value::Tuple(vs) => {
                out.push('(');
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    self.value_text(v, self.elem_type(ty, i), out);
                }
                out.push(')');
            }
        }
    }

    /// A value as JSON: tuples as arrays without spaces, like bpftrace.
    fn value_json(&self, v: &Value, ty: Type, out: &mut String) {
        match v {
            Value::Stack(f) => {
                out.push('"');
                json_escape(&stack_text(f, 8), out);
                out.push('"');
            }
            Value::Int(i) => int(out, *i, ty == Type::SIGNED),
            Value::Str(s) => {
                out.push('"');
                json_escape(s, out);
                out.push('"');
            }
            Value::Buf(b) => {
                let mut s = String::new();
                escape_buf(b, &mut s);
                out.push('"');
                json_escape(&s, out);
                out.push('"');
            }
            Value::Tuple(vs) => {
                out.push('[');
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.value_json(v, self.elem_type(ty, i), out);
                }
                out.push(']');
            }
        }
    }

    fn elem_type(&self, ty: Type, i: usize) -> Type {
        match ty {
            Type::Tuple(t) => self
                .exec
                .ir
                .tuples
                .get(t as usize)
                .and_then(|ts| ts.get(i))
                .copied()
                .unwrap_or(Type::Unknown),
            _ => Type::Unknown,
        }
    }

    /// `print(value)`: the value and a newline (JSON: a "value" event).
    pub fn value(&mut self, v: &Value, ty: Type) {
        let mut s = String::new();
        match self.format {
            OutputFormat::Text => {
                self.value_text(v, ty, &mut s);
                s.push('\n');
            }
            OutputFormat::Json => {
                s.push_str("{\"type\": \"value\", \"data\": ");
                self.value_json(v, ty, &mut s);
                s.push_str("}\n");
            }
        }
        self.buf.push_str(&s);
        self.emit();
    }

    fn emit(&mut self) {
        // Output errors (closed pipe) must not abort tracing; drop them.
        let _ = self.out.write_all(self.buf.as_bytes());
        let _ = self.out.flush();
        self.buf.clear();
    }

    /// A `{"type": T, "data": "text"}` line, or the text itself.
    fn event(&mut self, ty: &str, text: &str) {
        match self.format {
            OutputFormat::Text => self.buf.push_str(text),
            OutputFormat::Json => {
                let _ = write!(self.buf, "{{\"type\": \"{ty}\", \"data\": \"");
                json_escape(text, &mut self.buf);
                self.buf.push_str("\"}\n");
            }
        }
        self.emit();
    }

    pub fn printf(&mut self, fmt: &Format, args: &[Value]) {
        let mut s = String::new();
        fmt.render(args, &mut s);
        self.event("printf", &s);
    }

    /// Output of `time(fmt)`, already formatted.
    pub fn time(&mut self, s: &str) {
        self.event("time", s);
    }

    /// The separator bpftrace prints after END, before the exit-time maps
    /// (in JSON mode too).
    pub fn exit_separator(&mut self) {
        self.buf.push_str("\n\n");
        self.emit();
    }

    /// Prints one map: sorts `entries`, keeps the last `top` (0: all) and
    /// divides values by `div`.
    pub fn map(&mut self, decl: &MapDecl, entries: &mut Vec<(Key, Shown)>, top: u64, div: u64) {
        let signed = decl.signed && decl.kind != AggKind::Count;
        let (top, div) = match decl.kind {
            AggKind::Stats => (0, 1),   // bpftrace ignores top/div (with a warning)
            AggKind::Lhist => (top, 1), // bpftrace 0.17 ignores div for lhist
            _ => (top, div),
        };
        let sort_val = |s: &Shown| -> i128 {
            match s {
                Shown::Int(v) if signed => *v as i64 as i128,
                Shown::Int(v) => *v as i128,
                Shown::Stats { count, total } => match *count {
                    0 => 0,
                    c if signed => (*total as i64).wrapping_div(c as i64) as i128,
                    c => (total / c) as i128,
                },
                Shown::Hist(b) => b.iter().map(|&x| x as i128).sum(),
                Shown::Val(_) => 0,
            }
        };
        // bpftrace sorts by value; ties are in hash order there, by key here.
        entries.sort_by(|(ka, a), (kb, b)| sort_val(a).cmp(&sort_val(b)).then_with(|| ka.cmp(kb)));
        if top > 0 && (top as usize) < entries.len() {
            entries.drain(..entries.len() - top as usize);
        }
        match self.format {
            OutputFormat::Text => self.map_text(decl, entries, signed, div),
            OutputFormat::Json => self.map_json(decl, entries, signed, div),
        }
        self.emit();
    }

    fn map_text(&mut self, decl: &MapDecl, entries: &[(Key, Shown)], signed: bool, div: u64) {
        for (key, v) in entries {
            self.buf.push('@');
            self.buf.push_str(&decl.name);
            self.key(key, &decl.keys);
            self.buf.push_str(": ");
            match v {
                Shown::Int(v) => int(&mut self.buf, divide(*v, div, signed), signed),
                Shown::Val(v) => {
                    let mut s = String::new();
                    self.value_text(v, decl.value, &mut s);
                    self.buf.push_str(&s);
                }
                Shown::Stats { count, total } => {
                    let a = avg(*total, *count, signed);
                    let _ = write!(self.buf, "count {count}, average ");
                    int(&mut self.buf, a, signed);
                    self.buf.push_str(", total ");
                    int(&mut self.buf, *total, signed);
                }
                Shown::Hist(b) => {
                    self.buf.push('\n');
                    self.hist_text(b, decl.lhist, div);
                }
            }
            self.buf.push('\n');
        }
        if entries.is_empty() {
            self.buf.push('\n');
        }
        if matches!(decl.kind, AggKind::Avg | AggKind::Stats) {
            self.buf.push('\n');
        }
    }

    fn hist_text(&mut self, b: &[u64], lhist: Option<LhistParams>, div: u64) {
        let Some(first) = b.iter().position(|&v| v > 0) else {
            return;
        };
        let last = b.iter().rposition(|&v| v > 0).unwrap_or(first);
        let max = b.iter().copied().max().unwrap_or(1).max(1);
        for (i, &v) in b.iter().enumerate().take(last + 1).skip(first) {
            let (label, _, _) = bucket(i, b.len(), lhist);
            // bpftrace computes the bar in single-precision float.
            let width = (v as f32 / max as f32 * 52.0) as usize;
            let _ = writeln!(
                self.buf,
                "{label:<16}{:>8} |{:<52}|",
                divide(v, div, false),
                "@".repeat(width.min(52))
            );
        }
    }

    fn map_json(&mut self, decl: &MapDecl, entries: &[(Key, Shown)], signed: bool, div: u64) {
        if entries.is_empty() {
            return;
        }
        let ty = match decl.kind {
            AggKind::Hist | AggKind::Lhist => "hist",
            AggKind::Avg | AggKind::Stats => "stats",
            _ => "map",
        };
        let _ = write!(self.buf, "{{\"type\": \"{ty}\", \"data\": {{\"@");
        json_escape(&decl.name, &mut self.buf);
        self.buf.push_str("\": ");
        let scalar = decl.keys.is_empty();
        if !scalar {
            self.buf.push('{');
        }
        for (i, (key, v)) in entries.iter().enumerate() {
            if !scalar {
                if i > 0 {
                    self.buf.push_str(", ");
                }
                self.buf.push('"');
                let mut k = String::new();
                json_key(key, &decl.keys, &mut k);
                json_escape(&k, &mut self.buf);
                self.buf.push_str("\": ");
            }
            match v {
                Shown::Int(v) => int(&mut self.buf, divide(*v, div, signed), signed),
                Shown::Val(v) => {
                    let mut s = String::new();
                    self.value_json(v, decl.value, &mut s);
                    self.buf.push_str(&s);
                }
                Shown::Stats { count, total } => {
                    let a = avg(*total, *count, signed);
                    let _ = write!(self.buf, "{{\"count\": {count}, \"average\": ");
                    int(&mut self.buf, a, signed);
                    self.buf.push_str(", \"total\": ");
                    int(&mut self.buf, *total, signed);
                    self.buf.push('}');
                }
                Shown::Hist(b) => self.hist_json(b, decl.lhist, div),
            }
        }
        if !scalar {
            self.buf.push('}');
        }
        self.buf.push_str("}}\n");
    }

    fn hist_json(&mut self, b: &[u64], lhist: Option<LhistParams>, div: u64) {
        self.buf.push('[');
        if let Some(first) = b.iter().position(|&v| v > 0) {
            let last = b.iter().rposition(|&v| v > 0).unwrap_or(first);
            for i in first..=last {
                if i > first {
                    self.buf.push_str(", ");
                }
                let (_, min, max) = bucket(i, b.len(), lhist);
                self.buf.push('{');
                if let Some(m) = min {
                    let _ = write!(self.buf, "\"min\": {m}, ");
                }
                if let Some(m) = max {
                    let _ = write!(self.buf, "\"max\": {m}, ");
                }
                let _ = write!(self.buf, "\"count\": {}}}", divide(b[i], div, false));
            }
        }
        self.buf.push(']');
    }

    fn key(&mut self, key: &Key, tys: &[Type]) {
        if *key == Key::None {
            return;
        }
        self.buf.push('[');
        key_text(key, tys, ", ", &mut self.buf);
        self.buf.push(']');
    }
}

/// A runtime for `exec` whose output is printed to `out` as bpftrace
/// prints it.
pub fn printing_runtime(
    exec: Arc<Executable>,
    out: Box<dyn Write + Send>,
    format: OutputFormat,
) -> probe_runtime::Runtime {
    let printer = Printer::new(out, exec.clone()).with_format(format);
    probe_runtime::Runtime::new(exec, Box::new(printer))
}

impl Output for Printer {
    fn emit(&mut self, _ts_ns: u64, event: OutputEvent) {
        self.render(event);
    }
}

fn key_text(key: &Key, tys: &[Type], sep: &str, buf: &mut String) {
    let part = |buf: &mut String, p: &KeyPart, ty: Option<&Type>| match p {
        KeyPart::Int(v) => int(buf, *v, ty == Some(&Type::SIGNED)),
        KeyPart::Str(s) => buf.push_str(s),
        KeyPart::Stack(f) => buf.push_str(&stack_text(f, 4)),
    };
    match key {
        Key::None => {}
        Key::Int(v) => part(buf, &KeyPart::Int(*v), tys.first()),
        Key::Str(s) => buf.push_str(s),
        Key::Multi(parts) => {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    buf.push_str(sep);
                }
                part(buf, p, tys.get(i));
            }
        }
    }
}

/// JSON object key of a map entry: components joined by `,`.
fn json_key(key: &Key, tys: &[Type], buf: &mut String) {
    key_text(key, tys, ",", buf);
}

/// bpftrace's banner, printed by bpftrace 0.17 on **stdout** before running:
/// `Attaching 1 probe...` / `Attaching 2 probes...` (N = attach points after
/// wildcard expansion, BEGIN/END included).
pub fn attaching_message(n: usize) -> String {
    if n == 1 {
        "Attaching 1 probe...\n".into()
    } else {
        format!("Attaching {n} probes...\n")
    }
}

/// The banner in the given output format; in JSON, bpftrace 0.17 prints
/// `{"type": "attached_probes", "data": {"probes": N}}`.
pub fn attaching_message_for(n: usize, format: OutputFormat) -> String {
    match format {
        OutputFormat::Text => attaching_message(n),
        OutputFormat::Json => {
            format!("{{\"type\": \"attached_probes\", \"data\": {{\"probes\": {n}}}}}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use probe_lang::check::HIST_BUCKETS;

    #[test]
    fn labels() {
        assert_eq!(hist_label(0), "1");
        assert_eq!(hist_label(10), "1K");
        assert_eq!(hist_label(21), "2M");
        assert_eq!(hist_label(31), "2G");
        assert_eq!(hist_label(41), "2T");
        assert_eq!(lhist_label(2048, 1024), "2K");
        assert_eq!(lhist_label(2048, 10), "2048");
        assert_eq!(lhist_label(3 * 1024 * 1024, 1024), "3M");
        assert_eq!(bucket(HIST_BUCKETS - 1, HIST_BUCKETS, None).0, "[2G, 4G)");
    }

    #[test]
    fn json_escapes() {
        let mut s = String::new();
        json_escape("a\"b\\c\n\t\u{1}é", &mut s);
        assert_eq!(s, "a\\\"b\\\\c\\n\\t\\u0001é");
    }
}
