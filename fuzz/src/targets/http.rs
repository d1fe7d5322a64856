//! `http`: the guests' HTTP/1.1 server (crate `http-server`), which parses what any client on
//! the network sends.
//!
//! The first input byte picks the head limit and the second the way the bytes arrive; the rest
//! is what a client sends on one connection. Checked:
//! - `RequestReader` finds the same requests and refusals as a reference framer written here
//!   (heads end at the first blank line after a non-blank one, at most the limit; a body of
//!   `Content-Length` is skipped), whether the bytes come at once or in pieces; it never takes
//!   more than it said it would, and never stalls (takes nothing yet yields nothing);
//! - every parsed request, written back as a canonical head, parses to the same request, and
//!   obeys the rules (no `Length(0)`; an unframed body closes the connection);
//! - a `Connection` fed the bytes answers exactly those requests in order, each response a
//!   well-formed head with the status the request calls for, `Content-Length` equal to the
//!   body sent (none for HEAD), `Connection: close` exactly on the last, `/bytes/N` bodies the
//!   pattern; the server's counters equal what went out.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::source::Source;
use crate::{check, check_eq};
use http_server::request::{parse_head, Body, Version};
use http_server::{
    Connection, Limits, Method, Reason, Rejection, Request, RequestReader, Resource, Server, Site, Status,
    DEFAULT_MAX_HEAD_BYTES, PATTERN_PERIOD,
};

pub const TARGET: Target = Target {
    name: "http",
    checks: "requests and refusals equal a reference framer's, at once or in pieces; parsed requests round-trip \
             through a canonical head; a connection answers each in order with well-formed responses whose \
             status, length, body and Connection match; counters equal what went out",
    max_len: 4096,
    dictionary: &[
        b"GET ",
        b"HEAD ",
        b"POST ",
        b" HTTP/1.1\r\n",
        b" HTTP/1.0\r\n",
        b" HTTP/2.0\r\n",
        b"Host: h\r\n",
        b"Connection: close\r\n",
        b"Connection: keep-alive\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: 18446744073709551616\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"\r\n\r\n",
        b"/bytes/",
        b"/bytes/300",
        b"http://h/",
        b"?q",
        b"\t",
        b" :",
    ],
    seeds,
    run,
};

/// Head limits the first byte picks from: small ones reach `HeadTooLarge` often.
const LIMITS: [usize; 5] = [16, 64, 200, 1024, DEFAULT_MAX_HEAD_BYTES];
/// Output examined per input: a `/bytes/N` body may be 2^64 bytes long.
const OUTPUT_BUDGET: usize = 64 * 1024;

fn seeds(_: &crate::real::RealInputs) -> Vec<Vec<u8>> {
    let with = |limit: u8, chunks: u8, text: &str| [&[limit, chunks][..], text.as_bytes()].concat();
    vec![
        with(4, 0, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
        with(4, 3, "GET /bytes/300 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /bytes/7 HTTP/1.1\r\nHost: h\r\n\r\n"),
        with(3, 1, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /nope HTTP/1.0\r\n\r\n"),
        with(2, 7, "\r\nGET http://h/bytes/1?x HTTP/1.0\nConnection: keep-alive\n\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        with(4, 2, "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        with(0, 0, "GET /a-very-long-target-that-does-not-fit HTTP/1.1\r\n\r\n"),
        with(4, 0, "GET / HTTP/2.0\r\n\r\n"),
        with(4, 5, "GET /bytes/99999999999999999999 HTTP/1.1\r\nHost: h\r\n\r\n"),
        with(4, 0, "GET / HTTP/1.1\r\n Host: folded\r\n\r\n"),
    ]
}

/// One pass of the reader: a request, or a refusal that ends the connection.
type Outcome = Result<Request, Rejection>;

/// Where the head at the start of `bytes` ends (just after its blank line), if it does.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let mut seen_line = false;
    let mut line_start = 0;
    for (at, _) in bytes.iter().enumerate().filter(|(_, &b)| b == b'\n') {
        let line = &bytes[line_start..at];
        if line.is_empty() || line == b"\r" {
            if seen_line {
                return Some(at + 1);
            }
        } else {
            seen_line = true;
        }
        line_start = at + 1;
    }
    None
}

/// The reference framer: the outcomes a reader with `limit` must give for `stream`.
fn reference(stream: &[u8], limit: usize) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        match head_end(rest).filter(|&end| end <= limit) {
            Some(end) => {
                let outcome = parse_head(&rest[..end]);
                at += end;
                if let Ok(Request { body: Body::Length(n), .. }) = outcome {
                    at += usize::try_from(n).unwrap_or(usize::MAX).min(stream.len() - at);
                }
                let refused = outcome.is_err();
                outcomes.push(outcome);
                if refused {
                    return outcomes;
                }
            }
            None if rest.len() >= limit => {
                outcomes.push(Err(Rejection { reason: Reason::HeadTooLarge, head_only: false }));
                return outcomes;
            }
            None => return outcomes,
        }
    }
}

