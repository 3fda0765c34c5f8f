use super::*;

/// A search over in-memory files.
fn files(list: &[(&str, &str)]) -> HeaderSearch {
    let map: HashMap<PathBuf, String> = list
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    HeaderSearch::new(
        vec!["/a".into(), "/b".into()],
        Arc::new(move |p: &Path| {
            map.get(p)
                .cloned()
                .ok_or_else(|| std::io::ErrorKind::NotFound.into())
        }),
    )
}

fn ints(m: &HeaderMacros) -> HashMap<&str, i128> {
    m.ints.iter().map(|(n, v)| (n.as_str(), *v)).collect()
}

#[test]
fn integer_macros_through_nested_includes_and_other_macros() {
    let s = files(&[
        (
            "/b/sys/socket.h",
            "#ifndef _S\n#define _S 1\n#include <bits/socket.h>\n#include <stddef.h>\n#endif\n",
        ),
        (
            "/a/bits/socket.h",
            "/* families */\n#define PF_INET\t2 /* IP */\n#define AF_INET PF_INET\n\
             #define SHIFTED (1U << 4) | \\\n  0x3\n#define NEG (-PF_INET)\n\
             #define CAST ((int) 0)\n#define F(x) ((x) + 1)\n#define USES_F F(PF_INET)\n\
             #define GLUE(a, b) a ## b\n#define PASTED GLUE(PF_, INET)\n#define CH 'A'\n\
             #if L'\\0' - 1 > 0\n#define WIDE 1\n#else\n#define WIDE 2\n#endif\n",
        ),
    ]);
    let m = read(&s, &[("sys/socket.h".into(), false)]);
    let v = ints(&m);
    assert_eq!(v["AF_INET"], 2);
    assert_eq!(v["PF_INET"], 2);
    assert_eq!(v["SHIFTED"], 19);
    assert_eq!(v["NEG"], -2);
    assert_eq!(v["USES_F"], 3);
    assert_eq!(v["PASTED"], 2);
    assert_eq!(v["CH"], 65);
    assert_eq!(v["WIDE"], 2, "wchar_t is signed");
    assert_eq!(v["_S"], 1);
    assert!(!v.contains_key("CAST") && !v.contains_key("F"));
    assert_eq!(m.others["CAST"], "/a/bits/socket.h");
    // stddef.h is nowhere: noted, not fatal.
    assert_eq!(m.notes.len(), 1, "{:?}", m.notes);
    assert!(m.notes[0].starts_with("<stddef.h> was not found in /a, /b"));
}

#[test]
fn conditionals_choose_definitions() {
    let s = files(&[(
        "/a/c.h",
        "#if defined(__x86_64__) && __GNUC__ >= 4\n# define A 1\n#elif 1\n# define A 2\n#else\n# define A 3\n#endif\n\
         #ifdef __has_attribute\n#define HAS 1\n#else\n#define HAS 0\n#endif\n\
         #if __has_include(<c.h>) && !__has_include(<nope.h>)\n#define INC 1\n#endif\n\
         #define USE(F) USE_ ## F\n#define USE_X 1\n#if USE(X)\n#define B 7\n#endif\n\
         #if UNDEFINED_NAME\n#define C 1\n#else\n#define C 0\n#endif\n\
         #define D 5\n#undef D\n#if 0\n#error not taken\n#if nested garbage (\n#endif\n#endif\n",
    )]);
    let m = read(&s, &[("c.h".into(), false)]);
    let v = ints(&m);
    assert_eq!(
        (v["A"], v["HAS"], v["INC"], v["B"], v["C"]),
        (1, 0, 1, 7, 0)
    );
    assert!(!v.contains_key("D"));
    assert!(m.notes.is_empty(), "{:?}", m.notes);
}

#[test]
fn include_next_and_quoted_includes() {
    let s = files(&[
        (
            "/a/l.h",
            "#define FIRST 1\n#include_next <l.h>\n#include \"q.h\"\n",
        ),
        ("/b/l.h", "#define SECOND 2\n"),
        ("/a/q.h", "#define QUOTED 3\n"),
    ]);
    let v = read(&s, &[("l.h".into(), false)]);
    let v = ints(&v);
    assert_eq!((v["FIRST"], v["SECOND"], v["QUOTED"]), (1, 2, 3));
}

