//! Golden tests of error rendering (rustc style) and of which errors the
//! checker reports before anything runs.

use probe_lang::compile;

fn err(src: &str) -> String {
    match compile(src, "script") {
        Ok(_) => panic!("expected an error for {src:?}"),
        Err(d) => d.to_string(),
    }
}

/// First diagnostic's message only.
fn msg(src: &str) -> String {
    compile(src, "script").expect_err("error").0[0]
        .message
        .clone()
}

#[test]
fn unknown_builtin_caret() {
    assert_eq!(
        err("kprobe:f { $x = foo; }"),
        "error: unknown builtin 'foo'\n --> script:1:17\n  |\n1 | kprobe:f { $x = foo; }\n  |                 ^^^\n"
    );
}

#[test]
fn multi_line_and_multiple_errors() {
    let src =
        "BEGIN {\n  printf(\"%d %s\\n\", 1);\n  @x = count();\n}\nkprobe:g { @x = sum(arg0); }";
    assert_eq!(
        err(src),
        "error: printf: Not enough arguments for format string (1 supplied, 2 expected)\n \
         --> script:2:3\n  |\n2 |   printf(\"%d %s\\n\", 1);\n  |   ^^^^^^^^^^^^^^^^^^^^\n\n\
         error: @x is used as sum() here but as count() elsewhere\n \
         --> script:5:12\n  |\n5 | kprobe:g { @x = sum(arg0); }\n  |            ^^^^^^^^^^^^^^\n"
    );
}

#[test]
fn parse_error_line_col() {
    let d = compile("BEGIN {\n  @x = count(\n}", "s.bt").err().unwrap();
    assert_eq!((d.0[0].line, d.0[0].col), (3, 1));
    assert_eq!(
        d.to_string(),
        "error: expected expression, found '}'\n --> s.bt:3:1\n  |\n3 | }\n  | ^\n"
    );
}

/// A `#!` first line (a script run as an executable) is skipped, and the
/// line numbers of later errors count it.
#[test]
fn shebang_line_is_skipped_and_counted() {
    for shebang in ["#!/usr/bin/bpftrace", "#!/usr/bin/env vmprobe"] {
        let ok = format!("{shebang}\nBEGIN {{ printf(\"hi\\n\"); exit(); }}\n");
        assert!(compile(&ok, "s.bt").is_ok(), "{ok}");
        let bad = format!("{shebang}\n// comment\nBEGIN {{\n  @x = foo;\n}}\n");
        let d = compile(&bad, "s.bt").err().unwrap();
        assert_eq!((d.0[0].line, d.0[0].col), (4, 8), "{d}");
        assert_eq!(
            d.to_string(),
            "error: unknown builtin 'foo'\n --> s.bt:4:8\n  |\n4 |   @x = foo;\n  |        ^^^\n"
        );
    }
    // Only at byte 0: after a blank line it is not a shebang.
    assert!(compile("\n#!/usr/bin/bpftrace\nBEGIN { exit(); }", "s.bt").is_err());
}

