//! Request heads (request line and header fields), found in the bytes as they arrive and then
//! parsed: [`RequestReader`] buffers what the connection received, up to the head-size limit,
//! and hands out one [`Request`] (or a [`Rejection`]) per complete head, keeping the bytes after
//! it for the next (pipelining) and skipping request bodies.

use alloc::vec::Vec;

/// The default limit of a request head: request line, header fields and the blank line.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Any other method (a valid token): answered with 405.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    /// HTTP/1.1, or a later 1.x (which a server answers as 1.1).
    Http11,
}

/// What a request's target names on this server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// `/`: the page naming the guest.
    Index,
    /// `/bytes/N`: N bytes of the pattern `i % 251`.
    Bytes(u64),
    /// `/bytes/N` where N is not a decimal number below 2^64.
    BadCount,
    /// Anything else (also `*`).
    NotFound,
}

/// How the request's body (which this server never uses) is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    /// `Content-Length`: skipped before the next request.
    Length(u64),
    /// `Transfer-Encoding`: this server does not decode it, so the next request cannot be
    /// found; the response closes the connection.
    Unframed,
}

/// A well-formed request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub resource: Resource,
    pub version: Version,
    /// Whether the client wants the connection kept open after the response (the version's
    /// default, changed by `Connection: close` or `keep-alive`).
    pub keep_alive: bool,
    pub body: Body,
}

/// Why a request head is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not HTTP/1.x syntax (400); the text says what.
    Malformed(&'static str),
    /// The head did not end within the limit (431).
    HeadTooLarge,
    /// An HTTP version other than 1.x (505).
    VersionNotSupported,
}

/// A refused request head. The connection cannot go on after it (where the next request starts
/// is unknown), so its answer closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    /// The request line said HEAD: the answer carries no body.
    pub head_only: bool,
}

impl Rejection {
    fn malformed(what: &'static str, method: Option<Method>) -> Self {
        Rejection { reason: Reason::Malformed(what), head_only: method == Some(Method::Head) }
    }
}

/// `token` characters of RFC 9110 (method and field names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A field value's characters: visible ASCII, obs-text, space and tab (no CR, LF, NUL or other
/// controls).
fn is_field_value(s: &[u8]) -> bool {
    s.iter().all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
}

/// `s` without leading and trailing spaces and tabs.
fn trim_ows(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(s.len());
    let end = s.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(start, |i| i + 1);
    &s[start..end]
}

/// A decimal number of at most `u64::MAX`: digits only, at least one.
pub fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        let digit = u64::from(b.checked_sub(b'0').filter(|d| *d <= 9)?);
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// The resource an origin-form (`/path?query`), absolute-form (`http://host/path`) or asterisk
/// (`*`) target names; `None` if the target is none of these.
fn resource(target: &[u8]) -> Option<Resource> {
    if target == b"*" {
        return Some(Resource::NotFound);
    }
    let path = if target.first() == Some(&b'/') {
        target
    } else {
        let scheme = b"http://";
        let rest = target.get(..scheme.len()).filter(|s| s.eq_ignore_ascii_case(scheme)).map(|_| &target[7..])?;
        match rest.iter().position(|&b| b == b'/' || b == b'?') {
            Some(i) if rest[i] == b'/' => &rest[i..],
            _ => b"/",
        }
    };
    let path = path.iter().position(|&b| b == b'?').map_or(path, |q| &path[..q]);
    Some(match path {
        b"/" => Resource::Index,
        _ => match path.strip_prefix(b"/bytes/") {
            Some(count) => parse_decimal(count).map_or(Resource::BadCount, Resource::Bytes),
            None => Resource::NotFound,
        },
    })
}

/// The lines of a head, each without its LF and an optional CR before it (RFC 9112 lets a
/// recipient take a bare LF as a line end).
fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n').map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

