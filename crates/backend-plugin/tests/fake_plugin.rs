//! vmprobe's side of the plugin socket against fake plugins: another
//! version, silence, garbage, a socket that closes mid-run. Each ends in a
//! one-line error in bounded time, never a hang or a panic.

use backend_plugin::{Error, PluginClient};
use plugin_protocol::{FromPlugin, PROTOCOL_VERSION, ToPlugin, read_message, write_message};
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A fake plugin on a fresh socket, served by `serve` in a thread.
fn fake(serve: impl FnOnce(UnixStream) + Send + 'static) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugin.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        if let Ok((conn, _)) = listener.accept() {
            serve(conn);
        }
    });
    (dir, path)
}

fn hello(conn: &mut UnixStream, protocol: u32, plugin: &str) {
    let _ = read_message::<ToPlugin>(conn).unwrap();
    write_message(
        conn,
        &FromPlugin::Hello {
            protocol,
            plugin: plugin.into(),
            vcpus: 1,
        },
    )
    .unwrap();
}

#[test]
fn a_plugin_of_another_version_names_both_versions() {
    let (_dir, path) = fake(|mut c| hello(&mut c, PROTOCOL_VERSION + 1, "9.9.9"));
    let e = PluginClient::connect(&path).err().expect("refused");
    assert!(matches!(e, Error::Version { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("9.9.9"), "{text}");
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(
        text.contains(&format!("protocol {}", PROTOCOL_VERSION + 1)),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text}");
}

#[test]
fn a_silent_plugin_is_a_timeout_not_a_hang() {
    let (_dir, path) = fake(|c| {
        std::thread::sleep(Duration::from_secs(20));
        drop(c);
    });
    let t = Instant::now();
    let e = PluginClient::connect(&path).err().expect("refused");
    assert!(matches!(e, Error::Timeout(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

#[test]
fn garbage_is_a_protocol_error() {
    let (_dir, path) = fake(|mut c| {
        let _ = read_message::<ToPlugin>(&mut c);
        // A frame of 10 bytes that decode to nothing, then a length past the
        // limit.
        let _ = c.write_all(&[10, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5]);
        let _ = c.write_all(&u32::MAX.to_le_bytes());
    });
    let e = PluginClient::connect(&path).err().expect("refused");
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    assert!(e.to_string().contains("malformed"), "{e}");
}

#[test]
fn a_socket_that_closes_mid_request_ends_it() {
    let (_dir, path) = fake(|mut c| {
        hello(&mut c, PROTOCOL_VERSION, env!("CARGO_PKG_VERSION"));
        // Read the request, then go away without an answer.
        let _ = read_message::<ToPlugin>(&mut c);
    });
    let mut client = PluginClient::connect(&path).unwrap();
    let t = Instant::now();
    let e = client
        .read_memory(0xffff_ffff_8100_0000, 16)
        .expect_err("failed");
    assert!(matches!(e, Error::Closed), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // And stays an error, never a hang.
    assert!(client.next_event(Duration::from_millis(100)).is_err());
}

#[test]
fn an_error_the_plugin_reports_is_the_request_s_error() {
    let (_dir, path) = fake(|mut c| {
        hello(&mut c, PROTOCOL_VERSION, env!("CARGO_PKG_VERSION"));
        let id = match read_message::<ToPlugin>(&mut c).unwrap() {
            ToPlugin::Maps { id, .. } => id,
            other => panic!("{other:?}"),
        };
        // Output for the run first: kept for the serve loop, not taken for
        // the answer.
        write_message(&mut c, &FromPlugin::Exit).unwrap();
        write_message(
            &mut c,
            &FromPlugin::Error {
                id,
                message: "nothing is attached".into(),
            },
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    let mut client = PluginClient::connect(&path).unwrap();
    let e = client.maps().expect_err("failed");
    assert_eq!(e.to_string(), "the plugin: nothing is attached");
    assert!(matches!(
        client.next_event(Duration::from_secs(1)).unwrap(),
        Some(FromPlugin::Exit)
    ));
}

#[test]
fn no_socket_is_a_clear_error() {
    let e = PluginClient::connect(std::path::Path::new("/nonexistent/plugin.sock"))
        .err()
        .expect("refused");
    assert!(
        e.to_string()
            .starts_with("connecting to the plugin at /nonexistent/plugin.sock"),
        "{e}"
    );
}

/// A client dropped (an attach that failed, say) closes the connection,
/// though its reader thread still holds the socket: the plugin, which
/// serves one vmprobe at a time, is free again at once.
#[test]
fn a_dropped_client_closes_the_connection() {
    let (closed_tx, closed) = std::sync::mpsc::channel();
    let (_dir, path) = fake(move |mut c| {
        hello(&mut c, PROTOCOL_VERSION, "0.1.0");
        let end = read_message::<ToPlugin>(&mut c);
        let _ = closed_tx.send(end.is_err());
    });
    let client = PluginClient::connect(&path).unwrap();
    drop(client);
    assert_eq!(
        closed.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "the plugin saw the connection close"
    );
}
