//! QEMU's `log` trace backend lines, parsed.
//!
//! QEMU 7.2 prints an enabled trace event as one line (`qemu_log`, flushed
//! per line):
//!
//! ```text
//! 1409@1795317900.587186:memory_region_ops_write cpu 0 mr 0x557ee65d4980 addr 0x70 value 0x8f size 1 name 'rtc-index'
//! ```
//!
//! that is `TID@SECONDS.MICROS:NAME MESSAGE`, where TID is the QEMU thread's
//! id (`qemu_get_thread_id`, the PID for the main thread), the stamp is
//! `gettimeofday`, and MESSAGE is the event's printf format from QEMU's
//! `trace-events` files, expanded. The prefix is printed only with `-msg
//! timestamp=on`; without it a line is `NAME MESSAGE` and can be stamped only
//! when read ([`LineParser::accept_untimed`]).
//!
//! Formats are free text (`"write addr 0x%02x val 0x%02x"`, `"cpu_index %d,
//! reason %d"`, `"baudrate=%"PRIu64" parity='%c'"`), and the binary does not
//! ship them, so [`parse_fields`] names fields from the line itself: a value
//! (a number, a quoted string, `(nil)`) takes the word before it as its name,
//! `key=value` is one field, `key: free text` runs to the end of the line,
//! and a value with no word before it is `argN` (N its position).

use crate::catalogue::Catalogue;
use crate::{Error, Result, io_err};
use host_clock::RealtimeToMonotonic;
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A field's value as printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldValue {
    /// A non-negative decimal or `0x` hexadecimal integer (also `%p`, where
    /// `(nil)` is 0).
    Unsigned(u64),
    /// A negative decimal integer.
    Signed(i64),
    /// A quoted string, quotes removed (`name 'apic-msi'`).
    Str(String),
    /// Anything else, verbatim.
    Text(String),
}

impl FieldValue {
    /// The value as an unsigned integer (negative ones two's-complement, as C
    /// would pass them), if it is an integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            FieldValue::Unsigned(v) => Some(v),
            FieldValue::Signed(v) => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is one and fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::Unsigned(v) => i64::try_from(v).ok(),
            FieldValue::Signed(v) => Some(v),
            _ => None,
        }
    }

    /// The text of a string or raw value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::Str(s) | FieldValue::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// One trace event from QEMU's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    /// CLOCK_MONOTONIC ns (converted from QEMU's stamp, or the read time for
    /// an untimed line).
    pub ts_ns: u64,
    /// QEMU's own stamp (CLOCK_REALTIME µs), if the line had one.
    pub realtime_us: Option<u64>,
    /// The QEMU thread that emitted it (vCPU threads, the main loop, ...).
    pub tid: Option<u32>,
    pub name: String,
    /// The message as printed, after the name.
    pub message: String,
    /// Fields in the order printed, named from the line (see [`parse_fields`]).
    pub fields: Vec<(String, FieldValue)>,
}

impl TraceEvent {
    /// The first field called `name`.
    pub fn field(&self, name: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// The trace events a QEMU binary knows (`QEMU -trace help`), without
/// starting a VM: lets a script's `vmm:EVENT` probes be checked before
/// booting. Bounded by `timeout`; QEMU is killed if it takes longer.
pub fn list_events_from_binary(qemu: &Path, timeout: Duration) -> Result<Vec<String>> {
    let what = format!("{} -trace help", qemu.display());
    let mut child = Command::new(qemu)
        .args(["-trace", "help"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io_err(&what))?;
    let mut stdout = child.stdout.take().expect("piped");
    // Read on a thread so a hung QEMU cannot block past the deadline.
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(io_err(&what))? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout {
                    what,
                    after: timeout,
                });
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let out = reader
        .join()
        .map_err(|_| Error::Protocol(format!("{what}: reader thread panicked")))?
        .map_err(io_err(&what))?;
    if !status.success() {
        return Err(Error::Protocol(format!("{what} failed: {status}")));
    }
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| is_event_name(l))
        .map(str::to_string)
        .collect())
}

