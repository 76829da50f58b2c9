//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, and the
//! DNS name a sidecar puts in the TLS server name to say which identity it wants to reach
//! (`<service-account>.<namespace>.sa.bulwark.<trust-domain>`): one client configuration serves
//! every mesh connection, and the inbound side knows from the ClientHello alone whether the
//! connection is for it.

use std::fmt;
use std::str::FromStr;

/// The trust domain unless configured otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// What the server-name form of an identity has between the namespace and the trust domain.
const SNI_INFIX: &str = "sa.bulwark";

/// A workload's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why text is not a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error(
        "{0:?} is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Form(String),
    #[error(
        "trust domain {0:?}: must be lowercase letters, digits, \"-\" and \".\" (a DNS name, at most 200 characters)"
    )]
    TrustDomain(String),
    #[error(
        "{what} {value:?}: must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit)"
    )]
    Label { what: &'static str, value: String },
}

impl SpiffeId {
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        check_trust_domain(trust_domain)?;
        check_label("namespace", namespace)?;
        check_label("service account", service_account)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The TLS server name that asks for this identity.
    pub fn server_name(&self) -> String {
        format!(
            "{}.{}.{SNI_INFIX}.{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }

    /// The identity a TLS server name asks for; `None` for any other name.
    pub fn from_server_name(name: &str) -> Option<SpiffeId> {
        let (sa, rest) = name.split_once('.')?;
        let (ns, rest) = rest.split_once('.')?;
        let trust_domain = rest.strip_prefix(SNI_INFIX)?.strip_prefix('.')?;
        SpiffeId::new(trust_domain, ns, sa).ok()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(text: &str) -> Result<SpiffeId, SpiffeIdError> {
        let form = || SpiffeIdError::Form(text.to_string());
        let rest = text.strip_prefix("spiffe://").ok_or_else(form)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(form());
        };
        SpiffeId::new(td, ns, sa)
    }
}

/// A trust domain: a DNS name (so that the server-name form is one), lowercase.
pub fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    let ok = !td.is_empty()
        && td.len() <= 200
        && td.split('.').all(|label| check_label("", label).is_ok());
    if ok {
        Ok(())
    } else {
        Err(SpiffeIdError::TrustDomain(td.to_string()))
    }
}

fn check_label(what: &'static str, value: &str) -> Result<(), SpiffeIdError> {
    let bytes = value.as_bytes();
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
        Err(SpiffeIdError::Label {
            what,
            value: value.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_text_and_server_names() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/orders".parse().unwrap();
        assert_eq!(
            (id.trust_domain(), id.namespace(), id.service_account()),
            ("cluster.local", "shop", "orders")
        );
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/orders");
        assert_eq!(id.server_name(), "orders.shop.sa.bulwark.cluster.local");
        assert_eq!(SpiffeId::from_server_name(&id.server_name()), Some(id));
        assert_eq!(SpiffeId::from_server_name("api.midtrans.com"), None);
        assert_eq!(
            SpiffeId::from_server_name("orders.shop.svc.cluster.local"),
            None
        );
    }

    #[test]
    fn malformed_identities_are_refused_with_the_reason() {
        let err = |text: &str| text.parse::<SpiffeId>().unwrap_err().to_string();
        assert_eq!(
            err("spiffe://cluster.local/ns/shop"),
            "\"spiffe://cluster.local/ns/shop\" is not a SPIFFE ID of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
        );
        assert!(err("https://cluster.local/ns/a/sa/b").contains("is not a SPIFFE ID"));
        assert!(err("spiffe://cluster.local/ns/a/sa/b/extra").contains("is not a SPIFFE ID"));
        assert_eq!(
            err("spiffe://Cluster.Local/ns/a/sa/b"),
            "trust domain \"Cluster.Local\": must be lowercase letters, digits, \"-\" and \".\" (a DNS name, at most 200 characters)"
        );
        assert_eq!(
            err("spiffe://cluster.local/ns/a/sa/my.account"),
            "service account \"my.account\": must be a DNS-1123 label (at most 63 lowercase letters, digits or \"-\", starting and ending with a letter or digit)"
        );
        assert!(err("spiffe://cluster.local/ns//sa/b").starts_with("namespace \"\""));
    }
}
