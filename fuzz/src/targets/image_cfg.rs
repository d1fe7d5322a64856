//! `hypercall_abi::initrd::parse_config`: the image config the kernel reads from the initrd.
//!
//! One result per non-blank, non-comment line (counted independently here); every error names
//! a line that exists and quotes text of that line; every accepted record satisfies the
//! format's rules (valid names, unicast MAC, prefix 1..=32, MTU within limits, CPU weight and
//! token buckets within limits, `args` without tabs) and round-trips: written back with its `Display` and parsed again, it is the same.

use crate::engine::{Target, Verdict};
use crate::features::Features;
use crate::real::RealInputs;
use crate::{check, check_eq};
use hypercall_abi::initrd::{
    parse_config, ConfigError, Expect, Record, MAX_ARGS_LEN, MAX_CPU_BUDGET_MS, MAX_CPU_WEIGHT, MAX_HEAP_KIB, MAX_NAME,
};
use hypercall_abi::vnic::{MAX_MTU, MIN_MTU};

pub const TARGET: Target = Target {
    name: "image_cfg",
    checks: "one result per record line; errors name a real line and quote its text; accepted records obey \
             the format's rules and round-trip through Display",
    max_len: 4096,
    dictionary: &[
        b"image\tname=",
        b"guest\t",
        b"\tname=",
        b"\tapp=",
        b"\theap_kib=",
        b"\tcpu_budget_ms=",
        b"\texpect=",
        b"exit:",
        b"stopped:",
        b"refused:",
        b"running",
        b"any",
        b"\tnet=",
        b"\tcpu_weight=",
        b"\ttx_packets=",
        b"\ttx_bytes=",
        b"100,1000",
        b",0",
        b"1099511627776",
        b"1099511627777",
        b"3600000",
        b"3600001",
        b"\targs=",
        b"02:00:00:00:00:10,10.0.2.16/24,10.0.2.2",
        b",9000",
        b",576",
        b"/32",
        b"/0",
        b"/33",
        b",575",
        b",9001",
        b"01:00:5e:00:00:01",
        b"18446744073709551615",
        b"18446744073709551616",
        b"-2147483648",
        b"1048576",
        b"1048577",
        b"86400000",
        b"86400001",
        b"\n#",
        b"\r\n",
    ],
    seeds,
    run,
};

fn seeds(real: &RealInputs) -> Vec<Vec<u8>> {
    let mut seeds = vec![
        b"image\tname=hello\nguest\tname=hello-0\tapp=hello\theap_kib=64\tcpu_budget_ms=0\texpect=exit:0\targs=a b\n"
            .to_vec(),
        b"# comment\nguest\tname=e\tapp=udp-echo\theap_kib=4096\texpect=running\tnet=02:00:00:00:00:10,10.0.2.16/24,10.0.2.2,9000\targs=\n"
            .to_vec(),
        b"guest\tname=x\tapp=y\theap_kib=1\texpect=stopped:page_fault\nguest\tname=z\tapp=y\theap_kib=2\texpect=refused:elf_bad_magic\n"
            .to_vec(),
    ];
    seeds.extend(real.configs.iter().cloned());
    seeds
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Where `part` starts in `whole`, if it is a slice of it.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

fn run(input: &[u8], features: &mut Features) -> Verdict {
    let text = String::from_utf8_lossy(input);
    let lines: Vec<&str> = text.lines().collect();
    let record_lines: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, _)| i + 1)
        .collect();
    let results: Vec<_> = parse_config(&text).collect();
    check_eq!(results.len(), record_lines.len(), "one result per record line");
    features.note_count("records", results.len() as u64);
    features.note_count("good records", results.iter().filter(|r| r.is_ok()).count() as u64);
    for (result, &line_number) in results.iter().zip(&record_lines) {
        let line = lines[line_number - 1];
        match result {
            Ok(record) => {
                features.note("record", matches!(record, Record::Guest(_)) as u64);
                check_record(record, features)?;
            }
            Err(error) => {
                let _ = error.to_string();
                let (kind, at, quoted) = match *error {
                    ConfigError::UnknownRecord { line, record } => (1, line, Some(record)),
                    ConfigError::MissingField { line, .. } => (2, line, None),
                    ConfigError::BadField { line, field } => (3, line, Some(field)),
                    ConfigError::TooLarge { line, field, value, max } => {
                        // The value really is beyond the limit the error names.
                        check!(
                            value.parse::<u128>().map_or(true, |v| v > u128::from(max)),
                            "{field}={value} refused as above {max}"
                        );
                        (4, line, Some(value))
                    }
                    ConfigError::ArgsTooLong { line, len, max } => {
                        check!(len > max && len <= line_len(&lines, line), "args of {len} bytes refused (limit {max})");
                        (5, line, None)
                    }
                    ConfigError::TooManyGuests { line, max } => {
                        let guests_so_far = results_before(&record_lines, &lines, line);
                        check!(guests_so_far >= max, "guest line {line} refused after {guests_so_far} of {max}");
                        (6, line, None)
                    }
                };
                features.note("error", kind);
                check_eq!(at, line_number, "error's line number");
                if let Some(quoted) = quoted {
                    // The quoted text is a piece of that line (empty quotes may point anywhere).
                    let start = offset_in(&text, quoted);
                    let line_start = offset_in(&text, line).unwrap_or(usize::MAX);
                    check!(
                        quoted.is_empty()
                            || start.is_some_and(|s| s >= line_start && s + quoted.len() <= line_start + line.len()),
                        "error quotes {quoted:?}, not from line {line_number} {line:?}"
                    );
                }
                if let ConfigError::UnknownRecord { record, .. } = *error {
                    check_eq!(Some(record), line.split('\t').next(), "unknown record is the line's first word");
                }
            }
        }
    }
    Ok(())
}

