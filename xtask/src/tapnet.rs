//! `--net tap`: a network namespace of our own holding a tap device, so that the guests and
//! host programs (`ping`, `nc -u`, `socat`) meet on a private subnet, with nothing reaching the
//! host's real interfaces. QEMU and the host programs run inside the namespace
//! (`ip netns exec`). Needs root (CAP_NET_ADMIN).

use crate::manifest::{format_ip, format_mac, NetPlan};
use anyhow::{bail, Context, Result};
use std::process::Command;

pub const TAP_IFNAME: &str = "iktap0";

/// The namespace; deleted (with its tap device) when dropped.
pub struct TapNamespace {
    pub name: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip").args(args).output().context("running `ip` (is iproute2 installed?)")?;
    if !output.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Whether `program` is an executable file in a directory of `PATH`.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The effective user id, from `/proc/self/status` (`Uid: real effective saved fs`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().nth(1)?.parse().ok())
}

/// Why this machine cannot run a tap-network test, or `None` if it can: it needs root (to
/// create a namespace and a tap device), iproute2's `ip`, and each of `programs`. Where it can,
/// a failure to set the network up is a test failure, not a skip.
pub fn unavailable_reason(programs: &[&str]) -> Option<String> {
    reason_unavailable(effective_uid(), on_path, programs)
}

/// [`unavailable_reason`] for a machine whose effective uid is `uid` and where `installed` tells
/// which programs are on the `PATH`.
fn reason_unavailable(uid: Option<u32>, installed: impl Fn(&str) -> bool, programs: &[&str]) -> Option<String> {
    if uid != Some(0) {
        return Some("needs root (CAP_NET_ADMIN) to create a network namespace and a tap device".into());
    }
    ["ip"].iter().chain(programs).find(|p| !installed(p)).map(|p| match *p {
        "ip" => "iproute2 (`ip`) is not installed".to_string(),
        "ping" => "`ping` is not installed (iputils-ping)".to_string(),
        other => format!("`{other}` is not installed"),
    })
}

impl TapNamespace {
    /// Creates namespace `ik-<pid>` with `iktap0` at the plan's gateway address (on the plan's
    /// whole network, so every guest is on-link), up, with `mtu`.
    pub fn create(plan: &NetPlan, mtu: u16) -> Result<TapNamespace> {
        let name = format!("ik-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = TapNamespace { name };
        let host = format!("{}/{}", format_ip(plan.gateway()), plan.prefix_len);
        ns.exec_ip(&["link", "set", "lo", "up"])?;
        ns.exec_ip(&["tuntap", "add", "dev", TAP_IFNAME, "mode", "tap"])?;
        ns.exec_ip(&["addr", "add", &host, "dev", TAP_IFNAME])?;
        ns.exec_ip(&["link", "set", TAP_IFNAME, "mtu", &mtu.to_string()])?;
        ns.exec_ip(&["link", "set", TAP_IFNAME, "up"])?;
        Ok(ns)
    }

    fn exec_ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Enters each guest's address and MAC in the tap side's neighbour table for good, so the
    /// host sends to thousands of guests without asking each by ARP first. Linux's neighbour
    /// table is one for every namespace and holds at most `gc_thresh3` (1,024 by default)
    /// learnt entries; permanent ones do not count against it.
    pub fn add_neighbours(&self, guests: impl IntoIterator<Item = ([u8; 4], [u8; 6])>) -> Result<()> {
        use std::io::Write;
        let mut batch = String::new();
        for (ip, mac) in guests {
            batch +=
                &format!("neigh replace {} lladdr {} dev {TAP_IFNAME} nud permanent\n", format_ip(ip), format_mac(mac));
        }
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running `ip -batch`")?;
        child.stdin.take().context("ip's stdin")?.write_all(batch.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!("`ip -batch` (neighbours) failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for TapNamespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_only_without_root_or_programs() {
        let all = |_: &str| true;
        assert_eq!(reason_unavailable(Some(0), all, &["ping"]), None);
        assert!(reason_unavailable(Some(1000), all, &[]).is_some_and(|r| r.contains("root")));
        assert!(reason_unavailable(None, all, &[]).is_some());
        let no_ping = |p: &str| p != "ping";
        assert!(reason_unavailable(Some(0), no_ping, &["ping"]).is_some_and(|r| r.contains("ping")));
        assert_eq!(reason_unavailable(Some(0), no_ping, &[]), None);
        let no_ip = |p: &str| p != "ip";
        assert!(reason_unavailable(Some(0), no_ip, &["ping"]).is_some_and(|r| r.contains("iproute2")));
        assert!(on_path("sh"));
        assert!(!on_path("no-such-program-anywhere"));
    }
}