#[test]
fn checker_errors() {
    let cases = [
        ("kprobe:f { bar(1); }", "unknown function 'bar'"),
        (
            "kprobe:f { @x = count(1); }",
            "count() takes 0 arguments, got 1",
        ),
        ("kprobe:f { @x = sum(); }", "sum() takes 1 argument, got 0"),
        (
            "kprobe:f { @x = sum(\"a\"); }",
            "argument of sum() must be an integer, found string",
        ),
        (
            "kprobe:f { @x[1] = count(); @x[1, 2] = count(); }",
            "@x is used with key [integer, integer] here but key [integer] elsewhere",
        ),
        (
            "kprobe:f { @x[1] = count(); @x[\"a\"] = count(); }",
            "@x is used with key [string] here but key [integer] elsewhere",
        ),
        (
            "kprobe:f { @x = count(); @x = avg(1); }",
            "@x is used as avg() here but as count() elsewhere",
        ),
        (
            "kprobe:f { printf(\"%d\\n\"); }",
            "printf: Not enough arguments for format string (0 supplied, 1 expected)",
        ),
        (
            "kprobe:f { printf(\"x\", 1); }",
            "printf: Too many arguments for format string (1 supplied, 0 expected)",
        ),
        (
            "kprobe:f { printf(\"%s\", 1); }",
            "printf: %s specifier expects a value of type string (integer supplied)",
        ),
        (
            "kprobe:f { printf(\"%x\", func); }",
            "printf: %x specifier expects a value of type integer (string supplied)",
        ),
        (
            "kprobe:f { printf(\"%q\", 1); }",
            "printf: invalid format specifier '%q'",
        ),
        (
            "kprobe:f { printf(func); }",
            "printf: the first argument must be a string literal",
        ),
        (
            "kprobe:f { $x = retval; }",
            "the retval builtin can only be used in kretprobe, kretfunc and uretprobe blocks",
        ),
        (
            "BEGIN { $x = arg0; }",
            "the arg0 builtin can only be used in kprobe and uprobe blocks",
        ),
        (
            "uprobe:x/y:b { }",
            "uprobe:x/y: give the file's absolute path in the guest (e.g. 'uprobe:/bin/busybox:b') or a library name (e.g. 'uprobe:libc:b')",
        ),
        ("foo:bar { }", "unknown probe type 'foo'"),
        (
            "BEGIN { } END { } BEGIN { }",
            "More than one BEGIN probe defined",
        ),
        ("END, END { }", "More than one END probe defined"),
        ("BEGIN { @s = @s; @t = @u; }", "undefined map '@u'"),
        (
            "kprobe:f { @x[kstack(0)] = count(); }",
            "kstack() takes a frame count literal from 1 to 127",
        ),
        (
            "kprobe:f { printf(\"%d\", kstack); }",
            "printf: %d specifier expects a value of type integer (stack supplied)",
        ),
        (
            "kprobe:f { $t = (struct task_struct *)arg0; }",
            "'struct task_struct' needs the guest kernel's type information (BTF), which this compilation does not have",
        ),
        (
            "BEGIN { $x = sizeof(\"s\"); }",
            "sizeof() takes an integer type (e.g. uint32) or an integer expression",
        ),
        (
            "BEGIN { $x = strftime(func, 1); }",
            "strftime() takes a string literal format, e.g. strftime(\"%H:%M:%S\", nsecs)",
        ),
        (
            "kprobe:f { $x = cgroup_path(cgroup, func); }",
            "cgroup_path() takes a string literal hierarchy filter, e.g. cgroup_path(cgroup, \"unified\")",
        ),
        (
            "kprobe:f { $x = cgroup_path(comm); }",
            "cgroup id argument of cgroup_path() must be an integer, found string",
        ),
        (
            "BEGIN { $x = kptr(\"a\"); }",
            "argument of kptr() must be an integer, found string",
        ),
        ("kprobe:f* + 4 { }", "expected '{', found '+'"),
        (
            "kprobe:f*+4 { }",
            "an offset cannot be combined with a wildcard",
        ),
        ("kprobe:f { $x = $y; }", "undefined variable '$y'"),
        (
            "kprobe:f { $x = 1; $x = func; }",
            "type mismatch for $x: assigning string to a variable of type integer",
        ),
        ("kprobe:f { print(@nope); }", "undefined map '@nope'"),
        ("kprobe:f { $a = @nope[1]; }", "undefined map '@nope'"),
        (
            "kprobe:f { @a[1] = count(); $x = @a; }",
            "@a is used with key [] here but key [integer] elsewhere",
        ),
        (
            "kprobe:f { @a[1] = count(); delete(@a[\"s\"]); }",
            "@a is used with key [string] here but key [integer] elsewhere",
        ),
        (
            "kprobe:f { @a = count(); print(1, 2); }",
            "print() expects a map argument",
        ),
        (
            "kprobe:f { count(); }",
            "count() must be assigned to a map, e.g. @x = count(...)",
        ),
        (
            "kprobe:f { $x = count(); }",
            "count() can only be used as a map value, e.g. @x = count(...)",
        ),
        (
            "kprobe:f { @x = 1; @x = \"s\"; }",
            "@x is used as a string value here but as an integer value elsewhere",
        ),
        (
            "kprobe:f { $x = \"a\" + 1; }",
            "operator '+' cannot be applied to string and integer",
        ),
        (
            "kprobe:f { $x = 1 ? \"a\" : 2; }",
            "ternary branches have different types: string and integer",
        ),
        (
            "kprobe:f /func/ { }",
            "predicate must be an integer, found string",
        ),
        ("kprobe:f { exit(1); }", "exit() takes 0 arguments, got 1"),
        (
            "kprobe:f { @h = hist(1, 2); }",
            "hist() takes 1 argument, got 2",
        ),
        (
            "kprobe:f { @h = lhist(1, 0, 10); }",
            "lhist() takes 4 arguments, got 3",
        ),
        (
            "kprobe:f { @h = lhist(arg0, 0, arg1, 1); }",
            "lhist() max must be an integer literal",
        ),
        (
            "kprobe:f { @h = lhist(arg0, -5, 10, 1); }",
            "lhist() min must be non-negative",
        ),
        (
            "kprobe:f { @h = lhist(arg0, 0, 10, 0); }",
            "lhist() step must be >= 1",
        ),
        (
            "kprobe:f { @h = lhist(arg0, 10, 10, 1); }",
            "lhist() max must be greater than min",
        ),
        (
            "kprobe:f { @h = lhist(arg0, 0, 100000, 1); }",
            "lhist() too many buckets, must be <= 1000",
        ),
        (
            "kprobe:f { @h = lhist(arg0, 0, 10, 1); @h = lhist(arg0, 0, 20, 1); }",
            "@h is used with different lhist() parameters elsewhere",
        ),
        (
            "kprobe:f { @h = hist(arg0); $x = @h; }",
            "@h is a hist() map and cannot be read as a value",
        ),
        (
            "kprobe:f { @h = stats(arg0); @h = 1; }",
            "@h is used as an integer value here but as stats() elsewhere",
        ),
        (
            "kprobe:f { @s = \"x\"; @s++; }",
            "@s holds string values; '+=' needs integers",
        ),
        (
            "kprobe:f { break; }",
            "break and continue can only be used in a while loop",
        ),
        (
            "kprobe:f { while (func) { } }",
            "while condition must be an integer, found string",
        ),
        (
            "BEGIN { unroll(0) { } }",
            "unroll count must be between 1 and 100",
        ),
        (
            "BEGIN { unroll(arg0) { } }",
            "unroll needs an integer literal count",
        ),
        (
            "kprobe:f { $x = kaddr(func); }",
            "kaddr() takes a string literal, e.g. kaddr(\"jiffies\")",
        ),
        ("kprobe:f { $x = reg(); }", "reg() takes 1 argument, got 0"),
        (
            "kprobe:f { $x = str(); }",
            "str() takes 1 to 2 arguments, got 0",
        ),
        (
            "kprobe:f { $x = str(func); }",
            "pointer argument of str() must be an integer, found string",
        ),
        (
            "kprobe:f { $x = *func; }",
            "cannot dereference a value of type string (cast it first, e.g. *(uint64 *)addr)",
        ),
        (
            "kprobe:f { $x = strncmp(1, \"a\", 1); }",
            "strncmp() compares strings, found integer",
        ),
        (
            "kprobe:f { $x = ntop(func); }",
            "ntop() takes an integer (IPv4) or a buffer (IPv4/IPv6), found string",
        ),
        ("kprobe:f { $x = len(1); }", "len() expects a map argument"),
        (
            "kprobe:f { @m[1] = 1; $x = has_key(@m, \"a\"); }",
            "@m is used with key [string] here but key [integer] elsewhere",
        ),
        (
            "kprobe:f { printf(\"%r\", 1); }",
            "printf: %r specifier expects a value of type buffer (integer supplied)",
        ),
        (
            "kprobe:f { @b = buf(arg0, 4); }",
            "a buffer cannot be stored in a map",
        ),
        (
            "kprobe:f { zero(@m[1]); }",
            "zero() expects a whole map, without a key",
        ),
        (
            "kprobe:f { @m = count(); print(@m, \"a\"); }",
            "print() top/div argument must be an integer, found string",
        ),
        (
            "kprobe:f { print(@m, 1, 2, 3); }",
            "print() takes 1 to 3 arguments, got 4",
        ),
        (
            "kprobe:f { len(@m); }",
            "the value of len() is unused; assign it or print it",
        ),
        (
            "kprobe:f { time(1); }",
            "time: the argument must be a string literal",
        ),
        (
            "interval:ms { }",
            "interval probes take a unit and a count, e.g. 'interval:ms:100'",
        ),
        (
            "interval:min:1 { }",
            "invalid interval unit 'min' (expected s, ms, us or hz)",
        ),
        (
            "profile:hz:0 { }",
            "invalid profile count '0' (a positive integer)",
        ),
        (
            "watchpoint:0x1000:3:w { }",
            "invalid watchpoint length '3' (1, 2, 4 or 8)",
        ),
        (
            "watchpoint:0x1000:8:x { }",
            "invalid watchpoint mode 'x' (r, w or rw)",
        ),
        (
            "watchpoint:0xzz:8:w { }",
            "invalid watchpoint address '0xzz'",
        ),
        (
            "watchpoint:jiff*:8:w { }",
            "invalid watchpoint address or symbol 'jiff*'",
        ),
        (
            "watchpoint:jiffies+x:8:w { }",
            "invalid watchpoint offset 'x'",
        ),
        (
            "BEGIN { $t = (1, \"a\"); $x = $t.2; }",
            "tuple index 2 out of range (the tuple has 2 elements)",
        ),
        (
            "BEGIN { $x = 1; $y = $x.0; }",
            "cannot access field .0 of a value of type integer",
        ),
        (
            "BEGIN { @m[(1, 2)] = 1; }",
            "a tuple cannot be used as a map key",
        ),
        (
            "BEGIN { @m = (1, \"a\"); @m = (\"a\", 1); }",
            "@m is used as a (string, integer) tuple here but as a (integer, string) tuple elsewhere",
        ),
        (
            "BEGIN { printf(\"%d\", (1, 2)); }",
            "printf: %d specifier expects a value of type integer (tuple supplied)",
        ),
        (
            "BEGIN { $x = (1, 2).a; }",
            "expected a tuple index after '.', found 'a'",
        ),
        (
            "watchpoint:0x1000:8 { }",
            "watchpoint probes look like 'watchpoint:ADDR:LEN:MODE', e.g. 'watchpoint:0xffffffff81000000:8:w' or 'watchpoint:jiffies_64:8:w'",
        ),
    ];
    for (src, want) in cases {
        assert_eq!(msg(src), want, "for {src}");
    }
}

