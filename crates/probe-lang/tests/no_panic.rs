//! compile() must never panic: every prefix of valid scripts, byte-level
//! mutations, and random token soup must yield Ok or Diagnostics. Whatever
//! compiles must also run on a fake context without panicking.

mod support;

use proptest::prelude::*;
use support::{FakeCtx, run_script};

const SCRIPTS: &[&str] = &[
    "kprobe:vfs_* /arg0 > 1 && (arg1 / 2) == 3/ { @c[func, arg0] = count(); @s = sum(arg2); }",
    "BEGIN { $x = 1; if ($x) { printf(\"%-5s|%08lx %%\\n\", \"a\\tb\", -$x); } else { exit(); } }",
    "kretprobe:f { @r = avg(retval); @m = min(retval ? 1 : 2); } END { print(@r); clear(@m); delete(@r); }",
    "/* c */ kprobe:0xffff+0x10 { @x[1, \"a\"] = max(~nsecs << 2 | vcpu ^ cpu % 3); } // end",
    "kprobe:f { @h[func] = hist(arg0); @l = lhist(arg1, 0, 100, 10); @s = stats(arg2); } END { print(@h, 2, 10); zero(@l); clear(@s); }",
    "BEGIN { $i = 0; while ($i < 5) { $i++; if ($i == 2) { continue; } if ($i > 3) { break; } } unroll(3) { @c[$i] += 2; } @v = \"s\"; printf(\"%p %o %r\\n\", 1, 2, buf(0, 1)); }",
    "kprobe:f { $p = (uint32 *)arg0; printf(\"%s %s %d %d\\n\", str($p + 1, 8), ksym(reg(\"rip\")), *(int8 *)(arg1 - 1), (uint16)kaddr(\"x\")); }",
    "BEGIN { $t = ((1, \"a\"), -2); @t[1] = $t; print($t.0); print(@t); printf(\"%s %d\\n\", $t.0.1, $t.1); zero(@t); }",
    "kprobe:f { self->ts = nsecs; self->n++; self->s = comm; } kretprobe:f /self->ts/ { @l = hist(nsecs - self->ts); delete(self->ts); self->n = 0; printf(\"%s\\n\", self->s); }",
    "interval:ms:10, profile:hz:99, watchpoint:0x10:8:rw { @n = len(@m); @m[1, \"k\"]--; $b = has_key(@m, 1, \"k\"); $q = ntop(2, elapsed); $r = strncmp(\"a\", probe, 1); time(\"%H:%M\\n\"); }",
];

#[test]
fn every_prefix_and_mutation() {
    let junk = [
        "", "(", ")", "{", "}", "/", "@", "$", "\"", "%", "*", ",", ";", "\\", "é", "0x", "?", ":",
    ];
    for s in SCRIPTS {
        for i in 0..=s.len() {
            if !s.is_char_boundary(i) {
                continue;
            }
            let _ = probe_lang::compile(&s[..i], "p");
            for j in junk {
                let m = format!("{}{}{}", &s[..i], j, &s[i..]);
                let _ = probe_lang::compile(&m, "p");
                let _ = probe_lang::compile(&format!("{}{}", &s[..i], j), "p");
            }
        }
    }
}

#[test]
fn corpus_compiles_and_runs() {
    for s in SCRIPTS {
        let p = std::sync::Arc::new(probe_lang::compile(s, "p").unwrap_or_else(|d| panic!("{d}")));
        for format in [
            probe_output::OutputFormat::Text,
            probe_output::OutputFormat::Json,
        ] {
            let mut rt = support::new_runtime_as(&p, std::io::sink(), format);
            for i in 0..p.probes().len() {
                let mut ctx = FakeCtx::new("kprobe:f");
                ctx.args = [u64::MAX, 0, 1 << 40, 3, 4, 5];
                rt.run(p.block_of(i), &mut ctx);
            }
            rt.print_maps();
        }
    }
}

#[test]
fn compiled_begin_scripts_run() {
    // Zero from a variable: a constant zero is a compile error.
    let _ = run_script("BEGIN { $z = 0; printf(\"%d %d\\n\", 1 / $z, 5 % $z); @a = count(); }");
    let _ = FakeCtx::new("x");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_bytes(s in "\\PC{0,80}") {
        let _ = probe_lang::compile(&s, "p");
    }

    #[test]
    fn token_soup(toks in proptest::collection::vec(prop::sample::select(vec![
        "BEGIN", "END", "kprobe:f", "kretprobe:g", "{", "}", "(", ")", "[", "]", "/", ",", ";", "=",
        "@m", "@", "$x", "arg0", "retval", "func", "count()", "sum(", "printf(\"%d\\n\"", "\"s\"",
        "1", "0x10", "+", "-", "*", "%", "<<", ">", "==", "&&", "!", "~", "?", ":", "if", "else",
        "print(@m)", "clear(", "delete(", "exit()", "hist(", "lhist(arg0, 0, 10, 1)", "stats(",
        "zero(@m)", "while", "unroll(2)", "break", "continue", "++", "+=", "<<=", "(uint8 *)",
        "(int32)", "str(", "buf(arg0, 4)", "ksym(", "kaddr(\"s\")", "reg(\"rax\")", "ntop(",
        "strncmp(", "len(@m)", "has_key(@m,", "elapsed", "time()", "interval:ms:1",
        "watchpoint:0x10:4:w", "profile:hz:9", "(1, \"a\")", ".0", ".1", "print(",
        "rand", "kstack", "kstack(3)", "sizeof(uint16)", "sizeof(", "kptr(", "uptr(", "strftime(\"%H\",",
    ]), 0..40)) {
        let src = toks.join(" ");
        if let Ok(p) = probe_lang::compile(&src, "p") {
            let p = std::sync::Arc::new(p);
            let mut rt = support::new_runtime(&p, std::io::sink());
            for i in 0..p.probes().len() {
                rt.run(p.block_of(i), &mut FakeCtx::new("kprobe:f"));
            }
            rt.print_maps();
        }
    }
}
