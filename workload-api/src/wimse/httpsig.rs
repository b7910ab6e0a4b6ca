//! WIMSE workload-to-workload authentication with HTTP Message Signatures
//! (draft-ietf-wimse-http-signature, a profile of RFC 9421): the sender signs
//! the request with its WIT key; the receiver, having validated the WIT,
//! checks the signature with the WIT's `cnf` key, and may sign its response.
//!
//! Requests cover `@method`, `@request-target` (or `@path` and `@query`),
//! `workload-identity-token`, and `content-type`, `content-digest`,
//! `authorization` and `txn-token` when present. Responses cover `@status`,
//! `workload-identity-token`, `content-type` and `content-digest` when
//! present, and the request's `@method;req` and `@request-target;req`.
//! Parameters: `created`, `expires`, `nonce`, `tag`, and `wimse-aud`
//! (requests) or `wimse-req-nonce` (responses); never `keyid` or `alg`.

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sfv::{BareItem, Dictionary, FieldType, InnerList, Item, Key, ListEntry, Parameters, Parser};

use super::{TXN_TOKEN_HEADER, WIT_HEADER};
use crate::jwk::{Algorithm, PublicKey};
use crate::keypair::KeyPair;

/// The `tag` that marks the WIMSE signature among others.
pub const TAG: &str = "wimse-workload-to-workload";
/// The label Sigil signs under (receivers find the signature by `tag`).
pub const LABEL: &str = "wimse";
/// Headers covered whenever the message carries them.
const REQUEST_HEADERS_IF_PRESENT: [&str; 4] = [
    "content-type",
    "content-digest",
    "authorization",
    TXN_TOKEN_HEADER,
];
const RESPONSE_HEADERS_IF_PRESENT: [&str; 2] = ["content-type", "content-digest"];

/// Why a message signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpSigError {
    #[error("the {header} header is malformed: {reason}")]
    Malformed {
        header: &'static str,
        reason: String,
    },
    #[error("no signature has tag {TAG:?}")]
    NoWimseSignature,
    #[error("more than one signature has tag {TAG:?}")]
    SeveralWimseSignatures,
    #[error("the Signature header has no {label:?} member")]
    MissingSignature { label: String },
    #[error("signature parameter {name:?} is required")]
    MissingParam { name: &'static str },
    #[error("signature parameter {name:?} must not be used")]
    ForbiddenParam { name: &'static str },
    #[error("the signature does not cover {component}")]
    NotCovered { component: String },
    #[error("covered component {component} cannot be derived: {reason}")]
    Component { component: String, reason: String },
    #[error("the signature expired at {expires} (now {now})")]
    Expired { expires: u64, now: u64 },
    #[error("the signature was created in the future ({created}, now {now})")]
    CreatedInFuture { created: u64, now: u64 },
    #[error("the signature lives {secs} s, more than the {max_secs} s allowed")]
    TooLong { secs: u64, max_secs: u64 },
    #[error("wimse-aud {actual:?} is not an audience of this service")]
    WrongAudience { actual: String },
    #[error("wimse-req-nonce does not match the request's nonce")]
    WrongRequestNonce,
    #[error("the signature does not verify with the WIT's cnf key")]
    BadSignature,
    #[error("Content-Digest does not match the message content")]
    DigestMismatch,
    #[error("the message has content but no Content-Digest")]
    MissingDigest,
}

impl HttpSigError {
    /// A stable name for the failed check, like [`super::WimseError::check`].
    pub fn check(&self) -> &'static str {
        use HttpSigError::*;
        match self {
            Malformed { .. } => "httpsig.malformed",
            NoWimseSignature | SeveralWimseSignatures | MissingSignature { .. } => "httpsig.tag",
            MissingParam { .. } | ForbiddenParam { .. } => "httpsig.params",
            NotCovered { .. } | Component { .. } => "httpsig.components",
            Expired { .. } | CreatedInFuture { .. } | TooLong { .. } => "httpsig.time",
            WrongAudience { .. } => "httpsig.aud",
            WrongRequestNonce => "httpsig.req_nonce",
            BadSignature => "httpsig.signature",
            DigestMismatch | MissingDigest => "httpsig.digest",
        }
    }
}

/// The request a signature is about.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Path and query as sent (`/a/b?c=d`).
    pub target: &'a str,
    pub headers: &'a HeaderMap,
}

