//! `cargo xtask run --metrics ADDR`: the kernel's latest `stats:` line, and the `guest-stats:`
//! lines after it, served over HTTP in the Prometheus text exposition format (0.0.4), so that
//! a running image can be scraped.
//!
//! Families: every `stats:` pair `NAME=V` is `isokernel_NAME` (with `_total` for a running
//! total, TYPE `counter`; without for a level, TYPE `gauge`); every pair of guest N's
//! `guest-stats:` line `guest_NAME=V` is `isokernel_per_guest_NAME{guest="N",name="..."}`, a family
//! of its own, so that summing a per-guest family never double-counts the totals (which also
//! hold guests that have ended). The kernel's own counters of each guest on the same line (CPU
//! time, wake-ups and their delays, frames sent and held back by its rate limit:
//! [`KERNEL_PER_GUEST`]) are `isokernel_per_guest_NAME{...}` too. The lines are read with the
//! ledger's parser ([`crate::ledger`]).

use crate::ledger::{self, Counters};
use anyhow::{Context, Result};
use hypercall_abi::vnic::GuestCounter;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Prefix of every metric name.
pub const PREFIX: &str = "isokernel_";
/// Prefix of the per-guest families (after [`PREFIX`]), in place of the counters' `guest_`.
pub const PER_GUEST: &str = "per_guest_";
/// The path scrapes ask for.
pub const PATH: &str = "/metrics";
/// Content type of the text exposition format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The kernel's `stats:` values that are levels, not running totals: memory, guests and frames
/// held now. (The guests' own gauges are [`GuestCounter::is_gauge`]; every other value only
/// grows.)
const KERNEL_GAUGES: [&str; 7] = [
    "frames_managed",
    "frames_free",
    "heap_bytes_used",
    "heap_bytes_free",
    "guests_running",
    "guest_private_pages",
    "rx_held_now",
];
/// The kernel's own counters of a guest at the head of its `guest-stats:` line (the kernel's
/// `guest/reports.rs`), and whether each is a level (gauge) rather than a running total.
pub const KERNEL_PER_GUEST: [(&str, bool); 10] = [
    ("cpu_weight", true),
    ("cpu_us", false),
    ("wakes", false),
    ("wake_delay_median_us", true),
    ("wake_delay_p99_us", true),
    ("wake_delay_max_us", true),
    ("idles_already_due", false),
    ("tx_packets", false),
    ("tx_bytes", false),
    ("tx_held_back", false),
];
/// A request head longer than this is refused.
const MAX_REQUEST_HEAD: u64 = 8 * 1024;
/// A client that sends nothing for this long is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the `stats:` value `name` is a gauge.
pub fn is_gauge(name: &str) -> bool {
    KERNEL_GAUGES.contains(&name) || GuestCounter::from_name(name).is_some_and(GuestCounter::is_gauge)
}

/// A metric name: the kernel's name with characters outside `[a-zA-Z0-9_]` made `_`.
fn family(base: &str, gauge: bool) -> String {
    let mut name: String = base.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if !gauge {
        name += "_total";
    }
    format!("{PREFIX}{name}")
}

/// A label value with `\`, `"` and newlines escaped.
fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn write_family(out: &mut String, name: &str, gauge: bool, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {}", if gauge { "gauge" } else { "counter" });
}

/// The exposition of the log's last `stats:` line and the `guest-stats:` lines after it;
/// `None` before the kernel printed one.
pub fn render(log: &str) -> Option<String> {
    let totals = ledger::last_stats(log)?;
    let guests = ledger::last_guest_stats(log);
    Some(render_counters(&totals, &guests))
}

/// [`render`] of parsed lines: `guests` by name, each with its `id`.
fn render_counters(totals: &Counters, guests: &BTreeMap<String, Counters>) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for (name, value) in totals {
        let gauge = is_gauge(name);
        let metric = family(name, gauge);
        let help = if gauge { "level" } else { "running total" };
        write_family(&mut out, &metric, gauge, &format!("The kernel's stats: value {name} ({help})."));
        let _ = writeln!(out, "{metric} {value}");
    }
    // One family per guest counter, each guest a series of it (families must not be split).
    let mut guests: Vec<(u64, &str, &Counters)> =
        guests.iter().filter_map(|(name, c)| Some((*c.get("id")?, name.as_str(), c))).collect();
    guests.sort_unstable();
    let kernel = KERNEL_PER_GUEST.iter().map(|&(key, gauge)| (key, gauge, "The kernel's"));
    let own = GuestCounter::ALL.iter().map(|c| (c.name(), c.is_gauge(), "Each guest's own"));
    for (key, gauge, whose) in kernel.chain(own) {
        let series: Vec<_> = guests.iter().filter_map(|(id, name, c)| Some((id, name, c.get(key)?))).collect();
        if series.is_empty() {
            continue;
        }
        let metric = family(&format!("{PER_GUEST}{}", key.trim_start_matches("guest_")), gauge);
        let help = format!(
            "{whose} {key} of each guest, from its guest-stats: line ({}).",
            if gauge { "level" } else { "running total" }
        );
        write_family(&mut out, &metric, gauge, &help);
        for (id, name, value) in series {
            let _ = writeln!(out, "{metric}{{guest=\"{id}\",name=\"{}\"}} {value}", label_value(name));
        }
    }
    out
}

