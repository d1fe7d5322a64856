//! The initrd (QEMU `-initrd`, a PVH boot module) that carries an image's guests.
//!
//! It is a cpio archive in the "newc" format (so `cpio -t < initrd.cpio` lists it) holding
//! [`CONFIG_FILE`], the image config below, and one ELF file per app at `bin/<app>`.
//! `cargo xtask build` writes it from the image's TOML manifest; the kernel reads it at boot.
//!
//! The image config is line-based, because the kernel has no TOML parser: `#` starts a comment
//! line, and every other line is a record type followed by tab-separated `key=value` fields.
//!
//! With `→` standing for a tab:
//!
//! ```text
//! image→name=hello
//! guest→name=hello-0→app=hello→heap_kib=64→cpu_budget_ms=0→expect=exit:0→args=a b
//! ```
//!
//! A guest with a virtual NIC has `net=<mac>,<ipv4>/<prefix>,<gateway>[,<mtu>]` (for example
//! `net=02:00:00:00:00:10,10.0.2.16/24,10.0.2.2`; the MTU defaults to 1500), placed before
//! `args`.
//!
//! `expect` is `exit:<code>`, `stopped:<text the stop cause contains>`, `refused:<text the load
//! error contains>` (the kernel must refuse to load the guest), `running` (still running at
//! shutdown) or `any`. `cpu_budget_ms=0` means no CPU budget. `args` comes last and
//! may contain spaces (not tabs).

use crate::vnic::{NetConfig, MAX_MTU, MIN_MTU, MTU};

/// Path of the image config inside the archive.
pub const CONFIG_FILE: &str = "image.cfg";
/// Directory of the app ELF files inside the archive.
pub const APP_DIR: &str = "bin/";
/// Longest guest or image name.
pub const MAX_NAME: usize = crate::boot_info::MAX_NAME_LEN;

/// What a guest is expected to do, checked by the kernel when the run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect<'a> {
    Exit(i32),
    /// Stopped by the kernel with a cause containing this text.
    Stopped(&'a str),
    /// Refused at load time with an error containing this text (bad ELF files).
    Refused(&'a str),
    /// Still running when the kernel shuts down (servers).
    Running,
    Any,
}

impl core::fmt::Display for Expect<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Expect::Exit(code) => write!(f, "exit:{code}"),
            Expect::Stopped(cause) => write!(f, "stopped:{cause}"),
            Expect::Refused(error) => write!(f, "refused:{error}"),
            Expect::Running => f.write_str("running"),
            Expect::Any => f.write_str("any"),
        }
    }
}

impl<'a> Expect<'a> {
    pub fn parse(text: &'a str) -> Option<Expect<'a>> {
        match text {
            "running" => Some(Expect::Running),
            "any" => Some(Expect::Any),
            _ => {
                if let Some(code) = text.strip_prefix("exit:") {
                    code.parse().ok().map(Expect::Exit)
                } else if let Some(error) = text.strip_prefix("refused:") {
                    Some(Expect::Refused(error)).filter(|_| !error.is_empty())
                } else {
                    text.strip_prefix("stopped:").filter(|c| !c.is_empty()).map(Expect::Stopped)
                }
            }
        }
    }
}

/// One guest of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestSpec<'a> {
    pub name: &'a str,
    pub app: &'a str,
    pub heap_kib: u64,
    pub cpu_budget_ms: u64,
    pub expect: Expect<'a>,
    pub net: Option<NetConfig>,
    pub args: &'a str,
}

impl core::fmt::Display for GuestSpec<'_> {
    /// The config line for this guest (without the newline).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "guest\tname={}\tapp={}\theap_kib={}\tcpu_budget_ms={}\texpect={}",
            self.name, self.app, self.heap_kib, self.cpu_budget_ms, self.expect
        )?;
        if let Some(net) = &self.net {
            let [m0, m1, m2, m3, m4, m5] = net.mac;
            let [a, b, c, d] = net.ipv4;
            let [g0, g1, g2, g3] = net.gateway;
            write!(
                f,
                "\tnet={m0:02x}:{m1:02x}:{m2:02x}:{m3:02x}:{m4:02x}:{m5:02x},{a}.{b}.{c}.{d}/{},{g0}.{g1}.{g2}.{g3}",
                net.prefix_len
            )?;
            if u64::from(net.mtu) != MTU {
                write!(f, ",{}", net.mtu)?;
            }
        }
        write!(f, "\targs={}", self.args)
    }
}

