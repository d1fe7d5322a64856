//! Responses as byte streams: a head, then a body that is either a short text or the pattern
//! of `/bytes/N`, generated as it is sent, so a body may be far larger than the heap.

use alloc::rc::Rc;
use core::fmt::{self, Write};

/// The statuses this server answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    HeadersTooLarge,
    ServiceUnavailable,
    VersionNotSupported,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Ok,
        Status::BadRequest,
        Status::NotFound,
        Status::MethodNotAllowed,
        Status::RequestTimeout,
        Status::HeadersTooLarge,
        Status::ServiceUnavailable,
        Status::VersionNotSupported,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::HeadersTooLarge => 431,
            Status::ServiceUnavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::ServiceUnavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }

    /// `<code> <reason>` and a newline: the body of an answer that is only its status.
    pub fn text(self) -> &'static str {
        match self {
            Status::Ok => "200 OK\n",
            Status::BadRequest => "400 Bad Request\n",
            Status::NotFound => "404 Not Found\n",
            Status::MethodNotAllowed => "405 Method Not Allowed\n",
            Status::RequestTimeout => "408 Request Timeout\n",
            Status::HeadersTooLarge => "431 Request Header Fields Too Large\n",
            Status::ServiceUnavailable => "503 Service Unavailable\n",
            Status::VersionNotSupported => "505 HTTP Version Not Supported\n",
        }
    }

    /// Its place in [`Self::ALL`] (for counters).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The period of the `/bytes/N` pattern: byte `i` is `i % 251`.
pub const PATTERN_PERIOD: usize = 251;

/// One period of the pattern, copied out in runs.
const PATTERN: [u8; PATTERN_PERIOD] = {
    let mut period = [0u8; PATTERN_PERIOD];
    let mut i = 0;
    while i < PATTERN_PERIOD {
        period[i] = i as u8;
        i += 1;
    }
    period
};

/// Writes the pattern's bytes `offset..offset + out.len()` into `out`.
pub fn fill_pattern(out: &mut [u8], offset: u64) {
    let mut phase = (offset % PATTERN_PERIOD as u64) as usize;
    let mut at = 0;
    while at < out.len() {
        let run = (PATTERN_PERIOD - phase).min(out.len() - at);
        out[at..at + run].copy_from_slice(&PATTERN[phase..phase + run]);
        at += run;
        phase = 0;
    }
}

/// What follows the head. Nothing here is allocated per response: a connection answers even
/// when the heap is full.
#[derive(Clone, Debug)]
pub enum Body {
    /// Text in static pieces, one after another.
    Text([&'static str; 3]),
    /// A page built once and shared (the index page).
    Shared(Rc<[u8]>),
    /// `len` bytes of the pattern.
    Pattern(u64),
}

impl Body {
    /// One static text.
    pub const fn text(text: &'static str) -> Body {
        Body::Text([text, "", ""])
    }

    fn len(&self) -> u64 {
        match self {
            Body::Text(pieces) => pieces.iter().map(|p| p.len() as u64).sum(),
            Body::Shared(page) => page.len() as u64,
            Body::Pattern(len) => *len,
        }
    }

    /// Writes the body's bytes `offset..offset + out.len()` into `out` (all within the body).
    fn write(&self, offset: u64, out: &mut [u8]) {
        match self {
            Body::Text(pieces) => {
                // A text body is short: its offsets fit in usize.
                let (mut skip, mut at) = (offset as usize, 0);
                for piece in pieces.iter().map(|p| p.as_bytes()) {
                    if at == out.len() {
                        break;
                    }
                    let Some(rest) = piece.get(skip..) else {
                        skip -= piece.len();
                        continue;
                    };
                    skip = 0;
                    let n = rest.len().min(out.len() - at);
                    out[at..at + n].copy_from_slice(&rest[..n]);
                    at += n;
                }
            }
            Body::Shared(page) => out.copy_from_slice(&page[offset as usize..][..out.len()]),
            Body::Pattern(_) => fill_pattern(out, offset),
        }
    }
}

/// Room for a response's head: the longest this server writes is well under it (a test
/// checks).
const HEAD_CAPACITY: usize = 256;

/// A response's head, in place.
#[derive(Clone, Debug)]
struct Head {
    bytes: [u8; HEAD_CAPACITY],
    len: usize,
}

impl fmt::Write for Head {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A response on its way out: [`Self::peek`] writes its next bytes, [`Self::advance`] marks
/// them sent.
#[derive(Clone, Debug)]
pub struct Response {
    status: Status,
    head: Head,
    head_sent: usize,
    body: Body,
    /// Bytes of the body that go out: 0 for HEAD, whose answer has the head alone.
    body_len: u64,
    body_sent: u64,
    close: bool,
}

impl Response {
    /// A response with `body` (announced in `Content-Length`, sent only if `!head_only`), which
    /// ends the connection if `close`. `extra` header lines (each ending in CRLF) go in the head.
    pub fn new(
        status: Status,
        content_type: &'static str,
        body: Body,
        head_only: bool,
        close: bool,
        extra: &'static str,
    ) -> Self {
        let mut head = Head { bytes: [0; HEAD_CAPACITY], len: 0 };
        let connection = if close { "close" } else { "keep-alive" };
        let written = write!(
            head,
            "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {connection}\r\n{extra}\r\n",
            status.code(),
            status.reason(),
            body.len(),
        );
        debug_assert!(written.is_ok(), "a head longer than {HEAD_CAPACITY} bytes");
        let body_len = if head_only { 0 } else { body.len() };
        Response { status, head, head_sent: 0, body, body_len, body_sent: 0, close }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the connection ends after this response.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// The head's length in bytes.
    pub fn head_len(&self) -> usize {
        self.head.len
    }

    pub fn is_done(&self) -> bool {
        self.head_sent == self.head.len && self.body_sent == self.body_len
    }

    /// Writes the next bytes into `out` (as many as fit) without marking them sent.
    pub fn peek(&self, out: &mut [u8]) -> usize {
        let head = &self.head.bytes[self.head_sent..self.head.len];
        let from_head = head.len().min(out.len());
        out[..from_head].copy_from_slice(&head[..from_head]);
        let body_left = self.body_len - self.body_sent;
        let from_body = usize::try_from(body_left).unwrap_or(usize::MAX).min(out.len() - from_head);
        self.body.write(self.body_sent, &mut out[from_head..from_head + from_body]);
        from_head + from_body
    }

    /// Marks `n` more bytes sent (at most what remains); returns how many of them are body.
    pub fn advance(&mut self, n: usize) -> u64 {
        let from_head = (self.head.len - self.head_sent).min(n);
        self.head_sent += from_head;
        let from_body = ((n - from_head) as u64).min(self.body_len - self.body_sent);
        self.body_sent += from_body;
        from_body
    }
}
