//! The protocol spoken to an upstream for one request, and the request rewritten for it:
//! HTTP/1.1 takes origin-form and `Host`; HTTP/2 takes an absolute URI (`:authority`) and no
//! `Host`.

use bulwark_proto::policy::Protocol;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Uri, Version, header};

use crate::body::Body;
use crate::errors::ProxyError;

/// The wire protocol of one upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

impl Wire {
    /// The protocol spoken to an upstream of `protocol` for a request that arrived as
    /// `downstream`: `auto` keeps the caller's HTTP version.
    pub fn for_request(protocol: Protocol, downstream: Version) -> Wire {
        match protocol {
            Protocol::Http1 => Wire::Http1,
            Protocol::Http2 | Protocol::Grpc => Wire::Http2,
            Protocol::Auto if downstream == Version::HTTP_2 => Wire::Http2,
            Protocol::Auto => Wire::Http1,
        }
    }
}

/// Rewrites the request's version, URI form and Host for the upstream connection (`tls`: the
/// connection is TLS, so HTTP/2's `:scheme` is `https`).
pub fn prepare(
    req: &mut Request<Body>,
    wire: Wire,
    authority: &Authority,
    tls: bool,
) -> Result<(), ProxyError> {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    match wire {
        Wire::Http1 => {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = Uri::from(path);
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|e| ProxyError::BadRequest(format!("authority: {e}")))?;
            req.headers_mut().insert(header::HOST, host);
        }
        Wire::Http2 => {
            *req.version_mut() = Version::HTTP_2;
            let uri = Uri::builder()
                .scheme(if tls { Scheme::HTTPS } else { Scheme::HTTP })
                .authority(authority.clone())
                .path_and_query(path)
                .build()
                .map_err(|e| ProxyError::BadRequest(format!("uri: {e}")))?;
            *req.uri_mut() = uri;
            req.headers_mut().remove(header::HOST);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request<Body> {
        let mut req = Request::get(uri).body(Body::Empty).unwrap();
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("caller"));
        req
    }

    #[test]
    fn http1_takes_origin_form_and_host() {
        let mut req = request("http://echo.default:8080/a/b?c=d");
        *req.version_mut() = Version::HTTP_2;
        prepare(
            &mut req,
            Wire::Http1,
            &Authority::from_static("echo"),
            false,
        )
        .unwrap();
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.uri(), "/a/b?c=d");
        assert_eq!(req.headers()[header::HOST], "echo");
    }

    #[test]
    fn http2_takes_an_absolute_uri_and_no_host() {
        let mut req = request("/a?b");
        prepare(
            &mut req,
            Wire::Http2,
            &Authority::from_static("pay.shop:9090"),
            false,
        )
        .unwrap();
        assert_eq!(req.version(), Version::HTTP_2);
        assert_eq!(req.uri(), "http://pay.shop:9090/a?b");
        assert!(!req.headers().contains_key(header::HOST));
        let mut req = request("/a");
        prepare(&mut req, Wire::Http2, &Authority::from_static("api"), true).unwrap();
        assert_eq!(req.uri(), "https://api/a", "TLS: :scheme https");
    }

    #[test]
    fn auto_keeps_the_callers_version() {
        assert_eq!(
            Wire::for_request(Protocol::Auto, Version::HTTP_2),
            Wire::Http2
        );
        assert_eq!(
            Wire::for_request(Protocol::Auto, Version::HTTP_11),
            Wire::Http1
        );
        assert_eq!(
            Wire::for_request(Protocol::Grpc, Version::HTTP_11),
            Wire::Http2
        );
        assert_eq!(
            Wire::for_request(Protocol::Http1, Version::HTTP_2),
            Wire::Http1
        );
    }
}
