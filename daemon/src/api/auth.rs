//! Bearer tokens: kept and compared as SHA-256 digests, in constant time.
//!
//! The secrets themselves are hashed in [`TokenDigests::new`] and never kept,
//! logged or echoed; a rejected request gets `401` with
//! `WWW-Authenticate: Bearer` and no hint of which part was wrong.

use super::{ApiError, ApiState};
use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// SHA-256 digests of the accepted tokens; empty means no token is required.
#[derive(Clone, Default)]
pub(crate) struct TokenDigests {
    /// One digest per configured token.
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for TokenDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not even the digests: they would let anyone test guesses offline.
        write!(f, "TokenDigests({} tokens)", self.digests.len())
    }
}

impl TokenDigests {
    /// Digests of `tokens` (surrounding whitespace, a copy-paste accident, is
    /// not part of a token).
    pub(crate) fn new(tokens: &[String]) -> TokenDigests {
        TokenDigests {
            digests: tokens.iter().map(|t| digest(t.trim())).collect(),
        }
    }

    /// Whether requests must carry a token.
    pub(crate) fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `presented` is one of the tokens. Every digest is compared,
    /// each in constant time, so the answer's timing says nothing.
    pub(crate) fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented.trim());
        self.digests
            .iter()
            .fold(false, |found, known| found | same(known, &presented))
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time equality of two digests.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// The token in an `Authorization: Bearer <token>` header (scheme
/// case-insensitive, RFC 7235), if any.
fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware: every route, the fallbacks included, requires a good token
/// when `[api].tokens` is set; but for reading the field page's files
/// (`GET`/`HEAD` of [`super::page::FILES`]), which hold no data: the page
/// asks for the token itself.
pub(crate) async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let tokens = state.tokens();
    let page_file = matches!(*request.method(), Method::GET | Method::HEAD)
        && super::page::FILES.contains(&request.uri().path());
    if tokens.required() && !page_file {
        match bearer(&request) {
            None => return ApiError::MissingToken.into_response(),
            Some(token) if !tokens.accepts(token) => return ApiError::BadToken.into_response(),
            Some(_) => {}
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens_and_keeps_no_secret() {
        let tokens = TokenDigests::new(&["alpha-1".to_owned(), " beta-2\n".to_owned()]);
        assert!(tokens.required());
        assert!(tokens.accepts("alpha-1"));
        assert!(tokens.accepts("beta-2"));
        assert!(!tokens.accepts("alpha-2"));
        assert!(!tokens.accepts(""));
        let shown = format!("{tokens:?}");
        assert!(
            !shown.contains("alpha") && !shown.contains("beta"),
            "{shown}"
        );
        assert!(!TokenDigests::new(&[]).required());
    }

    #[test]
    fn digest_comparison() {
        let a = digest("x");
        let mut b = a;
        assert!(same(&a, &b));
        b[31] ^= 1;
        assert!(!same(&a, &b));
    }

    #[test]
    fn bearer_header_forms() {
        let with = |value: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, value)
                .body(axum::body::Body::empty())
                .expect("request")
        };
        assert_eq!(bearer(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&with("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&with("Basic abc")), None);
        assert_eq!(bearer(&with("Bearer ")), None);
        assert_eq!(bearer(&with("Bearer")), None);
    }
}
