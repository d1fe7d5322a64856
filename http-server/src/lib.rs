//! HTTP/1.1 for the guests' `http` app, without I/O: a [`Connection`] takes the bytes a TCP
//! connection received ([`Connection::receive`]) and gives the bytes to send
//! ([`Connection::output`], or [`Connection::peek_output`] and [`Connection::consume_output`]),
//! as much as the socket has room for, one response at a time and in request order
//! (pipelining); it says when the connection is to be closed ([`Connection::is_finished`]) and
//! when a client took too long ([`Connection::check_timeouts`]). The [`Server`] holds what all
//! connections share: the guest's identity for the index page, the limits, and the counters.
//!
//! Served: `GET` and `HEAD` of `/` (a page naming the guest) and `/bytes/N` (N bytes, byte i
//! being `i % 251`, generated as it is sent: N may be far larger than the heap). Every response
//! has `Content-Length`; HTTP/1.1 connections stay open unless the client says
//! `Connection: close`, HTTP/1.0 ones close unless it says `keep-alive`. Refused: other methods
//! (405, `Allow: GET, HEAD`), other paths (404), a malformed head (400), a head over the limit
//! (431), a version other than 1.x (505), a head not complete in time (408); a connection beyond
//! the server's limit gets 503 ([`Connection::refused`]).

#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod request;
pub mod response;

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use core::fmt;
pub use request::{Method, Reason, Rejection, Request, RequestReader, Resource, DEFAULT_MAX_HEAD_BYTES};
pub use response::{fill_pattern, Body, Response, Status, PATTERN_PERIOD};

/// Who serves: named on the index page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    pub id: u32,
    pub ipv4: [u8; 4],
}

/// Limits every connection is held to. Times are in milliseconds of any clock that does not go
/// backwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A request's head (request line, header fields, blank line) may be at most this long.
    pub max_head_bytes: usize,
    /// A connection on which nothing moves, either way, for this long is ended.
    pub idle_timeout_ms: u64,
    /// A request's head must be complete this long after its first byte arrived (or after the
    /// previous response was sent, if its first bytes came before): a client that trickles its
    /// head cannot hold a connection for ever by sending a byte now and then.
    pub head_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_head_bytes: DEFAULT_MAX_HEAD_BYTES, idle_timeout_ms: 30_000, head_timeout_ms: 10_000 }
    }
}

/// What the server did, for the app to print.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections served (accepted within the limit).
    pub connections: u64,
    /// Connections beyond the limit, answered with 503 and closed.
    pub refused: u64,
    /// Connections ended because nothing moved for the idle timeout.
    pub idle_timeouts: u64,
    /// Connections that ended cleanly (both sides closed), refused ones included.
    pub closed: u64,
    /// Connections that ended otherwise: reset by the peer, or aborted.
    pub resets: u64,
    /// Well-formed request heads taken.
    pub requests: u64,
    /// Responses started, by status ([`Status::index`]).
    pub responses: [u64; Status::COUNT],
    /// Responses that never went out whole (their connection ended first).
    pub incomplete: u64,
    /// Body bytes handed to the sockets.
    pub body_bytes: u64,
}

impl Counters {
    /// Connections open now: accepted or refused, and not yet ended.
    pub fn active(&self) -> u64 {
        (self.connections + self.refused).saturating_sub(self.closed + self.resets)
    }

    pub fn responses_with(&self, status: Status) -> u64 {
        self.responses[status.index()]
    }

    /// Responses started with a 4xx or 5xx status.
    pub fn error_responses(&self) -> u64 {
        Status::ALL.iter().filter(|s| s.code() >= 400).map(|&s| self.responses_with(s)).sum()
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections={} refused={} active={} closed={} resets={} idle_timeouts={} requests={}",
            self.connections,
            self.refused,
            self.active(),
            self.closed,
            self.resets,
            self.idle_timeouts,
            self.requests
        )?;
        for status in Status::ALL {
            write!(f, " status_{}={}", status.code(), self.responses_with(status))?;
        }
        write!(f, " incomplete={} body_bytes={}", self.incomplete, self.body_bytes)
    }
}

/// What all connections of one server share.
#[derive(Clone, Debug)]
pub struct Server {
    pub limits: Limits,
    pub counters: Counters,
    /// The index page, built once: responses share it.
    index: Rc<[u8]>,
}

const ALLOW: &str = "Allow: GET, HEAD\r\n";
const TEXT: &str = "text/plain; charset=utf-8";

impl Server {
    pub fn new(site: &Site, limits: Limits) -> Self {
        Server { limits, counters: Counters::default(), index: index_page(site).into_bytes().into() }
    }