#[test]
fn problems_stop_the_reading_with_a_note() {
    let s = files(&[
        (
            "/a/e.h",
            "#define BEFORE 1\n#include \"f.h\"\n#define AFTER 2\n",
        ),
        ("/a/f.h", "#if 1\n#error this platform is wrong\n#endif\n"),
        ("/a/loop.h", "#include <loop.h>\n"),
        ("/a/bad.h", "#if (1\n#endif\n"),
    ]);
    let m = read(&s, &[("e.h".into(), false)]);
    assert!(ints(&m).contains_key("BEFORE") && !ints(&m).contains_key("AFTER"));
    assert!(
        m.notes[0].contains("/a/f.h:2: #error this platform is wrong"),
        "{:?}",
        m.notes
    );
    let m = read(&s, &[("loop.h".into(), false)]);
    assert!(
        m.notes[0].contains("nested more than 200 deep"),
        "{:?}",
        m.notes
    );
    let m = read(&s, &[("bad.h".into(), false)]);
    assert!(
        m.notes[0].contains("/a/bad.h:1: cannot evaluate #if ( 1"),
        "{:?}",
        m.notes
    );
}

#[test]
fn forced_includes_and_defines_come_before_the_first_include() {
    let mut s = files(&[
        (
            "/k/kconfig.h",
            "#include <auto.h>\n#ifdef __KERNEL__\n#define FORCED_SAW_KERNEL 1\n#endif\n",
        ),
        ("/a/auto.h", "#define CONFIG_HZ 250\n"),
        (
            "/a/s.h",
            "#if CONFIG_HZ == 250 && defined(FORCED_SAW_KERNEL)\n#define TASK_RUNNING 0x0000\n#endif\n",
        ),
    ]);
    s.forced = vec!["/k/kconfig.h".into()];
    s.defines = vec![
        ("__KERNEL__".into(), "1".into()),
        ("KBUILD_MODNAME".into(), "\"bpftrace\"".into()),
    ];
    s.about = Some("read: the test's headers".into());
    let m = read(&s, &[("s.h".into(), false)]);
    let v = ints(&m);
    assert_eq!(
        (v["TASK_RUNNING"], v["CONFIG_HZ"], v["FORCED_SAW_KERNEL"]),
        (0, 250, 1)
    );
    // -D names are the command line's, not a header's.
    assert!(!v.contains_key("__KERNEL__") && !m.others.contains_key("KBUILD_MODNAME"));
    assert_eq!(m.notes, ["read: the test's headers"]);
    // A forced header that is missing is noted (clang would stop there).
    s.forced = vec!["/k/missing.h".into()];
    let m = read(&s, &[("s.h".into(), false)]);
    assert!(!ints(&m).contains_key("TASK_RUNNING"));
    assert!(
        m.notes
            .iter()
            .any(|n| n.starts_with("\"/k/missing.h\" was not found")),
        "{:?}",
        m.notes
    );
}

#[test]
fn kernel_search_is_bpftraces_order() {
    let s = HeaderSearch::kernel(
        Path::new("/src"),
        Path::new("/obj"),
        Arc::new(|_: &Path| Err(std::io::ErrorKind::NotFound.into())),
    );
    let dirs: Vec<String> = s.dirs.iter().map(|d| d.display().to_string()).collect();
    assert_eq!(
        dirs,
        [
            "/src/arch/x86/include",
            "/obj/arch/x86/include/generated",
            "/src/include",
            "/obj/include",
            "/src/arch/x86/include/uapi",
            "/obj/arch/x86/include/generated/uapi",
            "/src/include/uapi",
            "/obj/include/generated/uapi",
            "/usr/local/include",
            "/usr/include",
            "/usr/include/x86_64-linux-gnu",
        ]
    );
    assert_eq!(s.forced, [PathBuf::from("/src/include/linux/kconfig.h")]);
    assert!(s.defines.iter().any(|(n, _)| n == "__KERNEL__"));
}
