//! `/metrics` over HTTP (tiny_http), served by one thread of the caller's
//! choosing until stopped.

use crate::{Error, Format, Snapshot};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the serving loop looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// A bound listener. Binding is separate from serving so that a port in use
/// is an error before anything else starts.
pub struct Server {
    http: tiny_http::Server,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

/// Ends [`Server::serve`] from another thread.
#[derive(Clone)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Server {
    /// `PORT` (on 127.0.0.1) or `ADDR:PORT` (`[ADDR]:PORT` for IPv6).
    pub fn parse_addr(text: &str) -> Result<SocketAddr, Error> {
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            let port = text
                .parse::<u16>()
                .map_err(|_| Error::BadAddress(text.to_string()))?;
            return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        }
        text.parse()
            .map_err(|_| Error::BadAddress(text.to_string()))
    }

    pub fn bind(addr: SocketAddr) -> Result<Server, Error> {
        let http = tiny_http::Server::http(addr).map_err(|e| Error::Bind {
            addr: addr.to_string(),
            why: e.to_string(),
        })?;
        // Port 0 binds a free port: report the one bound.
        let addr = http.server_addr().to_ip().unwrap_or(addr);
        Ok(Server {
            http,
            addr,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// Answers requests until stopped: `GET /metrics` with `source()`'s
    /// snapshot in the format the `Accept` header asks for, anything else
    /// 404. `source` is called once per scrape, before any byte is
    /// written, so whatever it locks is never held across network I/O.
    pub fn serve(&self, source: &(dyn Fn() -> Snapshot + Sync)) {
        while !self.stop.load(Ordering::Relaxed) {
            let request = match self.http.recv_timeout(POLL) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                // A failed accept concerns one client, not the server.
                Err(_) => continue,
            };
            let path = request.url().split('?').next().unwrap_or("");
            let get = matches!(request.method(), tiny_http::Method::Get);
            if path != "/metrics" || !get {
                let _ = request.respond(tiny_http::Response::empty(404));
                continue;
            }
            let accept = request
                .headers()
                .iter()
                .find(|h| h.field.equiv("Accept"))
                .map(|h| h.value.as_str().to_string());
            let format = Format::negotiate(accept.as_deref());
            let body = source().encode(format);
            let header = tiny_http::Header::from_bytes("Content-Type", format.content_type())
                .expect("a constant header is valid");
            // A scraper that went away is its own problem.
            let _ = request.respond(tiny_http::Response::from_string(body).with_header(header));
        }
    }
}
