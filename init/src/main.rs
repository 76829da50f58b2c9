//! `bulwark-init`: installs (or removes) the capture rules in the current network namespace —
//! the pod's, when run as its init container with `NET_ADMIN` — and says what it did.

use std::process::ExitCode;

use bulwark_init::rules::{Capture, Cidr, Family, nat_rules};
use bulwark_init::tables::Backend;
use clap::{Parser, ValueEnum};

/// Sends a pod's TCP traffic through its Bulwark sidecar with iptables (nat table, REDIRECT).
#[derive(Debug, Parser)]
#[command(name = "bulwark-init", version)]
struct Args {
    /// The sidecar's outbound listener port.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// The sidecar's inbound listener port.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// The uid the sidecar runs as: its connections are not captured.
    #[arg(long, default_value_t = 65532)]
    sidecar_uid: u32,
    /// Inbound ports not captured, comma-separated (the sidecar's health port, for probes).
    #[arg(long, value_delimiter = ',', default_value = "15021")]
    skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports not captured, comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks not captured, comma-separated CIDRs.
    #[arg(long, value_delimiter = ',')]
    skip_outbound_cidrs: Vec<Cidr>,
    /// Which iptables: nf_tables, legacy, or the one whose tables already hold rules.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// IPv6 (ip6tables): always, never, or when the namespace has IPv6 and ip6tables exists.
    #[arg(long, value_enum, default_value_t = Ipv6::Auto)]
    ipv6: Ipv6,
    /// Prints the rules and changes nothing.
    #[arg(long)]
    dry_run: bool,
    /// Removes the capture rules instead, leaving every other rule as it was.
    #[arg(long)]
    remove: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendArg {
    Auto,
    Nft,
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ipv6 {
    Auto,
    On,
    Off,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let capture = Capture {
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        sidecar_uid: args.sidecar_uid,
        skip_inbound_ports: args.skip_inbound_ports.clone(),
        skip_outbound_ports: args.skip_outbound_ports.clone(),
        skip_outbound_cidrs: args.skip_outbound_cidrs.clone(),
    };
    let backend = match args.backend {
        BackendArg::Nft => Backend::Nft,
        BackendArg::Legacy => Backend::Legacy,
        BackendArg::Auto if args.dry_run => Backend::Nft,
        BackendArg::Auto => Backend::detect(),
    };
    let ipv6 = match args.ipv6 {
        Ipv6::On => true,
        Ipv6::Off => false,
        Ipv6::Auto => {
            std::path::Path::new("/proc/net/if_inet6").exists()
                && (args.dry_run || backend.available(Family::V6))
        }
    };
    let mut families = vec![Family::V4];
    if ipv6 {
        families.push(Family::V6);
    }
    if args.dry_run {
        for family in &families {
            let tool = match family {
                Family::V4 => "iptables",
                Family::V6 => "ip6tables",
            };
            println!("# {tool} ({}), nat table", backend.name());
            if args.remove {
                println!("# every rule and chain named BULWARK_* removed");
                continue;
            }
            println!("*nat");
            for rule in nat_rules(&capture, *family) {
                println!("{rule}");
            }
            println!("COMMIT");
        }
        return ExitCode::SUCCESS;
    }
    for family in &families {
        let result = if args.remove {
            backend.remove(*family).map(|()| "removed")
        } else {
            backend.install(*family, &capture).map(|_| "installed")
        };
        match result {
            Ok(what) => println!(
                "bulwark-init: capture rules {what} ({}, {})",
                match family {
                    Family::V4 => "iptables",
                    Family::V6 => "ip6tables",
                },
                backend.name()
            ),
            Err(e) => {
                eprintln!("bulwark-init: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
