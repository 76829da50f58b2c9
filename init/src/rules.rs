//! The capture rules, as `iptables-restore` input for the `nat` table.
//!
//! ```text
//! PREROUTING ─► BULWARK_INBOUND ── skipped port ─► RETURN
//!                              └─► BULWARK_IN_REDIRECT ─► REDIRECT :inbound
//! OUTPUT ─────► BULWARK_OUTPUT ── sidecar's uid, loopback, skipped CIDR or port ─► RETURN
//!                              └─► BULWARK_REDIRECT ─► REDIRECT :outbound
//! ```
//!
//! Only TCP is redirected. The sidecar's own connections (its uid) are never captured, so its
//! calls to upstreams do not loop back into it; loopback traffic is left alone, so an app that
//! calls the sidecar on `127.0.0.1` (the localhost mode) and an app calling itself work as
//! before. Every rule carries a `bulwark` marker in its chain name: removing the rules means
//! removing every line that names a `BULWARK_` chain.

use std::fmt::Write as _;
use std::net::IpAddr;

/// Every chain and jump of ours names one of these.
pub const CHAIN_PREFIX: &str = "BULWARK_";

const INBOUND: &str = "BULWARK_INBOUND";
const IN_REDIRECT: &str = "BULWARK_IN_REDIRECT";
const OUTPUT: &str = "BULWARK_OUTPUT";
const REDIRECT: &str = "BULWARK_REDIRECT";

/// What to capture and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The sidecar's outbound listener port (the app's calls go there).
    pub outbound_port: u16,
    /// The sidecar's inbound listener port (calls to the pod go there).
    pub inbound_port: u16,
    /// The uid the sidecar runs as: its own connections are not captured.
    pub sidecar_uid: u32,
    /// Inbound destination ports left alone (the sidecar's admin port, metrics scraped
    /// directly, …).
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone (a database the app reaches directly, …).
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks left alone (`10.0.0.0/8`, `2001:db8::/32`, …).
    pub skip_outbound_cidrs: Vec<Cidr>,
}

