//! The host side of `bench http`: a download of `/bytes/N` with every byte checked, a stream
//! through a TCP echo server with every byte compared, readiness probes for both, and `wrk`
//! (started with a Lua script that prints its summary as JSON, and parsed).

use crate::tapnet::TapNamespace;
use crate::udp::random_bytes;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Byte i of a `/bytes/N` body is `i % PATTERN_MODULUS`.
pub const PATTERN_MODULUS: usize = 251;
const READ_CHUNK: usize = 64 * 1024;
/// The echo stream repeats a random block of this many bytes (a prime, so the block's seams
/// fall everywhere in the reads and writes).
const ECHO_PERIOD: usize = 1_048_573;
/// A stalled transfer fails instead of hanging the benchmark.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One timed transfer: `bytes` of payload in `seconds` of wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub bytes: u64,
    pub seconds: f64,
}

impl Transfer {
    /// Decimal megabytes (10^6 bytes) per second.
    pub fn megabytes_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds / 1e6
        } else {
            0.0
        }
    }
}

/// What the client measures (`--what`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// `GET /bytes/N` from the HTTP server, every byte checked.
    Download,
    /// N bytes through the TCP echo server and back, every byte compared.
    Echo,
}

/// Waits until the server answers (`GET /` with 200, or an echoed probe), then measures one
/// transfer of `bytes`. `bench http` runs this inside the tap namespace (`tcp-bench-client`).
pub fn measure(what: Workload, server: SocketAddr, bytes: u64, wait: Duration) -> Result<Transfer> {
    match what {
        Workload::Download => {
            wait_until_serving(server, wait, http_answers)?;
            download(server, bytes)
        }
        Workload::Echo => {
            wait_until_serving(server, wait, echo_answers)?;
            echo_stream(server, bytes)
        }
    }
}

