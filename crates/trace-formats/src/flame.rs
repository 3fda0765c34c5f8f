//! Folded stacks (Brendan Gregg's `a;b;c 12` format) and flame-graph SVG.
//!
//! Stacks are given **root first** (outermost caller first, leaf last), the
//! order of the folded format itself. A caller holding leaf-first stacks
//! (as unwinders produce them) passes `frames.iter().rev()`.

use std::collections::BTreeMap;
use std::io::Write;

use crate::Error;

/// Folds `(stack, count)` pairs into folded lines: identical stacks are
/// summed, zero counts dropped, lines sorted (as stackcollapse tools do, so
/// output is reproducible). In frame names `;` (the separator) becomes `:`
/// and line breaks become spaces.
pub fn fold<I, F, S>(stacks: I) -> Vec<String>
where
    I: IntoIterator<Item = (F, u64)>,
    F: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut sums: BTreeMap<String, u64> = BTreeMap::new();
    for (frames, count) in stacks {
        let mut key = String::new();
        for (i, f) in frames.into_iter().enumerate() {
            if i > 0 {
                key.push(';');
            }
            key.extend(f.as_ref().chars().map(|c| match c {
                ';' => ':',
                '\n' | '\r' => ' ',
                c => c,
            }));
        }
        if key.is_empty() {
            key.push_str("[empty]");
        }
        *sums.entry(key).or_default() += count;
    }
    sums.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect()
}

/// Writes folded lines, one per line.
pub fn write_folded<W: Write>(mut out: W, lines: &[String]) -> Result<(), Error> {
    for l in lines {
        writeln!(out, "{l}")?;
    }
    Ok(())
}

/// Renders folded lines as a flame-graph SVG with inferno.
pub fn write_flamegraph<W: Write>(out: W, lines: &[String], title: &str) -> Result<(), Error> {
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_owned();
    opts.count_name = "hits".to_owned();
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)?;
    Ok(())
}
