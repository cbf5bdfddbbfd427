//! Signing in to the dashboard: the token a browser presents (kept in an HttpOnly,
//! SameSite=Strict cookie, Secure under TLS), what it may do, and the CSRF token every
//! form carries.
//!
//! The cookie holds the token the operator typed, hex-encoded, so a browser sends what
//! cis490ctl sends in a header and the API's own checks ([`check_reader`],
//! [`check_operator`]) decide. The CSRF token is the HMAC-SHA256 of that cookie's value
//! under a key made at start-up: a page of another site can make the browser send the
//! cookie (SameSite=Strict already stops that in current browsers) but can never read the
//! token, so a forged POST is refused with 403 and changes nothing.

use axum::http::{header, HeaderMap, HeaderValue};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::super::auth::{check_operator, check_reader};
use super::super::error::ApiFailure;
use super::super::identity::ClientCertName;
use super::super::AppState;

/// The session cookie's name.
pub const COOKIE: &str = "cis490_session";

/// How long a browser keeps the cookie (a work day and a night: signing in once a day).
const COOKIE_MAX_AGE_S: u64 = 16 * 3600;

/// The key of the CSRF tokens.
pub struct SessionKey([u8; 32]);

impl SessionKey {
    pub fn random() -> Self {
        use rand::Rng;
        let mut key = [0u8; 32];
        rand::rng().fill(&mut key);
        Self(key)
    }

    /// The CSRF token of a session cookie's value.
    pub fn csrf_token(&self, cookie_value: &str) -> String {
        hex::encode(self.mac(cookie_value).finalize().into_bytes())
    }

    /// Whether `given` is the CSRF token of `cookie_value` (in constant time).
    pub fn csrf_ok(&self, cookie_value: &str, given: &str) -> bool {
        match hex::decode(given) {
            Ok(bytes) => self.mac(cookie_value).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    fn mac(&self, cookie_value: &str) -> Hmac<Sha256> {
        // A 32-byte key is always a valid HMAC key.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(b"cis490 dashboard csrf\0");
        mac.update(cookie_value.as_bytes());
        mac
    }
}

/// Who the browser is, from its cookie.
#[derive(Debug, Clone, Default)]
pub struct Session {
    /// The cookie's value as sent (hex), when there is one that decodes.
    cookie: Option<String>,
    /// The token it holds.
    token: Option<String>,
    /// The token is the server's operator token.
    pub operator: bool,
}

impl Session {
    /// The session of a request's headers (none when there is no usable cookie).
    pub fn of(headers: &HeaderMap, state: &AppState) -> Session {
        let Some(cookie) = cookie_value(headers) else {
            return Session::default();
        };
        let Some(token) = hex::decode(&cookie)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
        else {
            return Session::default();
        };
        let operator = check_operator(&token_headers(&token), &state.config).is_ok();
        Session {
            cookie: Some(cookie),
            token: Some(token),
            operator,
        }
    }

    pub fn signed_in(&self) -> bool {
        self.token.is_some()
    }

    /// The CSRF token the forms of this session carry (none before signing in).
    pub fn csrf(&self, state: &AppState) -> Option<String> {
        self.cookie
            .as_deref()
            .map(|c| state.dashboard_key.csrf_token(c))
    }

    /// Whether `given` is this session's CSRF token.
    pub fn csrf_matches(&self, given: &str, state: &AppState) -> bool {
        self.cookie
            .as_deref()
            .is_some_and(|c| state.dashboard_key.csrf_ok(c, given))
    }

    /// Whether this session may read, by the server's read rules (a client certificate
    /// on the connection counts as for the API).
    pub async fn check_read(
        &self,
        client_cert: Option<&ClientCertName>,
        state: &AppState,
    ) -> Result<(), ApiFailure> {
        let headers = self.token.as_deref().map(token_headers).unwrap_or_default();
        check_reader(&headers, client_cert, &state.config, &state.queue).await
    }

    /// A POST of this session may act as the operator: signed in with the operator token
    /// and carrying its CSRF token. Anything else is 403.
    pub fn check_operator_post(&self, csrf: &str, state: &AppState) -> Result<(), ApiFailure> {
        let (Some(cookie), Some(token)) = (&self.cookie, &self.token) else {
            return Err(ApiFailure::forbidden(
                "sign in with the operator token first",
            ));
        };
        check_operator(&token_headers(token), &state.config)?;
        if !state.dashboard_key.csrf_ok(cookie, csrf) {
            return Err(ApiFailure::forbidden(
                "the form's CSRF token is missing or wrong: reload the page and try again",
            ));
        }
        Ok(())
    }
}

/// Headers that present `token` the ways the API takes it (operator header and bearer), so
/// the API's own checks decide.
fn token_headers(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(token) {
        headers.insert(cis490_api::OPERATOR_TOKEN_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, v);
    }
    headers
}

/// The session cookie's value among the request's cookies.
fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` that signs a browser in with `token`.
pub fn sign_in_cookie(token: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_S}{}",
        hex::encode(token.as_bytes()),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` that signs it out.
pub fn sign_out_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Whether a typed token is a token this server takes for reading or operating.
pub async fn token_is_valid(token: &str, state: &AppState) -> bool {
    let headers = token_headers(token);
    if check_operator(&headers, &state.config).is_ok() {
        return true;
    }
    // With open reads any string reads; only a real token signs in.
    let strict = super::super::ServerConfig {
        protect_reads: true,
        ..(*state.config).clone()
    };
    check_reader(&headers, None, &strict, &state.queue)
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_token_is_bound_to_the_cookie_and_the_key() {
        let key = SessionKey::random();
        let token = key.csrf_token("abcd");
        assert!(key.csrf_ok("abcd", &token));
        assert!(!key.csrf_ok("abce", &token));
        assert!(!key.csrf_ok("abcd", ""));
        assert!(!key.csrf_ok("abcd", "zz"));
        assert!(!key.csrf_ok("abcd", &token[..10]));
        assert!(!SessionKey::random().csrf_ok("abcd", &token));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let plain = sign_in_cookie("tok", false);
        assert!(plain.starts_with("cis490_session=746f6b;"), "{plain}");
        assert!(plain.contains("; HttpOnly") && plain.contains("; SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(sign_in_cookie("tok", true).ends_with("; Secure"));
        let out = sign_out_cookie(true);
        assert!(out.contains("Max-Age=0") && out.contains("HttpOnly") && out.ends_with("Secure"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; cis490_session=6869 ; b=2"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("6869"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("cis490_session="));
        assert_eq!(cookie_value(&h), None);
    }
}