/// Retries `probe` every 100 ms until it succeeds or `limit` has passed.
pub fn wait_until_serving(server: SocketAddr, limit: Duration, probe: fn(SocketAddr) -> Result<()>) -> Result<()> {
    let start = Instant::now();
    loop {
        match probe(server) {
            Ok(()) => return Ok(()),
            Err(error) if start.elapsed() >= limit => {
                return Err(error.context(format!("{server} did not answer within {limit:?}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn connect(server: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `GET /` answers `200` with the body its `Content-Length` announces.
pub fn http_answers(server: SocketAddr) -> Result<()> {
    let mut stream = connect(server)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let (head, body_start) = read_head(&mut stream)?;
    let length = parse_head(&head)?;
    let mut body = body_start;
    while (body.len() as u64) < length {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("the body ended after {} of {length} bytes", body.len());
        }
        body.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// Reads up to the end of the response head; the head's text and the bytes read after it.
fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            return Ok((head, got[end + 4..].to_vec()));
        }
        if got.len() > 64 * 1024 {
            bail!("a response head of more than 64 KiB");
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("the connection closed before the end of the response head");
        }
        got.extend_from_slice(&buf[..n]);
    }
}

/// The `Content-Length` of a `200` response head; an error for any other status.
fn parse_head(head: &str) -> Result<u64> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line.split(' ').nth(1).unwrap_or("");
    if !status_line.starts_with("HTTP/1.") || status != "200" {
        bail!("the server answered `{status_line}`, not 200");
    }
    lines
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<u64>())
        })
        .context("the response has no Content-Length")?
        .context("the Content-Length is not a number")
}

/// The download pattern from byte `offset` on, `len` long (`len` at most [`READ_CHUNK`]).
fn pattern_at(pattern: &[u8], offset: u64, len: usize) -> &[u8] {
    let start = (offset % PATTERN_MODULUS as u64) as usize;
    &pattern[start..start + len]
}

/// `GET /bytes/{bytes}`: the body read to its end and checked against the pattern; the time
/// from sending the request to the last byte.
pub fn download(server: SocketAddr, bytes: u64) -> Result<Transfer> {
    let pattern: Vec<u8> = (0..READ_CHUNK + PATTERN_MODULUS).map(|i| (i % PATTERN_MODULUS) as u8).collect();
    let mut stream = connect(server)?;
    let start = Instant::now();
    stream.write_all(format!("GET /bytes/{bytes} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes())?;
    let (head, first) = read_head(&mut stream)?;
    let length = parse_head(&head)?;
    if length != bytes {
        bail!("asked for {bytes} bytes, the response announces {length}");
    }
    let mut received = 0u64;
    let check = |data: &[u8], received: &mut u64| -> Result<()> {
        if *received + data.len() as u64 > length {
            bail!("more than the {length} bytes announced");
        }
        for piece in data.chunks(READ_CHUNK) {
            if piece != pattern_at(&pattern, *received, piece.len()) {
                let bad = piece.iter().zip(pattern_at(&pattern, *received, piece.len())).position(|(a, b)| a != b);
                bail!("byte {} of the body is wrong", *received + bad.unwrap_or(0) as u64);
            }
            *received += piece.len() as u64;
        }
        Ok(())
    };
    check(&first, &mut received)?;
    let mut buf = vec![0u8; READ_CHUNK];
    while received < length {
        let n = stream.read(&mut buf).with_context(|| format!("after {received} of {length} bytes"))?;
        if n == 0 {
            bail!("the connection closed after {received} of {length} bytes");
        }
        check(&buf[..n], &mut received)?;
    }
    Ok(Transfer { bytes: received, seconds: start.elapsed().as_secs_f64() })
}

/// A short message comes back from the echo server.
pub fn echo_answers(server: SocketAddr) -> Result<()> {
    let mut stream = connect(server)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"ready?")?;
    let mut back = [0u8; 6];
    stream.read_exact(&mut back)?;
    if &back != b"ready?" {
        bail!("the echo server answered {back:?}");
    }
    Ok(())
}

/// `bytes` of random data written to the echo server while its echo is read back and compared;
/// the time from the first byte written to the last byte read.
pub fn echo_stream(server: SocketAddr, bytes: u64) -> Result<Transfer> {
    let block = std::sync::Arc::new(random_bytes(0xec40, ECHO_PERIOD));
    let mut reader = connect(server)?;
    let mut writer = reader.try_clone()?;
    let start = Instant::now();
    let sender = {
        let block = std::sync::Arc::clone(&block);
        std::thread::spawn(move || -> Result<()> {
            let mut sent = 0u64;
            while sent < bytes {
                let at = (sent % ECHO_PERIOD as u64) as usize;
                let len = (ECHO_PERIOD - at).min(READ_CHUNK).min((bytes - sent) as usize);
                writer.write_all(&block[at..at + len]).with_context(|| format!("writing after {sent} bytes"))?;
                sent += len as u64;
            }
            writer.shutdown(Shutdown::Write)?;
            Ok(())
        })
    };
    let mut buf = vec![0u8; READ_CHUNK];
    let mut received = 0u64;
    let outcome = (|| -> Result<()> {
        while received < bytes {
            let n = reader.read(&mut buf).with_context(|| format!("reading the echo after {received} bytes"))?;
            if n == 0 {
                bail!("the echo server closed after echoing {received} of {bytes} bytes");
            }
            for (i, &byte) in buf[..n].iter().enumerate() {
                let at = received + i as u64;
                if at >= bytes || byte != block[(at % ECHO_PERIOD as u64) as usize] {
                    bail!("echoed byte {at} differs from the byte sent");
                }
            }
            received += n as u64;
        }
        Ok(())
    })();
    let seconds = start.elapsed().as_secs_f64();
    if outcome.is_err() {
        let _ = reader.shutdown(Shutdown::Both);
    }
    let sent = sender.join().map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    outcome?;
    sent?;
    Ok(Transfer { bytes: received, seconds })
}

/// What one `wrk` process measured (its Lua `done` callback prints this as JSON).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct WrkSummary {
    pub requests: u64,
    pub duration_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    #[serde(flatten)]
    pub errors: WrkErrors,
}

/// The errors `wrk` counts, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WrkErrors {
    pub connect_errors: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    /// Responses with a status other than 2xx or 3xx.
    pub status_errors: u64,
    pub timeouts: u64,
}

impl WrkErrors {
    pub fn total(&self) -> u64 {
        self.connect_errors + self.read_errors + self.write_errors + self.status_errors + self.timeouts
    }

    /// Both counts added, kind by kind.
    pub fn plus(self, other: WrkErrors) -> WrkErrors {
        WrkErrors {
            connect_errors: self.connect_errors + other.connect_errors,
            read_errors: self.read_errors + other.read_errors,
            write_errors: self.write_errors + other.write_errors,
            status_errors: self.status_errors + other.status_errors,
            timeouts: self.timeouts + other.timeouts,
        }
    }
}

impl WrkSummary {
    pub fn requests_per_second(&self) -> f64 {
        if self.duration_us > 0.0 {
            self.requests as f64 / (self.duration_us / 1e6)
        } else {
            0.0
        }
    }
}

/// The line the Lua script prefixes its JSON summary with.
const WRK_MARK: &str = "wrk-summary: ";

/// The summary in `wrk`'s standard output.
pub fn parse_wrk(stdout: &str) -> Result<WrkSummary> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(WRK_MARK))
        .with_context(|| format!("wrk printed no summary (is the Lua script missing?):\n{stdout}"))?;
    serde_json::from_str(line).with_context(|| format!("wrk's summary is not JSON: {line}"))
}

/// Why `wrk` cannot run here, or `None`.
pub fn wrk_missing() -> Option<String> {
    (!crate::tapnet::on_path("wrk"))
        .then(|| "`wrk` is not installed: apt-get install wrk (Debian's package)".to_string())
}

