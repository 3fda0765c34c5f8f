//! QEMU's `trace-events` source files: each event's C arguments and printf
//! format. The QEMU binary does not ship them (it knows only the names, see
//! [`crate::Qmp::trace_event_list`]), so vmprobe must not need them at run
//! time; they serve tests (checking [`crate::trace::parse_fields`] against
//! every format of a QEMU release) and documentation (what a field means,
//! its C type).
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
}