    /// The answer to a well-formed request (counted).
    pub fn respond(&mut self, request: &Request) -> Response {
        self.counters.requests += 1;
        let head_only = request.method == Method::Head;
        let close = !request.keep_alive;
        let response = match (request.method, request.resource) {
            (Method::Other, _) => Response::new(
                Status::MethodNotAllowed,
                TEXT,
                Body::text(Status::MethodNotAllowed.text()),
                head_only,
                close,
                ALLOW,
            ),
            (_, Resource::Index) => {
                let page = Body::Shared(Rc::clone(&self.index));
                Response::new(Status::Ok, "text/html; charset=utf-8", page, head_only, close, "")
            }
            (_, Resource::Bytes(n)) => {
                Response::new(Status::Ok, "application/octet-stream", Body::Pattern(n), head_only, close, "")
            }
            (_, Resource::BadCount) => {
                let why = Body::text("400 Bad Request: N in /bytes/N must be a decimal number below 2^64\n");
                Response::new(Status::BadRequest, TEXT, why, head_only, close, "")
            }
            (_, Resource::NotFound) => {
                Response::new(Status::NotFound, TEXT, Body::text(Status::NotFound.text()), head_only, close, "")
            }
        };
        self.count(&response);
        response
    }

    /// The answer to a refused head (counted); it closes the connection.
    pub fn reject(&mut self, rejection: &Rejection) -> Response {
        let status = match rejection.reason {
            Reason::Malformed(_) => Status::BadRequest,
            Reason::HeadTooLarge => Status::HeadersTooLarge,
            Reason::VersionNotSupported => Status::VersionNotSupported,
        };
        let body = match rejection.reason {
            Reason::Malformed(why) => Body::Text(["400 Bad Request: ", why, "\n"]),
            _ => Body::text(status.text()),
        };
        let response = Response::new(status, TEXT, body, rejection.head_only, true, "");
        self.count(&response);
        response
    }

    /// An answer that closes the connection with `status` (408, 503; counted).
    fn closing(&mut self, status: Status, extra: &'static str) -> Response {
        let response = Response::new(status, TEXT, Body::text(status.text()), false, true, extra);
        self.count(&response);
        response
    }

    fn count(&mut self, response: &Response) {
        self.counters.responses[response.status().index()] += 1;
    }
}

/// The index page: the guest's name, id and address.
fn index_page(site: &Site) -> String {
    let Site { name, id, ipv4: [a, b, c, d] } = site;
    let name = escape_html(name);
    format!(
        "<!doctype html>\n<html><head><title>{name}</title></head><body>\n<h1>{name}</h1>\n\
         <p>Guest {id} at {a}.{b}.{c}.{d}, served by an isolation-kernel guest.</p>\n\
         <p><code>GET /bytes/N</code>: N bytes, byte i being i % 251.</p>\n</body></html>\n"
    )
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Why [`Connection::check_timeouts`] says a connection should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    /// Nothing moved for the idle timeout. `stalled`: a response was still going out (the peer
    /// stopped reading), so there is no clean end: abort. Otherwise close.
    Idle { stalled: bool },
    /// A request head was not complete in time: a 408 is queued, and the connection ends after
    /// it (keep sending; [`Connection::is_finished`] says when).
    Head,
}

/// How a connection ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Both sides closed.
    Closed,
    /// Reset by the peer, or aborted here.
    Reset,
}

/// One HTTP connection's state: the request bytes received, the response going out.
#[derive(Debug)]
pub struct Connection {
    reader: RequestReader,
    response: Option<Response>,
    /// No further request is read: the response in progress, if any, is the last.
    last: bool,
    /// The peer sent its FIN: requests complete by then are answered, then the connection ends.
    peer_closed: bool,
    last_progress_ms: u64,
    /// When the head now awaited started to count against the head timeout.
    head_since_ms: Option<u64>,
    /// Refused: it only answers 503 ([`Self::refused`]).
    refusal: bool,
}

impl Connection {
    /// A new connection (counted), accepted at `now_ms`. Its request buffer (the head limit) is
    /// taken from the heap now, the only allocation a connection makes; if the heap cannot hold
    /// it, the connection is refused instead ([`Self::refused`]).
    pub fn new(server: &mut Server, now_ms: u64) -> Self {
        let reader = RequestReader::new(server.limits.max_head_bytes);
        if !reader.has_buffer() {
            return Self::refused(server, now_ms);
        }
        server.counters.connections += 1;
        Connection {
            reader,
            response: None,
            last: false,
            peer_closed: false,
            last_progress_ms: now_ms,
            head_since_ms: None,
            refusal: false,
        }
    }

    /// A connection beyond the server's limit: it reads nothing and answers 503 with
    /// `Retry-After`, then ends (counted as refused).
    pub fn refused(server: &mut Server, now_ms: u64) -> Self {
        server.counters.refused += 1;
        let response = server.closing(Status::ServiceUnavailable, "Retry-After: 1\r\n");
        Connection {
            reader: RequestReader::new(0),
            response: Some(response),
            last: true,
            peer_closed: false,
            last_progress_ms: now_ms,
            head_since_ms: None,
            refusal: true,
        }
    }

    /// Whether this connection was refused (it answers 503 and ends).
    pub fn is_refusal(&self) -> bool {
        self.refusal
    }

    /// Whether [`Self::receive`] would take bytes now. While it would not (the head limit's
    /// worth of pipelined bytes waits behind a long response), the socket keeps them and TCP's
    /// window makes the client wait.
    pub fn wants_input(&self) -> bool {
        self.input_room() > 0
    }

