use super::*;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

fn server() -> Server {
    Server::new(&Site { name: "http-2".into(), id: 2, ipv4: [10, 0, 2, 17] }, Limits::default())
}

/// A response as a client reads it.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    code: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Parsed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Splits `stream` into responses; `head_only[i]` says response i answers a HEAD (no body).
/// Panics on anything a client could not read.
fn parse_responses(mut stream: &[u8], head_only: &[bool]) -> Vec<Parsed> {
    let mut out = Vec::new();
    while !stream.is_empty() {
        let end = stream.windows(4).position(|w| w == b"\r\n\r\n").expect("a head ends with a blank line") + 4;
        let head = std::str::from_utf8(&stream[..end]).expect("a head is text");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap();
        let code = status.strip_prefix("HTTP/1.1 ").expect("HTTP/1.1 status line")[..3].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(": ").expect("name: value");
                (n.to_string(), v.to_string())
            })
            .collect();
        let len: usize =
            headers.iter().find(|(n, _)| n == "Content-Length").expect("Content-Length").1.parse().unwrap();
        let len = if head_only.get(out.len()).copied().unwrap_or(false) { 0 } else { len };
        let body = stream[end..end + len].to_vec();
        stream = &stream[end + len..];
        out.push(Parsed { code, headers, body });
    }
    out
}

/// Feeds `chunks` one after another (each only as far as the connection takes it, the rest
/// pushed again after output), draining output in pieces of `out_size` bytes; returns all output
/// and whether the connection finished.
fn drive(server: &mut Server, chunks: &[&[u8]], out_size: usize, peer_closes: bool) -> (Vec<u8>, bool) {
    let mut conn = Connection::new(server, 0);
    let mut output = Vec::new();
    let mut buf = vec![0u8; out_size];
    let mut drain = |conn: &mut Connection, server: &mut Server| loop {
        let n = conn.output(server, &mut buf, 0);
        if n == 0 {
            break;
        }
        output.extend_from_slice(&buf[..n]);
    };
    for chunk in chunks {
        let mut chunk = *chunk;
        while !chunk.is_empty() {
            let taken = conn.receive(chunk, 0);
            chunk = &chunk[taken..];
            drain(&mut conn, server);
            if conn.is_finished() {
                break;
            }
        }
    }
    if peer_closes {
        conn.peer_closed();
    }
    drain(&mut conn, server);
    (output, conn.is_finished())
}

fn drive_output(conn: &mut Connection, server: &mut Server) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.output(server, &mut buf, 0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn serve(request: &[u8]) -> Vec<Parsed> {
    let (out, _) = drive(&mut server(), &[request], 4096, true);
    let head_only = request.starts_with(b"HEAD");
    parse_responses(&out, &[head_only])
}

fn status_of(request: &[u8]) -> u16 {
    let responses = serve(request);
    assert_eq!(responses.len(), 1, "one response to {:?}", String::from_utf8_lossy(request));
    responses[0].code
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| ((offset + i) % 251) as u8).collect()
}

