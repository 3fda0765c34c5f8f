//! Connecting over TCP or a unix socket, and the handshake.

use super::*;

pub(super) fn map_io_connect(addr: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Connect { addr, source }
}

impl Client {
    /// Connects over TCP (with `TCP_NODELAY`) and performs the handshake.
    /// `timeout` bounds the connect and becomes the reply timeout.
    pub fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<Client, Error> {
        Self::connect_tcp_abortable(addr, timeout, None)
    }

    /// [`connect_tcp`](Self::connect_tcp) with an abort check, kept by the
    /// client (see [`Client::set_abort`]): connecting and the handshake end
    /// with [`Error::Aborted`] soon after it says so.
    pub fn connect_tcp_abortable(
        addr: SocketAddr,
        timeout: Duration,
        abort: Option<AbortCheck>,
    ) -> Result<Client, Error> {
        let deadline = Instant::now() + timeout;
        let s = loop {
            // In attempts of 200 ms, to look at the abort check between.
            let slice = match &abort {
                Some(_) => Duration::from_millis(200),
                None => timeout,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(&addr, slice.min(left).max(Duration::from_millis(1))) {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::TimedOut && Instant::now() < deadline => {
                    if abort.as_ref().is_some_and(|f| f()) {
                        return Err(Error::Aborted);
                    }
                }
                Err(e) => return Err(map_io_connect(addr.to_string())(e)),
            }
        };
        s.set_nodelay(true)?;
        Self::handshake(Conn::Tcp(s), timeout, abort)
    }

    /// Connects to a Unix socket and performs the handshake.
    #[cfg(unix)]
    pub fn connect_unix(path: &std::path::Path, timeout: Duration) -> Result<Client, Error> {
        Self::connect_unix_abortable(path, timeout, false, None)
    }

    /// [`connect_unix`](Self::connect_unix) to a stub that is still
    /// starting: retries while the socket does not exist or refuses (QEMU
    /// binds its socket before it listens on it) until `timeout` has passed.
    #[cfg(unix)]
    pub fn connect_unix_wait(path: &std::path::Path, timeout: Duration) -> Result<Client, Error> {
        Self::connect_unix_abortable(path, timeout, true, None)
    }

    /// [`connect_unix`](Self::connect_unix), or with `wait`
    /// [`connect_unix_wait`](Self::connect_unix_wait), with an abort check
    /// kept by the client (see [`Client::set_abort`]): connecting and the
    /// handshake end with [`Error::Aborted`] soon after it says so.
    #[cfg(unix)]
    pub fn connect_unix_abortable(
        path: &std::path::Path,
        timeout: Duration,
        wait: bool,
        abort: Option<AbortCheck>,
    ) -> Result<Client, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Self::handshake(Conn::Unix(s), timeout, abort),
                Err(e)
                    if wait
                        && matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                        )
                        && Instant::now() < deadline =>
                {
                    if abort.as_ref().is_some_and(|f| f()) {
                        return Err(Error::Aborted);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(map_io_connect(path.display().to_string())(e)),
            }
        }
    }

    pub(super) fn handshake(
        conn: Conn,
        timeout: Duration,
        abort: Option<AbortCheck>,
    ) -> Result<Client, Error> {
        let timeout = timeout.max(Duration::from_millis(1));
        let mut c = Client {
            conn,
            rbuf: vec![0u8; 64 * 1024].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
            dec: Decoder::default(),
            cmd: Vec::with_capacity(256),
            wbuf: Vec::with_capacity(4096),
            wstart: 0,
            ack_mode: true,
            pending_ack: false,
            timeout,
            sock_timeout: None,
            features: Features::default(),
            regmap: Arc::new(RegisterMap::default()),
            selected_g: None,
            selected_c: None,
            trust_stop_thread: false,
            stub_ignores_acks: false,
            running: false,
            p_supported: true,
            pid: None,
            round_trips: 0,
            console: Vec::new(),
            phys_mode: false,
            phys_supported: None,
            abort: None,
            unanswered: false,
            unanswered_asked: None,
            broken: false,
            lost: Default::default(),
            since_packet: 0,
            stall: None,
            stalls_deferred: false,
        };
        c.set_abort(abort);
        c.request_str(
            "qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+;no-resumed+;xmlRegisters=i386",
        )?;
        c.check_error()?;
        c.features = Features::parse_qsupported(&c.dec.payload);
        // Tried even when not advertised (harmless: unknown packets get an
        // empty reply). QEMU 7.2 does not implement it; we then stay in ack
        // mode and piggyback each `+` on the next packet we send.
        c.request_str("QStartNoAckMode")?;
        if c.dec.payload == b"OK" {
            c.flush_ack()?;
            c.ack_mode = false;
            c.features.no_ack = true;
        }
        c.request_str("vCont?")?;
        c.features.vcont = VContSupport::parse(&c.dec.payload);
        // A debugger that died inside `with_physical` leaves QEMU's (global)
        // physical-memory mode on; learn the mode now, so that the first
        // virtual access switches it back.
        c.has_physical_mode()?;
        if c.features.xfer_features {
            let root = c.xfer_read_string("features", "target.xml")?;
            let map = RegisterMap::from_target_xml(&root, &mut |annex| {
                c.xfer_read_string("features", annex)
            })?;
            c.regmap = Arc::new(map);
        }
        Ok(c)
    }
}