/// Binds `address` (port 0 picks a free one): before QEMU starts, so a taken port stops the run.
pub fn bind(address: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(address).with_context(|| format!("--metrics: cannot listen on {address}"))
}

/// Serves the exposition of `log` (the console as it grows) on `listener`, from a thread.
pub fn serve(listener: TcpListener, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let log = Arc::clone(&log);
            // One thread per scrape: a client that stalls holds up no other.
            std::thread::spawn(move || {
                let _ = answer(stream, &log);
            });
        }
    });
}

/// Reads one request head and answers it, then closes the connection.
fn answer(stream: TcpStream, log: &Mutex<String>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(std::io::Read::take(&stream, MAX_REQUEST_HEAD));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // The rest of the head (its fields are not needed), up to the blank line.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 && !line.trim_end().is_empty() {
        line.clear();
    }
    let (status, content_type, body) = respond(&request_line, || render(&log.lock().expect("log lock")));
    let mut out = &stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

/// Status line, content type and body for a request line; `exposition` renders on demand.
fn respond(request_line: &str, exposition: impl FnOnce() -> Option<String>) -> (&'static str, &'static str, String) {
    let mut words = request_line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let text = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET", PATH) => match exposition() {
            Some(body) => ("200 OK", CONTENT_TYPE, body),
            None => ("503 Service Unavailable", text, "the kernel has printed no stats: line yet\n".into()),
        },
        ("GET", "/") => ("200 OK", text, format!("isolation kernel metrics: GET {PATH}\n")),
        ("GET", _) => ("404 Not Found", text, format!("not found; the metrics are at {PATH}\n")),
        _ => ("405 Method Not Allowed", text, "only GET is served\n".into()),
    }
}

/// One sample of an exposition: family, labels as written (`guest="0",name="x"`), value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: String,
    pub value: f64,
}

