//! QEMU's `trace-events` declarations: each event's C arguments and printf
//! format. The QEMU binary knows only the names (see
//! [`crate::Qmp::trace_event_list`]); the declarations come with its data
//! files (`trace-events-all`, [`INSTALLED_PATHS`]). With them a logged
//! message is read back through its format and each value named after its
//! C argument ([`EventDecl::match_message`]). vmprobe works without them,
//! with names guessed from the line ([`crate::trace::parse_fields`]).
//!
//! Syntax (QEMU's docs/devel/tracing.rst): one event per line,
//! `[disable] [vcpu] name(type arg, ...) "format"`, where the format is C
//! string literals and `PRIx64`-style macros.

/// One event declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventDecl {
    pub name: String,
    /// `(C type, name)` of each argument, in order.
    pub args: Vec<(String, String)>,
    /// The printf format with the `PRI*` macros expanded; empty if none.
    pub format: String,
    /// `disable`, `vcpu`, ... as written.
    pub properties: Vec<String>,
    /// 1-based line in the file.
    pub line: usize,
}

/// A printf conversion of a format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conv {
    /// `%d`, `%i`
    Signed,
    /// `%u`
    Unsigned,
    /// `%x`/`%X`; `prefixed` when `0x` precedes it or `#` is given.
    Hex {
        prefixed: bool,
    },
    Octal,
    /// `%p`
    Pointer,
    /// `%s`
    Str,
    /// `%c`
    Char,
    /// `%f`, `%g`, `%e`, ...
    Float,
}

/// Parses a `trace-events` file; lines it cannot read are skipped.
pub fn parse_trace_events(text: &str) -> Vec<EventDecl> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some(open) = line.find('(') else { continue };
        let Some(close) = line[open..].find(')').map(|c| open + c) else {
            continue;
        };
        let mut words: Vec<&str> = line[..open].split_whitespace().collect();
        let Some(name) = words.pop() else { continue };
        let args = line[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "void")
            .map(|a| {
                let split = a.rfind([' ', '*']).map_or(0, |p| p + 1);
                (a[..split].trim().to_string(), a[split..].to_string())
            })
            .collect();
        out.push(EventDecl {
            name: name.to_string(),
            args,
            format: expand_format(&line[close + 1..]),
            properties: words.iter().map(|w| w.to_string()).collect(),
            line: i + 1,
        });
    }
    out
}

/// Concatenates the string literals of `"a %" PRIx64 " b"`, expanding each
/// `PRI<conv><size>` macro to its conversion letter (`ll` and the like
/// do not matter to how the value prints).
fn expand_format(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some('n') => out.push('\n'),
                            Some('t') => out.push('\t'),
                            Some(other) => out.push(other),
                            None => {}
                        },
                        c => out.push(c),
                    }
                }
            }
            'P' => {
                let mut ident = String::from('P');
                while let Some(&c) = chars.peek().filter(|c| c.is_ascii_alphanumeric()) {
                    ident.push(c);
                    chars.next();
                }
                if let Some(conv) = ident.strip_prefix("PRI").and_then(|r| r.chars().next()) {
                    out.push(conv);
                }
            }
            _ => {}
        }
    }
    out
}

/// The conversions of a printf format, in order (`%%` is none).
pub fn conversions(format: &str) -> Vec<Conv> {
    let b = format.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        let prefixed_by_0x = i >= 2 && (&b[i - 2..i] == b"0x" || &b[i - 2..i] == b"0X");
        i += 1;
        let mut alt = false;
        while i < b.len() && b"-+ #0'".contains(&b[i]) {
            alt |= b[i] == b'#';
            i += 1;
        }
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'*' || b[i] == b'.') {
            i += 1;
        }
        while i < b.len() && b"hlLqjzt".contains(&b[i]) {
            i += 1;
        }
        let Some(&c) = b.get(i) else { break };
        i += 1;
        out.push(match c {
            b'd' | b'i' => Conv::Signed,
            b'u' => Conv::Unsigned,
            b'x' | b'X' => Conv::Hex {
                prefixed: prefixed_by_0x || alt,
            },
            b'o' => Conv::Octal,
            b'p' => Conv::Pointer,
            b's' => Conv::Str,
            b'c' => Conv::Char,
            b'f' | b'g' | b'e' | b'F' | b'G' | b'E' | b'a' | b'A' => Conv::Float,
            _ => continue, // `%%` and unknown letters print no argument
        });
    }
    out
}