#[test]
fn get_index_names_the_guest() {
    let r = serve(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r[0].code, 200);
    let body = String::from_utf8(r[0].body.clone()).unwrap();
    assert!(body.contains("<h1>http-2</h1>") && body.contains("Guest 2 at 10.0.2.17"), "{body}");
    assert_eq!(r[0].header("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(r[0].header("Content-Length"), Some(body.len().to_string().as_str()));
    assert_eq!(r[0].header("Connection"), Some("keep-alive"));
}

#[test]
fn index_page_escapes_the_name() {
    let mut s = Server::new(&Site { name: "<b>&".into(), id: 1, ipv4: [1, 2, 3, 4] }, Limits::default());
    let (out, _) = drive(&mut s, &[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], 4096, true);
    let body = String::from_utf8(parse_responses(&out, &[]).remove(0).body).unwrap();
    assert!(body.contains("<h1>&lt;b&gt;&amp;</h1>"), "{body}");
}

#[test]
fn bytes_n_is_the_pattern_exactly() {
    for n in [0u64, 1, 250, 251, 252, 1459, 1460, 1461, 65536, 100_003] {
        let r = serve(format!("GET /bytes/{n} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].code, 200);
        assert_eq!(r[0].header("Content-Length"), Some(n.to_string().as_str()));
        assert_eq!(r[0].header("Content-Type"), Some("application/octet-stream"));
        assert_eq!(r[0].body, pattern(0, n as usize), "body of /bytes/{n}");
    }
    // Leading zeros and a query are fine.
    assert_eq!(serve(b"GET /bytes/007?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")[0].body, pattern(0, 7));
    // Absolute form.
    assert_eq!(serve(b"GET http://example/bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n")[0].body, pattern(0, 3));
    assert_eq!(serve(b"GET HTTP://example HTTP/1.1\r\nHost: x\r\n\r\n")[0].code, 200);
}

#[test]
fn the_largest_count_streams_and_one_more_is_refused() {
    let mut s = server();
    let mut conn = Connection::new(&mut s, 0);
    let request = b"GET /bytes/18446744073709551615 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(conn.receive(request, 0), request.len());
    let mut buf = vec![0u8; 1 << 16];
    let n = conn.output(&mut s, &mut buf, 0);
    assert_eq!(n, buf.len(), "a huge body fills whatever room there is");
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = std::str::from_utf8(&buf[..head_end]).unwrap();
    assert!(head.contains("Content-Length: 18446744073709551615\r\n"), "{head}");
    assert_eq!(buf[head_end..], pattern(0, n - head_end)[..]);
    assert!(conn.is_responding() && !conn.is_finished());

    for bad in ["18446744073709551616", "99999999999999999999999", "12a", "-1", "+1", "", "1.5", "5/", "%31", " 5"] {
        let request = format!("GET /bytes/{bad} HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = serve(request.as_bytes());
        // A space makes the request line itself malformed; the others are well-formed requests
        // for a count that is not one.
        assert_eq!(r[0].code, 400, "/bytes/{bad}");
        if !bad.contains(' ') {
            assert_eq!(r[0].header("Connection"), Some("keep-alive"), "/bytes/{bad} keeps the connection");
        }
    }
    assert_eq!(status_of(b"GET /bytes HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
    assert_eq!(status_of(b"GET /bytesx/5 HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
}

#[test]
fn pattern_fills_from_any_offset() {
    for offset in [0u64, 1, 250, 251, 252, 1_000_000_007, u64::MAX - 2000] {
        for len in [0usize, 1, 250, 251, 252, 1000] {
            let mut out = vec![0xAAu8; len];
            fill_pattern(&mut out, offset);
            assert_eq!(out, pattern(offset, len), "offset {offset} len {len}");
        }
    }
}

#[test]
fn head_is_the_head_alone() {
    let (out, _) = drive(&mut server(), &[b"HEAD /bytes/1000 HTTP/1.1\r\nHost: x\r\n\r\n"], 4096, true);
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.ends_with("\r\n\r\n"), "{text}");
    let r = parse_responses(&out, &[true]);
    assert_eq!((r[0].code, r[0].header("Content-Length")), (200, Some("1000")));
    let index = serve(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(index[0].body.is_empty() && index[0].header("Content-Length").unwrap().parse::<u32>().unwrap() > 100);
    // HEAD of an error has no body either.
    let (out, _) = drive(&mut server(), &[b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n"], 4096, true);
    assert!(out.ends_with(b"\r\n\r\n") && out.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
    let (out, _) = drive(&mut server(), &[b"HEAD / HTTP/1.1\r\nBad Header: x\r\n\r\n"], 4096, true);
    assert!(out.ends_with(b"\r\n\r\n") && out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
}

#[test]
fn other_methods_get_405_with_allow() {
    for method in ["DELETE", "POST", "PUT", "OPTIONS", "PATCH", "get", "BREW"] {
        let r = serve(format!("{method} / HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!((r[0].code, r[0].header("Allow")), (405, Some("GET, HEAD")), "{method}");
        assert_eq!(r[0].header("Connection"), Some("keep-alive"));
    }
    assert_eq!(status_of(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
    assert_eq!(status_of(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"), 404);
}

#[test]
fn unknown_paths_get_404() {
    for path in ["/index.html", "/bytes", "/bytes/", "//", "/bytes/5/6", "/Bytes/5"] {
        let want = if path.starts_with("/bytes/") { 400 } else { 404 };
        assert_eq!(status_of(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()), want, "{path}");
    }
}

#[test]
fn malformed_heads_get_400_and_close() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n\r\n",                         // no Host in HTTP/1.1
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",   // two Hosts
        b"GET /\r\nHost: x\r\n\r\n",                       // HTTP/0.9 style
        b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",             // two spaces
        b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",             // trailing space
        b" GET / HTTP/1.1\r\nHost: x\r\n\r\n",             // leading space
        b"GET / http/1.1\r\nHost: x\r\n\r\n",              // lowercase version
        b"GET / HTTP/1.10\r\nHost: x\r\n\r\n",             // version too long
        b"GET / HTTP/11\r\nHost: x\r\n\r\n",               // no dot
        b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n",             // method not a token
        b"GET bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n",        // relative target
        b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n",       // other scheme
        b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",          // DEL in the target
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",      // non-ASCII target
        b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",   // no colon
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",             // space before the colon
        b"GET / HTTP/1.1\r\n: x\r\nHost: x\r\n\r\n",       // empty name
        b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",   // obsolete folding
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", // NUL in a value
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",   // bare CR in a value
        b"GET / HTTP/1.1\r\r\nHost: x\r\n\r\n",            // CR CR LF
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", // a TLS client hello, say
    ];
    for case in cases {
        let mut s = server();
        let (out, finished) = drive(&mut s, &[case], 4096, false);
        let r = parse_responses(&out, &[]);
        assert_eq!(r.len(), 1, "{:?}", String::from_utf8_lossy(case));
        assert_eq!(r[0].code, 400, "{:?}: {:?}", String::from_utf8_lossy(case), String::from_utf8_lossy(&r[0].body));
        assert_eq!(r[0].header("Connection"), Some("close"));
        assert!(finished, "a 400 ends the connection");
        assert_eq!((s.counters.requests, s.counters.responses_with(Status::BadRequest)), (0, 1));
    }
}

#[test]
fn lenient_but_valid_forms_are_served() {
    // Bare LF line ends, blank lines before the request line, OWS around values, case of names,
    // an HTTP/1.0 request without Host, a later HTTP/1.x, equal Content-Length values.
    for case in [
        &b"GET / HTTP/1.1\nHost: x\n\n"[..],
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nhOST:   x  \r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\nX-Empty:\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: \xff\xfe obs-text\t\r\n\r\n",
    ] {
        assert_eq!(status_of(case), 200, "{:?}", String::from_utf8_lossy(case));
    }
}

#[test]
fn other_major_versions_get_505() {
    for version in ["HTTP/2.0", "HTTP/0.9", "HTTP/3.1"] {
        let r = serve(format!("GET / {version}\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!((r[0].code, r[0].header("Connection")), (505, Some("close")), "{version}");
    }
}

#[test]
fn head_size_limit_431() {
    let mut s = server();
    s.limits.max_head_bytes = 100;
    let start = b"GET / HTTP/1.1\r\nHost: x\r\nX: ";
    // Exactly the limit (with the blank line): served.
    let fill = 100 - start.len() - 4;
    let exact = [&start[..], &vec![b'a'; fill], b"\r\n\r\n"].concat();
    assert_eq!(exact.len(), 100);
    let (out, _) = drive(&mut s, &[&exact], 4096, true);
    assert_eq!(parse_responses(&out, &[])[0].code, 200);
    // One byte more: 431, whether it comes at once or a byte at a time.
    let over = [&start[..], &vec![b'a'; fill + 1], b"\r\n\r\n"].concat();
    for split in [over.len(), 1] {
        let chunks: Vec<&[u8]> = over.chunks(split).collect();
        let (out, finished) = drive(&mut s, &chunks, 4096, false);
        let r = parse_responses(&out, &[]);
        assert_eq!((r.len(), r[0].code, r[0].header("Connection")), (1, 431, Some("close")));
        assert!(finished);
    }
    // Endless blank lines, or a line that never ends, are held to the limit too.
    let (out, _) = drive(&mut s, &[&b"\r\n".repeat(200)], 4096, false);
    assert_eq!(parse_responses(&out, &[])[0].code, 431);
    let (out, _) = drive(&mut s, &[&b"G".repeat(1000)], 4096, false);
    assert_eq!(parse_responses(&out, &[])[0].code, 431);
    // The default limit: a 9 KiB cookie is too much.
    let mut s = server();
    let big = [&b"GET / HTTP/1.1\r\nHost: x\r\nCookie: "[..], &vec![b'c'; 9 * 1024], b"\r\n\r\n"].concat();
    let (out, _) = drive(&mut s, &[&big], 4096, false);
    assert_eq!(parse_responses(&out, &[])[0].code, 431);
    assert_eq!(s.counters.responses_with(Status::HeadersTooLarge), 1);
}

/// The requests of the pipelining and splitting tests, and what each must get.
const PIPELINE: &[u8] = b"GET /bytes/1461 HTTP/1.1\r\nHost: x\r\n\r\n\
    HEAD /bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n\
    POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello=world\
    GET /missing HTTP/1.1\r\nHost: x\r\n\r\n\
    GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
    GET /bytes/300 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
    GET /bytes/1 HTTP/1.1\r\nHost: x\r\n\r\n";

fn check_pipeline(out: &[u8], finished: bool) {
    let r = parse_responses(out, &[false, true]);
    let codes: Vec<u16> = r.iter().map(|p| p.code).collect();
    // The last request comes after `Connection: close`: not answered.
    assert_eq!(codes, [200, 200, 405, 404, 200, 200]);
    assert_eq!(r[0].body, pattern(0, 1461));
    assert_eq!(r[1].header("Content-Length"), Some("5"));
    assert_eq!(r[5].body, pattern(0, 300));
    assert_eq!(r[5].header("Connection"), Some("close"));
    assert!(r[..5].iter().all(|p| p.header("Connection") == Some("keep-alive")));
    assert!(finished);
}

#[test]
fn pipelined_requests_answered_in_order() {
    let mut s = server();
    let (out, finished) = drive(&mut s, &[PIPELINE], 4096, false);
    check_pipeline(&out, finished);
    assert_eq!(s.counters.requests, 6);
    assert_eq!(s.counters.responses_with(Status::Ok), 4);
    // The other two: 404 and 405.
    assert_eq!(s.counters.error_responses(), 2);
    let bodies: usize = parse_responses(&out, &[false, true]).iter().map(|p| p.body.len()).sum();
    assert_eq!(s.counters.body_bytes, bodies as u64);
}

#[test]
fn split_at_every_byte_boundary() {
    let (whole, _) = drive(&mut server(), &[PIPELINE], 4096, false);
    for at in 0..=PIPELINE.len() {
        let (a, b) = PIPELINE.split_at(at);
        let (out, finished) = drive(&mut server(), &[a, b], 4096, false);
        assert_eq!(out, whole, "split at {at}");
        check_pipeline(&out, finished);
    }
    // A byte at a time, output in odd small pieces.
    let bytes: Vec<&[u8]> = PIPELINE.chunks(1).collect();
    for out_size in [1, 7, 1460] {
        let (out, finished) = drive(&mut server(), &bytes, out_size, false);
        assert_eq!(out, whole, "byte at a time, output by {out_size}");
        assert!(finished);
    }
}

#[test]
fn every_bad_head_split_anywhere_gets_the_same_answer() {
    for case in [
        &b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"[..],
        b"GET /bytes/12a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"DELETE /bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    ] {
        let (whole, _) = drive(&mut server(), &[case], 4096, true);
        for at in 0..=case.len() {
            let (a, b) = case.split_at(at);
            assert_eq!(drive(&mut server(), &[a, b], 4096, true).0, whole);
        }
    }
}

#[test]
fn connection_close_and_http10_defaults() {
    let cases: &[(&[u8], &str)] = &[
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "close"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", "close"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n", "keep-alive"),
        (b"GET / HTTP/1.0\r\n\r\n", "close"),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "keep-alive"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", "close"),
    ];
    for (request, want) in cases {
        let (out, finished) = drive(&mut server(), &[request], 4096, false);
        let r = parse_responses(&out, &[]);
        assert_eq!(r[0].header("Connection"), Some(*want), "{:?}", String::from_utf8_lossy(request));
        assert_eq!(finished, *want == "close");
    }
}

#[test]
fn request_bodies_are_skipped_even_when_split() {
    let body = vec![b'z'; 10_000];
    let post = [&b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n"[..], &body].concat();
    let stream = [&post[..], b"GET /bytes/2 HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
    // The body is taken beyond the head limit: it is skipped, not held.
    let mut s = server();
    s.limits.max_head_bytes = 100;
    let mut conn = Connection::new(&mut s, 0);
    let head = post.len() - 10_000;
    assert_eq!(conn.receive(&stream[..head + 8], 0), head + 8);
    assert!(conn.output(&mut s, &mut [0u8; 4096], 0) > 0, "405 for the POST");
    assert_eq!(conn.input_room(), (10_000 - 8) + 100, "the body left to skip and the head room");
    assert_eq!(conn.receive(&stream[head + 8..], 0), stream.len() - head - 8);
    let r = parse_responses(&drive_output(&mut conn, &mut s), &[]);
    assert_eq!((r.len(), r[0].body.clone()), (1, pattern(0, 2)));
    for split in [1, 100, 4096, stream.len()] {
        let chunks: Vec<&[u8]> = stream.chunks(split).collect();
        let (out, _) = drive(&mut server(), &chunks, 4096, true);
        let r = parse_responses(&out, &[]);
        assert_eq!(r.iter().map(|p| p.code).collect::<Vec<_>>(), [405, 200], "chunks of {split}");
        assert_eq!(r[1].body, pattern(0, 2));
    }
}

#[test]
fn peer_close_answers_complete_requests_and_drops_a_partial_one() {
    let (out, finished) =
        drive(&mut server(), &[b"GET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/4 HTTP/1.1\r\nHo"], 4096, true);
    let r = parse_responses(&out, &[]);
    assert_eq!((r.len(), r[0].body.len()), (1, 3));
    assert!(finished);
    let (out, finished) = drive(&mut server(), &[], 4096, true);
    assert!(out.is_empty() && finished);
    let (_, finished) = drive(&mut server(), &[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], 4096, false);
    assert!(!finished, "without FIN or close, a keep-alive connection stays");
}

#[test]
fn input_waits_in_the_socket_behind_a_long_response() {
    let mut s = server();
    s.limits.max_head_bytes = 64;
    let mut conn = Connection::new(&mut s, 0);
    let first = b"GET /bytes/100000 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(conn.receive(first, 0), first.len());
    let mut buf = vec![0u8; 1000];
    let mut out = Vec::new();
    let n = conn.output(&mut s, &mut buf, 0);
    out.extend_from_slice(&buf[..n]);
    // While the response goes out, pipelined requests fill the buffer up to the limit, no more.
    let more = b"GET /bytes/2 HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3);
    assert_eq!(conn.input_room(), 64);
    let taken = conn.receive(&more, 0);
    assert_eq!(taken, 64);
    assert!(!conn.wants_input());
    assert_eq!(conn.input_room(), 0);
    assert_eq!(conn.receive(&more[taken..], 0), 0);
    let mut rest = &more[taken..];
    loop {
        let n = conn.output(&mut s, &mut buf, 0);
        out.extend_from_slice(&buf[..n]);
        let took = conn.receive(rest, 0);
        rest = &rest[took..];
        if n == 0 && took == 0 {
            break;
        }
    }
    let r = parse_responses(&out, &[]);
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].body, pattern(0, 100_000));
    assert!(r[1..].iter().all(|p| p.body == pattern(0, 2)));
}

#[test]
fn peek_and_consume_take_partial_sends() {
    // A socket that takes a slice and sometimes only part of it.
    let mut s = server();
    let mut conn = Connection::new(&mut s, 0);
    let request = b"GET /bytes/5000 HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n";
    conn.receive(request, 0);
    let mut out = Vec::new();
    let mut scratch = [0u8; 1024];
    for accept in [3usize, 700, 1, 1024, 0, 5].iter().cycle().take(200) {
        let n = conn.peek_output(&mut s, &mut scratch);
        let sent = n.min(*accept);
        out.extend_from_slice(&scratch[..sent]);
        conn.consume_output(&mut s, sent, 0);
    }
    let r = parse_responses(&out, &[]);
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].body.clone(), r[1].body.clone()), (pattern(0, 5000), pattern(0, 10)));
    assert_eq!(s.counters.body_bytes, 5010);
}

#[test]
fn a_body_larger_than_any_heap_streams_in_constant_memory() {
    let mut s = server();
    let mut conn = Connection::new(&mut s, 0);
    let len: u64 = 256 << 20;
    conn.receive(format!("GET /bytes/{len} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(), 0);
    let mut buf = vec![0u8; 1 << 16];
    let mut body_seen = 0u64;
    let mut head_done = false;
    loop {
        let n = conn.output(&mut s, &mut buf, 0);
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        if !head_done {
            let end = chunk.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            chunk = &chunk[end..];
            head_done = true;
        }
        // Spot checks (the whole pattern is checked in smaller tests): first, last and a middle
        // byte of every chunk.
        for i in [0, chunk.len() / 2, chunk.len().saturating_sub(1)] {
            if let Some(&b) = chunk.get(i) {
                assert_eq!(u64::from(b), (body_seen + i as u64) % 251);
            }
        }
        body_seen += chunk.len() as u64;
    }
    assert_eq!(body_seen, len);
    assert_eq!(s.counters.body_bytes, len);
}

#[test]
fn refused_connections_get_503_and_end() {
    let mut s = server();
    let mut conn = Connection::refused(&mut s, 0);
    assert!(conn.wants_input());
    assert_eq!(conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0), 27, "input is dropped");
    let mut buf = [0u8; 512];
    let n = conn.output(&mut s, &mut buf, 0);
    let r = parse_responses(&buf[..n], &[]);
    assert_eq!((r[0].code, r[0].header("Connection"), r[0].header("Retry-After")), (503, Some("close"), Some("1")));
    assert!(conn.is_finished());
    assert_eq!((s.counters.refused, s.counters.connections, s.counters.requests), (1, 0, 0));
    assert_eq!(s.counters.responses_with(Status::ServiceUnavailable), 1);
    assert_eq!(s.counters.error_responses(), 1);
}

#[test]
fn a_trickled_head_times_out_with_408() {
    let mut s = server();
    s.limits = Limits { max_head_bytes: 8192, idle_timeout_ms: 3_000, head_timeout_ms: 10_000 };
    let mut conn = Connection::new(&mut s, 0);
    let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut buf = [0u8; 4096];
    // One byte a second: never idle, but the head is due 10 s after its first byte.
    for (second, byte) in request.iter().enumerate().take(10) {
        let now = 1_000 + second as u64 * 1_000;
        assert_eq!(conn.check_timeouts(&mut s, now), None, "at {now} ms");
        conn.receive(&[*byte], now);
        assert_eq!(conn.output(&mut s, &mut buf, now), 0);
        assert_eq!(conn.deadline(&s.limits), 11_000.min(now + 3_000));
    }
    assert_eq!(conn.check_timeouts(&mut s, 10_999), None);
    assert_eq!(conn.check_timeouts(&mut s, 11_000), Some(Timeout::Head));
    let n = conn.output(&mut s, &mut buf, 11_000);
    let r = parse_responses(&buf[..n], &[]);
    assert_eq!((r[0].code, r[0].header("Connection")), (408, Some("close")));
    assert!(conn.is_finished());
    assert_eq!(s.counters.responses_with(Status::RequestTimeout), 1);
}

#[test]
fn silent_and_stalled_connections_time_out_idle() {
    let mut s = server();
    s.limits.idle_timeout_ms = 5_000;
    // Silent from the start.
    let mut conn = Connection::new(&mut s, 100);
    assert_eq!(conn.deadline(&s.limits), 5_100);
    assert_eq!(conn.check_timeouts(&mut s, 5_099), None);
    assert_eq!(conn.check_timeouts(&mut s, 5_100), Some(Timeout::Idle { stalled: false }));
    assert!(conn.is_finished());
    // Silent after a full exchange (keep-alive): the idle timeout runs from the last byte sent.
    let mut conn = Connection::new(&mut s, 0);
    conn.receive(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\n\r\n", 1_000);
    let mut buf = [0u8; 4096];
    assert!(conn.output(&mut s, &mut buf, 2_000) > 0);
    assert_eq!(conn.deadline(&s.limits), 7_000);
    assert_eq!(conn.check_timeouts(&mut s, 6_999), None);
    assert_eq!(conn.check_timeouts(&mut s, 7_000), Some(Timeout::Idle { stalled: false }));
    // A client that stops reading mid-response: the response is counted as incomplete.
    let mut conn = Connection::new(&mut s, 0);
    conn.receive(b"GET /bytes/1000000 HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    assert!(conn.output(&mut s, &mut buf, 1_000) > 0);
    assert_eq!(conn.check_timeouts(&mut s, 6_000), Some(Timeout::Idle { stalled: true }));
    assert!(conn.is_finished());
    assert_eq!((s.counters.idle_timeouts, s.counters.incomplete), (3, 1));
    // Head timeout does not run while a response goes out, even with pipelined bytes waiting.
    let mut s = server();
    s.limits = Limits { max_head_bytes: 8192, idle_timeout_ms: 60_000, head_timeout_ms: 1_000 };
    let mut conn = Connection::new(&mut s, 0);
    conn.receive(b"GET /bytes/100000 HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/1 HTTP/1.1\r\n", 0);
    let mut now = 0;
    while conn.is_responding() || now == 0 {
        now += 100;
        assert!(conn.output(&mut s, &mut buf[..1000], now) > 0);
        assert_eq!(conn.check_timeouts(&mut s, now), None);
    }
    assert!(now > 10_000, "the response took longer than the head timeout");
    // Now the partial second head waits, and its time counts from the end of the response.
    assert_eq!(conn.deadline(&s.limits), now + 1_000);
    assert_eq!(conn.check_timeouts(&mut s, now + 1_000), Some(Timeout::Head));
}

#[test]
fn a_reset_mid_response_is_counted() {
    let mut s = server();
    let mut conn = Connection::new(&mut s, 0);
    conn.receive(b"GET /bytes/1000000 HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    let mut buf = [0u8; 4096];
    conn.output(&mut s, &mut buf, 0);
    assert_eq!(s.counters.active(), 1);
    conn.end(&mut s, Ending::Reset);
    let done = Connection::new(&mut s, 0);
    done.end(&mut s, Ending::Reset);
    let mut refused = Connection::refused(&mut s, 0);
    assert_eq!(s.counters.active(), 1);
    assert!(refused.output(&mut s, &mut buf, 0) > 0 && refused.is_finished());
    refused.end(&mut s, Ending::Closed);
    assert_eq!((s.counters.resets, s.counters.incomplete, s.counters.connections), (2, 1, 2));
    assert_eq!((s.counters.closed, s.counters.refused, s.counters.active()), (1, 1, 0));
}

#[test]
fn counters_print_every_status() {
    let mut s = server();
    drive(&mut s, &[b"GET / HTTP/1.1\r\nHost: x\r\n\r\nDELETE / HTTP/1.1\r\nHost: x\r\n\r\n"], 4096, true);
    let line = s.counters.to_string();
    assert_eq!(
        line,
        "connections=1 refused=0 active=1 closed=0 resets=0 idle_timeouts=0 requests=2 status_200=1 status_400=0 status_404=0 \
         status_405=1 status_408=0 status_431=0 status_503=0 status_505=0 incomplete=0 body_bytes="
            .to_string()
            + &s.counters.body_bytes.to_string()
    );
    assert!(s.counters.body_bytes > 100);
}

#[test]
fn the_longest_heads_fit_and_text_bodies_come_out_whole_at_any_piece_size() {
    let mut s = server();
    let cases: [(&[u8], u16); 4] = [
        (b"GET /bytes/18446744073709551615 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200),
        (b"BREW / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", 400),
        (b"GET / HTTP/7.0\r\nHost: x\r\n\r\n", 505),
    ];
    for (request, code) in cases {
        let mut conn = Connection::new(&mut s, 0);
        conn.receive(request, 0);
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while out.len() < 400 && conn.output(&mut s, &mut byte, 0) == 1 {
            out.push(byte[0]);
        }
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(head_end < 200, "a head of {head_end} bytes");
        if code != 200 {
            let r = parse_responses(&out, &[]);
            assert_eq!(r[0].code, code);
            let body = String::from_utf8(r[0].body.clone()).unwrap();
            assert!(body.starts_with(&format!("{code} ")) && body.ends_with('\n'), "{body:?}");
        }
    }
    let mut conn = Connection::new(&mut s, 0);
    conn.receive(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 0);
    let mut out = vec![0u8; 400];
    let n = conn.output(&mut s, &mut out, 0);
    let r = parse_responses(&out[..n], &[]);
    assert_eq!(
        String::from_utf8(r[0].body.clone()).unwrap(),
        "400 Bad Request: a header name is not a token (or has space before the colon)\n"
    );
}

#[test]
fn a_connection_whose_buffer_the_heap_cannot_hold_is_refused() {
    let mut s = server();
    s.limits.max_head_bytes = usize::MAX;
    let mut conn = Connection::new(&mut s, 0);
    let mut buf = [0u8; 512];
    let n = conn.output(&mut s, &mut buf, 0);
    assert_eq!(parse_responses(&buf[..n], &[])[0].code, 503);
    assert!(conn.is_finished() && conn.is_refusal());
    assert!(!Connection::new(&mut server(), 0).is_refusal());
    assert_eq!((s.counters.connections, s.counters.refused), (0, 1));
}

#[test]
fn parse_decimal_bounds() {
    assert_eq!(request::parse_decimal(b"0"), Some(0));
    assert_eq!(request::parse_decimal(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(request::parse_decimal(b"18446744073709551616"), None);
    assert_eq!(request::parse_decimal(b"000000000000000000000000001"), Some(1));
    assert_eq!(request::parse_decimal(b""), None);
    assert_eq!(request::parse_decimal(b"1 "), None);
    assert_eq!(request::parse_decimal(b"\x00"), None);
}
