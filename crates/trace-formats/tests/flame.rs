//! Folded stacks (exact text) and the flame-graph SVG (well-formed XML that
//! names every frame).

use trace_formats::flame::{fold, write_flamegraph, write_folded};

fn stacks() -> Vec<(Vec<&'static str>, u64)> {
    vec![
        (
            vec![
                "entry_SYSCALL_64",
                "do_syscall_64",
                "ksys_write",
                "vfs_write",
            ],
            7,
        ),
        (vec!["entry_SYSCALL_64", "do_syscall_64", "ksys_read"], 3),
        (
            vec![
                "entry_SYSCALL_64",
                "do_syscall_64",
                "ksys_write",
                "vfs_write",
            ],
            5,
        ),
        (
            vec![
                "asm_sysvec_apic_timer_interrupt",
                "sysvec_apic_timer_interrupt",
            ],
            2,
        ),
        (vec!["weird;name", "line\nbreak"], 1),
        (vec!["never"], 0),
    ]
}

#[test]
fn folded_output_is_exact() {
    let lines = fold(stacks());
    let mut out = Vec::new();
    write_folded(&mut out, &lines).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "asm_sysvec_apic_timer_interrupt;sysvec_apic_timer_interrupt 2\n\
         entry_SYSCALL_64;do_syscall_64;ksys_read 3\n\
         entry_SYSCALL_64;do_syscall_64;ksys_write;vfs_write 12\n\
         weird:name;line break 1\n"
    );
}

#[test]
fn leaf_first_stacks_are_reversed_by_the_caller() {
    let leaf_first = [vec!["vfs_write", "ksys_write", "do_syscall_64"]];
    let lines = fold(leaf_first.iter().map(|s| (s.iter().rev(), 4)));
    assert_eq!(lines, ["do_syscall_64;ksys_write;vfs_write 4"]);
}

#[test]
fn svg_is_well_formed_and_names_every_frame() {
    let lines = fold(stacks());
    let mut svg = Vec::new();
    write_flamegraph(&mut svg, &lines, "vmprobe test").unwrap();
    let svg = String::from_utf8(svg).unwrap();
    // inferno writes a DOCTYPE; roxmltree refuses DTDs unless told.
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&svg, opts).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    let all = texts.join("\n");
    assert!(all.contains("vmprobe test"));
    for f in [
        "entry_SYSCALL_64",
        "do_syscall_64",
        "ksys_write",
        "vfs_write",
        "ksys_read",
        "asm_sysvec_apic_timer_interrupt",
        "sysvec_apic_timer_interrupt",
        "weird:name",
        "line break",
    ] {
        // Every frame has a <title> with its name and count, even where the
        // box is too narrow for a visible label.
        assert!(
            doc.descendants().any(|n| n.has_tag_name("title")
                && n.text().is_some_and(|t| t.starts_with(&format!("{f} (")))),
            "frame {f} in the SVG"
        );
    }
    assert!(!all.contains("never"), "zero-count stacks are dropped");
}
