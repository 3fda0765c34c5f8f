//! `vmprobe attach --config FILE`, the service mode: a configuration that
//! is wrong is refused in one line before anything is attached, and a VM
//! whose QEMU is killed and started again is attached again, its counts
//! going on from where they were.

mod support;
use std::path::Path;
use support::*;

/// Runs `attach --config` on `text`; returns (exit code, stderr).
fn attach_config(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("svc.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_bounded(vmprobe().args(["attach", "--config"]).arg(&path), RUN_LIMIT);
    (out.status.code(), text(&out.stderr))
}

#[test]
fn a_bad_config_is_one_line_and_exit_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.toml");
    let file = file.display();
    // A socket that exists nowhere: had vmprobe tried to attach, the error
    // would be about connecting.
    let vm = "[[vm]]\nname = \"vm0\"\ngdb = \"unix:/nonexistent/vm0.gdb\"\n";
    let cases = [
        // Invalid TOML: where the parser stopped.
        (
            format!("program = \"BEGIN {{ exit(); }}\"\n{vm}qmp = \n"),
            format!("{file}:5:7: invalid string"),
        ),
        (
            format!("program = \"BEGIN {{ exit(); }}\"\nscirpt = \"x.bt\"\n{vm}"),
            format!("{file}:2:1: unknown field `scirpt`, expected one of"),
        ),
        (
            "program = \"BEGIN { exit(); }\"\n[[vm]]\nname = \"vm0\"\nsocket = \"/x\"\n"
                .to_string(),
            format!("{file}:4:1: unknown field `socket`"),
        ),
        (
            vm.to_string(),
            format!("{file}: no program: give `script = \"FILE\"` or `program = \"...\"`"),
        ),
        (
            "program = \"BEGIN { exit(); }\"\n[[vm]]\nname = \"vm0\"\n".to_string(),
            format!("{file}: [[vm]] 1: 'vm0': no connection"),
        ),
        (
            format!("program = \"BEGIN {{ exit(); }}\"\nmetrics = \"x:y\"\n{vm}"),
            format!("{file}:2:11: "),
        ),
    ];
    for (config, expected) in cases {
        let (code, stderr) = attach_config(dir.path(), &config);
        assert_eq!(code, Some(1), "{config}\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("vmprobe: {expected}")),
            "{config}\nexpected {expected:?}, got {stderr}"
        );
    }
    // A file that is not there.
    let out = run_bounded(
        vmprobe().args(["attach", "--config", "/nonexistent/svc.toml"]),
        RUN_LIMIT,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "vmprobe: /nonexistent/svc.toml: No such file or directory (os error 2)\n"
    );
    // A script file that is not there, named by where it was looked for.
    let (code, stderr) = attach_config(dir.path(), &format!("script = \"missing.bt\"\n{vm}"));
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&dir.path().join("missing.bt").display().to_string()),
        "{stderr}"
    );
    // --config takes the place of --vm and the program.
    let out = run_bounded(
        vmprobe().args(["attach", "--config", "x.toml", "--vm", "a=qmp:/q"]),
        RUN_LIMIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
