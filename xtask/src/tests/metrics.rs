//! The operators' view: `cargo xtask run --metrics` scraped while guests echo.

use super::*;
use crate::metrics::{self, Sample};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};

/// How long a scrape may wait for the kernel's next `stats:` line (printed every 5 s while
/// counters move) to show the echoes just made.
const STATS_WAIT: Duration = Duration::from_secs(40);
/// The run ends by itself after this long if the test could not end it.
const RUN_SECS: u64 = 150;

/// `cargo xtask run` as a child process: its output collected, and ended on drop (`q` on its
/// console, which the kernel answers by ending the run; killed if that does not work).
struct RunChild {
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Mutex<String>>,
}

impl RunChild {
    fn start(args: &[String]) -> std::result::Result<RunChild, Failure> {
        let exe = crate::setup::client_exe().map_err(|e| failure(format!("{e:#}"), String::new()))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failure(format!("starting cargo xtask run: {e}"), String::new()))?;
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as _),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut output = output.lock().expect("output lock");
                    output.push_str(&line);
                    output.push('\n');
                }
            });
        }
        Ok(RunChild { stdin: child.stdin.take(), child, output })
    }

    fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    /// Waits until `ready` holds for the output; false if the run ended or time ran out first.
    fn wait_for(&mut self, timeout: Duration, ready: impl Fn(&str) -> bool) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
            if ready(&self.output()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ready(&self.output())
    }

    /// Asks the run to end (`q`), and waits for its exit status.
    fn quit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"q\n");
        }
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for RunChild {
    fn drop(&mut self) {
        if self.quit(Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One GET: the status code and the body.
fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// A scrape checked against the text format, its samples by series.
struct Scrape {
    text: String,
    series: BTreeMap<String, f64>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        self.series.get(series).copied().unwrap_or(f64::NAN)
    }

    /// Guest `id`'s own counter `guest_NAME`, by the per-guest family of a running total.
    fn guest(&self, id: usize, counter: &str) -> f64 {
        let family = format!("{}{}{counter}_total", metrics::PREFIX, metrics::PER_GUEST);
        let prefix = format!("{family}{{guest=\"{id}\",");
        self.series.iter().find(|(k, _)| k.starts_with(&prefix)).map_or(f64::NAN, |(_, v)| *v)
    }
}

fn scrape(address: SocketAddr) -> std::result::Result<Scrape, String> {
    let (code, text) = http_get(address, metrics::PATH).map_err(|e| format!("GET {}: {e}", metrics::PATH))?;
    if code != 200 {
        return Err(format!("GET {} answered {code}: {text}", metrics::PATH));
    }
    let samples: Vec<Sample> = metrics::parse_exposition(&text).map_err(|e| format!("bad exposition: {e}"))?;
    Ok(Scrape { series: metrics::by_series(&samples), text })
}

/// Scrapes until `done` holds for a scrape (the kernel prints `stats:` every few seconds).
fn scrape_until(
    run: &RunChild,
    address: SocketAddr,
    done: impl Fn(&Scrape) -> bool,
) -> std::result::Result<Scrape, Failure> {
    let until = Instant::now() + STATS_WAIT;
    let mut last = String::from("no scrape");
    while Instant::now() < until {
        match scrape(address) {
            Ok(s) if done(&s) => return Ok(s),
            Ok(s) => last = s.text,
            Err(e) if e.starts_with("bad exposition") => return Err(failure(e, run.output())),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(failure(format!("the scraped counters did not show the echoes in time; last scrape:\n{last}"), run.output()))
}

/// Echoes `TEST_SIZES` datagrams off guest `index`; `(intact, retries)`.
fn echo(run: &RunChild, base: u16, index: usize, seed: u64) -> std::result::Result<(u64, u64), Failure> {
    let peer = SocketAddr::from(([127, 0, 0, 1], base + index as u16));
    let report = udp::echo_check(peer, &udp::TEST_SIZES, 1, 3, Duration::from_secs(2), seed)
        .map_err(|e| failure(format!("echo check of guest {index}: {e:#}"), run.output()))?;
    if report.intact != udp::TEST_SIZES.len() {
        return Err(failure(format!("guest {index} via {peer}: {report:?}"), run.output()));
    }
    Ok((report.intact as u64, report.retries as u64))
}

/// `cargo xtask run udp-echo --metrics 127.0.0.1:0` during echoes: two scrapes, each in the
/// text format with HELP and TYPE, counters as `_total` and levels as gauges; the per-guest
/// echo counters equal the echoes made (retries aside), advance between the scrapes on the
/// guests echoed and only there, every running total is no smaller at the second scrape, and
/// every value equals the `stats:` line of the console it came from. `q` then ends the run with
/// success.
pub(super) fn metrics_scraped_during_echo(_ctx: &Ctx) -> TestResult {
    let base = host_port_base();
    let args: Vec<String> = [
        "run",
        "udp-echo",
        "--accel",
        "tcg",
        "--metrics",
        "127.0.0.1:0",
        "--for",
        &RUN_SECS.to_string(),
        "--host-port-base",
        &base.to_string(),
        "--http-port-base",
        &(base + 4).to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut run = RunChild::start(&args)?;
    let guests = 4;
    if !run.wait_for(Duration::from_secs(120), |out| out.matches("udp-echo listening on").count() >= guests) {
        return Err(failure(format!("{guests} echo guests did not all start listening"), run.output()));
    }
    let output = run.output();
    let address: Option<SocketAddr> =
        output.lines().find_map(|l| l.strip_prefix("metrics: http://")?.split_once(metrics::PATH)?.0.parse().ok());
    let Some(address) = address else {
        return Err(failure("`run --metrics` did not say where it serves", output));
    };

    let (first_intact, first_retries) = echo(&run, base, 0, 1)?;
    let first = scrape_until(&run, address, |s| s.guest(0, "app_echoes") >= first_intact as f64)?;
    let (again_intact, again_retries) = echo(&run, base, 0, 2)?;
    let (other_intact, other_retries) = echo(&run, base, 1, 3)?;
    let guest0 = first_intact + again_intact;
    let second = scrape_until(&run, address, |s| {
        s.guest(0, "app_echoes") >= guest0 as f64 && s.guest(1, "app_echoes") >= other_intact as f64
    })?;
    let fail = |why: String| Err(failure(why, run.output()));

    // The echo counters hold exactly the echoes made (a retried datagram may be echoed twice).
    let within = |value: f64, intact: u64, retries: u64| value >= intact as f64 && value <= (intact + retries) as f64;
    let want = [
        (&first, 0, first_intact, first_retries),
        (&second, 0, guest0, first_retries + again_retries),
        (&second, 1, other_intact, other_retries),
        (&second, 2, 0, 0),
        (&second, 3, 0, 0),
    ];
    for (scrape, id, intact, retries) in want {
        let echoes = scrape.guest(id, "app_echoes");
        if !within(echoes, intact, retries) {
            return fail(format!("guest {id} reports {echoes} echoes, {intact} (+{retries} retries) were made"));
        }
    }
    // No guest has ended, so the totals are the sums of the guests' own counters.
    let per_guest_sum: f64 = (0..guests).map(|id| second.guest(id, "app_echoes")).sum();
    let total = second.get(&format!("{}guest_app_echoes_total{{}}", metrics::PREFIX));
    if total != per_guest_sum {
        return fail(format!("isokernel_guest_app_echoes_total is {total}, the guests' sum {per_guest_sum}"));
    }
    // Running totals never go back; those of the packet path and the clock moved.
    for (series, before) in &first.series {
        let after = second.series.get(series).copied();
        if series.contains("_total{") && after.is_none_or(|a| a < *before) {
            return fail(format!("{series} went from {before} to {after:?}"));
        }
    }
    for moved in ["uptime_ms", "rx_packets", "tx_packets", "nic_rx_frames", "guest_app_echoes"] {
        let series = format!("{}{moved}_total{{}}", metrics::PREFIX);
        if second.get(&series).partial_cmp(&first.get(&series)) != Some(std::cmp::Ordering::Greater) {
            return fail(format!("{series} did not advance: {} then {}", first.get(&series), second.get(&series)));
        }
    }
    // Levels are gauges, running totals counters.
    for (family, kind) in [
        ("guests_running", "gauge"),
        ("frames_free", "gauge"),
        ("per_guest_tcp_open", "gauge"),
        ("per_guest_app_echoes_total", "counter"),
        ("drops_no_buffer_total", "counter"),
    ] {
        let line = format!("# TYPE {}{family} {kind}\n", metrics::PREFIX);
        if !second.text.contains(&line) {
            return fail(format!("the exposition lacks `{}`", line.trim_end()));
        }
    }
    if second.get(&format!("{}guests_running{{}}", metrics::PREFIX)) != guests as f64 {
        return fail(format!("isokernel_guests_running is not {guests}"));
    }
    // Every value is the console's: the stats line of the same uptime, value for value.
    let uptime = second.get(&format!("{}uptime_ms_total{{}}", metrics::PREFIX));
    let console = crate::ledger::all_stats(&run.output());
    let Some(line) = console.iter().find(|c| c.get("uptime_ms").is_some_and(|&u| u as f64 == uptime)) else {
        return fail(format!("no stats line on the console has uptime_ms={uptime}"));
    };
    for (name, value) in line {
        let series = format!("{}{{}}", family_of(name));
        if second.get(&series) != *value as f64 {
            return fail(format!("{series} is {}, the stats line says {name}={value}", second.get(&series)));
        }
    }
    let status = run.quit(Duration::from_secs(30));
    if !status.is_some_and(|s| s.success()) {
        return Err(failure(format!("`q` did not end the run with success: {status:?}"), run.output()));
    }
    Ok(Verdict::Pass)
}

/// The family a `stats:` value is served as.
fn family_of(name: &str) -> String {
    let suffix = if metrics::is_gauge(name) { "" } else { "_total" };
    format!("{}{name}{suffix}", metrics::PREFIX)
}
