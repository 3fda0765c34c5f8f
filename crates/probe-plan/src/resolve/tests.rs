use super::*;

#[test]
fn user_symbols_cover_their_functions_only() {
    let mut u = UserSymbols::default();
    u.add(
        "/bin/a",
        vec![(0x2000, 0x10, "g".into()), (0x1000, 0x20, "f".into())],
    );
    assert!(u.knows("/bin/a") && !u.knows("/bin/b"));
    assert_eq!(u.symbolize("/bin/a", 0x1004), Some(("f".into(), 4)));
    assert_eq!(u.symbolize("/bin/a", 0x2000), Some(("g".into(), 0)));
    assert_eq!(u.symbolize("/bin/a", 0x1020), None);
    assert_eq!(u.symbolize("/bin/a", 0x10), None);
    assert_eq!(u.symbolize("/bin/b", 0x1004), None);
}

#[test]
fn a_user_site_runs_the_probes_of_the_file_mapped_there() {
    let probe = |p: &str| -> Arc<str> { p.into() };
    let site = ProbeSite {
        addr: 0x401000,
        func: "main".into(),
        handlers: vec![
            (BlockId(0), probe("uprobe:/bin/a:main")),
            (BlockId(1), probe("uprobe:/bin/b:main")),
        ],
        ret_handlers: vec![(BlockId(2), probe("uretprobe:/bin/a:main"))],
        offset: 0,
        skippable: None,
        entry_args: false,
        user: vec![
            UserFile {
                probe: probe("uprobe:/bin/a:main"),
                path: "/bin/a".into(),
                file_offset: 0x1000,
                relocatable: false,
            },
            UserFile {
                probe: probe("uprobe:/bin/b:main"),
                path: "/bin/b".into(),
                file_offset: 0x1000,
                relocatable: false,
            },
            UserFile {
                probe: probe("uretprobe:/bin/a:main"),
                path: "/bin/a".into(),
                file_offset: 0x1000,
                relocatable: false,
            },
        ],
        event: None,
        modules: Vec::new(),
    };
    let blocks = |h: Vec<(BlockId, Arc<str>)>| h.into_iter().map(|(b, _)| b.0).collect::<Vec<_>>();
    assert_eq!(
        blocks(site.handlers_for(false, Some(("/bin/a", 0x1000)))),
        [0]
    );
    assert_eq!(
        blocks(site.handlers_for(false, Some(("/bin/b", 0x1000)))),
        [1]
    );
    assert_eq!(
        blocks(site.handlers_for(true, Some(("/bin/a", 0x1000)))),
        [2]
    );
    // Another file, another offset in the file, or no file: nothing.
    assert!(
        site.handlers_for(false, Some(("/tmp/a", 0x1000)))
            .is_empty()
    );
    assert!(
        site.handlers_for(false, Some(("/bin/a", 0x2000)))
            .is_empty()
    );
    assert!(site.handlers_for(false, None).is_empty());
    assert!(!site.relocatable());
    assert!(
        site.run_time_addrs("/bin/a", 0x40_0000, 0x40_2000, 0)
            .is_empty()
    );
}

#[test]
fn a_relocatable_site_is_served_at_each_mappings_address() {
    let probe: Arc<str> = "uprobe:libc:getppid".into();
    let site = ProbeSite {
        addr: 0x28_4f0,
        func: "getppid".into(),
        handlers: vec![(BlockId(0), probe.clone())],
        ret_handlers: Vec::new(),
        offset: 0,
        skippable: None,
        entry_args: false,
        user: vec![UserFile {
            probe,
            path: "/lib/libc.so.6".into(),
            file_offset: 0x28_4f0,
            relocatable: true,
        }],
        event: None,
        modules: Vec::new(),
    };
    assert!(site.relocatable());
    // The text mapped at 0x7f00_0002_8000 from file offset 0x28000:
    // vm_start + (file_offset - vm_pgoff * 4096).
    let text = (0x7f00_0002_8000, 0x7f00_0010_0000, 0x28000);
    assert_eq!(
        site.run_time_addrs("/lib/libc.so.6", text.0, text.1, text.2),
        [0x7f00_0002_84f0]
    );
    // A mapping that does not cover the offset, or another file: none.
    assert!(
        site.run_time_addrs("/lib/libc.so.6", 0x7f00_0000_0000, 0x7f00_0002_8000, 0)
            .is_empty()
    );
    assert!(
        site.run_time_addrs(
            "/lib/libc.so.6",
            0x7f00_0010_0000,
            0x7f00_0020_0000,
            0x29000
        )
        .is_empty()
    );
    assert!(
        site.run_time_addrs("/tmp/libc.so.6", text.0, text.1, text.2)
            .is_empty()
    );
    let at = site.at(0x7f00_0002_84f0);
    assert_eq!(at.addr, 0x7f00_0002_84f0);
    assert_eq!(
        at.handlers_for(false, Some(("/lib/libc.so.6", 0x28_4f0)))
            .len(),
        1
    );
}