/// The response a signature is about, and the request it answers.
#[derive(Debug, Clone, Copy)]
pub struct ResponseView<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    pub request: RequestView<'a>,
}

/// Limits a receiver applies to signature times.
#[derive(Debug, Clone, Copy)]
pub struct TimePolicy {
    pub now: u64,
    pub skew: u64,
    /// Longest `expires - created`.
    pub max_lifetime: u64,
}

/// A signature that held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSignature {
    pub nonce: String,
    pub created: u64,
    pub expires: u64,
    /// The request asked for a signed response (`wimse-sign-response`).
    pub sign_response: bool,
}

/// `sha-256=:<base64>:` (RFC 9530) of `content`.
pub fn content_digest(content: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, content);
    format!("sha-256=:{}:", B64.encode(digest))
}

/// Checks a message's Content-Digest against its content: required when
/// there is content; `sha-256` must be among the digests and match.
pub fn check_content_digest(headers: &HeaderMap, content: &[u8]) -> Result<(), HttpSigError> {
    let Some(value) = field_value(headers, "content-digest") else {
        return if content.is_empty() {
            Ok(())
        } else {
            Err(HttpSigError::MissingDigest)
        };
    };
    let digests: Dictionary = Parser::new(&value)
        .parse()
        .map_err(|e| malformed("Content-Digest", e))?;
    let expected = ring::digest::digest(&ring::digest::SHA256, content);
    match digests.get("sha-256") {
        Some(ListEntry::Item(Item {
            bare_item: BareItem::ByteSequence(bytes),
            ..
        })) if bytes.as_slice() == expected.as_ref() => Ok(()),
        _ => Err(HttpSigError::DigestMismatch),
    }
}

fn malformed(header: &'static str, reason: impl ToString) -> HttpSigError {
    HttpSigError::Malformed {
        header,
        reason: reason.to_string(),
    }
}

/// All field lines of `name`, trimmed and joined with ", " (RFC 9421 2.1).
fn field_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    Some(
        values
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn random_nonce() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system RNG works");
    B64URL.encode(bytes)
}

fn sf_string(value: &str, what: &'static str) -> Result<BareItem, HttpSigError> {
    sfv::String::from_string(value.to_owned())
        .map(BareItem::String)
        .map_err(|_| malformed(what, format!("{value:?} is not a structured-field string")))
}

fn key(name: &str) -> Key {
    Key::from_string(name.to_owned()).expect("our parameter names are valid keys")
}

/// A covered component: a name, `req` when it comes from the request.
fn component(name: &str, from_request: bool) -> Item {
    let mut params = Parameters::new();
    if from_request {
        params.insert(key("req"), BareItem::Boolean(true));
    }
    Item::with_params(
        sf_string(name, "Signature-Input").expect("component names are ASCII"),
        params,
    )
}

/// How a request is signed.
#[derive(Debug, Clone)]
pub struct RequestSigning {
    /// `wimse-aud`: the target URI without query or fragment, or the
    /// recipient's agreed audience.
    pub audience: String,
    pub lifetime_secs: u64,
    /// Ask the recipient to sign its response (`wimse-sign-response`).
    pub sign_response: bool,
    /// Unix seconds.
    pub now: u64,
}

/// Signs a request: adds `Signature-Input` and `Signature` under [`LABEL`].
/// The `Workload-Identity-Token` header must already be set. Returns the
/// nonce (a signed response must echo it).
pub fn sign_request(
    method: &str,
    target: &str,
    headers: &mut HeaderMap,
    key_pair: &KeyPair,
    signing: &RequestSigning,
) -> Result<String, HttpSigError> {
    let mut covered = vec![
        component("@method", false),
        component("@request-target", false),
        component(WIT_HEADER, false),
    ];
    covered.extend(
        REQUEST_HEADERS_IF_PRESENT
            .iter()
            .filter(|h| headers.contains_key(**h))
            .map(|h| component(h, false)),
    );
    let nonce = random_nonce();
    let mut params = base_params(signing.now, signing.lifetime_secs, &nonce)?;
    params.insert(
        key("wimse-aud"),
        sf_string(&signing.audience, "Signature-Input")?,
    );
    if signing.sign_response {
        params.insert(key("wimse-sign-response"), BareItem::Boolean(true));
    }
    let request = RequestView {
        method,
        target,
        headers,
    };
    let signed = sign(InnerList::with_params(covered, params), key_pair, |item| {
        request_component(&request, item)
    })?;
    insert_signature(headers, signed)?;
    Ok(nonce)
}