    /// How many bytes [`Self::receive`] takes now (`usize::MAX` once input is only dropped):
    /// read no more than this from the socket, and the rest waits there.
    pub fn input_room(&self) -> usize {
        if self.last {
            usize::MAX
        } else {
            self.reader.takes()
        }
    }

    /// Takes received bytes; returns how many (the caller keeps the rest for later). Bytes after
    /// the last request (one that closes the connection) are taken and dropped.
    pub fn receive(&mut self, data: &[u8], now_ms: u64) -> usize {
        if data.is_empty() {
            return 0;
        }
        self.last_progress_ms = now_ms;
        if self.last {
            return data.len();
        }
        let taken = self.reader.push(data);
        if self.response.is_none() && self.head_since_ms.is_none() && self.reader.has_pending() {
            self.head_since_ms = Some(now_ms);
        }
        taken
    }

    /// The peer will send nothing more (its FIN): requests complete by now are answered, a
    /// partial one is dropped, then the connection is finished.
    pub fn peer_closed(&mut self) {
        self.peer_closed = true;
    }

    /// Makes sure a response is going out if one is due: starts the answer to the next request
    /// (counting it) if the last one is done.
    fn prepare(&mut self, server: &mut Server) {
        if self.response.is_some() || self.last {
            return;
        }
        match self.reader.next_request() {
            Some(Ok(request)) => {
                let response = server.respond(&request);
                self.last = response.closes();
                self.response = Some(response);
                self.head_since_ms = None;
            }
            Some(Err(rejection)) => {
                self.response = Some(server.reject(&rejection));
                self.last = true;
            }
            None => self.last = self.peer_closed,
        }
    }

    /// Writes the next bytes of the response going out into `out`, without marking them sent
    /// (for a socket that takes a slice and may take less): at most one response's bytes.
    pub fn peek_output(&mut self, server: &mut Server, out: &mut [u8]) -> usize {
        self.prepare(server);
        self.response.as_ref().map_or(0, |response| response.peek(out))
    }

    /// Marks `n` bytes of the last [`Self::peek_output`] sent.
    pub fn consume_output(&mut self, server: &mut Server, n: usize, now_ms: u64) {
        let Some(response) = self.response.as_mut() else { return };
        if n == 0 {
            return;
        }
        server.counters.body_bytes += response.advance(n);
        self.last_progress_ms = now_ms;
        if response.is_done() {
            self.response = None;
            if self.reader.has_pending() {
                self.head_since_ms = Some(now_ms);
            }
        }
    }

    /// Fills `out` with what is to be sent (several responses, if short ones are due) and marks
    /// it sent; returns how many bytes.
    pub fn output(&mut self, server: &mut Server, out: &mut [u8], now_ms: u64) -> usize {
        let mut filled = 0;
        while filled < out.len() {
            let n = self.peek_output(server, &mut out[filled..]);
            if n == 0 {
                break;
            }
            self.consume_output(server, n, now_ms);
            filled += n;
        }
        filled
    }

    /// Whether everything due has been handed out and the connection is to be closed (the
    /// caller closes its socket, letting what it holds go out first).
    pub fn is_finished(&self) -> bool {
        self.last && self.response.is_none()
    }

    /// Whether a response is still going out.
    pub fn is_responding(&self) -> bool {
        self.response.is_some()
    }

    /// The connection has ended, cleanly (`Ending::Closed`) or not; a response still going out
    /// is counted as incomplete.
    pub fn end(self, server: &mut Server, how: Ending) {
        match how {
            Ending::Closed => server.counters.closed += 1,
            Ending::Reset => server.counters.resets += 1,
        }
        if self.response.is_some() {
            server.counters.incomplete += 1;
        }
    }

    /// The earliest time [`Self::check_timeouts`] could end the connection.
    pub fn deadline(&self, limits: &Limits) -> u64 {
        let idle = self.last_progress_ms.saturating_add(limits.idle_timeout_ms);
        match self.head_deadline(limits) {
            Some(head) => head.min(idle),
            None => idle,
        }
    }

    fn head_deadline(&self, limits: &Limits) -> Option<u64> {
        let since = self.head_since_ms.filter(|_| self.response.is_none() && !self.last)?;
        Some(since.saturating_add(limits.head_timeout_ms))
    }

    /// Whether the connection has taken too long at `now_ms`. For [`Timeout::Head`] a 408 is
    /// queued (counted); for [`Timeout::Idle`] the caller ends the connection (counted).
    pub fn check_timeouts(&mut self, server: &mut Server, now_ms: u64) -> Option<Timeout> {
        let limits = server.limits;
        if now_ms >= self.last_progress_ms.saturating_add(limits.idle_timeout_ms) {
            server.counters.idle_timeouts += 1;
            let stalled = self.response.take().is_some();
            if stalled {
                server.counters.incomplete += 1;
            }
            self.last = true;
            return Some(Timeout::Idle { stalled });
        }
        if self.head_deadline(&limits).is_some_and(|deadline| now_ms >= deadline) {
            self.response = Some(server.closing(Status::RequestTimeout, ""));
            self.last = true;
            return Some(Timeout::Head);
        }
        None
    }
}

#[cfg(test)]
mod tests;
