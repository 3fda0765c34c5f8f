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
        "error: unknown builtin 'foo'\n --> script:1:17\n  |\n1 | kprobe:f { $x = foo; }\n  |                 ^^^"
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
         --> script:5:12\n  |\n5 | kprobe:g { @x = sum(arg0); }\n  |            ^^^^^^^^^^^^^^"
    );
}

#[test]
fn parse_error_line_col() {
    let d = compile("BEGIN {\n  @x = count(\n}", "s.bt").err().unwrap();
    assert_eq!((d.0[0].line, d.0[0].col), (3, 1));
    assert_eq!(
        d.to_string(),
        "error: expected expression, found '}'\n --> s.bt:3:1\n  |\n3 | }\n  | ^"
    );
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
            "the retval builtin can only be used in kretprobe blocks",
        ),
        (
            "BEGIN { $x = arg0; }",
            "the arg0 builtin can only be used in kprobe blocks",
        ),
        (
            "tracepoint:a:b { }",
            "probe type 'tracepoint' is not supported (supported: BEGIN, END, kprobe, kretprobe, interval, profile, watchpoint)",
        ),
        ("foo:bar { }", "unknown probe type 'foo'"),
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
            "kprobe:f { @a = count(); print(1); }",
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