#[test]
fn a_module_function_is_a_site_placed_where_its_module_is_loaded() {
    let symbols = KernelSymbols::from_symbols(vec![kernel_image::Symbol {
        name: "vfs_read".into(),
        addr: 0xffff_ffff_8100_0000,
        kind: 'T',
    }]);
    let mut program = probe_lang::compile(
        "kprobe:xfs_file_open, kprobe:vfs_read { @a = count(); }
         kretprobe:xfs_file_open { @b = count(); }
         kprobe:xfs_file_open+4 { @c = count(); }",
        "t.bt",
    )
    .unwrap();
    // Unknown names stay unknown: only `xfs_file_open` is in a module.
    let unknown = resolve_probes(
        &probe_lang::compile("kprobe:nowhere {}", "u.bt").unwrap(),
        &symbols,
        0,
    );
    assert!(matches!(unknown, Err(Error::UnknownSymbol { .. })));
    program.bind_module_functions(|name| match name {
        "xfs_file_open" => vec![("xfs_file_open".into(), vec!["xfs".into()])],
        _ => Vec::new(),
    });
    let sites = resolve_probes(&program, &symbols, 0x1000).unwrap();
    assert_eq!(sites.len(), 3, "{sites:?}");
    let vfs = sites.iter().find(|s| &*s.func == "vfs_read").unwrap();
    assert!(!vfs.deferred() && vfs.addr == 0xffff_ffff_8100_1000);
    // Entry and return share the function's site; +4 is its own.
    let open = sites
        .iter()
        .find(|s| &*s.func == "xfs_file_open" && s.offset == 0)
        .unwrap();
    assert!(open.in_module() && open.deferred() && open.addr == 0);
    assert_eq!((open.handlers.len(), open.ret_handlers.len()), (1, 1));
    let functions = [
        ("xfs_file_open".to_string(), 0xffff_ffff_c000_1000),
        ("xfs_file_fsync".to_string(), 0xffff_ffff_c000_2000),
    ];
    assert_eq!(
        open.module_addrs("xfs", &functions),
        [0xffff_ffff_c000_1000]
    );
    assert!(open.module_addrs("ext4", &functions).is_empty());
    let plus4 = sites.iter().find(|s| s.offset == 4).unwrap();
    assert_eq!(
        plus4.module_addrs("xfs", &functions),
        [0xffff_ffff_c000_1004]
    );
    // At its address the site is a kernel site like any other.
    let armed = open.at(0xffff_ffff_c000_1000);
    assert!(!armed.deferred() && !armed.in_module());
}

#[test]
fn a_wildcard_matches_the_images_functions_and_the_modules_within_one_limit() {
    let symbols = KernelSymbols::from_symbols(vec![kernel_image::Symbol {
        name: "xfs_in_image".into(),
        addr: 0xffff_ffff_8100_0000,
        kind: 'T',
    }]);
    let bind = |program: &mut Program, n: usize| {
        program.bind_module_functions(|pattern| {
            assert_eq!(pattern, "xfs_*");
            (0..n)
                .map(|i| (format!("xfs_f{i}"), vec![Arc::<str>::from("xfs")]))
                .collect()
        })
    };
    let mut program = probe_lang::compile("kprobe:xfs_* { @[func] = count(); }", "w.bt").unwrap();
    bind(&mut program, 2);
    let sites = resolve_probes(&program, &symbols, 0).unwrap();
    let mut names: Vec<(&str, bool)> = sites.iter().map(|s| (&*s.func, s.in_module())).collect();
    names.sort();
    assert_eq!(
        names,
        [("xfs_f0", true), ("xfs_f1", true), ("xfs_in_image", false)]
    );
    let mut many = probe_lang::compile("kprobe:xfs_* {}", "m.bt").unwrap();
    bind(&mut many, WILDCARD_LIMIT);
    assert!(matches!(
        resolve_probes(&many, &symbols, 0),
        Err(Error::TooManyMatches { count, .. }) if count == WILDCARD_LIMIT + 1
    ));
}
