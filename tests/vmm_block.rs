//! The VMM layer on the block path (issue 5): the guest reads its virtio
//! disk (`vmprobe run --disk`), and QEMU's own trace events — virtqueue
//! notifications, virtio-blk requests and their completions, the block
//! layer's reads — are counted by one script. The guest kernel's own
//! `block:block_rq_issue` tracepoint is the ground truth: QEMU sees exactly
//! the requests, and the sectors, that the guest issued.

mod support;
use support::*;

#[test]
fn virtio_blk_requests_equal_the_guests_block_requests() {
    let disk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(disk.path(), vec![0x5a; 1 << 20]).unwrap();
    let program = r#"
vmm:virtio_queue_notify { @notify = count(); }
vmm:virtio_blk_handle_read { @reads = count(); @sectors = sum(args.nsectors); }
vmm:virtio_blk_req_complete { @complete[args.status] = count(); }
vmm:blk_co_preadv { @bytes = sum(args.bytes); }
"#;
    let workload = "cd /sys/kernel/tracing && echo 1 > events/block/block_rq_issue/enable && \
        dd if=/dev/vda of=/dev/null bs=4096 count=64 2>/dev/null; \
        echo 0 > events/block/block_rq_issue/enable; \
        grep block_rq_issue trace | sed 's/^/GT /' > /tmp/gt.txt; cat /tmp/gt.txt";
    let out = run_bounded(
        vmprobe()
            .args(["run", "--console", "--disk"])
            .arg(disk.path())
            .args(["-e", program, "--", workload]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "vmprobe failed: {stderr}");
    // `dd-96 [000] ..... 7.75: block_rq_issue: 254,0 RA 16384 () 0 + 32 [dd]`:
    // device, flags, bytes, (), sector + count.
    let (mut requests, mut sectors) = (0, 0);
    for line in stderr.lines().filter(|l| l.starts_with("GT ")) {
        let fields: Vec<&str> = line
            .split("block_rq_issue: ")
            .nth(1)
            .unwrap()
            .split(' ')
            .collect();
        assert!(fields[1].starts_with('R'), "only reads: {line}");
        requests += 1;
        sectors += fields[6].parse::<u64>().unwrap();
    }
    assert!(requests > 0, "the guest issued no request:\n{stderr}");
    assert_eq!(map_value(&stdout, "reads"), requests, "{stdout}");
    assert_eq!(map_value(&stdout, "sectors"), sectors, "{stdout}");
    assert_eq!(
        keyed_map(&stdout, "complete"),
        [(0, requests)].into(),
        "{stdout}"
    );
    assert_eq!(map_value(&stdout, "bytes"), sectors * 512, "{stdout}");
    // A guest that runs on (the plugin stops nothing) may queue two
    // requests under one notification (virtio's notification suppression).
    assert!(map_value(&stdout, "notify") > 0, "{stdout}");
}
