//! The field page (SPEC §12): `GET /` and its two assets, built into the
//! binary (the gateway may have no internet), served without a token: they
//! hold no data. Every call the page makes goes to the token-checked API
//! with the token the user typed (`Authorization: Bearer`), the live feed
//! included (read with `fetch`, not `EventSource`, which cannot send a
//! header), so a token never appears in a URL or an access log.
//!
//! Sizes, stated in the README and held by a test: [`PAGE_BYTES_MAX`].

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The paths of the page's files, served without a token.
pub const FILES: [&str; 3] = ["/", "/page.js", "/page.css"];

/// The page.
pub const INDEX_HTML: &str = include_str!("page/index.html");
/// Its script: the API calls, the stream, the chart.
pub const PAGE_JS: &str = include_str!("page/page.js");
/// Its style: one column at 360 px, a grid on a laptop.
pub const PAGE_CSS: &str = include_str!("page/page.css");

/// The most the three assets may weigh together, uncompressed: 32 KiB.
pub const PAGE_BYTES_MAX: usize = 32 * 1024;

/// Only our own files; no inline script, no other origin, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidated every time: an upgraded slmd serves its own page.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /page.js`.
pub(crate) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", PAGE_JS)
}

/// `GET /page.css`.
pub(crate) async fn style() -> Response {
    asset("text/css; charset=utf-8", PAGE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_small_and_refers_only_to_its_own_assets() {
        let total = INDEX_HTML.len() + PAGE_JS.len() + PAGE_CSS.len();
        assert!(total <= PAGE_BYTES_MAX, "{total} bytes");
        assert!(INDEX_HTML.contains(r#"src="/page.js""#));
        assert!(INDEX_HTML.contains(r#"href="/page.css""#));
        for text in [INDEX_HTML, PAGE_JS, PAGE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        // The page never puts the token in a URL.
        assert!(!PAGE_JS.contains("token="));
        assert!(!PAGE_JS.contains("EventSource("));
    }
}