/// Bytes of line `line` (1-based).
fn line_len(lines: &[&str], line: usize) -> usize {
    lines.get(line.wrapping_sub(1)).map_or(0, |l| l.len())
}

/// Guest records on the record lines before line `line`.
fn results_before(record_lines: &[usize], lines: &[&str], line: usize) -> usize {
    record_lines.iter().filter(|&&l| l < line && lines[l - 1].starts_with("guest\t")).count()
}

fn check_record(record: &Record, features: &mut Features) -> Verdict {
    let written = match record {
        Record::Image { name } => {
            check!(valid_name(name), "image name {name:?}");
            format!("image\tname={name}")
        }
        Record::Guest(spec) => {
            check!(valid_name(spec.name) && valid_name(spec.app), "guest or app name in {spec:?}");
            check!(!spec.args.contains(['\t', '\n']), "args {:?}", spec.args);
            check!(spec.args.len() <= MAX_ARGS_LEN, "args of {} bytes accepted", spec.args.len());
            check!(spec.heap_kib <= MAX_HEAP_KIB, "heap_kib {} accepted", spec.heap_kib);
            check!(spec.cpu_budget_ms <= MAX_CPU_BUDGET_MS, "cpu_budget_ms {} accepted", spec.cpu_budget_ms);
            let expect_kind = match spec.expect {
                Expect::Exit(_) => 0,
                Expect::Stopped(_) => 1,
                Expect::Refused(_) => 2,
                Expect::Running => 3,
                Expect::Any => 4,
            };
            features.note("expect", expect_kind);
            features.note("net", u64::from(spec.net.is_some()));
            check!((1..=MAX_CPU_WEIGHT).contains(&spec.cpu_weight), "cpu_weight {} accepted", spec.cpu_weight);
            features.note("cpu weight", u64::from(spec.cpu_weight));
            for (which, bucket) in [(0, spec.tx_limits.packets), (1, spec.tx_limits.bytes)] {
                features.note("tx bucket", which * 2 + u64::from(bucket.is_some()));
                if let Some(bucket) = bucket {
                    check!(bucket.is_valid(), "bucket {bucket:?} accepted");
                }
            }
            if let Some(net) = spec.net {
                features.note(
                    "net mtu",
                    [1500, 9000, MIN_MTU as u16].iter().position(|&m| m == net.mtu).unwrap_or(3) as u64,
                );
                // Every prefix length is its own outcome, so inputs at the limits are kept.
                features.note("net prefix", u64::from(net.prefix_len));
                check!(net.mac[0] & 1 == 0, "group MAC {:02x?}", net.mac);
                check!((1..=32).contains(&net.prefix_len), "prefix /{}", net.prefix_len);
                check!((MIN_MTU..=MAX_MTU).contains(&u64::from(net.mtu)), "MTU {}", net.mtu);
            }
            spec.to_string()
        }
    };
    let reparsed: Vec<_> = parse_config(&written).collect();
    check_eq!(reparsed, vec![Ok(*record)], "record written as {written:?} and parsed again");
    Ok(())
}
