//! WIMSE over HTTP: reading the WIT and the WPT off a request, and adding
//! them to an outgoing one. The WPT travels in one of two forms:
//!
//! - [`WptForm::Authorization`], draft-ietf-wimse-wpt-02 section 2:
//!   `Authorization: WPT <jwt>`. "There is exactly one Authorization header
//!   field in the request and it uses the WPT authentication scheme"; the
//!   scheme name is case-insensitive (RFC 9110 section 11.1) and the
//!   credentials are a `token68`. No `ath`: the field holds no other token.
//! - [`WptForm::Header`], draft-ietf-wimse-wpt-01: `Workload-Proof-Token:
//!   <jwt>`, beside an optional `Authorization` access token bound by `ath`.
//!
//! A request carrying both forms is refused.

use http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use super::wpt::{self, BoundTokens};
use super::{WimseError, TXN_TOKEN_HEADER, WIT_HEADER, WPT_HEADER};
use crate::keypair::KeyPair;

/// The HTTP authentication scheme of draft-ietf-wimse-wpt-02 section 2.
pub const WPT_SCHEME: &str = "WPT";

/// Where a request carries its WPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WptForm {
    /// `Authorization: WPT <jwt>` (draft-ietf-wimse-wpt-02).
    Authorization,
    /// `Workload-Proof-Token: <jwt>` (draft-ietf-wimse-wpt-01).
    Header,
}

impl WptForm {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "authorization" => Some(WptForm::Authorization),
            "header" => Some(WptForm::Header),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WptForm::Authorization => "authorization",
            WptForm::Header => "header",
        }
    }
}

impl std::fmt::Display for WptForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which WPT forms a service accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcceptedForms {
    /// Both: peers move to the Authorization form at their own pace.
    #[default]
    Both,
    /// Only `Authorization: WPT` (draft-ietf-wimse-wpt-02).
    Authorization,
    /// Only `Workload-Proof-Token` (draft-ietf-wimse-wpt-01).
    Header,
}

impl AcceptedForms {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "both" => Some(AcceptedForms::Both),
            "authorization" => Some(AcceptedForms::Authorization),
            "header" => Some(AcceptedForms::Header),
            _ => None,
        }
    }

    pub fn accepts(self, form: WptForm) -> bool {
        matches!(
            (self, form),
            (AcceptedForms::Both, _)
                | (AcceptedForms::Authorization, WptForm::Authorization)
                | (AcceptedForms::Header, WptForm::Header)
        )
    }
}

/// The JWT of `WPT <token68>` credentials, when `value` uses the `WPT`
/// scheme (any case); `Ok(None)` for another scheme. Credentials that are
/// not one `token68` (a list, a second token, nothing) are refused.
pub fn wpt_credentials(value: &str) -> Result<Option<&str>, WimseError> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case(WPT_SCHEME) {
        return Ok(None);
    }
    let credentials = rest.trim_start_matches(' ');
    if credentials.contains([',', ' ', '\t']) {
        // "Authorization = credentials": one set, never a list.
        return Err(WimseError::OtherCredential);
    }
    let body = credentials.trim_end_matches('=');
    let token68 = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if !token68 {
        return Err(WimseError::Malformed {
            token: super::Token::Wpt,
        });
    }
    Ok(Some(credentials))
}

/// The form of the WPT a request presents, if any: `Authorization` when an
/// Authorization field uses the `WPT` scheme, else `Header` when a
/// `Workload-Proof-Token` is there. Decides how a refusal is answered.
pub fn presented_form(headers: &HeaderMap) -> Option<WptForm> {
    let authorization = headers.get_all(AUTHORIZATION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            let v = v.trim_start();
            v.len() >= 3
                && v.as_bytes()[..3].eq_ignore_ascii_case(b"WPT")
                && v.as_bytes().get(3).is_none_or(|b| *b == b' ')
        })
    });
    if authorization {
        Some(WptForm::Authorization)
    } else if headers.contains_key(WPT_HEADER) {
        Some(WptForm::Header)
    } else {
        None
    }
}

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
    /// The WPT itself (without the `WPT` scheme name).
    pub wpt: &'h str,
    pub form: WptForm,
    /// The `Authorization` value an `ath` binds: header form only, since
    /// in the Authorization form that field holds the WPT.
    pub authorization: Option<&'h str>,
    pub txn_token: Option<&'h str>,
}

impl std::fmt::Debug for RequestTokens<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens stay out of logs (draft-ietf-wimse-wpt-02 section 3.1.5).
        f.debug_struct("RequestTokens")
            .field("form", &self.form)
            .finish_non_exhaustive()
    }
}

/// Reads the tokens of a request in either form; see [`request_tokens_for`].
pub fn request_tokens(headers: &HeaderMap) -> Result<RequestTokens<'_>, WimseError> {
    request_tokens_for(headers, AcceptedForms::Both)
}

