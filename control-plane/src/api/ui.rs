//! The dashboard (`/ui`): the browser app's files, embedded in the binary (no Node.js needed
//! to run the control plane), and the browser session. A browser logs in with a token at
//! `POST /ui/login`; the token, checked as the API checks it, comes back as a cookie that is
//! `HttpOnly` (no script reads it), `Secure` and `SameSite=Strict` (never sent from another
//! site), which the API then accepts in place of an `Authorization` header. Writes made with
//! the cookie must also carry the CSRF token of the login (double submit: a readable cookie
//! copied into the `x-bulwark-csrf` header), so a page that could make the browser send the
//! cookie still cannot write.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ops::Ops;

/// The cookie holding the session's token.
pub const SESSION_COOKIE: &str = "bulwark_session";
/// The cookie holding the CSRF token, readable by the page.
pub const CSRF_COOKIE: &str = "bulwark_csrf";
/// The header a cookie-authenticated write repeats the CSRF token in.
pub const CSRF_HEADER: &str = "x-bulwark-csrf";
/// How long a browser session lasts.
const SESSION_SECONDS: u32 = 12 * 3600;

const INDEX: &str = include_str!("../../ui/index.html");

/// The app's other files: path under `/ui/`, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    ("app.js", JS, include_str!("../../ui/app.js")),
    ("lib.js", JS, include_str!("../../ui/lib.js")),
    ("overview.js", JS, include_str!("../../ui/overview.js")),
    ("service.js", JS, include_str!("../../ui/service.js")),
    ("policies.js", JS, include_str!("../../ui/policies.js")),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/style.css"),
    ),
];
const JS: &str = "text/javascript; charset=utf-8";

/// `/ui`: the app's files (login and logout are API routes, in `rest.rs`). Open routes: the
/// data comes from the API, which authenticates every call. The app routes in the URL's
/// fragment (`/ui/#/services/shop/orders`), so `/ui/` is its only page.
pub fn router() -> Router<Arc<Ops>> {
    FILES.iter().fold(
        Router::new()
            .route("/ui", get(|| async { redirect("/ui/") }))
            .route(
                "/ui/",
                get(|| async { file(INDEX, "text/html; charset=utf-8") }),
            ),
        |router, &(name, content_type, body)| {
            router.route(
                &format!("/ui/{name}"),
                get(move || async move { file(body, content_type) }),
            )
        },
    )
}

fn redirect(to: &'static str) -> Response {
    (
        StatusCode::MOVED_PERMANENTLY,
        [(header::LOCATION, HeaderValue::from_static(to))],
    )
        .into_response()
}

fn file(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The `Set-Cookie` values of a session for `token`: the session cookie and the CSRF token.
/// `None` when the token cannot be kept in a cookie.
pub fn session_cookies(token: &str) -> Option<[HeaderValue; 2]> {
    let cookie_safe = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\'));
    if !cookie_safe {
        return None;
    }
    let csrf = new_csrf_token();
    let session = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; Max-Age={SESSION_SECONDS}; HttpOnly; Secure; SameSite=Strict"
    ))
    .ok()?;
    let csrf = HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}={csrf}; Path=/; Max-Age={SESSION_SECONDS}; Secure; SameSite=Strict"
    ))
    .ok()?;
    Some([session, csrf])
}

/// The `Set-Cookie` values that end a session.
pub fn cleared_cookies() -> [HeaderValue; 2] {
    [SESSION_COOKIE, CSRF_COOKIE].map(|name| {
        HeaderValue::from_str(&format!(
            "{name}=; Path=/; Max-Age=0; Secure; SameSite=Strict"
        ))
        .unwrap_or(HeaderValue::from_static(""))
    })
}

/// 128 random bits as hex.
fn new_csrf_token() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether a cookie-authenticated request may go on: reads always; writes only with the
/// session's CSRF token repeated in [`CSRF_HEADER`].
pub fn csrf_ok(method: &axum::http::Method, headers: &HeaderMap) -> bool {
    if matches!(
        *method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    ) {
        return true;
    }
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    match (cookie(headers, CSRF_COOKIE), sent) {
        (Some(expected), Some(sent)) => {
            !expected.is_empty()
                && expected.len() == sent.len()
                && expected
                    .bytes()
                    .zip(sent.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn cookies_are_found_among_others() {
        let h = headers(&[("cookie", "a=1; bulwark_session=tok-1"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("tok-1"));
        assert_eq!(cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn writes_need_the_csrf_token_repeated() {
        let with = |sent: Option<&str>| {
            let mut pairs = vec![("cookie", "bulwark_csrf=abc123")];
            if let Some(s) = sent {
                pairs.push((CSRF_HEADER, s));
            }
            headers(&pairs)
        };
        assert!(csrf_ok(&Method::GET, &with(None)));
        assert!(csrf_ok(&Method::POST, &with(Some("abc123"))));
        assert!(!csrf_ok(&Method::POST, &with(None)));
        assert!(!csrf_ok(&Method::PUT, &with(Some("abc124"))));
        assert!(!csrf_ok(&Method::DELETE, &headers(&[(CSRF_HEADER, "")])));
    }
}
