//! The security headers of every HTML page the control plane serves (the console, the sign-in
//! and sign-up forms, the OAuth consent page): nothing from elsewhere, no inline script or
//! style, never in a frame, no referrer leaving the site, no caching (a new token's secret is on
//! a page once).

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

/// `default-src 'self'` forbids inline scripts and styles as well as other origins. No
/// `form-action`: browsers apply it to the redirects that follow a form too, and the provider
/// buttons of `/login` and the OAuth consent form end in redirects to other sites (the
/// provider, the client's `redirect_uri`).
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; frame-ancestors 'none'; object-src 'none'";

/// Middleware: adds the headers to answers whose content type is HTML.
pub async fn secure_html(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        // A page that set a policy of its own (the OAuth consent page's is stricter) keeps it.
        let headers = response.headers_mut();
        for (name, value) in [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
        ] {
            headers
                .entry(name)
                .or_insert(HeaderValue::from_static(value));
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::response::Html;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    async fn headers_of(path: &str) -> axum::http::HeaderMap {
        let app = Router::new()
            .route("/page", get(|| async { Html("<p>page</p>") }))
            .route(
                "/own",
                get(|| async {
                    (
                        [(header::CONTENT_SECURITY_POLICY, "default-src 'none'")],
                        Html("<p>own</p>"),
                    )
                }),
            )
            .route("/json", get(|| async { axum::Json(1) }))
            .layer(axum::middleware::from_fn(secure_html));
        let request = Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request");
        app.oneshot(request)
            .await
            .expect("answer")
            .headers()
            .clone()
    }

    #[tokio::test]
    async fn html_pages_get_the_headers_and_keep_a_policy_of_their_own() {
        let page = headers_of("/page").await;
        assert_eq!(
            page[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(page[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(page[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(page[header::CACHE_CONTROL], "no-store");
        let own = headers_of("/own").await;
        assert_eq!(own[header::CONTENT_SECURITY_POLICY], "default-src 'none'");
        assert_eq!(own[header::X_FRAME_OPTIONS], "DENY");
        let json = headers_of("/json").await;
        assert!(json.get(header::CONTENT_SECURITY_POLICY).is_none());
    }
}
