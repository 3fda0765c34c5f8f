//! Attach points: what a probe names (`kprobe:F`, `uprobe:PATH:SYM`,
//! `watchpoint:ADDR:LEN:MODE`, ...) once the checker has read it.

/// One attach point.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProbeSpec {
    Begin,
    End,
    Kprobe {
        target: KprobeTarget,
        offset: u64,
    },
    Kretprobe {
        function: String,
    },
    /// `kfunc:F` (bpftrace's fentry): F's entry, with `args` named and
    /// typed by F's BTF prototype. Served as a breakpoint at F's entry, as
    /// a kprobe is; the difference is the typed view, checked before boot.
    Kfunc {
        function: String,
    },
    /// `kretfunc:F` (fexit): F's return, with the `args` F was entered with
    /// (captured at entry, paired as kretprobes pair calls) and `retval`
    /// typed by the prototype's return type.
    Kretfunc {
        function: String,
    },
    /// `interval:ms:100`: fires on one vCPU every period.
    Interval {
        unit: RateUnit,
        value: u64,
    },
    /// `profile:hz:99`: fires on every vCPU at the rate.
    Profile {
        unit: RateUnit,
        value: u64,
    },
    /// `watchpoint:0xADDR:LEN:MODE` or `watchpoint:SYMBOL[+OFF]:LEN:MODE`:
    /// a hardware data breakpoint.
    Watchpoint {
        addr: WatchAddr,
        len: u8,
        mode: WatchMode,
    },
    /// `vmm:EVENT`: a trace event of the VMM (QEMU) itself.
    Vmm {
        event: String,
    },
    /// `host:tracepoint:SYSTEM:EVENT`: a host kernel tracepoint (Linux
    /// perf), for the VM's vCPU threads.
    HostTracepoint {
        system: String,
        event: String,
    },
    /// `tracepoint:SYSTEM:EVENT`: a guest kernel tracepoint, as a bpftrace
    /// user means it. Only the syscall ones (`syscalls:sys_enter_NAME`,
    /// `syscalls:sys_exit_NAME`, `EVENT` possibly a wildcard) can be served
    /// from outside the guest: each is a kprobe (entry) or kretprobe
    /// (return) on `__x64_sys_NAME`, whose `args` the checker reads as the
    /// guest's tracefs would give them ([`ProbeSpec::syscall_event`]).
    GuestTracepoint {
        system: String,
        event: String,
    },
    /// `uprobe:PATH:SYMBOL`, `uprobe:PATH:0xADDR` (`ret`: `uretprobe:`): a
    /// function of the guest's file PATH, in the processes that map it.
    /// The address comes from a host copy of the ELF, before booting
    /// ([`Program::bind_uprobes`]); `resolved` is `None` until then.
    ///
    /// `usdt:PATH:[PROVIDER:]NAME` is one too ([`UprobeTarget::Usdt`]): a
    /// uprobe at each location the file's `.note.stapsdt` gives the probe,
    /// `resolved` the first and `also` the others.
    Uprobe {
        path: String,
        target: UprobeTarget,
        ret: bool,
        resolved: Option<UserAddr>,
        /// A usdt probe's further locations (inlined into several places),
        /// armed with the same handlers.
        #[serde(default)]
        also: Vec<UserAddr>,
    },
}

/// What a uprobe names in its ELF.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UprobeTarget {
    /// A function symbol (no wildcards).
    Symbol(String),
    /// Bytes into a function (`uprobe:PATH:FUNC+OFFSET`): an instruction
    /// boundary inside it, checked against the ELF's code.
    SymbolOffset(String, u64),
    /// A virtual address as the ELF's symbols give them (bpftrace's
    /// `uprobe:PATH:0xADDR`).
    Address(u64),
    /// A USDT probe (bpftrace's `usdt:PATH:PROVIDER:NAME`, or
    /// `usdt:PATH:NAME` for the name under any provider).
    Usdt {
        provider: Option<String>,
        name: String,
    },
}

/// Where a uprobe's instruction is: its virtual address as the ELF's
/// symbols give it, its offset in the file (what a process's mapping of
/// the file must place at the address it runs at) and the symbol it falls
/// in. A `relocatable` file (PIE, shared library) runs at a different
/// address in each process: `vaddr` is then no run-time address, and the
/// backends find each process's from its mappings of the file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserAddr {
    pub vaddr: u64,
    pub file_offset: u64,
    pub func: String,
    #[serde(default)]
    pub relocatable: bool,
    /// The file's guest path as the guest kernel names a mapping of it:
    /// symlinks and bpftrace's library names (`libc`) resolved.
    pub file: String,
    /// A usdt location's argument string from its note (`-4@%edi
    /// 8@-16(%rbp)`), from which its block's `argN` are read.
    #[serde(default)]
    pub usdt_args: Option<String>,
}

/// Unit of an `interval`/`profile` probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RateUnit {
    S,
    Ms,
    Us,
    /// `value` is a frequency, not a period.
    Hz,
}

impl RateUnit {
    pub fn name(self) -> &'static str {
        match self {
            RateUnit::S => "s",
            RateUnit::Ms => "ms",
            RateUnit::Us => "us",
            RateUnit::Hz => "hz",
        }
    }

    /// Period in nanoseconds of `value` in this unit (saturating; never 0).
    pub fn period_ns(self, value: u64) -> u64 {
        let ns = match self {
            RateUnit::S => value.saturating_mul(1_000_000_000),
            RateUnit::Ms => value.saturating_mul(1_000_000),
            RateUnit::Us => value.saturating_mul(1_000),
            RateUnit::Hz => 1_000_000_000 / value.max(1),
        };
        ns.max(1)
    }
}

