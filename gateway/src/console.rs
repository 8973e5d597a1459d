//! `GET /console`: the operators' live sale console, one HTML page with no build step
//! (`gateway/assets/console.html`, with the vendored uPlot chart library inlined; see
//! `gateway/assets/README.md`). No auth to load it: the page asks for the admin token,
//! keeps it in the tab's `sessionStorage` (never in a URL, so never in an access log or
//! a `Referer`), and reads `GET /api/v1/admin/stream` ([`crate::stream`]) and calls the
//! admin endpoints with it as a Bearer header.
//!
//! The page carries a Content-Security-Policy: its scripts run only with this
//! response's nonce, and it may talk to this origin only, so nothing injected into
//! the page could send the token elsewhere.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("../assets/console.html");
const UPLOT_JS: &str = include_str!("../assets/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/uPlot.min.css");

/// The page with `nonce` on its scripts.
pub fn render(nonce: &str) -> String {
    PAGE.replace("/*UPLOT_CSS*/", UPLOT_CSS)
        .replace("/*UPLOT_JS*/", UPLOT_JS)
        .replace("{{NONCE}}", nonce)
}

/// `GET /console`.
pub async fn page() -> Response {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
    );
    let mut res = axum::response::Html(render(&nonce)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_inlines_its_assets_and_nonce() {
        let page = super::render("abc123");
        assert!(!page.contains("/*UPLOT_JS*/") && !page.contains("{{NONCE}}"));
        assert!(page.contains("var uPlot="), "uPlot is inlined");
        assert!(page.contains("<script nonce=\"abc123\">"));
        // The token lives in sessionStorage only, never in a URL.
        assert!(page.contains("sessionStorage"));
        assert!(!page.contains("localStorage"));
        assert!(!page.contains("?token="));
    }
}