/// Where Debian and `make install` put the concatenated `trace-events` of
/// every QEMU target (package qemu-system-common). QEMU reads no such file at
/// run time; vmprobe uses it to name `vmm:` event fields as QEMU's source
/// does.
pub const INSTALLED_PATHS: &[&str] = &[
    "/usr/share/qemu/trace-events-all",
    "/usr/local/share/qemu/trace-events-all",
];

/// Event declarations by name: a parsed `trace-events-all`.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    by_name: std::collections::HashMap<String, EventDecl>,
}

impl Catalogue {
    /// Parses `trace-events` text; a later declaration of a name wins.
    pub fn parse(text: &str) -> Self {
        Catalogue {
            by_name: parse_trace_events(text)
                .into_iter()
                .map(|d| (d.name.clone(), d))
                .collect(),
        }
    }

    /// The catalogue installed with QEMU, if any: `$VMPROBE_QEMU_TRACE_EVENTS`
    /// first, then [`INSTALLED_PATHS`]. Read and parsed once per process
    /// (checking a program and following each guest's log share it).
    pub fn installed() -> Option<std::sync::Arc<Self>> {
        static INSTALLED: std::sync::OnceLock<Option<std::sync::Arc<Catalogue>>> =
            std::sync::OnceLock::new();
        INSTALLED
            .get_or_init(|| {
                let env =
                    std::env::var_os("VMPROBE_QEMU_TRACE_EVENTS").map(std::path::PathBuf::from);
                env.into_iter()
                    .chain(INSTALLED_PATHS.iter().map(std::path::PathBuf::from))
                    .find_map(|p| std::fs::read_to_string(p).ok())
                    .map(|t| std::sync::Arc::new(Self::parse(&t)))
            })
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<&EventDecl> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// One piece of a format: text to match, or a conversion to read.
#[derive(Debug)]
enum Piece<'a> {
    Text(&'a str),
    Conv {
        conv: Conv,
        /// `-`: padding comes after the value.
        left: bool,
        /// `#` with `%x`: the value carries its `0x`.
        alt: bool,
        /// Extra arguments taken by `*` width or precision.
        stars: usize,
    },
}

fn pieces(format: &str) -> Vec<Piece<'_>> {
    let b = format.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut text_start) = (0, 0);
    fn push_text<'a>(out: &mut Vec<Piece<'a>>, text: &'a str) {
        if !text.is_empty() {
            out.push(Piece::Text(text));
        }
    }
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        let conv_start = i;
        i += 1;
        let (mut left, mut alt, mut stars) = (false, false, 0);
        while i < b.len() && b"-+ #0'".contains(&b[i]) {
            left |= b[i] == b'-';
            alt |= b[i] == b'#';
            i += 1;
        }
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'*' || b[i] == b'.') {
            stars += usize::from(b[i] == b'*');
            i += 1;
        }
        while i < b.len() && b"hlLqjzt".contains(&b[i]) {
            i += 1;
        }
        let Some(&c) = b.get(i) else { break };
        i += 1;
        if c == b'%' {
            // `%%` prints one `%`: keep the first as text, drop the second.
            push_text(&mut out, &format[text_start..conv_start + 1]);
            text_start = i;
            continue;
        }
        let conv = match conversions(&format[conv_start..i]).first() {
            Some(&conv) => conv,
            None => continue,
        };
        push_text(&mut out, &format[text_start..conv_start]);
        out.push(Piece::Conv {
            conv,
            left,
            alt,
            stars,
        });
        text_start = i;
    }
    push_text(&mut out, &format[text_start..]);
    out
}

/// Backtracking steps allowed per message: `%s` followed by text that also
/// occurs inside the string makes several splits possible.
const MATCH_BUDGET: usize = 1024;

impl EventDecl {
    /// The fields [`EventDecl::match_message`] gives, with the conversion
    /// that prints each (so its kind: integer, signed or not, or text).
    /// `None` when the declaration and its format disagree.
    pub fn fields(&self) -> Option<Vec<(String, Conv)>> {
        let mut names = self.args.iter().map(|(_, n)| n);
        let mut out = Vec::new();
        let mut taken = 0;
        for p in pieces(&self.format) {
            if let Piece::Conv { conv, stars, .. } = p {
                out.push((names.nth(stars)?.clone(), conv));
                taken += 1 + stars;
            }
        }
        (taken == self.args.len()).then_some(out)
    }