/// Signs a response to `request`, whose signature had `request_nonce`.
/// The response's `Workload-Identity-Token` header must already be set.
pub fn sign_response(
    status: u16,
    headers: &mut HeaderMap,
    request: RequestView<'_>,
    request_nonce: &str,
    key_pair: &KeyPair,
    lifetime_secs: u64,
    now: u64,
) -> Result<(), HttpSigError> {
    let mut covered = vec![component("@status", false), component(WIT_HEADER, false)];
    covered.extend(
        RESPONSE_HEADERS_IF_PRESENT
            .iter()
            .filter(|h| headers.contains_key(**h))
            .map(|h| component(h, false)),
    );
    covered.push(component("@method", true));
    covered.push(component("@request-target", true));
    let mut params = base_params(now, lifetime_secs, &random_nonce())?;
    params.insert(
        key("wimse-req-nonce"),
        sf_string(request_nonce, "Signature-Input")?,
    );
    let response = ResponseView {
        status,
        headers,
        request,
    };
    let signed = sign(InnerList::with_params(covered, params), key_pair, |item| {
        response_component(&response, item)
    })?;
    insert_signature(headers, signed)
}

fn base_params(now: u64, lifetime_secs: u64, nonce: &str) -> Result<Parameters, HttpSigError> {
    let mut params = Parameters::new();
    params.insert(key("created"), BareItem::Integer(sfv::integer(now as i64)));
    params.insert(
        key("expires"),
        BareItem::Integer(sfv::integer((now + lifetime_secs) as i64)),
    );
    params.insert(key("nonce"), sf_string(nonce, "Signature-Input")?);
    params.insert(key("tag"), sf_string(TAG, "Signature-Input")?);
    Ok(params)
}

/// `(Signature-Input value, Signature value)`.
type Signed = (String, String);

fn sign(
    list: InnerList,
    key_pair: &KeyPair,
    derive: impl Fn(&Item) -> Result<String, HttpSigError>,
) -> Result<Signed, HttpSigError> {
    let base = signature_base(&list, &derive)?;
    let signature = key_pair.sign(base.as_bytes());
    let mut input = Dictionary::new();
    input.insert(key(LABEL), ListEntry::InnerList(list));
    let mut sig = Dictionary::new();
    sig.insert(
        key(LABEL),
        ListEntry::Item(Item::new(BareItem::ByteSequence(signature))),
    );
    Ok((
        input.serialize().expect("one member"),
        sig.serialize().expect("one member"),
    ))
}

fn insert_signature(
    headers: &mut HeaderMap,
    (input, signature): Signed,
) -> Result<(), HttpSigError> {
    let value = |v: String| HeaderValue::from_str(&v).map_err(|e| malformed("Signature", e));
    headers.insert(HeaderName::from_static("signature-input"), value(input)?);
    headers.insert(HeaderName::from_static("signature"), value(signature)?);
    Ok(())
}

/// RFC 9421 2.5: one line per covered component, then `@signature-params`.
fn signature_base(
    list: &InnerList,
    derive: &impl Fn(&Item) -> Result<String, HttpSigError>,
) -> Result<String, HttpSigError> {
    let mut base = String::new();
    for item in &list.items {
        let value = derive(item)?;
        base.push_str(&item.serialize());
        base.push_str(": ");
        base.push_str(&value);
        base.push('\n');
    }
    let params = vec![ListEntry::InnerList(list.clone())]
        .serialize()
        .expect("one member");
    base.push_str("\"@signature-params\": ");
    base.push_str(&params);
    Ok(base)
}

fn component_name(item: &Item) -> Result<(&str, bool), HttpSigError> {
    let BareItem::String(name) = &item.bare_item else {
        return Err(malformed(
            "Signature-Input",
            "a component identifier is not a string",
        ));
    };
    let mut from_request = false;
    for (param, value) in &item.params {
        match (param.as_str(), value) {
            ("req", BareItem::Boolean(true)) => from_request = true,
            (other, _) => {
                return Err(HttpSigError::Component {
                    component: name.as_str().to_owned(),
                    reason: format!("parameter {other:?} is not supported"),
                })
            }
        }
    }
    Ok((name.as_str(), from_request))
}

