//! The web dashboard at `/ui`: one page and its script and style sheet, embedded in the binary
//! (`crates/api/ui/`, hand-written, no build step, nothing fetched from elsewhere).
//!
//! The page itself holds no data, so it is served without a token; it asks for the platform
//! token, keeps it in the tab's `sessionStorage` and sends it as `Authorization: Bearer` on
//! every API call, exactly as the CLI does. The API never accepts a cookie, so no other site
//! can make a browser call it with the user's credentials (no CSRF to defend against). A
//! strict Content-Security-Policy allows only the page's own script, style and API.

use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use http::{HeaderValue, header};

use crate::error::ApiError;
use crate::state::ApiState;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");
const ICON_SVG: &str = include_str!("../ui/icon.svg");

/// Only the page's own files and API; no inline script or style, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Whether `path` is one of the dashboard's (served without a token).
pub(crate) fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

pub(crate) fn routes(routes: Router<ApiState>) -> Router<ApiState> {
    routes
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/{file}", get(asset))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary: revalidate every time (they are small).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "index.html" => page("text/html; charset=utf-8", INDEX_HTML),
        "app.js" => page("text/javascript; charset=utf-8", APP_JS),
        "style.css" => page("text/css; charset=utf-8", STYLE_CSS),
        "icon.svg" => page("image/svg+xml", ICON_SVG),
        other => ApiError::NotFound(format!("the dashboard has no file {other:?}")).into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ui_paths() {
        assert!(is_ui_path("/ui"));
        assert!(is_ui_path("/ui/app.js"));
        assert!(!is_ui_path("/uix"));
        assert!(!is_ui_path("/v1/ui"));
    }

    #[test]
    fn the_page_loads_only_embedded_files() {
        // No CDN, no inline script: every script and style sheet is one of ours.
        for line in INDEX_HTML.lines() {
            for attr in ["src=\"", "href=\""] {
                if let Some(rest) = line.split(attr).nth(1) {
                    let target = rest.split('"').next().unwrap();
                    assert!(
                        target.starts_with("/ui/") || target.starts_with('#'),
                        "{target} is not embedded"
                    );
                }
            }
        }
        assert!(!INDEX_HTML.contains("<script>"));
        // The only URL in the script is SVG's namespace name, which is never fetched.
        let script = APP_JS.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(!script.contains("http://") && !script.contains("https://"));
    }
}
