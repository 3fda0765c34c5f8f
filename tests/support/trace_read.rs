//! Readers of the traces `vmprobe record` writes, as the tests see them:
//! babeltrace2's text lines and the Perfetto JSON.

use std::path::Path;

/// `name` and the payload field `field` of a babeltrace2 text line.
pub fn event_field(line: &str, field: &str) -> Option<u64> {
    let key = format!("{field} = ");
    line.split(&key)
        .nth(1)?
        .split([',', ' '])
        .next()?
        .parse()
        .ok()
}

/// The bracketed timestamp of a babeltrace2 line, as text (sortable: fixed width).
pub fn timestamp(line: &str) -> &str {
    &line[1..line.find(']').expect("timestamp")]
}

pub fn assert_time_ordered(lines: &[String]) {
    let stamps: Vec<&str> = lines.iter().map(|l| timestamp(l)).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "timestamps out of order"
    );
}

/// The events of `DIR/trace.json` (Chrome trace-event JSON).
pub fn perfetto_events(dir: &Path) -> Vec<serde_json::Value> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("trace.json")).unwrap()).unwrap();
    json.as_array()
        .or_else(|| json["traceEvents"].as_array())
        .expect("a trace-event array")
        .clone()
}

/// A payload field of a babeltrace2 text line, as printed (`"dd"`, `-100`,
/// `[ [0] = 0x41 ]`): from `field = ` to the next top-level `,` or `}`.
pub fn field_text<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let payload = line.rsplit_once("}, {")?.1;
    let at = payload.find(&format!(" {field} = "))?;
    let rest = &payload[at + field.len() + 4..];
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// The "recorded N events" count vmprobe reports on stderr.
pub fn recorded_count(stderr: &str) -> usize {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmprobe: recorded "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no 'recorded N events' line: {stderr}"))
}