/// The value of a request component (RFC 9421 2.1, 2.2).
fn request_component(request: &RequestView<'_>, item: &Item) -> Result<String, HttpSigError> {
    let (name, from_request) = component_name(item)?;
    if from_request {
        return Err(HttpSigError::Component {
            component: name.to_owned(),
            reason: "req applies to responses only".into(),
        });
    }
    derive_request(request, name)
}

fn derive_request(request: &RequestView<'_>, name: &str) -> Result<String, HttpSigError> {
    let (path, query) = match request.target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (request.target, None),
    };
    Ok(match name {
        "@method" => request.method.to_owned(),
        "@request-target" => request.target.to_owned(),
        "@path" if path.is_empty() => "/".to_owned(),
        "@path" => path.to_owned(),
        "@query" => format!("?{}", query.unwrap_or_default()),
        _ => header_component(request.headers, name)?,
    })
}

fn response_component(response: &ResponseView<'_>, item: &Item) -> Result<String, HttpSigError> {
    let (name, from_request) = component_name(item)?;
    if from_request {
        return derive_request(&response.request, name);
    }
    match name {
        "@status" => Ok(response.status.to_string()),
        _ => header_component(response.headers, name),
    }
}

fn header_component(headers: &HeaderMap, name: &str) -> Result<String, HttpSigError> {
    if name.starts_with('@') {
        return Err(HttpSigError::Component {
            component: name.to_owned(),
            reason: "derived component not supported here".into(),
        });
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(HttpSigError::Component {
            component: name.to_owned(),
            reason: "field names are covered in lower case".into(),
        });
    }
    field_value(headers, name).ok_or_else(|| HttpSigError::Component {
        component: name.to_owned(),
        reason: "the header is absent".into(),
    })
}

/// The WIMSE member of a message's signatures: label, covered list, and
/// the signature bytes.
struct Found {
    list: InnerList,
    signature: Vec<u8>,
}

fn find_wimse_signature(headers: &HeaderMap) -> Result<Found, HttpSigError> {
    let input = field_value(headers, "signature-input").ok_or(HttpSigError::NoWimseSignature)?;
    let inputs: Dictionary = Parser::new(&input)
        .parse()
        .map_err(|e| malformed("Signature-Input", e))?;
    let mut tagged = inputs.iter().filter_map(|(label, entry)| match entry {
        ListEntry::InnerList(list)
            if matches!(list.params.get("tag"), Some(BareItem::String(t)) if t.as_str() == TAG) =>
        {
            Some((label, list))
        }
        _ => None,
    });
    let (label, list) = tagged.next().ok_or(HttpSigError::NoWimseSignature)?;
    if tagged.next().is_some() {
        return Err(HttpSigError::SeveralWimseSignatures);
    }
    let signatures = field_value(headers, "signature").unwrap_or_default();
    let signatures: Dictionary = Parser::new(&signatures)
        .parse()
        .map_err(|e| malformed("Signature", e))?;
    let signature = match signatures.get(label.as_str()) {
        Some(ListEntry::Item(Item {
            bare_item: BareItem::ByteSequence(bytes),
            ..
        })) => bytes.clone(),
        _ => {
            return Err(HttpSigError::MissingSignature {
                label: label.as_str().to_owned(),
            })
        }
    };
    Ok(Found {
        list: list.clone(),
        signature,
    })
}

fn int_param(params: &Parameters, name: &'static str) -> Result<u64, HttpSigError> {
    match params.get(name) {
        Some(BareItem::Integer(v)) => u64::try_from(i64::from(*v))
            .map_err(|_| malformed("Signature-Input", format!("{name} is negative"))),
        Some(_) => Err(malformed(
            "Signature-Input",
            format!("{name} is not an integer"),
        )),
        None => Err(HttpSigError::MissingParam { name }),
    }
}

fn string_param<'p>(params: &'p Parameters, name: &'static str) -> Result<&'p str, HttpSigError> {
    match params.get(name) {
        Some(BareItem::String(v)) => Ok(v.as_str()),
        Some(_) => Err(malformed(
            "Signature-Input",
            format!("{name} is not a string"),
        )),
        None => Err(HttpSigError::MissingParam { name }),
    }
}

