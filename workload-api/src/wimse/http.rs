//! WIMSE over HTTP: reading the two headers off a request (exactly one of
//! each), and adding them to an outgoing one.

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use super::wpt::{self, BoundTokens};
use super::{WimseError, TXN_TOKEN_HEADER, WIT_HEADER, WPT_HEADER};
use crate::keypair::KeyPair;

/// The single value of `name`, if present; two or more is an error, since
/// a request carries one proof and one identity.
pub fn single<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, WimseError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(WimseError::DuplicateHeader { header: name });
    }
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| WimseError::BadHeader { header: name })
}

/// The WIT, the WPT, and the tokens they may bind, from request headers.
#[derive(Clone, Copy)]
pub struct RequestTokens<'h> {
    pub wit: &'h str,
    pub wpt: &'h str,
    pub authorization: Option<&'h str>,
    pub txn_token: Option<&'h str>,
}

impl std::fmt::Debug for RequestTokens<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTokens").finish_non_exhaustive()
    }
}

/// Reads the tokens of a request: exactly one `Workload-Identity-Token` and
/// one `Workload-Proof-Token`, at most one `Authorization` and `Txn-Token`.
pub fn request_tokens(headers: &HeaderMap) -> Result<RequestTokens<'_>, WimseError> {
    let wit = single(headers, WIT_HEADER)?.ok_or(WimseError::MissingHeader {
        header: "Workload-Identity-Token",
    })?;
    let wpt = single(headers, WPT_HEADER)?.ok_or(WimseError::MissingHeader {
        header: "Workload-Proof-Token",
    })?;
    Ok(RequestTokens {
        wit,
        wpt,
        authorization: single(headers, "authorization")?,
        txn_token: single(headers, TXN_TOKEN_HEADER)?,
    })
}

/// A header value as a string, when it is one.
pub fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Adds `Workload-Identity-Token` and a fresh `Workload-Proof-Token` for
/// `audience` to outgoing `headers`, binding the `Authorization` and
/// `Txn-Token` headers already there and the headers named in `other`.
pub fn add_proof_headers(
    headers: &mut HeaderMap,
    wit: &str,
    key: &KeyPair,
    audience: &str,
    lifetime_secs: u64,
    other: &[&str],
    now: u64,
) -> Result<(), WimseError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let access_token = text(AUTHORIZATION.as_str())
        .map(|h| h.trim().split_once(' ').map_or(h.trim(), |(_, t)| t.trim()));
    let bound = BoundTokens {
        access_token,
        txn_token: text(TXN_TOKEN_HEADER),
        other: other
            .iter()
            .filter_map(|name| text(name).map(|value| (*name, value)))
            .collect(),
    };
    let proof = wpt::mint(wit, key, audience, lifetime_secs, &bound, now);
    let value = |token: &str, which| {
        HeaderValue::from_str(token).map_err(|_| WimseError::Malformed { token: which })
    };
    let wit_value = value(wit, super::Token::Wit)?;
    let wpt_value = value(&proof, super::Token::Wpt)?;
    headers.insert(HeaderName::from_static(WIT_HEADER), wit_value);
    headers.insert(HeaderName::from_static(WPT_HEADER), wpt_value);
    Ok(())
}

/// Adds both headers to an outgoing request, with its target URI (without
/// query or fragment) as the WPT's audience. The URI must be absolute.
pub fn add_proof_to_request<B>(
    request: &mut http::Request<B>,
    wit: &str,
    key: &KeyPair,
    lifetime_secs: u64,
    other: &[&str],
    now: u64,
) -> Result<(), WimseError> {
    let uri = request.uri();
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(WimseError::NotAbsoluteUri {
            uri: uri.to_string(),
        });
    };
    let audience = format!("{scheme}://{authority}{}", uri.path());
    add_proof_headers(
        request.headers_mut(),
        wit,
        key,
        &audience,
        lifetime_secs,
        other,
        now,
    )
}

/// Signs an outgoing request with HTTP Message Signatures: sets the
/// `Workload-Identity-Token` header, a Content-Digest when there is
/// `content`, then `Signature-Input` and `Signature`. Returns the nonce a
/// signed response must echo.
pub fn sign_http_request(
    method: &str,
    target: &str,
    headers: &mut HeaderMap,
    content: &[u8],
    wit: &str,
    key: &KeyPair,
    signing: &super::httpsig::RequestSigning,
) -> Result<String, WimseError> {
    let value = |text: &str, header| {
        HeaderValue::from_str(text).map_err(|_| WimseError::BadHeader { header })
    };
    headers.insert(
        HeaderName::from_static(WIT_HEADER),
        value(wit, "workload-identity-token")?,
    );
    if !content.is_empty() {
        let digest = super::httpsig::content_digest(content);
        headers.insert(
            HeaderName::from_static("content-digest"),
            value(&digest, "content-digest")?,
        );
    }
    Ok(super::httpsig::sign_request(
        method, target, headers, key, signing,
    )?)
}