    /// Reads a printed message back through this event's format and names
    /// each value after the C argument it came from. `None` when the message
    /// does not fit the format (another QEMU version) or is ambiguous (two
    /// conversions with nothing between them where one is a string).
    pub fn match_message(&self, msg: &str) -> Option<Vec<(String, crate::FieldValue)>> {
        let pieces = pieces(&self.format);
        let taken: usize = pieces
            .iter()
            .map(|p| match p {
                Piece::Conv { stars, .. } => 1 + stars,
                Piece::Text(_) => 0,
            })
            .sum();
        if taken != self.args.len() {
            return None;
        }
        let mut reading = Reading {
            values: Vec::new(),
            first: None,
            found: 0,
            budget: MATCH_BUDGET,
        };
        match_from(&pieces, msg, &mut reading);
        // Two readings: ambiguous. Budget spent: a second might exist.
        if reading.found != 1 || reading.budget == 0 {
            return None;
        }
        let values = reading.first?;
        let mut names = self.args.iter().map(|(_, n)| n);
        let mut out = Vec::with_capacity(values.len());
        for (piece, value) in pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Conv { stars, .. } => Some(*stars),
                Piece::Text(_) => None,
            })
            .zip(values)
        {
            // A `*` argument (a width) is not printed: no value to give it.
            let name = names.nth(piece)?;
            out.push((name.clone(), value));
        }
        Some(out)
    }
}

/// How a message can be read through a format, found by backtracking.
struct Reading {
    values: Vec<crate::FieldValue>,
    /// The first complete reading.
    first: Option<Vec<crate::FieldValue>>,
    /// Complete readings found (the search stops at two: ambiguous).
    found: usize,
    budget: usize,
}

impl Reading {
    fn done(&self) -> bool {
        self.found >= 2 || self.budget == 0
    }

    fn try_value(&mut self, value: crate::FieldValue, rest: &[Piece<'_>], msg: &str) {
        self.values.push(value);
        match_from(rest, msg, self);
        self.values.pop();
    }
}

fn match_from(pieces: &[Piece<'_>], msg: &str, r: &mut Reading) {
    use crate::FieldValue;
    if r.done() {
        return;
    }
    r.budget -= 1;
    let Some((first, rest)) = pieces.split_first() else {
        if msg.is_empty() {
            r.found += 1;
            r.first.get_or_insert_with(|| r.values.clone());
        }
        return;
    };
    let (conv, left, alt) = match first {
        Piece::Text(t) => {
            if let Some(m) = msg.strip_prefix(t) {
                match_from(rest, m, r);
            }
            return;
        }
        Piece::Conv {
            conv, left, alt, ..
        } => (*conv, *left, *alt),
    };
    if conv == Conv::Str {
        // The string ends where the rest of the format can match.
        match rest.first() {
            None => r.try_value(FieldValue::Str(msg.to_string()), rest, ""),
            Some(Piece::Text(t)) => {
                for (end, _) in msg.match_indices(t) {
                    if r.done() {
                        return;
                    }
                    r.try_value(FieldValue::Str(msg[..end].to_string()), rest, &msg[end..]);
                }
            }
            // `%s%d`: no text to say where the string ends.
            Some(Piece::Conv { .. }) => r.found = 2,
        }
        return;
    }
    // Right-aligned values are padded with spaces in front.
    let body = msg.trim_start_matches(' ');
    let (value, len) = match conv {
        Conv::Char => match body.chars().next() {
            Some(c) => (FieldValue::Str(c.to_string()), c.len_utf8()),
            None => return,
        },
        Conv::Pointer if body.starts_with("(nil)") => (FieldValue::Unsigned(0), 5),
        Conv::Float => {
            let n = body
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '+'))
                .unwrap_or(body.len());
            (FieldValue::Text(body[..n].to_string()), n)
        }
        _ => {
            let (neg, digits_at) = match body.strip_prefix('-') {
                Some(_) if conv == Conv::Signed => (true, 1),
                _ => (false, 0),
            };
            let prefixed = conv == Conv::Pointer || (alt && matches!(conv, Conv::Hex { .. }));
            let mut at = digits_at;
            if prefixed {
                match body.get(at..at + 2) {
                    Some("0x" | "0X") => at += 2,
                    _ => return,
                }
            }
            let radix = match conv {
                Conv::Hex { .. } | Conv::Pointer => 16,
                Conv::Octal => 8,
                _ => 10,
            };
            let n = body[at..]
                .find(|c: char| !c.is_digit(radix))
                .unwrap_or(body.len() - at);
            let Ok(v) = u64::from_str_radix(&body[at..at + n], radix) else {
                return;
            };
            let value = match (neg, v) {
                (true, v) if v > 0 => match i64::try_from(v) {
                    Ok(v) => FieldValue::Signed(-v),
                    Err(_) => return,
                },
                _ => FieldValue::Unsigned(v),
            };
            (value, at + n)
        }
    };
    let mut after = &body[len..];
    if left {
        after = after.trim_start_matches(' ');
    }
    r.try_value(value, rest, after);
}