/// Reads the tokens of a request: exactly one `Workload-Identity-Token`; the
/// WPT in exactly one of the forms `accepted` allows; at most one
/// `Txn-Token`. In the Authorization form the request has exactly one
/// Authorization field; in the header form exactly one
/// `Workload-Proof-Token` and at most one `Authorization`.
pub fn request_tokens_for(
    headers: &HeaderMap,
    accepted: AcceptedForms,
) -> Result<RequestTokens<'_>, WimseError> {
    let form = presented_form(headers);
    if form == Some(WptForm::Authorization) && headers.contains_key(WPT_HEADER) {
        return Err(WimseError::BothForms);
    }
    let wit = single(headers, WIT_HEADER)?.ok_or(WimseError::MissingHeader {
        header: "Workload-Identity-Token",
    })?;
    let txn_token = single(headers, TXN_TOKEN_HEADER)?;
    let form = form.ok_or(WimseError::MissingHeader {
        header: match accepted {
            AcceptedForms::Header => "Workload-Proof-Token",
            _ => "Authorization",
        },
    })?;
    if !accepted.accepts(form) {
        return Err(WimseError::FormNotAccepted { form });
    }
    match form {
        WptForm::Authorization => {
            if headers.get_all(AUTHORIZATION).iter().count() > 1 {
                return Err(WimseError::OtherCredential);
            }
            let value = single(headers, "authorization")?.unwrap_or_default();
            let wpt = wpt_credentials(value)?.ok_or(WimseError::Malformed {
                token: super::Token::Wpt,
            })?;
            Ok(RequestTokens {
                wit,
                wpt,
                form,
                authorization: None,
                txn_token,
            })
        }
        WptForm::Header => Ok(RequestTokens {
            wit,
            wpt: single(headers, WPT_HEADER)?.ok_or(WimseError::MissingHeader {
                header: "Workload-Proof-Token",
            })?,
            form,
            authorization: single(headers, "authorization")?,
            txn_token,
        }),
    }
}

/// A header value as a string, when it is one.
pub fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Adds `Workload-Identity-Token` and a fresh `Workload-Proof-Token` for
/// `audience` to outgoing `headers` (the header form); see
/// [`add_proof_headers_as`].
pub fn add_proof_headers(
    headers: &mut HeaderMap,
    wit: &str,
    key: &KeyPair,
    audience: &str,
    lifetime_secs: u64,
    other: &[&str],
    now: u64,
) -> Result<(), WimseError> {
    add_proof_headers_as(
        WptForm::Header,
        headers,
        wit,
        key,
        audience,
        lifetime_secs,
        other,
        now,
    )
}

/// Adds `Workload-Identity-Token` and a fresh WPT for `audience` to
/// outgoing `headers` in `form`, binding the `Txn-Token` header already
/// there and the headers named in `other`. The header form also binds an
/// `Authorization` access token with `ath`; the Authorization form refuses
/// a request that already has an `Authorization` field, since the WPT
/// takes it (draft-ietf-wimse-wpt-02 section 2.2).
#[allow(clippy::too_many_arguments)]
pub fn add_proof_headers_as(
    form: WptForm,
    headers: &mut HeaderMap,
    wit: &str,
    key: &KeyPair,
    audience: &str,
    lifetime_secs: u64,
    other: &[&str],
    now: u64,
) -> Result<(), WimseError> {
    if form == WptForm::Authorization && headers.contains_key(AUTHORIZATION) {
        return Err(WimseError::OtherCredential);
    }
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
    headers.insert(HeaderName::from_static(WIT_HEADER), wit_value);
    match form {
        WptForm::Header => {
            let mut wpt_value = value(&proof, super::Token::Wpt)?;
            wpt_value.set_sensitive(true);
            headers.insert(HeaderName::from_static(WPT_HEADER), wpt_value);
        }
        WptForm::Authorization => {
            let mut wpt_value = value(&format!("{WPT_SCHEME} {proof}"), super::Token::Wpt)?;
            // A credential: HTTP/2 encoders keep it out of compression tables.
            wpt_value.set_sensitive(true);
            headers.insert(AUTHORIZATION, wpt_value);
        }
    }
    Ok(())
}

/// Adds both headers to an outgoing request in the header form; see
/// [`add_proof_to_request_as`].
pub fn add_proof_to_request<B>(
    request: &mut http::Request<B>,
    wit: &str,
    key: &KeyPair,
    lifetime_secs: u64,
    other: &[&str],
    now: u64,
) -> Result<(), WimseError> {
    add_proof_to_request_as(
        WptForm::Header,
        request,
        wit,
        key,
        lifetime_secs,
        other,
        now,
    )
}

/// Adds the WIT and a WPT in `form` to an outgoing request, with its target
/// URI (without query or fragment) as the WPT's audience. The URI must be
/// absolute.
pub fn add_proof_to_request_as<B>(
    form: WptForm,
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
    add_proof_headers_as(
        form,
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