/// The parts of a line, before field parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawLine<'a> {
    pub tid: Option<u32>,
    pub realtime_us: Option<u64>,
    pub name: &'a str,
    pub message: &'a str,
}

fn is_event_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Splits `TID@SECONDS.MICROS:NAME MESSAGE`; `None` if the line is not one.
pub fn split_timed(line: &str) -> Option<RawLine<'_>> {
    let (tid, rest) = line.split_once('@')?;
    let (stamp, rest) = rest.split_once(':')?;
    let (secs, micros) = stamp.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(tid) || !digits(secs) || micros.len() != 6 || !digits(micros) {
        return None;
    }
    let (name, message) = rest.split_once(' ').unwrap_or((rest, ""));
    if !is_event_name(name) {
        return None;
    }
    let realtime_us = secs
        .parse::<u64>()
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(micros.parse::<u64>().ok()?)?;
    Some(RawLine {
        tid: Some(tid.parse().ok()?),
        realtime_us: Some(realtime_us),
        name,
        message,
    })
}

/// Splits an untimed `NAME MESSAGE` line.
pub fn split_untimed(line: &str) -> Option<RawLine<'_>> {
    let (name, message) = line.split_once(' ').unwrap_or((line, ""));
    is_event_name(name).then_some(RawLine {
        tid: None,
        realtime_us: None,
        name,
        message,
    })
}

/// Turns log lines into [`TraceEvent`]s, counting the lines it skipped.
/// Never panics, whatever the input.
#[derive(Clone, Debug)]
pub struct LineParser {
    clock: RealtimeToMonotonic,
    known: Option<HashSet<String>>,
    catalogue: Option<Arc<Catalogue>>,
    untimed: bool,
    /// Events parsed.
    pub events: u64,
    /// Lines that were not trace events (QEMU's own messages, torn or junk
    /// lines, unknown names when a catalogue is set).
    pub skipped: u64,
}

impl LineParser {
    pub fn new(clock: RealtimeToMonotonic) -> Self {
        LineParser {
            clock,
            known: None,
            catalogue: None,
            untimed: false,
            events: 0,
            skipped: 0,
        }
    }

    /// Accept only these event names (e.g. from QMP `trace-event-get-state`
    /// with `*`); anything else is skipped.
    pub fn with_known_events(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.known = Some(names.into_iter().collect());
        self
    }

    /// Name fields after the C arguments of the events' declarations where
    /// a message reads back through its format; [`parse_fields`]'s names
    /// otherwise (events the catalogue lacks, another QEMU version's
    /// format, ambiguous strings).
    pub fn with_catalogue(mut self, catalogue: Arc<Catalogue>) -> Self {
        self.catalogue = Some(catalogue);
        self
    }

    /// Also accept `NAME MESSAGE` lines (QEMU without `-msg timestamp=on`),
    /// stamped with the time they are read. Best used with
    /// [`LineParser::with_known_events`]: any line starting with a word
    /// would otherwise pass.
    pub fn accept_untimed(mut self, yes: bool) -> Self {
        self.untimed = yes;
        self
    }

    /// The clock conversion in use.
    pub fn clock(&self) -> RealtimeToMonotonic {
        self.clock
    }

    /// Replaces the clock conversion (after re-measuring it).
    pub fn set_clock(&mut self, clock: RealtimeToMonotonic) {
        self.clock = clock;
    }

    /// Parses one line (without its newline). `read_ns` stamps untimed lines.
    pub fn parse(&mut self, line: &str, read_ns: u64) -> Option<TraceEvent> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let raw = split_timed(line).or_else(|| {
            if self.untimed {
                split_untimed(line)
            } else {
                None
            }
        });
        let raw = raw.filter(|r| self.known.as_ref().is_none_or(|k| k.contains(r.name)));
        let Some(raw) = raw else {
            self.skipped += 1;
            return None;
        };
        self.events += 1;
        Some(TraceEvent {
            ts_ns: raw
                .realtime_us
                .map_or(read_ns, |us| self.clock.realtime_us_to_monotonic_ns(us)),
            realtime_us: raw.realtime_us,
            tid: raw.tid,
            name: raw.name.to_string(),
            message: raw.message.to_string(),
            fields: self
                .catalogue
                .as_ref()
                .and_then(|c| c.get(raw.name))
                .and_then(|d| d.match_message(raw.message))
                .unwrap_or_else(|| parse_fields(raw.message)),
        })
    }
}