/// Piece sizes for the bytes: all at once (`style` 0), or pieces of 1..=style bytes varying
/// with a small generator.
struct Pieces {
    style: u8,
    state: u32,
}

impl Pieces {
    fn next(&mut self, left: usize) -> usize {
        if self.style == 0 {
            return left;
        }
        self.state = self.state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let size = 1 + (self.state >> 16) as usize % usize::from(self.style);
        size.min(left)
    }
}

/// The reader fed `stream` in pieces: its outcomes, checking it keeps its word on the way.
fn read_all(stream: &[u8], limit: usize, pieces: &mut Pieces) -> Result<Vec<Outcome>, String> {
    let mut reader = RequestReader::new(limit);
    check!(reader.has_buffer(), "no buffer for a {limit}-byte limit");
    let mut outcomes = Vec::new();
    let mut at = 0;
    loop {
        let offered = pieces.next(stream.len() - at);
        let promised = reader.takes();
        check!(reader.room() <= limit, "room {} beyond the limit {limit}", reader.room());
        let taken = reader.push(&stream[at..at + offered]);
        check!(taken <= offered.min(promised), "took {taken} of {offered} offered, {promised} promised");
        at += taken;
        let mut yielded = false;
        while let Some(outcome) = reader.next_request() {
            yielded = true;
            let refused = outcome.is_err();
            outcomes.push(outcome);
            if refused {
                return Ok(outcomes);
            }
        }
        if at == stream.len() {
            return Ok(outcomes);
        }
        check!(
            taken > 0 || yielded || offered == 0,
            "the reader stalls at byte {at}: it takes nothing, yields nothing"
        );
    }
}

/// The canonical head of a request: what a plain client would send for it.
fn canonical(request: &Request) -> String {
    let method = match request.method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Other => "PATCH",
    };
    let target = match request.resource {
        Resource::Index => "/".to_string(),
        Resource::Bytes(n) => format!("/bytes/{n}"),
        Resource::BadCount => "/bytes/x".to_string(),
        Resource::NotFound => "/elsewhere".to_string(),
    };
    let version = match request.version {
        Version::Http10 => "HTTP/1.0",
        Version::Http11 => "HTTP/1.1",
    };
    let mut head = format!("{method} {target} {version}\r\nHost: h\r\n");
    match request.body {
        Body::None => {}
        Body::Length(n) => head += &format!("Content-Length: {n}\r\n"),
        Body::Unframed => head += "Transfer-Encoding: chunked\r\n",
    }
    match (request.version, request.keep_alive) {
        (Version::Http11, false) if request.body != Body::Unframed => head += "Connection: close\r\n",
        (Version::Http10, true) => head += "Connection: keep-alive\r\n",
        _ => {}
    }
    head + "\r\n"
}