#[test]
fn map_read_before_assignment_in_source_is_fine() {
    // END reads a map assigned by a later block: the checker sees all blocks.
    assert!(
        compile(
            "END { printf(\"%d\\n\", @c); } kprobe:f { @c = count(); }",
            "s"
        )
        .is_ok()
    );
}

#[test]
fn kretprobe_retval_ok() {
    let p = compile("kretprobe:vfs_read { @r = sum(retval); }", "s").unwrap();
    assert_eq!(
        p.probes(),
        &[probe_lang::ProbeSpec::Kretprobe {
            function: "vfs_read".into()
        }]
    );
}

#[test]
fn unknown_probe_type_has_line_col_and_caret() {
    assert_eq!(
        err("BEGIN { }\n  kprobe:f, bogus:x { }"),
        "error: unknown probe type 'bogus'\n --> script:2:13\n  |\n2 |   kprobe:f, bogus:x { }\n  |             ^^^^^^^\n"
    );
}

#[test]
fn new_syntax_errors_have_carets() {
    assert_eq!(
        err("kprobe:f {\n  @h = hist(arg0);\n  if (@h > 1) { }\n}"),
        "error: @h is a hist() map and cannot be read as a value\n --> script:3:7\n  |\n3 |   if (@h > 1) { }\n  |       ^^\n"
    );
    assert_eq!(
        err("BEGIN { $x = (uint32 *)1; $y = $x + \"a\"; }"),
        "error: operator '+' cannot be applied to pointer and string\n --> script:1:32\n  |\n1 | BEGIN { $x = (uint32 *)1; $y = $x + \"a\"; }\n  |                                ^^^^^^^^\n"
    );
}

