//! Recipes found in the default guest's real image (`VMPROBE_TEST_VMLINUZ`).

use kernel_image::{KernelSections, KernelSymbols};
use kernel_tracepoints::{EventFinder, FieldKind, FindError, SECTIONS};

fn image() -> Option<std::path::PathBuf> {
    match std::env::var_os("VMPROBE_TEST_VMLINUZ") {
        Some(p) => Some(p.into()),
        None => {
            eprintln!("VMPROBE_TEST_VMLINUZ unset: skipped");
            None
        }
    }
}

#[test]
fn the_events_bpftrace_tools_use_are_found() {
    let Some(path) = image() else { return };
    let symbols = KernelSymbols::load(&path, None).unwrap();
    let mut names = SECTIONS.to_vec();
    names.push(".BTF");
    let sections = KernelSections::load(&path, &names, None).unwrap();
    let btf = kernel_btf::Btf::parse(&sections.get(".BTF").unwrap().data).unwrap();
    let finder = EventFinder::new(&symbols, &sections, &btf);
    for (system, event) in [
        ("sched", "sched_switch"),
        ("sched", "sched_wakeup"),
        ("sched", "sched_wakeup_new"),
        ("sched", "sched_process_fork"),
        ("block", "block_rq_issue"),
        ("skb", "kfree_skb"),
        ("writeback", "writeback_start"),
        ("writeback", "writeback_written"),
    ] {
        let r = finder.find(system, event).unwrap();
        eprintln!(
            "{system}:{event}: {} sites in {:?}",
            r.sites.len(),
            r.sites.iter().map(|s| s.func.as_str()).collect::<Vec<_>>()
        );
        for f in &r.fields {
            eprintln!(
                "    {} {}; offset:{}; size:{}; signed:{}; {:?}",
                f.c_type, f.name, f.offset, f.size, f.signed as u8, f.kind
            );
        }
        assert!(!r.sites.is_empty() && !r.fields.is_empty());
    }
    let sw = finder.find("sched", "sched_switch").unwrap();
    let names: Vec<_> = sw.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "prev_comm",
            "prev_pid",
            "prev_prio",
            "prev_state",
            "next_comm",
            "next_pid",
            "next_prio"
        ]
    );
    assert_eq!(sw.fields[0].kind, FieldKind::Chars);
    assert!(matches!(
        finder.find("block", "sched_switch"),
        Err(FindError::OtherSystem { .. })
    ));
    assert!(matches!(
        finder.find("sched", "no_such_event"),
        Err(FindError::NoSuchTracepoint { .. })
    ));
    let all = finder.events();
    eprintln!("{} events", all.len());
    assert!(all.contains(&("sched".into(), "sched_switch".into())));
}
