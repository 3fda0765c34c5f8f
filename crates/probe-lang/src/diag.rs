//! Source spans and rustc-style diagnostics.
//!
//! Every pass reports errors as [`Diagnostic`]s carrying a byte [`Span`];
//! line/column and the source line are resolved once, when the diagnostic is
//! built, so `Display` needs no access to the source text.

use std::fmt;

/// Half-open byte range `[start, end)` into the script source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// Smallest span covering both.
    pub fn to(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

/// One error, located in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    /// 1-based line of `span.start`.
    pub line: usize,
    /// 1-based column (in characters) of `span.start`.
    pub col: usize,
    pub span: Span,
    pub source_name: String,
    /// Text of the line containing `span.start` (without newline).
    pub source_line: String,
}

impl Diagnostic {
    /// Resolves `span` against `source` to build a self-contained diagnostic.
    pub fn new(source: &str, source_name: &str, span: Span, message: impl Into<String>) -> Self {
        let start = (span.start as usize).min(source.len());
        // Spans always come from char boundaries, but be defensive: never panic.
        let start = (0..=start)
            .rev()
            .find(|&i| source.is_char_boundary(i))
            .unwrap_or(0);
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        let line = source[..start].matches('\n').count() + 1;
        let col = source[line_start..start].chars().count() + 1;
        Diagnostic {
            message: message.into(),
            line,
            col,
            span,
            source_name: source_name.to_string(),
            source_line: source[line_start..line_end].to_string(),
        }
    }
}

impl fmt::Display for Diagnostic {
    /// ```text
    /// error: unknown builtin 'foo'
    ///  --> script:1:12
    ///   |
    /// 1 | kprobe:f { foo }
    ///   |            ^^^
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = self.line.to_string();
        let pad = " ".repeat(num.len());
        writeln!(f, "error: {}", self.message)?;
        writeln!(
            f,
            "{pad}--> {}:{}:{}",
            self.source_name, self.line, self.col
        )?;
        writeln!(f, "{pad} |")?;
        // A long line (a generated script's) is shown around the column.
        let chars: Vec<char> = self.source_line.chars().collect();
        let col = self.col.min(chars.len() + 1);
        let (from, to) = if chars.len() > SHOWN {
            let from = (col - 1).saturating_sub(SHOWN / 3);
            (from, (from + SHOWN).min(chars.len()))
        } else {
            (0, chars.len())
        };
        let (open, close) = (
            if from > 0 { "..." } else { "" },
            if to < chars.len() { "..." } else { "" },
        );
        // Control characters as their Unicode pictures (one column each, so
        // the carets stay aligned), never raw into a terminal.
        let shown: String = chars[from..to].iter().map(|&c| visible(c)).collect();
        writeln!(f, "{num} | {open}{shown}{close}")?;
        // Carets under the span, clipped to the shown line; at least one.
        let avail = (to + 1).saturating_sub(col - 1).max(1);
        let len = (self.span.end.saturating_sub(self.span.start) as usize).clamp(1, avail);
        // Keep tabs so carets line up under tab-indented code.
        let lead: String = " ".repeat(open.len())
            + &chars[from..col - 1]
                .iter()
                .map(|&c| if c == '\t' { '\t' } else { ' ' })
                .collect::<String>();
        writeln!(f, "{pad} | {lead}{}", "^".repeat(len))
    }
}

fn visible(c: char) -> char {
    match c {
        '\t' => c,
        '\0'..='\x1f' => char::from_u32(0x2400 + c as u32).unwrap_or('?'),
        '\x7f' => '\u{2421}',
        _ => c,
    }
}

/// Characters of a source line shown in a diagnostic.
const SHOWN: usize = 120;

/// All errors of one compilation, in source order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics for one source.
pub(crate) struct Reporter<'s> {
    pub source: &'s str,
    pub name: &'s str,
    pub diags: Vec<Diagnostic>,
}

impl<'s> Reporter<'s> {
    pub fn new(source: &'s str, name: &'s str) -> Self {
        Reporter {
            source,
            name,
            diags: Vec::new(),
        }
    }

    pub fn error(&mut self, span: Span, msg: impl Into<String>) {
        self.diags
            .push(Diagnostic::new(self.source, self.name, span, msg));
    }

    pub fn finish(mut self) -> Result<(), Diagnostics> {
        if self.diags.is_empty() {
            Ok(())
        } else {
            self.diags.sort_by_key(|d| d.span.start);
            // A block split per attach point reports its errors once.
            let mut seen = Vec::new();
            self.diags.retain(|d| {
                let new = !seen.contains(d);
                if new {
                    seen.push(d.clone());
                }
                new
            });
            Err(Diagnostics(self.diags))
        }
    }
}