/// An argument value for [`render`].
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Int(i64),
    Str(String),
    Char(char),
    Float(f64),
}

/// Expands a printf format with `args` the way glibc would for the common
/// conversions (width, `0` and `#` flags; precision only for floats). For
/// tests: it makes the lines QEMU would print.
pub fn render(format: &str, args: &[Arg]) -> String {
    let b = format.as_bytes();
    let mut out = String::new();
    let mut args = args.iter();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            let next = format[i..].find('%').map_or(b.len(), |o| i + o);
            out.push_str(&format[i..next]);
            i = next;
            continue;
        }
        i += 1;
        let (mut zero, mut alt, mut left) = (false, false, false);
        while i < b.len() && b"-+ #0'".contains(&b[i]) {
            zero |= b[i] == b'0';
            alt |= b[i] == b'#';
            left |= b[i] == b'-';
            i += 1;
        }
        let mut width = 0usize;
        while i < b.len() && b[i].is_ascii_digit() {
            width = width * 10 + usize::from(b[i] - b'0');
            i += 1;
        }
        let mut prec = None;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let mut p = 0usize;
            while i < b.len() && b[i].is_ascii_digit() {
                p = p * 10 + usize::from(b[i] - b'0');
                i += 1;
            }
            prec = Some(p);
        }
        while i < b.len() && b"hlLqjzt".contains(&b[i]) {
            i += 1;
        }
        let Some(&c) = b.get(i) else { break };
        i += 1;
        if c == b'%' {
            out.push('%');
            continue;
        }
        let arg = args.next();
        let int = || match arg {
            Some(Arg::Int(v)) => *v,
            _ => 0,
        };
        let body = match c {
            b'd' | b'i' => int().to_string(),
            b'u' => (int() as u64).to_string(),
            b'x' => format!("{}{:x}", if alt { "0x" } else { "" }, int() as u64),
            b'X' => format!("{}{:X}", if alt { "0X" } else { "" }, int() as u64),
            b'o' => format!("{:o}", int() as u64),
            b'p' => match int() {
                0 => "(nil)".to_string(),
                v => format!("0x{:x}", v as u64),
            },
            b's' => match arg {
                Some(Arg::Str(s)) => s.clone(),
                _ => "(null)".into(),
            },
            b'c' => match arg {
                Some(Arg::Char(c)) => c.to_string(),
                _ => "?".into(),
            },
            _ => match arg {
                Some(Arg::Float(f)) => format!("{:.*}", prec.unwrap_or(6), f),
                _ => "0".into(),
            },
        };
        let pad = width.saturating_sub(body.chars().count());
        if left {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && c != b's' && c != b'c' {
            let (sign, digits) = match body.strip_prefix('-') {
                Some(d) => ("-", d),
                None => ("", body.as_str()),
            };
            out.push_str(sign);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&body);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_and_formats() {
        let text = r#"
# softmmu/memory.c
memory_region_ops_write(int cpu_index, void *mr, uint64_t addr, uint64_t value, unsigned size, const char *name) "cpu %d mr %p addr 0x%"PRIx64" value 0x%"PRIx64" size %u name '%s'"
vcpu guest_cpu_enter(void)
disable foo(uint8_t x) "x=%02x%%"
"#;
        let ev = parse_trace_events(text);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].name, "memory_region_ops_write");
        assert_eq!(ev[0].args[1], ("void *".into(), "mr".into()));
        assert_eq!(ev[0].args[5], ("const char *".into(), "name".into()));
        assert_eq!(
            ev[0].format,
            "cpu %d mr %p addr 0x%x value 0x%x size %u name '%s'"
        );
        assert_eq!(
            conversions(&ev[0].format),
            [
                Conv::Signed,
                Conv::Pointer,
                Conv::Hex { prefixed: true },
                Conv::Hex { prefixed: true },
                Conv::Unsigned,
                Conv::Str
            ]
        );
        assert_eq!(
            (ev[1].properties.clone(), ev[1].args.len()),
            (vec!["vcpu".to_string()], 0)
        );
        assert_eq!(ev[1].format, "");
        assert_eq!(conversions(&ev[2].format), [Conv::Hex { prefixed: false }]);
        assert_eq!(render(&ev[2].format, &[Arg::Int(10)]), "x=0a%");
        assert_eq!(
            render(
                "a %-4d|%5s|%#x|%p|%p",
                &[
                    Arg::Int(-3),
                    Arg::Str("ab".into()),
                    Arg::Int(255),
                    Arg::Int(0),
                    Arg::Int(16)
                ]
            ),
            "a -3  |   ab|0xff|(nil)|0x10"
        );
    }

    fn read(decl: &str, msg: &str) -> Option<Vec<(String, crate::FieldValue)>> {
        parse_trace_events(decl)[0].match_message(msg)
    }

    #[test]
    fn messages_read_back_through_their_format() {
        use crate::FieldValue::{Signed, Str, Unsigned};
        let named = |v: &[(&str, crate::FieldValue)]| {
            Some(
                v.iter()
                    .map(|(n, v)| (n.to_string(), v.clone()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            read(
                r#"serial_write(uint16_t addr, uint8_t value) "write addr 0x%02x val 0x%02x""#,
                "write addr 0x00 val 0x5a"
            ),
            named(&[("addr", Unsigned(0)), ("value", Unsigned(0x5a))])
        );
        // Padding, `%%`, `(nil)`, negative numbers, bare hex, a string
        // holding the text that follows it once.
        assert_eq!(
            read(
                r#"e(int a, void *p, unsigned x, const char *s, char c) "a=%-4d| p %p %x%% s '%s' c=%c""#,
                "a=-3  | p (nil) 1f% s 'it' s' c=q"
            ),
            named(&[
                ("a", Signed(-3)),
                ("p", Unsigned(0)),
                ("x", Unsigned(0x1f)),
                ("s", Str("it' s".into())),
                ("c", Str("q".into())),
            ])
        );
        // `%.*s`: the width argument is not printed and gets no field.
        assert_eq!(
            read(r#"e(int len, const char *s) "[%.*s]""#, "[abc]"),
            named(&[("s", Str("abc".into()))])
        );
        assert_eq!(
            read(r#"e(int w, int v) "%*d!""#, "   7!"),
            named(&[("v", Unsigned(7))])
        );
    }

    #[test]
    fn unreadable_messages_fall_back() {
        // Another QEMU version's format, or a message cut short.
        assert_eq!(read(r#"e(int a) "a=%d""#, "b=3"), None);
        assert_eq!(read(r#"e(int a) "a=%d""#, "a="), None);
        assert_eq!(read(r#"e(int a) "a=%d""#, "a=3 extra"), None);
        // Two strings and a space in one of them: two readings.
        assert_eq!(
            read(r#"e(const char *a, const char *b) "%s %s""#, "x y z"),
            None
        );
        // Nothing between a string and a number.
        assert_eq!(read(r#"e(const char *a, int b) "%s%d""#, "x1"), None);
        // Fewer arguments than conversions (a broken declaration).
        assert_eq!(read(r#"e(int a) "%d %d""#, "1 2"), None);
        // Unsigned conversions do not take a sign; overflow is no reading.
        assert_eq!(read(r#"e(unsigned a) "%u""#, "-1"), None);
        assert_eq!(read(r#"e(unsigned a) "%u""#, "99999999999999999999"), None);
    }

    #[test]
    fn many_splits_stop_at_the_budget() {
        // 200 candidate ends for each of three strings: the search gives up
        // (no reading) rather than trying 200^3 splits.
        let msg = vec!["a"; 200].join(" ");
        assert_eq!(
            read(
                r#"e(const char *a, const char *b, const char *c, int d) "%s %s %s %d""#,
                &msg
            ),
            None
        );
    }
}
