//! The rules every injected value follows, whether it comes from an option (meshctl's flags,
//! the webhook's configuration) or from the pod's annotations, and the words that say what is
//! wrong with one.

use crate::quantity;

pub(crate) const PORT_PROBLEM: &str = "must be a port number from 1 to 65535";
pub(crate) const QUANTITY_PROBLEM: &str = "must be a Kubernetes quantity such as 100m or 128Mi";
pub(crate) const CONTROL_PLANE_PROBLEM: &str =
    "must be http:// or https:// addresses, comma-separated";
pub(crate) const IMAGE_PROBLEM: &str = "must be a non-empty image reference without spaces";
pub(crate) const LOG_LEVEL_PROBLEM: &str = "must be one of trace, debug, info, warn, error, off";
pub(crate) const WORKERS_PROBLEM: &str = "must be a number of worker threads from 1 to 64";
pub(crate) const LOG_FORMAT_PROBLEM: &str = "must be text or json";
pub(crate) const OTLP_ENDPOINT_PROBLEM: &str = "must be http://HOST:PORT (OTLP over gRPC)";
pub(crate) const RATIO_PROBLEM: &str = "must be a number from 0 to 1";
pub(crate) const PORT_LIST_PROBLEM: &str = "must be port numbers from 1 to 65535, comma-separated";
pub(crate) const CIDR_LIST_PROBLEM: &str =
    "must be networks such as 10.0.0.0/8 or 2001:db8::/32, comma-separated";
pub(crate) const DNS_LABEL_PROBLEM: &str = "must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit)";

pub(crate) fn parse_port(text: &str) -> Result<u16, &'static str> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(PORT_PROBLEM),
    }
}

/// `9090,15020` (spaces allowed around commas; empty: none).
pub(crate) fn parse_port_list(text: &str) -> Result<Vec<u16>, &'static str> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| parse_port(p).map_err(|_| PORT_LIST_PROBLEM))
        .collect()
}

/// `10.0.0.0/8,192.168.1.5` — checked as `bulwark-init` reads them; returned normalised
/// (`address/prefix`).
pub(crate) fn parse_cidr_list(text: &str) -> Result<Vec<String>, &'static str> {
    text.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<bulwark_init::rules::Cidr>()
                .map(|cidr| cidr.to_string())
                .map_err(|_| CIDR_LIST_PROBLEM)
        })
        .collect()
}

pub(crate) fn parse_workers(text: &str) -> Result<u8, &'static str> {
    match text.parse::<u8>() {
        Ok(n @ 1..=64) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(WORKERS_PROBLEM),
    }
}

pub(crate) fn check_quantity(text: &str) -> Result<(), &'static str> {
    quantity::parse(text).map(|_| ()).ok_or(QUANTITY_PROBLEM)
}

pub(crate) fn check_control_plane(text: &str) -> Result<(), &'static str> {
    let ok = text.split(',').all(|address| {
        let address = address.trim();
        let rest = address
            .strip_prefix("http://")
            .or_else(|| address.strip_prefix("https://"));
        rest.is_some_and(|host| !host.is_empty() && !host.contains(char::is_whitespace))
    });
    if ok {
        Ok(())
    } else {
        Err(CONTROL_PLANE_PROBLEM)
    }
}

pub(crate) fn check_image(text: &str) -> Result<(), &'static str> {
    if text.is_empty() || text.contains(char::is_whitespace) {
        Err(IMAGE_PROBLEM)
    } else {
        Ok(())
    }
}

pub(crate) fn check_log_level(text: &str) -> Result<(), &'static str> {
    match text {
        "trace" | "debug" | "info" | "warn" | "error" | "off" => Ok(()),
        _ => Err(LOG_LEVEL_PROBLEM),
    }
}

pub(crate) fn check_log_format(text: &str) -> Result<(), &'static str> {
    match text {
        "text" | "json" => Ok(()),
        _ => Err(LOG_FORMAT_PROBLEM),
    }
}

/// An OTLP/gRPC endpoint: `http://HOST:PORT` (the exporter speaks no TLS).
pub(crate) fn check_otlp_endpoint(text: &str) -> Result<(), &'static str> {
    let rest = text.strip_prefix("http://").ok_or(OTLP_ENDPOINT_PROBLEM)?;
    let (host, port) = rest.rsplit_once(':').ok_or(OTLP_ENDPOINT_PROBLEM)?;
    match (host.is_empty(), port.parse::<u16>()) {
        (false, Ok(p)) if p > 0 && !host.contains('/') => Ok(()),
        _ => Err(OTLP_ENDPOINT_PROBLEM),
    }
}

/// A ratio from 0 to 1.
pub(crate) fn check_ratio(text: &str) -> Result<(), &'static str> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(()),
        _ => Err(RATIO_PROBLEM),
    }
}

/// An inbound mTLS mode.
pub(crate) fn check_mtls_mode(text: &str) -> Result<(), &'static str> {
    match text {
        "strict" | "permissive" | "disable" => Ok(()),
        _ => Err("must be strict, permissive or disable"),
    }
}

/// A Kubernetes object name (ConfigMaps): RFC 1123 labels joined by dots, at most 253.
pub(crate) fn check_dns_subdomain(text: &str) -> Result<(), &'static str> {
    if text.len() <= 253 && text.split('.').all(|label| check_dns_label(label).is_ok()) {
        Ok(())
    } else {
        Err("must be a DNS-1123 subdomain (lowercase letters, digits, \"-\" and \".\")")
    }
}

/// RFC 1123 label as Kubernetes uses it for names, as ServicePolicy names must be.
pub(crate) fn check_dns_label(text: &str) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(inner)
        && edge(bytes.first())
        && edge(bytes.last())
    {
        Ok(())
    } else {
        Err(DNS_LABEL_PROBLEM)
    }
}