/// Parses `<mac>,<ipv4>/<prefix>,<gateway>[,<mtu>]`.
pub fn parse_net(text: &str) -> Option<NetConfig> {
    let mut parts = text.split(',');
    let (mac_text, addr_text, gateway_text) = (parts.next()?, parts.next()?, parts.next()?);
    let mtu = match parts.next() {
        None => MTU as u16,
        Some(mtu) => mtu.parse().ok().filter(|m| (MIN_MTU..=MAX_MTU).contains(&u64::from(*m)))?,
    };
    if parts.next().is_some() {
        return None;
    }
    let mut mac = [0u8; 6];
    let mut octets = mac_text.split(':');
    for byte in &mut mac {
        let part = octets.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    if octets.next().is_some() || mac[0] & 1 != 0 {
        return None; // a multicast address cannot be a NIC's own
    }
    let (ip_text, prefix_text) = addr_text.split_once('/')?;
    let prefix_len: u8 = prefix_text.parse().ok().filter(|p| (1..=32).contains(p))?;
    Some(NetConfig { mac, ipv4: parse_ipv4(ip_text)?, prefix_len, gateway: parse_ipv4(gateway_text)?, mtu })
}

fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split('.');
    for byte in &mut out {
        *byte = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// One record of the image config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Image { name: &'a str },
    Guest(GuestSpec<'a>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError<'a> {
    UnknownRecord { line: usize, record: &'a str },
    MissingField { line: usize, field: &'static str },
    BadField { line: usize, field: &'a str },
}

impl core::fmt::Display for ConfigError<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::UnknownRecord { line, record } => write!(f, "line {line}: unknown record `{record}`"),
            ConfigError::MissingField { line, field } => write!(f, "line {line}: missing field `{field}`"),
            ConfigError::BadField { line, field } => write!(f, "line {line}: bad or unknown field `{field}`"),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn parse_guest(line: usize, fields: core::str::Split<'_, char>) -> Result<GuestSpec<'_>, ConfigError<'_>> {
    let (mut name, mut app, mut heap_kib, mut budget, mut expect, mut args) = (None, None, None, None, None, None);
    let mut net = None;
    for field in fields {
        let bad = ConfigError::BadField { line, field };
        let (key, value) = field.split_once('=').ok_or(bad)?;
        match key {
            "name" if valid_name(value) => name = Some(value),
            "app" if valid_name(value) => app = Some(value),
            "heap_kib" => heap_kib = Some(value.parse().map_err(|_| bad)?),
            "cpu_budget_ms" => budget = Some(value.parse().map_err(|_| bad)?),
            "expect" => expect = Some(Expect::parse(value).ok_or(bad)?),
            "net" => net = Some(parse_net(value).ok_or(bad)?),
            "args" => args = Some(value),
            _ => return Err(bad),
        }
    }
    let missing = |field| ConfigError::MissingField { line, field };
    Ok(GuestSpec {
        name: name.ok_or(missing("name"))?,
        app: app.ok_or(missing("app"))?,
        heap_kib: heap_kib.ok_or(missing("heap_kib"))?,
        cpu_budget_ms: budget.unwrap_or(0),
        expect: expect.unwrap_or(Expect::Any),
        net,
        args: args.unwrap_or(""),
    })
}

/// The records of an image config, in order; each line's error names its line number (1-based).
pub fn parse_config(text: &str) -> impl Iterator<Item = Result<Record<'_>, ConfigError<'_>>> {
    text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#')).map(|(index, l)| {
        let line = index + 1;
        let mut fields = l.split('\t');
        match fields.next().unwrap_or("") {
            "image" => {
                let field = fields.next().unwrap_or("");
                match field.strip_prefix("name=") {
                    Some(name) if valid_name(name) && fields.next().is_none() => Ok(Record::Image { name }),
                    _ => Err(ConfigError::BadField { line, field }),
                }
            }
            "guest" => parse_guest(line, fields).map(Record::Guest),
            record => Err(ConfigError::UnknownRecord { line, record }),
        }
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;
    use std::vec::Vec;

    #[test]
    fn written_lines_parse_back() {
        let spec = GuestSpec {
            name: "hello-3",
            app: "hello",
            heap_kib: 64,
            cpu_budget_ms: 500,
            expect: Expect::Stopped("page fault"),
            net: Some(NetConfig {
                mac: [2, 0, 0, 0, 0, 0x1f],
                ipv4: [10, 0, 2, 16],
                prefix_len: 24,
                gateway: [10, 0, 2, 2],
                mtu: 1500,
            }),
            args: "a b  c",
        };
        let text = "# comment\nimage\tname=hello\n\n".to_string() + &spec.to_string() + "\n";
        let records: Vec<_> = parse_config(&text).collect();
        assert_eq!(records, [Ok(Record::Image { name: "hello" }), Ok(Record::Guest(spec))]);
    }

    #[test]
    fn mistakes_name_their_line() {
        let errors: Vec<_> = parse_config("image\tname=x\nguest\tname=a\theap_kib=1\nvm\tname=b\nguest\tname=a\tapp=b\theap_kib=lots\nguest\tname=a b\tapp=x\theap_kib=1\nguest\tname=a\tapp=x\theap_kib=1\texpect=exit:x")
            .filter_map(Result::err)
            .collect();
        assert_eq!(
            errors,
            [
                ConfigError::MissingField { line: 2, field: "app" },
                ConfigError::UnknownRecord { line: 3, record: "vm" },
                ConfigError::BadField { line: 4, field: "heap_kib=lots" },
                ConfigError::BadField { line: 5, field: "name=a b" },
                ConfigError::BadField { line: 6, field: "expect=exit:x" },
            ]
        );
    }

    #[test]
    fn net_configs_parse_and_bad_ones_do_not() {
        let net = parse_net("02:00:00:00:00:10,10.0.2.16/24,10.0.2.2").unwrap();
        assert_eq!(net.mac, [2, 0, 0, 0, 0, 0x10]);
        assert_eq!((net.ipv4, net.prefix_len, net.gateway, net.mtu), ([10, 0, 2, 16], 24, [10, 0, 2, 2], 1500));
        assert_eq!(parse_net("02:00:00:00:00:10,10.0.2.16/24,10.0.2.2,9000").unwrap().mtu, 9000);
        for bad in [
            "",
            "02:00:00:00:00,10.0.2.16/24,10.0.2.2",
            "03:00:00:00:00:10,10.0.2.16/24,10.0.2.2",
            "02:00:00:00:00:10,10.0.2.16,10.0.2.2",
            "02:00:00:00:00:10,10.0.2.16/33,10.0.2.2",
            "02:00:00:00:00:10,10.0.2.256/24,10.0.2.2",
            "02:00:00:00:00:10,10.0.2.16/24,10.0.2.2,x",
            "2:0:0:0:0:10,10.0.2.16/24,10.0.2.2",
            "02:00:00:00:00:10,10.0.2.16/24,10.0.2.2,9001",
            "02:00:00:00:00:10,10.0.2.16/24,10.0.2.2,100",
        ] {
            assert_eq!(parse_net(bad), None, "{bad}");
        }
    }

    #[test]
    fn expectations_parse() {
        assert_eq!(Expect::parse("exit:-1"), Some(Expect::Exit(-1)));
        assert_eq!(Expect::parse("stopped:divide error"), Some(Expect::Stopped("divide error")));
        assert_eq!(Expect::parse("stopped:"), None);
        assert_eq!(Expect::parse("running"), Some(Expect::Running));
        assert_eq!(Expect::parse("refused:wrong machine"), Some(Expect::Refused("wrong machine")));
        assert_eq!(Expect::parse("refused:"), None);
        assert_eq!(Expect::parse("exited"), None);
    }
}