/// What the answer to an outcome must be: status, whether it has no body, whether it closes.
fn expected_answer(outcome: &Outcome) -> (Status, bool, bool) {
    match outcome {
        Ok(request) => {
            let status = match (request.method, request.resource) {
                (Method::Other, _) => Status::MethodNotAllowed,
                (_, Resource::Index | Resource::Bytes(_)) => Status::Ok,
                (_, Resource::BadCount) => Status::BadRequest,
                (_, Resource::NotFound) => Status::NotFound,
            };
            (status, request.method == Method::Head, !request.keep_alive)
        }
        Err(rejection) => {
            let status = match rejection.reason {
                Reason::Malformed(_) => Status::BadRequest,
                Reason::HeadTooLarge => Status::HeadersTooLarge,
                Reason::VersionNotSupported => Status::VersionNotSupported,
            };
            (status, rejection.head_only, true)
        }
    }
}

/// One response read back from the bytes a connection sent.
struct Answer {
    code: u16,
    content_length: u64,
    close: bool,
    body: Vec<u8>,
}

/// Splits `out` into responses, given whether each has no body; the last may be cut short by
/// the output budget (then it is not returned).
fn read_answers(mut out: &[u8], head_only: impl Fn(usize) -> bool) -> Result<Vec<Answer>, String> {
    let mut answers = Vec::new();
    while !out.is_empty() {
        let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else {
            check!(out.len() < 512, "a response head without an end");
            break;
        };
        let head = std::str::from_utf8(&out[..end]).map_err(|_| "a response head is not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let code = status_line.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok());
        let Some(code) = code else { return Err(format!("bad status line {status_line:?}")) };
        let field = |name: &str| {
            head.split("\r\n").find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")).map(str::to_string))
        };
        let content_length: u64 =
            field("Content-Length").and_then(|v| v.parse().ok()).ok_or(format!("no Content-Length in {head:?}"))?;
        let close = match field("Connection").as_deref() {
            Some("close") => true,
            Some("keep-alive") => false,
            other => return Err(format!("Connection: {other:?}")),
        };
        let body_len = if head_only(answers.len()) { 0 } else { content_length };
        let Some(body) = usize::try_from(body_len).ok().and_then(|n| out.get(end..end.checked_add(n)?)) else {
            break;
        };
        answers.push(Answer { code, content_length, close, body: body.to_vec() });
        out = &out[end + body.len()..];
    }
    Ok(answers)
}

/// A connection fed `stream` in pieces and read in pieces: what it sent, and whether the
/// output budget cut it short.
fn converse(server: &mut Server, stream: &[u8], pieces: &mut Pieces) -> Result<(Vec<u8>, bool), String> {
    let mut connection = Connection::new(server, 0);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut at = 0;
    let mut peer_closed = false;
    loop {
        let mut moved = false;
        if at < stream.len() && connection.wants_input() {
            let offered = pieces.next(stream.len() - at).min(connection.input_room());
            let taken = connection.receive(&stream[at..at + offered], 0);
            check_eq!(taken, offered, "bytes taken of those it said it would take");
            at += taken;
            moved |= taken > 0;
        } else if at == stream.len() && !peer_closed {
            connection.peer_closed();
            peer_closed = true;
            moved = true;
        }
        let room = pieces.next(buf.len()).max(1);
        let sent = connection.output(server, &mut buf[..room], 0);
        out.extend_from_slice(&buf[..sent]);
        moved |= sent > 0;
        if connection.is_finished() {
            connection.end(server, http_server::Ending::Closed);
            return Ok((out, false));
        }
        if out.len() > OUTPUT_BUDGET {
            return Ok((out, true));
        }
        check!(moved, "the connection stalls: it takes nothing, sends nothing and is not finished");
    }
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let mut source = Source::new(input);
    let limit = source.pick(&LIMITS);
    let style = source.u8() % 17;
    let stream = source.rest();
    features.note("limit", limit as u64);

    let expected = reference(stream, limit);
    features.note_count("outcomes", expected.len() as u64);
    for pieces_style in [0, style.max(1)] {
        let got = read_all(stream, limit, &mut Pieces { style: pieces_style, state: u32::from(style) })?;
        check_eq!(got, expected, "outcomes (pieces of up to {pieces_style} bytes) against the reference framer");
    }

    for outcome in &expected {
        match outcome {
            Ok(request) => {
                features.note("method", request.method as u64);
                features.note(
                    "resource",
                    match request.resource {
                        Resource::Index => 0,
                        Resource::Bytes(_) => 1,
                        Resource::BadCount => 2,
                        Resource::NotFound => 3,
                    },
                );
                features.note(
                    "body",
                    match request.body {
                        Body::None => 0,
                        Body::Length(_) => 1,
                        Body::Unframed => 2,
                    },
                );
                features.note("keep alive", u64::from(request.keep_alive));
                check!(request.body != Body::Length(0), "a zero Content-Length is kept as a body");
                check!(
                    !(request.body == Body::Unframed && request.keep_alive),
                    "an unframed body keeps the connection"
                );
                let head = canonical(request);
                check_eq!(parse_head(head.as_bytes()), Ok(*request), "the request written back as {head:?}");
            }
            Err(rejection) => {
                let kind = match rejection.reason {
                    Reason::Malformed(why) => {
                        // Each reason a head is malformed for is an outcome of its own.
                        features.note("malformed", crate::rng::fnv1a(why.as_bytes()));
                        0
                    }
                    Reason::HeadTooLarge => 1,
                    Reason::VersionNotSupported => 2,
                };
                features.note("rejection", kind);
            }
        }
    }

    // One connection: the answers to the reference's outcomes, up to the first that closes.
    let limits = Limits { max_head_bytes: limit, ..Limits::default() };
    let mut server = Server::new(&Site { name: "fuzz".into(), id: 0, ipv4: [10, 0, 2, 16] }, limits);
    let (out, cut) = converse(&mut server, stream, &mut Pieces { style, state: 7 })?;
    let last = expected.iter().position(|o| expected_answer(o).2).map_or(expected.len(), |i| i + 1);
    let answered = &expected[..last];
    let answers = read_answers(&out, |i| answered.get(i).is_some_and(|o| expected_answer(o).1))?;
    features.note_count("answers", answers.len() as u64);
    features.note("cut", u64::from(cut));
    if cut {
        check!(answers.len() <= answered.len(), "{} answers to {} requests", answers.len(), answered.len());
    } else {
        check_eq!(answers.len(), answered.len(), "answers to the requests");
    }
    for (i, (answer, outcome)) in answers.iter().zip(answered).enumerate() {
        let (status, head_only, close) = expected_answer(outcome);
        check_eq!(answer.code, status.code(), "status of answer {i} to {outcome:?}");
        features.note("status", u64::from(answer.code));
        check_eq!(answer.close, close, "Connection: close on answer {i} (only the last closes)");
        if !head_only {
            check_eq!(answer.body.len() as u64, answer.content_length, "body length of answer {i}");
        }
        if let (Ok(Request { resource: Resource::Bytes(n), .. }), Status::Ok) = (outcome, status) {
            check_eq!(answer.content_length, *n, "Content-Length of /bytes/{n}");
            check!(head_only || answer.body.len() as u64 == *n, "/bytes/{n} sent {} bytes", answer.body.len());
            let bad = answer.body.iter().enumerate().position(|(j, &b)| b != (j % PATTERN_PERIOD) as u8);
            check!(bad.is_none(), "/bytes/{n}: byte {bad:?} is not the pattern");
        }
    }
    if !cut {
        let counters = &server.counters;
        let requests = answered.iter().filter(|o| o.is_ok()).count() as u64;
        check_eq!(counters.requests, requests, "requests counted");
        check_eq!(counters.responses.iter().sum::<u64>(), answers.len() as u64, "responses counted");
        let body_bytes: u64 = answers.iter().map(|a| a.body.len() as u64).sum();
        check_eq!(counters.body_bytes, body_bytes, "body bytes counted");
        check_eq!((counters.connections, counters.closed, counters.active()), (1, 1, 0), "connections counted");
    }
    Ok(())
}
