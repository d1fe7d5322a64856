//! `--net tap`: a network namespace of our own holding a tap device, so that the guests and
//! host programs (`ping`, `nc -u`, `socat`) meet on a private subnet, with nothing reaching the
//! host's real interfaces. QEMU and the host programs run inside the namespace
//! (`ip netns exec`). Needs root (CAP_NET_ADMIN).

use crate::manifest::{format_ip, NetPlan};
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

impl TapNamespace {
    /// Creates namespace `ik-<pid>` with `iktap0` at the plan's gateway address, up, with `mtu`.
    pub fn create(plan: &NetPlan, mtu: u16) -> Result<TapNamespace> {
        let name = format!("ik-{}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = TapNamespace { name };
        let host = format!("{}/24", format_ip(plan.gateway()));
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
