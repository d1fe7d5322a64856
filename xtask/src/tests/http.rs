//! The `http` guests, checked with real clients: `curl`, and raw sockets for what curl will not
//! do (a malformed head, pipelining, a reset in the middle of a body, a trickled head).

use super::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

/// `/bytes/N` sizes every guest serves in the curl check: around one MSS (1460 at MTU 1500),
/// a window's worth, and a body of many windows.
const BYTES_SIZES: [u64; 7] = [0, 1, 1459, 1460, 1461, 65536, 10 << 20];
/// The body a client resets in the middle of, and how much of it it reads first.
const RESET_BODY: u64 = 100 << 20;
const RESET_AFTER: usize = 4 << 20;
use crate::HTTP_PORT;
/// The guests' head timeout (the app's default; images/http.toml does not change it).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit of one client operation: far beyond what any takes, so only a hang trips it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the curl tests cannot run here, as a skip locally and as a failure in CI (which installs
/// curl: a test that cannot run there must not pass silently).
fn curl_missing() -> Option<TestResult> {
    if crate::tapnet::on_path("curl") {
        return None;
    }
    let why = "`curl` is not installed (apt-get install curl)".to_string();
    Some(if std::env::var_os("CI").is_some() {
        Err(failure(format!("{why}, but CI must run this test"), String::new()))
    } else {
        Ok(Verdict::Skip(why))
    })
}

/// Waits until every `http` guest of the image says it listens.
fn wait_http_listening(session: &mut Session, count: usize) -> std::result::Result<(), Failure> {
    if session.wait_for(Duration::from_secs(30), |log| log.matches("http listening on").count() >= count) {
        Ok(())
    } else {
        Err(failure(format!("{count} http guests did not all start listening"), session.log()))
    }
}

/// The first index at which `body` departs from the pattern `i % 251`, counting from `offset`.
fn pattern_mismatch(body: &[u8], offset: u64) -> Option<usize> {
    let mut expected = (offset % 251) as u8;
    for (i, &b) in body.iter().enumerate() {
        if b != expected {
            return Some(i);
        }
        expected = if expected == 250 { 0 } else { expected + 1 };
    }
    None
}

/// A response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    code: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads one response (its body by `Content-Length`, none for a HEAD).
fn read_response(reader: &mut impl BufRead, head_only: bool) -> Result<RawResponse> {
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let code = status
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 status line: {status:?}"))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("the connection ended inside a head");
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').with_context(|| format!("a header line without colon: {line:?}"))?;
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut response = RawResponse { code, headers, body: Vec::new() };
    let length: u64 =
        response.header("Content-Length").context("no Content-Length")?.parse().context("a bad Content-Length")?;
    if !head_only {
        reader.take(length).read_to_end(&mut response.body)?;
        if response.body.len() as u64 != length {
            bail!("the body ended after {} of {length} bytes", response.body.len());
        }
    }
    Ok(response)
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    Ok(stream)
}

/// Sends `request` on a new connection and reads everything until the server closes.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Result<Vec<u8>> {
    let mut stream = connect(addr)?;
    stream.write_all(request)?;
    let mut all = Vec::new();
    stream.read_to_end(&mut all).context("reading until the server closes")?;
    Ok(all)
}

/// `curl` (inside `namespace` if given) with the options every call uses.
fn curl(namespace: Option<&crate::tapnet::TapNamespace>) -> Command {
    let mut command = match namespace {
        Some(ns) => ns.command("curl"),
        None => Command::new("curl"),
    };
    command.args(["--silent", "--show-error", "--max-time", "120", "--noproxy", "*"]);
    command
}