fn is_sep(c: char) -> bool {
    c.is_whitespace() || c == ',' || c == ';'
}

fn is_key(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// An integer as printf prints one, or `(nil)`; surrounding brackets and a
/// trailing `:`/`.` are ignored.
fn parse_number(word: &str) -> Option<FieldValue> {
    let w = word.trim_start_matches(['(', '[', '#']);
    if w == "nil)" || word == "(nil)" {
        return Some(FieldValue::Unsigned(0));
    }
    let w = w.trim_end_matches([')', ']', ':', '.']);
    if let Some(hex) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok().map(FieldValue::Unsigned);
    }
    let (neg, digits) = match w.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, w.strip_prefix('+').unwrap_or(w)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if neg {
        format!("-{digits}").parse().ok().map(FieldValue::Signed)
    } else {
        digits.parse().ok().map(FieldValue::Unsigned)
    }
}

/// Several integers joined by one delimiter (`640x480`, `0:3`, `1..7`,
/// `-3->5`, `1,2`, `4/8`).
fn split_compound(word: &str) -> Option<Vec<FieldValue>> {
    let word = word.trim_end_matches([',', ':', '.', ')', ']']);
    ["->", "=>", "..", ",", ":", "/", "x"]
        .iter()
        .find_map(|sep| {
            let parts: Vec<&str> = word.split(sep).collect();
            if parts.len() < 2 {
                return None;
            }
            parts.iter().map(|p| parse_number(p)).collect()
        })
}

/// `name[INT]` or `name(INT)`, with an optional trailing `:`.
fn indexed(word: &str) -> Option<(&str, FieldValue)> {
    let w = word.strip_suffix(':').unwrap_or(word);
    let open = w.find(['[', '('])?;
    let close = match w.as_bytes()[open] {
        b'[' => ']',
        _ => ')',
    };
    let inner = w[open + 1..].strip_suffix(close)?;
    let key = &w[..open];
    (is_key(key) && !inner.starts_with(['(', '['])).then_some(())?;
    Some((key, parse_number(inner)?))
}

/// `quote` at byte `start` of `s`: the end of the quoted string, i.e. the
/// first matching quote followed by a separator or the end (strings may
/// contain spaces and quotes); `None` if unterminated.
fn quoted_end(s: &str, start: usize, quote: char) -> Option<usize> {
    let body = start + 1;
    let mut from = body;
    while let Some(off) = s[from..].find(quote) {
        let end = from + off;
        let after = s[end + 1..].chars().next();
        if after.is_none_or(|c| is_sep(c) || matches!(c, ')' | ']' | '.' | ':')) {
            return Some(end);
        }
        from = end + 1;
    }
    None
}