/// Access that triggers a watchpoint.
/// Where a watchpoint watches: an address as the guest sees it, or a
/// kernel symbol (plus an offset), placed with the KASLR slide once the
/// guest is found, since under KASLR no address is known before boot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WatchAddr {
    Address(u64),
    Symbol { name: String, offset: u64 },
}

impl std::fmt::Display for WatchAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchAddr::Address(a) => write!(f, "{a:#x}"),
            WatchAddr::Symbol { name, offset: 0 } => f.write_str(name),
            WatchAddr::Symbol { name, offset } => write!(f, "{name}+{offset:#x}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WatchMode {
    Read,
    Write,
    ReadWrite,
}

impl WatchMode {
    pub fn name(self) -> &'static str {
        match self {
            WatchMode::Read => "r",
            WatchMode::Write => "w",
            WatchMode::ReadWrite => "rw",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KprobeTarget {
    /// Function name; may contain `*`/`?` wildcards (the engine expands them).
    Function(String),
    Address(u64),
}

impl ProbeSpec {
    /// bpftrace-style probe name, e.g. `kprobe:vfs_read+16`.
    pub fn name(&self) -> String {
        match self {
            ProbeSpec::Begin => "BEGIN".into(),
            ProbeSpec::End => "END".into(),
            ProbeSpec::Kprobe { target, offset } => {
                let t = match target {
                    KprobeTarget::Function(f) => f.clone(),
                    KprobeTarget::Address(a) => format!("{a:#x}"),
                };
                if *offset != 0 {
                    format!("kprobe:{t}+{offset}")
                } else {
                    format!("kprobe:{t}")
                }
            }
            ProbeSpec::Kretprobe { function } => format!("kretprobe:{function}"),
            ProbeSpec::Kfunc { function } => format!("kfunc:{function}"),
            ProbeSpec::Kretfunc { function } => format!("kretfunc:{function}"),
            ProbeSpec::Interval { unit, value } => format!("interval:{}:{value}", unit.name()),
            ProbeSpec::Profile { unit, value } => format!("profile:{}:{value}", unit.name()),
            ProbeSpec::Watchpoint { addr, len, mode } => {
                format!("watchpoint:{addr}:{len}:{}", mode.name())
            }
            ProbeSpec::Vmm { event } => format!("vmm:{event}"),
            ProbeSpec::HostTracepoint { system, event } => {
                format!("host:tracepoint:{system}:{event}")
            }
            ProbeSpec::GuestTracepoint { system, event } => format!("tracepoint:{system}:{event}"),
            ProbeSpec::Uprobe {
                path, target, ret, ..
            } => {
                let kind = if *ret { "uretprobe" } else { "uprobe" };
                match target {
                    UprobeTarget::Symbol(s) => format!("{kind}:{path}:{s}"),
                    UprobeTarget::SymbolOffset(s, off) => format!("{kind}:{path}:{s}+{off}"),
                    UprobeTarget::Address(a) => format!("{kind}:{path}:{a:#x}"),
                    UprobeTarget::Usdt {
                        provider: Some(p),
                        name,
                    } => format!("usdt:{path}:{p}:{name}"),
                    UprobeTarget::Usdt {
                        provider: None,
                        name,
                    } => format!("usdt:{path}:{name}"),
                }
            }
        }
    }

    /// Whether handlers of this probe see a call's entry registers
    /// (`arg0`..`arg5`): kprobes and uprobes.
    pub fn is_entry(&self) -> bool {
        matches!(
            self,
            ProbeSpec::Kprobe { .. } | ProbeSpec::Uprobe { ret: false, .. }
        )
    }

    /// Whether handlers of this probe run at a call's return (`retval`).
    pub fn is_return(&self) -> bool {
        matches!(
            self,
            ProbeSpec::Kretprobe { .. } | ProbeSpec::Uprobe { ret: true, .. }
        )
    }

    /// A guest syscall tracepoint's syscall (`openat`, or a pattern such
    /// as `open*`) and whether it fires at the syscall's return
    /// (`sys_exit_*`) rather than its entry.
    pub fn syscall_event(&self) -> Option<(&str, bool)> {
        let ProbeSpec::GuestTracepoint { system, event } = self else {
            return None;
        };
        if system != "syscalls" {
            return None;
        }
        if let Some(n) = event.strip_prefix("sys_enter_") {
            Some((n, false))
        } else {
            event.strip_prefix("sys_exit_").map(|n| (n, true))
        }
    }

    /// A guest `raw_syscalls:sys_enter` (false) or `raw_syscalls:sys_exit`
    /// (true) tracepoint.
    pub fn raw_syscall_event(&self) -> Option<bool> {
        match self {
            ProbeSpec::GuestTracepoint { system, event } if system == "raw_syscalls" => {
                match event.as_str() {
                    "sys_enter" => Some(false),
                    "sys_exit" => Some(true),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The guest function where a `raw_syscalls` event is served, at its
    /// entry, with the syscall's `struct pt_regs *` as its first argument:
    /// every 64-bit syscall enters through `do_syscall_64(regs, nr)`, and
    /// every syscall return the kernel traces (also a new child's first
    /// return, from `ret_from_fork`, and 32-bit ones) goes through
    /// `syscall_exit_to_user_mode(regs)` with the return value in `regs->ax`.
    pub fn raw_syscall_function(exit: bool) -> &'static str {
        if exit {
            "syscall_exit_to_user_mode"
        } else {
            "do_syscall_64"
        }
    }

    /// The guest function a syscall tracepoint probes: `__x64_sys_NAME`
    /// (the 64-bit entry each syscall has; its one argument is the
    /// `struct pt_regs *` of the syscall's registers).
    pub fn syscall_function(syscall: &str) -> String {
        format!("__x64_sys_{syscall}")
    }
}