/// The parameter checks both directions share.
fn check_params(params: &Parameters, time: TimePolicy) -> Result<CheckedSignature, HttpSigError> {
    for name in ["keyid", "alg"] {
        if params.contains_key(name) {
            return Err(HttpSigError::ForbiddenParam {
                name: if name == "alg" { "alg" } else { "keyid" },
            });
        }
    }
    let created = int_param(params, "created")?;
    let expires = int_param(params, "expires")?;
    let nonce = string_param(params, "nonce")?.to_owned();
    string_param(params, "tag")?;
    if time.now >= expires.saturating_add(time.skew) {
        return Err(HttpSigError::Expired {
            expires,
            now: time.now,
        });
    }
    if created > time.now + time.skew {
        return Err(HttpSigError::CreatedInFuture {
            created,
            now: time.now,
        });
    }
    // Skew is allowed here as for WPTs: the signer's clock decides both ends.
    let secs = expires.saturating_sub(created);
    if secs > time.max_lifetime + time.skew {
        return Err(HttpSigError::TooLong {
            secs,
            max_secs: time.max_lifetime,
        });
    }
    let sign_response = matches!(
        params.get("wimse-sign-response"),
        Some(BareItem::Boolean(true))
    );
    Ok(CheckedSignature {
        nonce,
        created,
        expires,
        sign_response,
    })
}

fn covers(list: &InnerList, name: &str, from_request: bool) -> bool {
    list.items
        .iter()
        .any(|item| matches!(component_name(item), Ok((n, r)) if n == name && r == from_request))
}

fn require(list: &InnerList, name: &str, from_request: bool) -> Result<(), HttpSigError> {
    if covers(list, name, from_request) {
        Ok(())
    } else {
        Err(HttpSigError::NotCovered {
            component: if from_request {
                format!("{name};req")
            } else {
                name.to_owned()
            },
        })
    }
}

fn verify_signature(
    found: &Found,
    key: &PublicKey,
    alg: Algorithm,
    derive: impl Fn(&Item) -> Result<String, HttpSigError>,
) -> Result<(), HttpSigError> {
    let base = signature_base(&found.list, &derive)?;
    if key.verify(alg, base.as_bytes(), &found.signature) {
        Ok(())
    } else {
        Err(HttpSigError::BadSignature)
    }
}

/// Verifies the WIMSE signature of a request with the sender's `cnf` key
/// and algorithm (from its validated WIT), for a `wimse-aud` that `accepts`
/// admits.
pub fn verify_request(
    request: &RequestView<'_>,
    key: &PublicKey,
    alg: Algorithm,
    accepts: impl Fn(&str) -> bool,
    time: TimePolicy,
) -> Result<CheckedSignature, HttpSigError> {
    let found = find_wimse_signature(request.headers)?;
    let checked = check_params(&found.list.params, time)?;
    let aud = string_param(&found.list.params, "wimse-aud")?;
    if !accepts(aud) {
        return Err(HttpSigError::WrongAudience {
            actual: aud.to_owned(),
        });
    }
    require(&found.list, "@method", false)?;
    if !covers(&found.list, "@request-target", false) {
        require(&found.list, "@path", false)?;
        require(&found.list, "@query", false)?;
    }
    require(&found.list, WIT_HEADER, false)?;
    for header in REQUEST_HEADERS_IF_PRESENT {
        if request.headers.contains_key(header) {
            require(&found.list, header, false)?;
        }
    }
    verify_signature(&found, key, alg, |item| request_component(request, item))?;
    Ok(checked)
}

/// Verifies the WIMSE signature of a response with the responder's `cnf`
/// key, and that it answers the request whose nonce was `request_nonce`.
pub fn verify_response(
    response: &ResponseView<'_>,
    key: &PublicKey,
    alg: Algorithm,
    request_nonce: &str,
    time: TimePolicy,
) -> Result<CheckedSignature, HttpSigError> {
    let found = find_wimse_signature(response.headers)?;
    let checked = check_params(&found.list.params, time)?;
    if string_param(&found.list.params, "wimse-req-nonce")? != request_nonce {
        return Err(HttpSigError::WrongRequestNonce);
    }
    require(&found.list, "@status", false)?;
    require(&found.list, WIT_HEADER, false)?;
    for header in RESPONSE_HEADERS_IF_PRESENT {
        if response.headers.contains_key(header) {
            require(&found.list, header, false)?;
        }
    }
    require(&found.list, "@method", true)?;
    if !covers(&found.list, "@request-target", true) {
        require(&found.list, "@path", true)?;
        require(&found.list, "@query", true)?;
    }
    verify_signature(&found, key, alg, |item| response_component(response, item))?;
    Ok(checked)
}