/// Names and values of a trace message's fields, in printed order.
///
/// ```
/// use qemu_vmm::FieldValue::*;
/// let f = qemu_vmm::trace::parse_fields("write addr 0x00 val 0x41");
/// assert_eq!(f, [("addr".into(), Unsigned(0)), ("val".into(), Unsigned(0x41))]);
/// let f = qemu_vmm::trace::parse_fields("baudrate=9600 parity='N' data=8");
/// assert_eq!(f[1], ("parity".into(), Str("N".into())));
/// ```
pub fn parse_fields(msg: &str) -> Vec<(String, FieldValue)> {
    let mut fields: Vec<(String, FieldValue)> = Vec::new();
    // The word waiting for a value: a slice of `msg`, so that the common
    // case (words that are not followed by a value) allocates nothing.
    let mut pending: Option<&str> = None;
    let push = |fields: &mut Vec<(String, FieldValue)>, key: Option<&str>, v: FieldValue| {
        let base = match key {
            Some(k) if k.contains(['-', '.']) => k.replace(['-', '.'], "_"),
            Some(k) => k.to_string(),
            None => format!("arg{}", fields.len()),
        };
        let mut name = base.clone();
        let mut n = 2;
        while fields.iter().any(|(k, _)| *k == name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        fields.push((name, v));
    };
    let mut i = 0;
    while i < msg.len() {
        let Some(c) = msg[i..].chars().next() else {
            break;
        };
        if is_sep(c) {
            i += c.len_utf8();
            continue;
        }
        if c == '\'' || c == '"' {
            match quoted_end(msg, i, c) {
                Some(end) => {
                    push(
                        &mut fields,
                        pending.take(),
                        FieldValue::Str(msg[i + 1..end].to_string()),
                    );
                    i = end + 1;
                }
                None => {
                    push(
                        &mut fields,
                        pending.take(),
                        FieldValue::Text(msg[i..].to_string()),
                    );
                    i = msg.len();
                }
            }
            continue;
        }
        let end = msg[i..].find(is_sep).map_or(msg.len(), |o| i + o);
        let word = &msg[i..end];
        if is_key(word) {
            // The common case, checked first: a plain word (no `=`, `:`,
            // brackets or digits up front) is a label, never a value.
            pending = Some(word);
            i = end;
            continue;
        }
        if let Some((key, rest)) = word.split_once('=').filter(|(k, _)| is_key(k)) {
            // key=value; the value may be a quoted string with separators.
            let vstart = i + key.len() + 1;
            if let Some(qend) = rest
                .chars()
                .next()
                .filter(|&q| q == '\'' || q == '"')
                .and_then(|q| quoted_end(msg, vstart, q))
            {
                push(
                    &mut fields,
                    Some(key),
                    FieldValue::Str(msg[vstart + 1..qend].to_string()),
                );
                pending = None;
                i = qend + 1;
                continue;
            }
            match (parse_number(rest), split_compound(rest)) {
                (Some(v), _) => push(&mut fields, Some(key), v),
                (None, Some(parts)) => {
                    for v in parts {
                        push(&mut fields, Some(key), v);
                    }
                }
                (None, None) => push(&mut fields, Some(key), FieldValue::Text(rest.to_string())),
            }
            pending = None;
            i = end;
            continue;
        }
        if let Some((key, rest)) = word
            .split_once(':')
            .filter(|(k, r)| is_key(k) && parse_number(r).is_some())
        {
            // key:value, no space (`addr:0x10`).
            push(&mut fields, Some(key), parse_number(rest).expect("checked"));
            pending = None;
            i = end;
            continue;
        }
        if let Some(v) = parse_number(word) {
            push(&mut fields, pending.take(), v);
            i = end;
            continue;
        }
        if let Some((key, v)) = indexed(word) {
            // `reg[0x10]`, `bus[3]:`, `ahci(0x55d0)`: the index is the value.
            push(&mut fields, Some(key), v);
            pending = None;
            i = end;
            continue;
        }
        if let Some(parts) = split_compound(word) {
            // `%dx%d`, `%d:%d`, `%u..%u`, `%d->%d`: one field per number,
            // the later ones named after the first (`size`, `size_2`).
            let key = pending.take();
            for v in parts {
                push(&mut fields, key, v);
            }
            i = end;
            continue;
        }
        if let Some(key) = word.strip_suffix(':').filter(|k| is_key(k)) {
            // `key: value`. When nothing numeric follows, the value is free
            // text to the end of the line (`cmdline: info status`);
            // otherwise `key:` is a label like any word (`write: offset 0x1`).
            let rest = msg[end..].trim_start();
            let numeric = rest.split(is_sep).any(|w| {
                parse_number(w).is_some() || split_compound(w).is_some() || w.contains('=')
            });
            if rest.is_empty() || numeric || rest.starts_with(['\'', '"']) {
                pending = Some(key);
                i = end;
            } else {
                push(
                    &mut fields,
                    Some(key),
                    FieldValue::Text(rest.trim_end().to_string()),
                );
                pending = None;
                i = msg.len();
            }
            continue;
        }
        let bare = word
            .trim_start_matches(['(', '[', '{'])
            .trim_end_matches([')', ']', '}', ':']);
        if is_key(bare) {
            pending = Some(bare);
        } else if word.chars().all(|c| c.is_ascii_punctuation()) {
            // `=`, `->`, `@`, `-`: between a name and its value.
        } else if let Some(key) = pending.take() {
            push(&mut fields, Some(key), FieldValue::Text(word.to_string()));
        }
        i = end;
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::FieldValue::*;
    use super::*;

    fn f(msg: &str) -> Vec<(String, FieldValue)> {
        parse_fields(msg)
    }
    fn kv(k: &str, v: FieldValue) -> (String, FieldValue) {
        (k.to_string(), v)
    }

    #[test]
    fn real_lines() {
        let clock = RealtimeToMonotonic {
            offset_ns: 1_000_000_000_000,
            uncertainty_ns: 0,
            measured_at_ns: 0,
        };
        let mut p = LineParser::new(clock);
        let line = "1409@1795317900.587186:memory_region_ops_write cpu 0 mr 0x557ee65d4980 addr 0x70 value 0x8f size 1 name 'rtc-index'";
        let e = p.parse(line, 7).unwrap();
        assert_eq!(e.tid, Some(1409));
        assert_eq!(e.realtime_us, Some(1_795_317_900_587_186));
        assert_eq!(e.ts_ns, 1_795_317_900_587_186_500 - 1_000_000_000_000);
        assert_eq!(e.name, "memory_region_ops_write");
        assert_eq!(
            e.fields,
            [
                kv("cpu", Unsigned(0)),
                kv("mr", Unsigned(0x557ee65d4980)),
                kv("addr", Unsigned(0x70)),
                kv("value", Unsigned(0x8f)),
                kv("size", Unsigned(1)),
                kv("name", Str("rtc-index".into())),
            ]
        );
        let e = p
            .parse("908@1795317888.350933:memory_region_ops_write cpu -1 mr 0x1 addr 0xfee00000 value 0x0 size 4 name 'apic-msi'", 0)
            .unwrap();
        assert_eq!(e.field("cpu"), Some(&Signed(-1)));
        assert_eq!(e.field("cpu").unwrap().as_u64(), Some(u64::MAX));
        assert_eq!(p.events, 2);
        assert_eq!(p.skipped, 0);
    }

    #[test]
    fn junk_is_skipped_and_counted() {
        let mut p = LineParser::new(RealtimeToMonotonic::measure());
        for junk in [
            "",
            "2026-11-22T03:24:50.314181Z qemu-system-x86_64: terminating on signal 15",
            "12@1.5:x",
            "@1795317900.587186:foo a 1",
            "12@1795317900.587186:",
            "12@1795317900.587186:bad-name x",
            "99999999999@1795317900.587186:foo",
            "1@99999999999999999999.000000:foo",
            "\u{0}\u{ff}@@::",
            "serial_write addr 0x00 val 0x41",
        ] {
            assert!(p.parse(junk, 0).is_none(), "{junk:?}");
        }
        assert_eq!(p.skipped, 10);
        let mut p = p
            .accept_untimed(true)
            .with_known_events(["serial_write".to_string()]);
        let e = p.parse("serial_write addr 0x00 val 0x41", 42).unwrap();
        assert_eq!((e.ts_ns, e.tid), (42, None));
        assert!(p.parse("qemu-system-x86_64: warning", 0).is_none());
        assert!(p.parse("other_event x 1", 0).is_none());
    }

    #[test]
    fn field_shapes() {
        assert_eq!(
            f("write addr 0x00 val 0x41"),
            [kv("addr", Unsigned(0)), kv("val", Unsigned(0x41))]
        );
        assert_eq!(
            f("cpu_index 0, reason 2"),
            [kv("cpu_index", Unsigned(0)), kv("reason", Unsigned(2))]
        );
        assert_eq!(
            f("baudrate=115200 parity='N' data=8 stop=1"),
            [
                kv("baudrate", Unsigned(115200)),
                kv("parity", Str("N".into())),
                kv("data", Unsigned(8)),
                kv("stop", Unsigned(1)),
            ]
        );
        assert_eq!(
            f("0x55d0 mon 0x55d1 len 42"),
            [
                kv("arg0", Unsigned(0x55d0)),
                kv("mon", Unsigned(0x55d1)),
                kv("len", Unsigned(42))
            ]
        );
        assert_eq!(
            f("mon 0x1 cmdline: info status"),
            [
                kv("mon", Unsigned(1)),
                kv("cmdline", Text("info status".into()))
            ]
        );
        assert_eq!(
            f("mon 0x1: 3"),
            [kv("mon", Unsigned(1)), kv("arg1", Unsigned(3))]
        );
        assert_eq!(
            f("dev (nil) n 3"),
            [kv("dev", Unsigned(0)), kv("n", Unsigned(3))]
        );
        assert_eq!(
            f("name 'it''s here' x 1"),
            [kv("name", Str("it''s here".into())), kv("x", Unsigned(1))]
        );
        assert_eq!(f("a 1 a 2"), [kv("a", Unsigned(1)), kv("a_2", Unsigned(2))]);
        assert_eq!(
            f("s 'unterminated x 1"),
            [kv("s", Text("'unterminated x 1".into()))]
        );
        assert_eq!(f("state=running"), [kv("state", Text("running".into()))]);
        assert_eq!(
            f("big 0x1ffffffffffffffff"),
            [kv("big", Text("0x1ffffffffffffffff".into()))]
        );
        assert_eq!(f("just words here"), []);
        assert_eq!(
            f("size=640x480 dev 1:2 tb:0x10 RCTL = 7 port #3"),
            [
                kv("size", Unsigned(640)),
                kv("size_2", Unsigned(480)),
                kv("dev", Unsigned(1)),
                kv("dev_2", Unsigned(2)),
                kv("tb", Unsigned(0x10)),
                kv("RCTL", Unsigned(7)),
                kv("port", Unsigned(3)),
            ]
        );
        assert_eq!(
            f("write reg[0x10] = 0x5 ahci(0x55d0): x -3->4"),
            [
                kv("reg", Unsigned(0x10)),
                kv("arg1", Unsigned(5)),
                kv("ahci", Unsigned(0x55d0)),
                kv("x", Signed(-3)),
                kv("x_2", Unsigned(4)),
            ]
        );
        assert_eq!(
            f("GICv3 distributor write: offset 0x10 data 0x2"),
            [kv("offset", Unsigned(0x10)), kv("data", Unsigned(2))]
        );
        assert_eq!(f("é=1 ü 0x2"), [kv("arg0", Unsigned(2))]);
    }

    #[test]
    fn event_list_from_a_binary_errors() {
        let t = Duration::from_secs(5);
        assert!(matches!(
            list_events_from_binary("/nonexistent/qemu".as_ref(), t),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            list_events_from_binary("false".as_ref(), t),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // Cheap deterministic fuzz: every prefix/suffix split of tricky text.
        let samples = [
            "a='b c' d=\"e' f 'g\" h: 'i' j=0x k 0x l=- m: n 'o",
            "\u{1F600}='\u{e9}' \u{e9}: \u{1F600} 0xé 1é (nil",
        ];
        for s in samples {
            for (i, _) in s.char_indices() {
                let _ = parse_fields(&s[i..]);
                let _ = parse_fields(&s[..i]);
                let mut p = LineParser::new(RealtimeToMonotonic::measure()).accept_untimed(true);
                let _ = p.parse(&format!("1@2.000003:{}", &s[i..]), 0);
            }
        }
    }
}
