//! A VM as `--vm NAME=KEY:VALUE,...` (or a service's `[[vm]]`) names it:
//! its stub, plugin socket, QMP monitor, QEMU log and kernel image.

use std::path::PathBuf;

/// Where a VM's stub is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StubAddr {
    Tcp(String),
    Unix(PathBuf),
}

/// One `--vm NAME=gdb:HOST:PORT[,plugin:SOCKET][,qmp:PATH][,log:PATH][,kernel:IMAGE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    pub gdb: Option<StubAddr>,
    /// The socket of vmprobe's plugin in the VM's QEMU.
    pub plugin: Option<PathBuf>,
    pub qmp: Option<PathBuf>,
    /// QEMU's log file (`-D PATH -msg timestamp=on`), for `vmm:` probes.
    pub log: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
}

/// Parses a `--vm` value; the error names the part that is wrong.
/// `localhost`, 127.0.0.0/8 or `[::1]`.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub fn parse_vm_spec(text: &str) -> Result<VmSpec, String> {
    let (name, rest) = text.split_once('=').ok_or_else(|| {
        format!("'{text}': expected NAME=gdb:HOST:PORT[,plugin:SOCKET][,qmp:PATH][,log:PATH][,kernel:IMAGE]")
    })?;
    let mut spec = VmSpec::named(name)?;
    for part in rest.split(',') {
        let (key, value) = part.split_once(':').ok_or_else(|| {
            format!("'{part}': expected KEY:VALUE (gdb:, plugin:, qmp:, log: or kernel:)")
        })?;
        set_vm_key(&mut spec, key, value)?;
    }
    if spec.gdb.is_none() && spec.qmp.is_none() && spec.plugin.is_none() {
        return Err(format!(
            "'{text}': give gdb:HOST:PORT (or qmp:PATH to open one), or plugin:SOCKET"
        ));
    }
    Ok(spec)
}

impl VmSpec {
    /// A VM with a name and, as yet, no way to reach it.
    pub fn named(name: &str) -> Result<VmSpec, String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "'{name}': a VM name is letters, digits, '-' and '_'"
            ));
        }
        Ok(VmSpec {
            name: name.to_string(),
            gdb: None,
            plugin: None,
            qmp: None,
            log: None,
            kernel: None,
        })
    }
}

/// One `KEY:VALUE` of a VM (`--vm`, or a `[[vm]]` field of a service's
/// configuration).
pub fn set_vm_key(spec: &mut VmSpec, key: &str, value: &str) -> Result<(), String> {
    match key {
        "gdb" => {
            spec.gdb = Some(match value.strip_prefix("unix:") {
                Some(path) => StubAddr::Unix(PathBuf::from(path)),
                None => {
                    let (host, port) = value
                        .rsplit_once(':')
                        .ok_or_else(|| format!("'{value}': expected HOST:PORT or unix:PATH"))?;
                    port.parse::<u16>()
                        .map_err(|_| format!("'{port}': not a TCP port"))?;
                    if !is_loopback(host) {
                        return Err(format!(
                            "'{host}' is not a loopback address: a GDB stub gives whoever reaches it \
                             the VM, so vmprobe talks to stubs on this machine only (forward a remote one: \
                             ssh -L {port}:localhost:{port} HOST)"
                        ));
                    }
                    StubAddr::Tcp(format!("{host}:{port}"))
                }
            })
        }
        "qmp" => spec.qmp = Some(PathBuf::from(value)),
        "plugin" => spec.plugin = Some(PathBuf::from(value)),
        "log" => spec.log = Some(PathBuf::from(value)),
        "kernel" => spec.kernel = Some(PathBuf::from(value)),
        other => {
            return Err(format!(
                "'{other}': unknown key (gdb, plugin, qmp, log or kernel)"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_specs() {
        assert_eq!(
            parse_vm_spec("web=gdb:127.0.0.1:1234,kernel:/boot/vmlinuz").unwrap(),
            VmSpec {
                name: "web".into(),
                gdb: Some(StubAddr::Tcp("127.0.0.1:1234".into())),
                plugin: None,
                qmp: None,
                log: None,
                kernel: Some("/boot/vmlinuz".into()),
            }
        );
        assert_eq!(
            parse_vm_spec("p=plugin:/run/p.sock").unwrap().plugin,
            Some("/run/p.sock".into())
        );
        assert_eq!(
            parse_vm_spec("k=qmp:/run/k.qmp,log:/run/k.log")
                .unwrap()
                .log,
            Some("/run/k.log".into())
        );
        assert_eq!(
            parse_vm_spec("a=gdb:unix:/run/a.sock,qmp:/run/a.qmp")
                .unwrap()
                .gdb,
            Some(StubAddr::Unix("/run/a.sock".into()))
        );
        for bad in [
            "gdb:127.0.0.1:1",
            "=gdb:h:1",
            "a b=gdb:h:1",
            "a=gdb:h",
            "a=gdb:h:port",
            "a=kernel:/x",
            "a=log:/x",
            "a=foo:bar",
            "a=gdb",
        ] {
            assert!(parse_vm_spec(bad).is_err(), "{bad} should be refused");
        }
        // A stub gives away the VM: on this machine only.
        for remote in [
            "a=gdb:0.0.0.0:1234",
            "a=gdb:10.0.0.5:1234",
            "a=gdb:[::]:1",
            "a=gdb:example.org:1",
        ] {
            let e = parse_vm_spec(remote).unwrap_err();
            assert!(e.contains("is not a loopback address"), "{remote}: {e}");
        }
        for local in ["a=gdb:localhost:1", "a=gdb:127.0.0.2:1", "a=gdb:[::1]:1"] {
            assert!(parse_vm_spec(local).is_ok(), "{local}");
        }
    }
}