/// An IP network, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a single host).
    fn from_str(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The IP family a rule set is for (`iptables` or `ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
}

/// Our rules for one family: chain declarations, the jumps from the built-in chains, and the
/// chains' rules, in `iptables-restore` syntax (without the `*nat` and `COMMIT` lines).
pub fn nat_rules(capture: &Capture, family: Family) -> Vec<String> {
    let mut rules = vec![
        format!(":{INBOUND} - [0:0]"),
        format!(":{IN_REDIRECT} - [0:0]"),
        format!(":{OUTPUT} - [0:0]"),
        format!(":{REDIRECT} - [0:0]"),
        format!("-A PREROUTING -p tcp -j {INBOUND}"),
        format!("-A OUTPUT -p tcp -j {OUTPUT}"),
    ];
    let mut skipped_in = vec![capture.inbound_port];
    skipped_in.extend(&capture.skip_inbound_ports);
    skipped_in.sort_unstable();
    skipped_in.dedup();
    for port in skipped_in {
        rules.push(format!("-A {INBOUND} -p tcp --dport {port} -j RETURN"));
    }
    rules.push(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));
    rules.push(format!(
        "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        capture.inbound_port
    ));
    rules.push(format!(
        "-A {OUTPUT} -m owner --uid-owner {} -j RETURN",
        capture.sidecar_uid
    ));
    rules.push(format!("-A {OUTPUT} -o lo -j RETURN"));
    rules.push(format!("-A {OUTPUT} -d {} -j RETURN", family.loopback()));
    for cidr in &capture.skip_outbound_cidrs {
        if cidr.addr.is_ipv4() == (family == Family::V4) {
            rules.push(format!("-A {OUTPUT} -d {cidr} -j RETURN"));
        }
    }
    let mut skipped_out = capture.skip_outbound_ports.clone();
    skipped_out.sort_unstable();
    skipped_out.dedup();
    for port in skipped_out {
        rules.push(format!("-A {OUTPUT} -p tcp --dport {port} -j RETURN"));
    }
    rules.push(format!("-A {OUTPUT} -j {REDIRECT}"));
    rules.push(format!(
        "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        capture.outbound_port
    ));
    rules
}

/// Whether a line of `iptables-save` output is one of ours.
pub fn is_ours(line: &str) -> bool {
    line.contains(CHAIN_PREFIX)
}

/// The `nat` table of `saved` (`iptables-save -t nat` output) without our rules, with `ours`
/// added when given: what `iptables-restore` gets to install (`Some`) or remove (`None`) the
/// capture. Comments and counters are dropped; every other line of the table stays as it was.
pub fn rewrite_nat(saved: &str, ours: Option<&[String]>) -> String {
    let mut out = String::from("*nat\n");
    let mut in_nat = false;
    let mut chains = Vec::new();
    let mut others = Vec::new();
    for line in saved.lines() {
        let line = line.trim_end();
        if line.starts_with('*') {
            in_nat = line == "*nat";
            continue;
        }
        if !in_nat || line.starts_with('#') || line == "COMMIT" || line.is_empty() || is_ours(line)
        {
            continue;
        }
        if let Some(chain) = line.strip_prefix(':') {
            // `:NAME POLICY [packets:bytes]`: counters start again from zero.
            let mut parts = chain.split_whitespace();
            let name = parts.next().unwrap_or_default();
            let policy = parts.next().unwrap_or("-");
            chains.push(format!(":{name} {policy} [0:0]"));
        } else {
            others.push(line.to_string());
        }
    }
    if chains.is_empty() {
        for builtin in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
            chains.push(format!(":{builtin} ACCEPT [0:0]"));
        }
    }
    let (our_chains, our_rules): (Vec<&String>, Vec<&String>) = ours
        .unwrap_or_default()
        .iter()
        .partition(|r| r.starts_with(':'));
    for line in chains.iter().chain(our_chains) {
        let _ = writeln!(out, "{line}");
    }
    for line in others.iter().chain(our_rules) {
        let _ = writeln!(out, "{line}");
    }
    out.push_str("COMMIT\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture() -> Capture {
        Capture {
            outbound_port: 15001,
            inbound_port: 15006,
            sidecar_uid: 65532,
            skip_inbound_ports: vec![15000, 9090],
            skip_outbound_ports: vec![5432],
            skip_outbound_cidrs: vec![
                "169.254.169.254/32".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn ipv4_rules_redirect_tcp_except_the_sidecar_loopback_and_what_is_skipped() {
        assert_eq!(
            nat_rules(&capture(), Family::V4),
            [
                ":BULWARK_INBOUND - [0:0]",
                ":BULWARK_IN_REDIRECT - [0:0]",
                ":BULWARK_OUTPUT - [0:0]",
                ":BULWARK_REDIRECT - [0:0]",
                "-A PREROUTING -p tcp -j BULWARK_INBOUND",
                "-A OUTPUT -p tcp -j BULWARK_OUTPUT",
                "-A BULWARK_INBOUND -p tcp --dport 9090 -j RETURN",
                "-A BULWARK_INBOUND -p tcp --dport 15000 -j RETURN",
                "-A BULWARK_INBOUND -p tcp --dport 15006 -j RETURN",
                "-A BULWARK_INBOUND -p tcp -j BULWARK_IN_REDIRECT",
                "-A BULWARK_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A BULWARK_OUTPUT -m owner --uid-owner 65532 -j RETURN",
                "-A BULWARK_OUTPUT -o lo -j RETURN",
                "-A BULWARK_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A BULWARK_OUTPUT -d 169.254.169.254/32 -j RETURN",
                "-A BULWARK_OUTPUT -p tcp --dport 5432 -j RETURN",
                "-A BULWARK_OUTPUT -j BULWARK_REDIRECT",
                "-A BULWARK_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
    }

    #[test]
    fn ipv6_rules_take_the_ipv6_cidrs_and_loopback() {
        let rules = nat_rules(&capture(), Family::V6);
        assert!(rules.contains(&"-A BULWARK_OUTPUT -d ::1/128 -j RETURN".to_string()));
        assert!(rules.contains(&"-A BULWARK_OUTPUT -d fd00::/8 -j RETURN".to_string()));
        assert!(!rules.iter().any(|r| r.contains("169.254")));
    }

    #[test]
    fn cidrs_parse_or_say_what_is_wrong() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!("2001:db8::/32".parse::<Cidr>().unwrap().prefix, 32);
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>().unwrap_err(),
            "\"10.0.0.0/33\" is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32"
        );
        assert!("example.com/8".parse::<Cidr>().is_err());
    }

    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [3:180]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [12:720]
:POSTROUTING ACCEPT [12:720]
:BULWARK_OUTPUT - [0:0]
:OTHER - [0:0]
-A PREROUTING -p tcp -j OTHER
-A OUTPUT -p tcp -j BULWARK_OUTPUT
-A OTHER -p tcp --dport 1 -j RETURN
-A BULWARK_OUTPUT -j RETURN
COMMIT
# Completed
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ACCEPT
COMMIT
";

    #[test]
    fn rewriting_keeps_everyone_elses_rules_and_replaces_ours() {
        let removed = rewrite_nat(SAVED, None);
        assert_eq!(
            removed,
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:OTHER - [0:0]\n-A PREROUTING -p tcp -j OTHER\n-A OTHER -p tcp --dport 1 -j RETURN\nCOMMIT\n"
        );
        let ours = nat_rules(&capture(), Family::V4);
        let installed = rewrite_nat(SAVED, Some(&ours));
        assert_eq!(
            installed.matches("-j BULWARK_OUTPUT").count(),
            1,
            "{installed}"
        );
        assert!(installed.contains(":OTHER - [0:0]\n:BULWARK_INBOUND - [0:0]"));
        // Installing over an installation gives the same table.
        assert_eq!(rewrite_nat(&installed, Some(&ours)), installed);
        assert_eq!(rewrite_nat(&installed, None), removed);
    }

    #[test]
    fn an_empty_save_still_names_the_built_in_chains() {
        assert_eq!(
            rewrite_nat("", None),
            "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
        );
    }
}