/// Checks an exposition against the text format's rules as a scraper applies them (every
/// sample's family has one HELP and one TYPE before its samples, families are not split,
/// names are valid, counters end in `_total`, values are numbers) and returns its samples.
pub fn parse_exposition(text: &str) -> std::result::Result<Vec<Sample>, String> {
    let valid_name = |n: &str| {
        n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut help = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        let fail = |why: &str| format!("line {number} `{line}`: {why}");
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (keyword, name, what) = (words.next(), words.next().unwrap_or(""), words.next().unwrap_or(""));
            let table = match keyword {
                Some("HELP") => &mut help,
                Some("TYPE") => &mut types,
                _ => continue,
            };
            if !valid_name(name) {
                return Err(fail("invalid metric name"));
            }
            if keyword == Some("TYPE") && !matches!(what, "counter" | "gauge") {
                return Err(fail("TYPE is neither counter nor gauge"));
            }
            if keyword == Some("TYPE") && what == "counter" && !name.ends_with("_total") {
                return Err(fail("a counter's name does not end in _total"));
            }
            if table.insert(name.to_string(), what.to_string()).is_some() {
                return Err(fail("a second HELP or TYPE for the family"));
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| fail("no value"))?;
        let value: f64 = value.parse().map_err(|_| fail("the value is not a number"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').ok_or_else(|| fail("unclosed labels"))?),
            None => (series, ""),
        };
        if !valid_name(name) {
            return Err(fail("invalid metric name"));
        }
        if !help.contains_key(name) || !types.contains_key(name) {
            return Err(fail("a sample before its family's HELP and TYPE"));
        }
        if current.as_deref() != Some(name) {
            if finished.iter().any(|f| f == name) {
                return Err(fail("the family's samples are split"));
            }
            finished.extend(current.replace(name.to_string()));
        }
        samples.push(Sample { name: name.to_string(), labels: labels.to_string(), value });
    }
    Ok(samples)
}

/// `Sample`s by `name{labels}`.
pub fn by_series(samples: &[Sample]) -> BTreeMap<String, f64> {
    samples.iter().map(|s| (format!("{}{{{}}}", s.name, s.labels), s.value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "boot...\nstats: uptime_ms=10 frames_free=5 rx_packets=1\n\
        stats: uptime_ms=5000 timer_ticks=500 frames_free=7 guests_running=2 rx_packets=9 guest_app_echoes=6 \
        guest_tcp_open=1\n\
        guest-stats: id=1 name=echo-1 cpu_us=700 wake_delay_max_us=90 guest_app_echoes=2 guest_tcp_open=0\n\
        guest-stats: id=0 name=e\"c\\o-0 cpu_us=1200 wake_delay_max_us=40 guest_app_echoes=4 guest_tcp_open=1\n\
        udp-echo listening\n";

    #[test]
    fn the_last_lines_become_counter_and_gauge_families() {
        let text = render(LOG).unwrap();
        let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let series = by_series(&samples);
        assert_eq!(series["isokernel_uptime_ms_total{}"], 5000.0);
        assert_eq!(series["isokernel_rx_packets_total{}"], 9.0);
        assert_eq!(series["isokernel_frames_free{}"], 7.0);
        assert_eq!(series["isokernel_guests_running{}"], 2.0);
        assert_eq!(series["isokernel_guest_app_echoes_total{}"], 6.0);
        assert_eq!(series["isokernel_guest_tcp_open{}"], 1.0);
        assert_eq!(series["isokernel_per_guest_app_echoes_total{guest=\"0\",name=\"e\\\"c\\\\o-0\"}"], 4.0);
        assert_eq!(series["isokernel_per_guest_app_echoes_total{guest=\"1\",name=\"echo-1\"}"], 2.0);
        assert_eq!(series["isokernel_per_guest_tcp_open{guest=\"1\",name=\"echo-1\"}"], 0.0);
        // The kernel's counters of each guest.
        assert_eq!(series["isokernel_per_guest_cpu_us_total{guest=\"1\",name=\"echo-1\"}"], 700.0);
        assert_eq!(series["isokernel_per_guest_wake_delay_max_us{guest=\"1\",name=\"echo-1\"}"], 90.0);
        assert!(text.contains("# TYPE isokernel_per_guest_wake_delay_max_us gauge\n"));
        // The totals' 7 values and 2 guests x 4 counters; nothing else.
        assert_eq!(samples.len(), 7 + 8);
        assert!(text.contains("# TYPE isokernel_frames_free gauge\n"));
        assert!(text.contains("# TYPE isokernel_per_guest_app_echoes_total counter\n"));
        // Guests in id order within a family.
        let at = |needle: &str| text.find(needle).unwrap();
        assert!(at("_total{guest=\"0\"") < at("_total{guest=\"1\""));
        assert_eq!(render("no stats yet\n"), None);
    }

    #[test]
    fn the_format_checker_refuses_what_scrapers_refuse() {
        let good = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n# HELP g y\n# TYPE g gauge\ng{l=\"1\"} 2\n";
        assert_eq!(parse_exposition(good).unwrap().len(), 2);
        for (bad, why) in [
            ("a_total 1\n", "before its family"),
            ("# HELP a x\n# TYPE a counter\na 1\n", "_total"),
            ("# HELP a x\n# TYPE a summary\na 1\n", "neither counter nor gauge"),
            ("# HELP g x\n# TYPE g gauge\ng one\n", "not a number"),
            ("# HELP g x\n# TYPE g gauge\n# HELP h x\n# TYPE h gauge\ng 1\nh 1\ng 2\n", "split"),
            ("# HELP 1g x\n", "invalid metric name"),
            ("# HELP g x\n# HELP g y\n", "second"),
        ] {
            let error = parse_exposition(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn only_get_of_the_metrics_path_is_the_exposition() {
        let render = || Some("x 1\n".to_string());
        assert_eq!(respond("GET /metrics HTTP/1.1\r\n", render).0, "200 OK");
        assert_eq!(respond("GET /metrics?x=1 HTTP/1.1\r\n", render).2, "x 1\n");
        assert_eq!(respond("GET /metrics HTTP/1.1\r\n", || None).0, "503 Service Unavailable");
        assert_eq!(respond("GET /other HTTP/1.1\r\n", render).0, "404 Not Found");
        assert_eq!(respond("POST /metrics HTTP/1.1\r\n", render).0, "405 Method Not Allowed");
        assert_eq!(respond("", render).0, "405 Method Not Allowed");
    }

    #[test]
    fn a_scrape_over_tcp_gets_the_exposition() {
        let log = Arc::new(Mutex::new(String::new()));
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        serve(listener, Arc::clone(&log));
        let get = || {
            let mut stream = TcpStream::connect(address).unwrap();
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut response = String::new();
            std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
            response
        };
        assert!(get().starts_with("HTTP/1.1 503 "));
        *log.lock().unwrap() = LOG.to_string();
        let response = get();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        assert_eq!(body, render(LOG).unwrap());
    }
}