/// `wrk` with one thread and `connections` keep-alive connections doing `GET {url}` for
/// `seconds`, latency recorded, run here or inside `namespace`; started, not waited for.
pub fn spawn_wrk(namespace: Option<&TapNamespace>, url: &str, connections: u32, seconds: u32) -> Result<Child> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("wrk/summary.lua");
    let mut cmd = match namespace {
        Some(ns) => ns.command("wrk"),
        None => Command::new("wrk"),
    };
    cmd.args(["--threads", "1", "--connections", &connections.to_string()])
        .args(["--duration", &format!("{seconds}s"), "--timeout", "10s", "--latency", "--script"])
        .arg(&script)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting wrk")
}

/// Waits for a `wrk` from [`spawn_wrk`] and parses its summary.
pub fn finish_wrk(child: Child) -> Result<WrkSummary> {
    let out = child.wait_with_output().context("waiting for wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed ({}): {}{}", out.status, stdout, String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection-at-a-time server for the tests: `respond` gets the stream after accept.
    fn serve(respond: impl Fn(TcpStream) + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                respond(stream);
            }
        });
        addr
    }

    fn bytes_server(corrupt_at: Option<usize>) -> SocketAddr {
        serve(move |mut s| {
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let length: usize =
                request.split(' ').nth(1).and_then(|t| t.strip_prefix("/bytes/")).map_or(0, |n| n.parse().unwrap());
            let mut body: Vec<u8> = (0..length).map(|i| (i % PATTERN_MODULUS) as u8).collect();
            if let Some(at) = corrupt_at {
                body[at] ^= 1;
            }
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n");
            let _ = s.write_all(&body);
        })
    }

    #[test]
    fn a_download_checks_every_byte() {
        let good = bytes_server(None);
        for n in [0, 1, 250, 251, 252, 65_536, 1_000_003] {
            let t = download(good, n).unwrap();
            assert_eq!(t.bytes, n);
            assert!(t.seconds > 0.0);
        }
        let bad = bytes_server(Some(300_001));
        let error = download(bad, 400_000).unwrap_err();
        assert!(format!("{error:#}").contains("byte 300001 of the body is wrong"), "{error:#}");
        http_answers(good).unwrap();
    }

    #[test]
    fn a_short_or_failed_response_is_an_error() {
        let short = serve(|mut s| {
            let _ = s.read(&mut [0u8; 1024]);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n\x00\x01");
        });
        assert!(format!("{:#}", download(short, 10).unwrap_err()).contains("closed after 2 of 10"));
        let missing = serve(|mut s| {
            let _ = s.read(&mut [0u8; 1024]);
            let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        });
        assert!(format!("{:#}", download(missing, 10).unwrap_err()).contains("404"));
        assert!(http_answers(missing).is_err());
    }

    #[test]
    fn the_echo_stream_compares_what_comes_back() {
        let echo = serve(|mut s| {
            let mut copy = s.try_clone().unwrap();
            let _ = std::io::copy(&mut s, &mut copy);
        });
        echo_answers(echo).unwrap();
        let t = echo_stream(echo, 3 * ECHO_PERIOD as u64 + 17).unwrap();
        assert_eq!(t.bytes, 3 * ECHO_PERIOD as u64 + 17);
        // An "echo" that changes one byte in a million.
        let flipping = serve(|mut s| {
            let mut buf = vec![0u8; 4096];
            let mut total = 0usize;
            loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if total <= 1_000_000 && total + n > 1_000_000 {
                    buf[1_000_000 - total] ^= 0x80;
                }
                total += n;
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
        let error = echo_stream(flipping, 2_000_000).unwrap_err();
        assert!(format!("{error:#}").contains("echoed byte 1000000 differs"), "{error:#}");
    }

    #[test]
    fn the_wrk_summary_is_found_among_wrk_output() {
        let stdout = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 1 connections\nRequests/sec: 1.0\n\
            wrk-summary: {\"requests\":2500,\"duration_us\":1000000,\"p50_us\":291,\"p99_us\":1160,\
            \"connect_errors\":0,\"read_errors\":1,\"write_errors\":0,\"status_errors\":2,\"timeouts\":3}\n";
        let summary = parse_wrk(stdout).unwrap();
        assert_eq!(summary.requests, 2500);
        assert_eq!(summary.requests_per_second(), 2500.0);
        assert_eq!((summary.p50_us, summary.p99_us), (291.0, 1160.0));
        assert_eq!(summary.errors.total(), 6);
        assert_eq!(summary.errors.plus(summary.errors).status_errors, 4);
        assert!(parse_wrk("Requests/sec: 1.0\n").is_err());
    }

    #[test]
    fn megabytes_are_decimal() {
        assert_eq!(Transfer { bytes: 256 * 1024 * 1024, seconds: 2.0 }.megabytes_per_second(), 134.217728);
        assert_eq!(Transfer { bytes: 5, seconds: 0.0 }.megabytes_per_second(), 0.0);
    }
}