/// Parses a complete head: optional blank lines, the request line, header fields, and the
/// blank line that ends it (or the end of `head`).
pub fn parse_head(head: &[u8]) -> Result<Request, Rejection> {
    let mut lines = lines(head).skip_while(|line| line.is_empty());
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::malformed("the request line is not `METHOD TARGET VERSION`", None));
    };
    if !is_token(method) {
        return Err(Rejection::malformed("the method is not a token", None));
    }
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        _ => Method::Other,
    };
    let bad = |what| Err(Rejection::malformed(what, Some(method)));
    let version = match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            match (major, minor) {
                (b'1', b'0') => Version::Http10,
                (b'1', _) => Version::Http11,
                _ => return Err(Rejection { reason: Reason::VersionNotSupported, head_only: method == Method::Head }),
            }
        }
        _ => return bad("the version is not HTTP/<digit>.<digit>"),
    };
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return bad("the target is empty or has a character outside visible ASCII");
    }
    let Some(resource) = resource(target) else {
        return bad("the target is not /path, http://host/path or *");
    };

    let (mut close, mut keep_alive, mut hosts) = (false, false, 0u32);
    let (mut length, mut chunked) = (None::<u64>, false);
    for line in lines.take_while(|line| !line.is_empty()) {
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return bad("a header line is folded (obsolete line folding)");
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return bad("a header line has no colon");
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if !is_token(name) {
            return bad("a header name is not a token (or has space before the colon)");
        }
        if !is_field_value(value) {
            return bad("a header value has a control character");
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for option in value.split(|&b| b == b',').map(trim_ows) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // A list of equal values (`5, 5`) is one length; anything else is refused.
            for item in value.split(|&b| b == b',').map(trim_ows) {
                match (parse_decimal(item), length) {
                    (None, _) => return bad("Content-Length is not a decimal number below 2^64"),
                    (Some(n), Some(before)) if n != before => return bad("Content-Length values differ"),
                    (Some(n), _) => length = Some(n),
                }
            }
        }
    }
    match (version, hosts) {
        (Version::Http11, 0) => return bad("an HTTP/1.1 request without Host"),
        (_, 2..) => return bad("more than one Host"),
        _ => {}
    }
    let body = match (chunked, length) {
        // The way request smuggling starts: refused, as RFC 9112 allows.
        (true, Some(_)) => return bad("both Transfer-Encoding and Content-Length"),
        (true, None) => Body::Unframed,
        (false, Some(0) | None) => Body::None,
        (false, Some(n)) => Body::Length(n),
    };
    let keep_alive = !close
        && body != Body::Unframed
        && match version {
            Version::Http11 => true,
            Version::Http10 => keep_alive,
        };
    Ok(Request { method, resource, version, keep_alive, body })
}

/// The bytes a connection received and has not yet used, at most the head limit, from which
/// it takes one request head at a time.
#[derive(Debug)]
pub struct RequestReader {
    buf: Vec<u8>,
    limit: usize,
    /// How far `buf` has been searched for the end of the head.
    scanned: usize,
    /// Where the line being searched starts.
    line_start: usize,
    /// A non-blank line has been seen (blank lines before the request line are skipped).
    in_head: bool,
    /// The length of the complete head at the start of `buf`, once found.
    head_end: Option<usize>,
    /// Bytes of the last request's body still to skip as they arrive.
    skip: u64,
}

impl RequestReader {
    /// A reader for heads of at most `limit` bytes, its buffer taken from the heap now (if the
    /// heap can hold it: [`Self::has_buffer`]). The buffer never grows later.
    pub fn new(limit: usize) -> Self {
        let mut buf = Vec::new();
        let _ = buf.try_reserve_exact(limit);
        RequestReader { buf, limit, scanned: 0, line_start: 0, in_head: false, head_end: None, skip: 0 }
    }

    /// Whether the buffer for a whole head was allocated (else the reader takes nothing).
    pub fn has_buffer(&self) -> bool {
        self.buf.capacity() >= self.limit
    }

    /// How many more bytes [`Self::push`] takes now (body bytes to skip aside): 0 while the
    /// buffer holds a whole limit's worth, until requests are taken from it.
    pub fn room(&self) -> usize {
        self.limit.min(self.buf.capacity()).saturating_sub(self.buf.len())
    }

    /// How many bytes [`Self::push`] would take now, body bytes to skip included.
    pub fn takes(&self) -> usize {
        usize::try_from(self.skip).unwrap_or(usize::MAX).saturating_add(self.room())
    }

    /// Whether bytes of a request not yet taken are held.
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Takes bytes as they arrive: body bytes still to skip, then as much as there is room for.
    /// Returns how many bytes of `data` were taken; the caller keeps the rest for later.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let skipped = usize::try_from(self.skip).unwrap_or(usize::MAX).min(data.len());
        self.skip -= skipped as u64;
        let data = &data[skipped..];
        let taken = data.len().min(self.room());
        self.buf.extend_from_slice(&data[..taken]);
        skipped + taken
    }

    fn scan(&mut self) {
        if self.head_end.is_some() {
            return;
        }
        while let Some(offset) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            let newline = self.scanned + offset;
            self.scanned = newline + 1;
            let line = &self.buf[self.line_start..newline];
            self.line_start = newline + 1;
            let blank = line.is_empty() || line == b"\r";
            if blank && self.in_head {
                self.head_end = Some(newline + 1);
                return;
            }
            self.in_head |= !blank;
        }
        self.scanned = self.buf.len();
    }

    /// The next request, if its whole head has arrived; a [`Rejection`] if it is malformed or
    /// cannot end within the limit (after which the reader is of no further use). Its body, if
    /// it has a length, is skipped from here on.
    pub fn next_request(&mut self) -> Option<Result<Request, Rejection>> {
        self.scan();
        let Some(end) = self.head_end else {
            return (self.buf.len() >= self.limit)
                .then_some(Err(Rejection { reason: Reason::HeadTooLarge, head_only: false }));
        };
        let result = parse_head(&self.buf[..end]);
        let body = match result {
            Ok(Request { body: Body::Length(n), .. }) => n,
            _ => 0,
        };
        let held_body = usize::try_from(body).unwrap_or(usize::MAX).min(self.buf.len() - end);
        self.buf.drain(..end + held_body);
        self.skip = body - held_body as u64;
        (self.scanned, self.line_start, self.in_head, self.head_end) = (0, 0, false, None);
        Some(result)
    }
}
