//! What the issuer's HTTP routes share: plain answers, problems and
//! numeric query parameters.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

pub fn reply(content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Always fetch anew: these change the moment something is revoked.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub fn problem(status: StatusCode, detail: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        detail,
    )
        .into_response()
}

/// Numeric query parameters, each named in `allowed` and given at most
/// once; anything else is refused, naming it.
pub fn numbers(
    query: Option<&str>,
    allowed: &[&str],
) -> Result<std::collections::HashMap<String, u64>, String> {
    let mut found = std::collections::HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let shown = workload_api::display::shown(pair);
        let (name, value) = pair
            .split_once('=')
            .filter(|(name, _)| allowed.contains(name))
            .ok_or_else(|| {
                format!(
                    "unknown query {shown:?}; understood: {}",
                    allowed.join(", ")
                )
            })?;
        let value: u64 = value
            .parse()
            .map_err(|_| format!("{name}: {shown:?} is not a whole number"))?;
        if found.insert(name.to_string(), value).is_some() {
            return Err(format!("{name} is given twice"));
        }
    }
    Ok(found)
}