fn run_curl(mut command: Command) -> Result<String> {
    let output = command.output().context("running curl")?;
    if !output.status.success() {
        bail!("curl failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What the curl check of one guest measured.
struct CurlReport {
    /// The 10 MiB download: bytes and seconds.
    big: (u64, f64),
}

/// Everything a guest serves, fetched with curl from `base` (`http://host:port`): `/` names
/// the guest; every `/bytes/N` of [`BYTES_SIZES`] is exactly the pattern, all on one
/// connection (keep-alive); HEAD has the head alone; DELETE gets 405 with `Allow`.
fn curl_check(
    namespace: Option<&crate::tapnet::TapNamespace>,
    base: &str,
    name: &str,
    ip: &str,
    sizes: &[u64],
    dir: &Path,
) -> Result<CurlReport> {
    std::fs::create_dir_all(dir)?;
    let mut command = curl(namespace);
    command.args(["--write-out", "%{http_code} %{size_download} %{num_connects} %{time_total}\\n"]);
    let index_file = dir.join("index.html");
    command.arg("--output").arg(&index_file).arg(format!("{base}/"));
    let files: Vec<_> = sizes.iter().map(|n| dir.join(format!("bytes-{n}"))).collect();
    for (n, file) in sizes.iter().zip(&files) {
        command.arg("--output").arg(file).arg(format!("{base}/bytes/{n}"));
    }
    let out = run_curl(command)?;
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    if lines.len() != sizes.len() + 1 || lines.iter().any(|l| l.len() != 4) {
        bail!("curl reported {out:?}, one line per URL ({}) wanted", sizes.len() + 1);
    }
    for (i, line) in lines.iter().enumerate() {
        if line[0] != "200" {
            bail!("URL {i} got status {}: {out}", line[0]);
        }
        // curl opens one connection and reuses it for every later URL (keep-alive).
        let connects = if i == 0 { "1" } else { "0" };
        if line[2] != connects {
            bail!("URL {i} made {} new connections, {connects} expected (keep-alive): {out}", line[2]);
        }
    }
    let index = std::fs::read_to_string(&index_file)?;
    if !(index.contains(&format!("<h1>{name}</h1>")) && index.contains(&format!(" at {ip},"))) {
        bail!("the page of {name} ({ip}) does not name it: {index}");
    }
    let mut big = (0, 0.0);
    for ((n, file), line) in sizes.iter().zip(&files).zip(&lines[1..]) {
        let body = std::fs::read(file)?;
        if body.len() as u64 != *n || line[1] != n.to_string() {
            bail!("/bytes/{n}: {} bytes arrived (curl counted {})", body.len(), line[1]);
        }
        if let Some(at) = pattern_mismatch(&body, 0) {
            bail!("/bytes/{n}: byte {at} is {}, {} expected", body[at], at % 251);
        }
        if *n >= big.0 {
            big = (*n, line[3].parse().unwrap_or(0.0));
        }
        let _ = std::fs::remove_file(file);
    }

    let mut head = curl(namespace);
    head.args(["--head", &format!("{base}/bytes/1461")]);
    let head = run_curl(head)?;
    if !head.starts_with("HTTP/1.1 200 OK\r\n")
        || !head.contains("\r\nContent-Length: 1461\r\n")
        || !head.ends_with("\r\n\r\n")
    {
        bail!("HEAD /bytes/1461: {head:?}");
    }
    let mut delete = curl(namespace);
    delete.args(["--request", "DELETE", "--dump-header", "-", "--output", "/dev/null", &format!("{base}/bytes/1")]);
    let delete = run_curl(delete)?;
    if !delete.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") || !delete.contains("\r\nAllow: GET, HEAD\r\n") {
        bail!("DELETE: {delete:?}");
    }
    Ok(CurlReport { big })
}

/// A malformed head gets 400 and the connection closes.
fn malformed_gets_400(addr: SocketAddr) -> Result<()> {
    let all = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost : space-before-colon\r\n\r\n")?;
    let response = read_response(&mut &all[..], false)?;
    if response.code != 400 || response.header("Connection") != Some("close") {
        bail!("a malformed head got {response:?}");
    }
    Ok(())
}

/// The last `http:` counter line of each guest.
fn http_counters(log: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let mut found = BTreeMap::new();
    for line in log.lines() {
        let Some((prefix, counters)) = line.split_once(": http: ") else { continue };
        // `[time] INFO  guest <id> <name>: http: ...`
        let Some(name) = prefix.rsplit_once("guest ").and_then(|(_, r)| r.split_whitespace().nth(1)) else { continue };
        let values: Option<BTreeMap<String, u64>> = counters
            .split_whitespace()
            .map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        if let Some(values) = values {
            found.insert(name.to_string(), values);
        }
    }
    found
}

/// Waits until guest `name`'s latest counters satisfy `want`; returns them either way.
fn wait_counters(
    session: &mut Session,
    name: &str,
    want: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> Option<BTreeMap<String, u64>> {
    session.wait_for(Duration::from_secs(15), |log| http_counters(log).get(name).is_some_and(&want));
    http_counters(&session.log()).remove(name)
}

/// The user network with host TCP port `base + i` forwarded to guest i's HTTP port.
fn http_forwards(guests: &[hypercall_abi::vnic::NetConfig], base: u16) -> NetBackend {
    let tcp_forwards = guests.iter().enumerate().map(|(i, n)| (base + i as u16, n.ipv4, HTTP_PORT)).collect();
    NetBackend::User { forwards: Vec::new(), tcp_forwards }
}

/// Ends a run of an `http` image once every guest's last connection has ended (the clients are
/// done), and checks it: guests as expected, the transmit path, the kernel's and guests' packet
/// ledgers, no connection request refused by the stack, and every connection the stack accepted
/// handed to the app (served or refused by it).
fn finish_http(
    mut session: Session,
    image: &Image,
    tx: TxMode,
) -> std::result::Result<(Outcome, BTreeMap<String, u64>), Failure> {
    for guest in image.guests.iter().filter(|g| g.net.is_some()) {
        let idle = |c: &BTreeMap<String, u64>| c.get("active") == Some(&0);
        let quiet = |log: &str| http_counters(log).get(&guest.name).is_none_or(idle);
        if !session.wait_for(Duration::from_secs(15), quiet) {
            let counters = http_counters(&session.log()).remove(&guest.name);
            return Err(failure(format!("{}: connections still open: {counters:?}", guest.name), session.log()));
        }
    }
    session.request_quit();
    let outcome = session.finish().map_err(|e| failure(format!("{e:#}"), String::new()))?;
    check_guest_expectations(image, &outcome)?;
    let stats = final_stats(&outcome)?;
    check_tx_path(&outcome, tx, &stats, Traffic::NicOnly)?;
    crate::ledger::check_log(&outcome.log).map_err(|e| failure(e, outcome.log.clone()))?;
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    let app_took: u64 = http_counters(&outcome.log)
        .values()
        .map(|c| c.get("connections").unwrap_or(&0) + c.get("refused").unwrap_or(&0))
        .sum();
    // The apps' counters reach the kernel's stats too: requests, error responses (4xx and 5xx)
    // and body bytes, summed over the guests, equal the sums of their last `http:` lines.
    let apps = http_counters(&outcome.log);
    let sum = |key: &dyn Fn(&BTreeMap<String, u64>) -> u64| apps.values().map(key).sum::<u64>();
    let field = |c: &BTreeMap<String, u64>, k: &str| c.get(k).copied().unwrap_or(0);
    let errors = |c: &BTreeMap<String, u64>| {
        c.iter()
            .filter(|(k, _)| {
                k.strip_prefix("status_").and_then(|code| code.parse::<u16>().ok()).is_some_and(|code| code >= 400)
            })
            .map(|(_, v)| v)
            .sum()
    };
    let want = [
        ("guest_http_requests", sum(&|c| field(c, "requests"))),
        ("guest_http_errors", sum(&errors)),
        ("guest_http_body_bytes", sum(&|c| field(c, "body_bytes"))),
    ];
    for (name, value) in want {
        check(&outcome, stats.get(name) == Some(&value), || {
            format!("stats: {name}={:?}, the apps' http: lines add up to {value}", stats.get(name))
        })?;
    }
    check(&outcome, get("guest_tcp_accepted") == app_took && get("guest_tcp_refused") == 0, || {
        format!(
            "the stack accepted {} connections, the apps took {app_took}; it refused {}",
            get("guest_tcp_accepted"),
            get("guest_tcp_refused")
        )
    })?;
    Ok((outcome, stats))
}

fn user_network_session(image: &Image, tx: TxMode) -> std::result::Result<(Session, Vec<SocketAddr>), Failure> {
    let base = host_port_base();
    let guests: Vec<_> = image.guests.iter().filter_map(|g| g.net).collect();
    let forwards = http_forwards(&guests, base);
    let addrs = (0..guests.len()).map(|i| SocketAddr::from(([127, 0, 0, 1], base + i as u16))).collect();
    let mut session = start_networked(image, forwards, None, tx, TCG_TIMEOUT)?;
    wait_http_listening(&mut session, guests.len())?;
    Ok((session, addrs))
}

/// Every guest of `http` over the user network with curl: the index page, every size of
/// `/bytes/N` with every byte checked, HEAD, 405; a malformed head gets 400. Each guest's
/// counters then say exactly that.
pub(super) fn http_user_network(ctx: &Ctx) -> TestResult {
    if let Some(verdict) = curl_missing() {
        return verdict;
    }
    let image = pack::pack_image("http", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let (mut session, addrs) = user_network_session(&image, TxMode::Copy)?;
    let guests: Vec<_> = image.guests.iter().filter(|g| g.net.is_some()).collect();
    let mut rates = Vec::new();
    for (guest, addr) in guests.iter().zip(&addrs) {
        let ip = crate::manifest::format_ip(guest.net.map(|n| n.ipv4).unwrap_or_default());
        let dir = image.dir.join("http-test").join(&guest.name);
        let report = curl_check(None, &format!("http://{addr}"), &guest.name, &ip, &BYTES_SIZES, &dir)
            .map_err(|e| failure(format!("curl against {} at {addr}: {e:#}", guest.name), session.log()))?;
        malformed_gets_400(*addr).map_err(|e| failure(format!("{}: {e:#}", guest.name), session.log()))?;
        rates.push(report.big.0 as f64 / report.big.1.max(1e-6) / 1e6);
    }
    println!(
        "     /bytes/{} over the user network: {} MB/s per guest",
        BYTES_SIZES[BYTES_SIZES.len() - 1],
        rates.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", ")
    );
    // Per guest: GET / and every /bytes/N, and HEAD: 200; DELETE: 405; the malformed head: 400.
    let oks = BYTES_SIZES.len() as u64 + 2;
    for guest in &guests {
        let want = |c: &BTreeMap<String, u64>| {
            let get = |k: &str| c.get(k).copied().unwrap_or(u64::MAX);
            get("status_200") == oks && get("status_405") == 1 && get("status_400") == 1 && get("active") == 0
        };
        let counters = wait_counters(&mut session, &guest.name, want);
        if !counters.as_ref().is_some_and(want) {
            return Err(failure(
                format!("{}: counters {counters:?}, {oks} x 200, one 405, one 400, none active expected", guest.name),
                session.log(),
            ));
        }
    }
    finish_http(session, &image, TxMode::Copy)?;
    Ok(Verdict::Pass)
}

/// What the trickling client saw.
#[derive(Debug)]
struct Trickle {
    /// Bytes of its never-ending head sent before the answer.
    sent: usize,
    /// The answer and when it came.
    answer: Option<(u16, Instant)>,
    started: Instant,
}

/// A client that sends its head one byte a second and never ends it, until the server answers
/// (or `give_up` passes).
fn trickle(addr: SocketAddr, give_up: Duration) -> std::thread::JoinHandle<Result<Trickle>> {
    std::thread::spawn(move || {
        let mut stream = connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        let head = b"GET / HTTP/1.1\r\nHost: trickle\r\nX-Slow: ";
        let started = Instant::now();
        let mut sent = 0;
        let mut received = Vec::new();
        while started.elapsed() < give_up {
            let byte = head.get(sent).copied().unwrap_or(b'z');
            if stream.write_all(&[byte]).is_err() {
                break; // closed by the server: what it sent is read below
            }
            sent += 1;
            let mut buf = [0u8; 512];
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    received.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("the trickling client's read"),
            }
        }
        let at = Instant::now();
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        let _ = stream.read_to_end(&mut received);
        let answer = (!received.is_empty())
            .then(|| read_response(&mut &received[..], false).map(|r| (r.code, at)))
            .transpose()?;
        Ok(Trickle { sent, answer, started })
    })
}

/// Three requests written at once on one connection get three responses in order; a fourth
/// with `Connection: close` is answered and the connection closes.
fn pipelined(addr: SocketAddr) -> Result<()> {
    let mut stream = connect(addr)?;
    stream.write_all(
        b"GET /bytes/1461 HTTP/1.1\r\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/65536 HTTP/1.1\r\nHost: x\r\n\r\n",
    )?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let first = read_response(&mut reader, false)?;
    let second = read_response(&mut reader, true)?;
    let third = read_response(&mut reader, false)?;
    let codes = (first.code, second.code, third.code);
    if codes != (200, 200, 200) || first.body.len() != 1461 || third.body.len() != 65536 {
        bail!("pipelined: statuses {codes:?}, bodies {} and {} bytes", first.body.len(), third.body.len());
    }
    if pattern_mismatch(&first.body, 0).is_some() || pattern_mismatch(&third.body, 0).is_some() {
        bail!("a pipelined body is not the pattern");
    }
    if second.header("Content-Type") != Some("text/html; charset=utf-8") {
        bail!("the pipelined HEAD / got {second:?}");
    }
    stream.write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let last = read_response(&mut reader, false)?;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    if last.code != 200 || last.header("Connection") != Some("close") || !rest.is_empty() {
        bail!("the closing request got {last:?}, then {} more bytes", rest.len());
    }
    Ok(())
}

/// Reads the first [`RESET_AFTER`] bytes of a [`RESET_BODY`] body, then closes with most of it
/// unread, which makes the host's TCP reset the connection.
fn reset_mid_download(addr: SocketAddr) -> Result<()> {
    let mut stream = connect(addr)?;
    stream.write_all(format!("GET /bytes/{RESET_BODY} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut body = vec![0u8; RESET_AFTER];
    reader.read_exact(&mut body)?;
    if !status.starts_with("HTTP/1.1 200") || pattern_mismatch(&body, 0).is_some() {
        bail!("the download to reset: {status:?}, pattern broken: {:?}", pattern_mismatch(&body, 0));
    }
    Ok(())
}

/// On one guest, while a client trickles its head a byte a second: other clients are served at
/// once (the guest never waits on one connection): pipelined requests, a 100 MiB download the
/// client resets in the middle, and requests after it. The trickler gets 408 at the head
/// timeout; the reset connection is freed (counted, none left active).
pub(super) fn http_slow_client_pipelining_reset(ctx: &Ctx, tx: TxMode) -> TestResult {
    if let Some(verdict) = curl_missing() {
        return verdict;
    }
    let image = pack::pack_image("http", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let (mut session, addrs) = user_network_session(&image, tx)?;
    let name = image.guests.iter().find(|g| g.net.is_some()).map(|g| g.name.clone()).unwrap_or_default();
    let addr = addrs[0];
    let trickler = trickle(addr, HEAD_TIMEOUT * 4);
    // Let the trickler's connection and first bytes arrive first.
    std::thread::sleep(Duration::from_millis(1500));
    let others = (|| -> Result<Instant> {
        for _ in 0..3 {
            let page = run_curl({
                let mut c = curl(None);
                c.arg(format!("http://{addr}/"));
                c
            })?;
            if !page.contains(&format!("<h1>{name}</h1>")) {
                bail!("GET / while a client trickles: {page:?}");
            }
        }
        pipelined(addr).context("pipelining")?;
        reset_mid_download(addr).context("the download reset in the middle")?;
        let after = raw_exchange(addr, b"GET /bytes/100000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let after = read_response(&mut &after[..], false)?;
        if after.code != 200 || after.body.len() != 100_000 || pattern_mismatch(&after.body, 0).is_some() {
            bail!("after the reset: status {}, {} bytes", after.code, after.body.len());
        }
        Ok(Instant::now())
    })();
    let others_done = others.map_err(|e| failure(format!("{name}: {e:#}"), session.log()))?;
    let trickled = trickler
        .join()
        .map_err(|_| failure("the trickling client panicked", session.log()))?
        .map_err(|e| failure(format!("the trickling client: {e:#}"), session.log()))?;
    let Some((code, answered)) = trickled.answer else {
        return Err(failure(format!("the trickling client got no answer: {trickled:?}"), session.log()));
    };
    // The others finished while the trickler still waited: it held nobody up.
    if code != 408 || answered < others_done {
        return Err(failure(
            format!(
                "the trickler got {code} after {:.1} s ({} bytes sent); the other clients finished after {:.1} s: \
                 408, after them, expected",
                (answered - trickled.started).as_secs_f64(),
                trickled.sent,
                (others_done - trickled.started).as_secs_f64()
            ),
            session.log(),
        ));
    }
    let waited = answered - trickled.started;
    if waited < HEAD_TIMEOUT / 2 {
        return Err(failure(format!("408 after {waited:?}, before the head timeout {HEAD_TIMEOUT:?}"), session.log()));
    }
    let want = |c: &BTreeMap<String, u64>| {
        let get = |k: &str| c.get(k).copied().unwrap_or(u64::MAX);
        get("status_408") == 1 && get("incomplete") == 1 && get("active") == 0
    };
    let counters = wait_counters(&mut session, &name, want);
    if !counters.as_ref().is_some_and(want) {
        return Err(failure(
            format!("{name}: counters {counters:?}: one 408, one incomplete response, none active expected"),
            session.log(),
        ));
    }
    finish_http(session, &image, tx)?;
    Ok(Verdict::Pass)
}

/// The most connections guest `name` serves at once, from its `http listening on` line.
fn max_connections(log: &str, name: &str) -> Option<usize> {
    let line = log.lines().find(|l| l.contains(&format!(" {name}: http listening on ")))?;
    line.split_once("(at most ")?.1.split_whitespace().next()?.parse().ok()
}

/// A guest serves at most its limit of connections at once: with that many open (and idle),
/// one more is answered 503 with `Retry-After` and closed; when one closes, the next is served.
pub(super) fn http_connection_limit(ctx: &Ctx) -> TestResult {
    if let Some(verdict) = curl_missing() {
        return verdict;
    }
    let image = pack::pack_image("http", &ctx.artifacts, NetPlan::USER)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    let (mut session, addrs) = user_network_session(&image, TxMode::Copy)?;
    let name = image.guests.iter().find(|g| g.net.is_some()).map(|g| g.name.clone()).unwrap_or_default();
    let addr = addrs[0];
    let Some(max) = max_connections(&session.log(), &name) else {
        return Err(failure(format!("{name} does not say how many connections it serves"), session.log()));
    };
    // Each of them served once and kept open (keep-alive): a request right after the connect
    // also spares the test slirp's slow setup of connections that stay silent.
    let mut idle = Vec::new();
    for i in 0..max {
        let open = || -> Result<BufReader<TcpStream>> {
            let mut stream = connect(addr)?;
            stream.write_all(b"GET /bytes/0 HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut reader = BufReader::new(stream);
            let response = read_response(&mut reader, false)?;
            if response.code != 200 || response.header("Connection") != Some("keep-alive") {
                bail!("{response:?}");
            }
            Ok(reader)
        };
        idle.push(open().map_err(|e| failure(format!("connection {} of {max}: {e:#}", i + 1), session.log()))?);
    }
    let count = |key: &'static str, want: u64| move |c: &BTreeMap<String, u64>| c.get(key) == Some(&want);
    if wait_counters(&mut session, &name, count("active", max as u64)).is_none_or(|c| !count("active", max as u64)(&c))
    {
        return Err(failure(format!("{name} did not take {max} connections"), session.log()));
    }
    let status = |session: &Session| -> std::result::Result<(u16, String), Failure> {
        let mut command = curl(None);
        command.args(["--dump-header", "-", "--output", "/dev/null", &format!("http://{addr}/")]);
        let head = run_curl(command).map_err(|e| failure(format!("{e:#}"), session.log()))?;
        let code = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((code, head))
    };
    let (code, head) = status(&session)?;
    if code != 503 || !head.contains("\r\nRetry-After: 1\r\n") || !head.contains("\r\nConnection: close\r\n") {
        return Err(failure(format!("connection {} of {max} got {head:?}, 503 expected", max + 1), session.log()));
    }
    // One closes: its place is free again once the guest has seen it go.
    drop(idle.pop());
    if wait_counters(&mut session, &name, count("active", max as u64 - 1))
        .is_none_or(|c| c.get("active") != Some(&(max as u64 - 1)))
    {
        return Err(failure(format!("{name} did not free a closed connection"), session.log()));
    }
    let (code, head) = status(&session)?;
    if code != 200 {
        return Err(failure(format!("with a place free, GET / got {head:?}"), session.log()));
    }
    drop(idle);
    let want = |c: &BTreeMap<String, u64>| {
        let get = |k: &str| c.get(k).copied().unwrap_or(u64::MAX);
        let served = max as u64 + 1;
        get("refused") == 1 && get("status_503") == 1 && get("status_200") == served && get("active") == 0
    };
    let counters = wait_counters(&mut session, &name, want);
    if !counters.as_ref().is_some_and(want) {
        return Err(failure(
            format!("{name}: counters {counters:?}: one refused (503), {} x 200, none active expected", max + 1),
            session.log(),
        ));
    }
    finish_http(session, &image, TxMode::Copy)?;
    Ok(Verdict::Pass)
}

/// An `http` image over tap: curl from inside the namespace fetches every guest's page and
/// checked `/bytes/` bodies.
pub(super) fn http_tap_network(ctx: &Ctx, tx: TxMode, image_name: &str) -> TestResult {
    let image = pack::pack_image(image_name, &ctx.artifacts, NetPlan::TAP)
        .map_err(|e| failure(format!("{e:#}"), String::new()))?;
    if let Some(why) = crate::tapnet::unavailable_reason(&[]) {
        return Ok(Verdict::Skip(why));
    }
    if let Some(verdict) = curl_missing() {
        return verdict;
    }
    let namespace = crate::tapnet::TapNamespace::create(&NetPlan::TAP, image.manifest.kernel.mtu)
        .map_err(|e| failure(format!("cannot create a tap device in a network namespace: {e:#}"), String::new()))?;
    let net = NetBackend::Tap { ifname: crate::tapnet::TAP_IFNAME.into() };
    let mut session = start_networked(&image, net, Some(&namespace.name), tx, TCG_TIMEOUT)?;
    let guests: Vec<_> = image.guests.iter().filter(|g| g.net.is_some()).collect();
    wait_http_listening(&mut session, guests.len())?;
    for guest in &guests {
        let ip = crate::manifest::format_ip(guest.net.map(|n| n.ipv4).unwrap_or_default());
        let dir = image.dir.join("http-tap-test").join(&guest.name);
        curl_check(
            Some(&namespace),
            &format!("http://{ip}:{HTTP_PORT}"),
            &guest.name,
            &ip,
            &[0, 1461, 8949, 1 << 20],
            &dir,
        )
        .map_err(|e| failure(format!("curl against {} at {ip}: {e:#}", guest.name), session.log()))?;
    }
    let (outcome, stats) = finish_http(session, &image, tx)?;
    // With jumbo frames, the bodies went out in segments no standard frame could hold: on
    // average the guests' frames are longer than the longest standard one.
    let get = |name: &str| stats.get(name).copied().unwrap_or(0);
    let average = get("tx_bytes") / get("tx_packets").max(1);
    let standard = STANDARD_FRAME as u64;
    check(&outcome, image.manifest.kernel.mtu <= 1500 || average > standard, || {
        format!("MTU {}: frames of {average} bytes on average, over {standard} expected", image.manifest.kernel.mtu)
    })?;
    Ok(Verdict::Pass)
}

/// The longest Ethernet frame at MTU 1500 (without FCS).
const STANDARD_FRAME: usize = 1514;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn pattern_mismatch_finds_the_first_wrong_byte() {
        let good: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(pattern_mismatch(&good, 0), None);
        assert_eq!(pattern_mismatch(&good[10..], 10), None);
        assert_eq!(pattern_mismatch(&good[10..], 0), Some(0));
        let mut bad = good.clone();
        bad[600] ^= 1;
        assert_eq!(pattern_mismatch(&bad, 0), Some(600));
    }

    #[test]
    fn reads_the_connection_limit() {
        let log = "[ 0.1] INFO  guest 0 http-0: http listening on 10.0.2.16:80 (at most 64 connections, idle ...)\n";
        assert_eq!(max_connections(log, "http-0"), Some(64));
        assert_eq!(max_connections(log, "http-1"), None);
    }

    #[test]
    fn reads_counter_lines_and_responses() {
        let log = "[    1.231793] INFO  guest 1 http-1: http: connections=2 status_200=5\n\
                   guest 2 http-2: http: connections=1\n\
                   guest 1 http-1: http: connections=3 status_200=9\n\
                   guest 1 http-1: something else\n";
        let counters = http_counters(log);
        assert_eq!(counters["http-1"]["status_200"], 9);
        assert_eq!(counters["http-2"]["connections"], 1);
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX: y\r\n\r\nabcHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n";
        let mut reader = &raw[..];
        let first = read_response(&mut reader, false).unwrap();
        assert_eq!((first.code, first.body.as_slice(), first.header("x")), (200, &b"abc"[..], Some("y")));
        let second = read_response(&mut reader, true).unwrap();
        assert_eq!((second.code, second.body.len()), (404, 0));
        assert!(read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"[..], false).is_err());
    }
}