/// Timer rates are capped where bpftrace's are (the kernel refuses perf
/// sampling above 100000 Hz): a faster one is an error at its line:column.
#[test]
fn timer_rates_above_100_khz_are_errors_at_their_position() {
    for ok in [
        "profile:hz:100000",
        "interval:us:10",
        "interval:hz:99",
        "profile:s:1",
    ] {
        assert!(compile(&format!("{ok} {{ }}"), "script").is_ok(), "{ok}");
    }
    for fast in [
        "profile:hz:1000000000",
        "profile:hz:100001",
        "interval:us:9",
        "p:us:1",
    ] {
        let d = compile(&format!("BEGIN {{ }}\n  {fast} {{ }}"), "t.bt").unwrap_err();
        assert_eq!((d.0[0].line, d.0[0].col), (2, 3), "{fast}");
        assert!(
            d.0[0]
                .message
                .contains("fires more than 100000 times a second, the limit"),
            "{fast}: {d}"
        );
    }
}

/// bpftrace's builtins that run host commands or change the guest are
/// refused at check time, saying why.
#[test]
fn host_and_guest_changing_builtins_say_why_they_are_refused() {
    for (src, why) in [
        (
            "BEGIN { system(\"ls\"); }",
            "system() would run a command on the host",
        ),
        (
            "BEGIN { cat(\"/etc/passwd\"); }",
            "cat() would read a host file",
        ),
        (
            "kprobe:f { signal(9); }",
            "signal() would send a signal inside the guest",
        ),
        (
            "kprobe:f { override(-1); }",
            "override() would change a guest function's return value",
        ),
        (
            "kprobe:f { $x = system(\"ls\"); }",
            "system() would run a command on the host",
        ),
    ] {
        assert!(msg(src).starts_with(why), "{src}: {}", msg(src));
    }
}
