//! Owners for end-to-end tests: keys from the openssl CLI, consent from
//! the real `sigil-issuer owner consent`, owners registered and entries
//! bound through the admin API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use proto::admin as adm;
use proto::issuer as pb;
use serde_json::Value;

use crate::{binary, run, TestIssuer};

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn sha256_b64(text: &str) -> String {
    B64URL.encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

/// Runs a blocking command off the runtime's workers (the issuer and agent
/// under test run on them).
pub async fn run_blocking(mut cmd: Command) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap()
}

/// An owner key made by the openssl CLI: (private PKCS#8 PEM, public PEM).
pub async fn openssl_key(dir: &Path, name: &str, p256: bool) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let mut gen = Command::new("openssl");
    gen.arg("genpkey");
    if p256 {
        gen.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    } else {
        gen.args(["-algorithm", "ed25519"]);
    }
    gen.arg("-out").arg(&private);
    let (ok, out, err) = run_blocking(gen).await;
    assert!(ok, "openssl genpkey: {out}{err}");
    let mut pubout = Command::new("openssl");
    pubout
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public);
    let (ok, out, err) = run_blocking(pubout).await;
    assert!(ok, "openssl pkey -pubout: {out}{err}");
    (private, public)
}

/// `sigil-issuer ARGS` against the admin socket `socket` (through the
/// environment variable, as an operator would set it).
pub async fn issuer_cli(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(binary("sigil-issuer"));
    cmd.args(args).env("SIGIL_ADMIN_SOCKET", socket);
    run_blocking(cmd).await
}

/// `sigil-issuer ARGS --json`, which must succeed; its JSON.
pub async fn issuer_json(socket: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = issuer_cli(socket, &all).await;
    assert!(ok, "sigil-issuer {args:?} failed:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{out}"))
}

/// A consent signed offline by `sigil-issuer owner consent`, written to
/// `DIR/NAME.jws`; returns its trimmed text and the file.
pub async fn cli_consent(
    dir: &Path,
    name: &str,
    owner: &str,
    key: &Path,
    spiffe_id: &str,
    selectors: &[&str],
    valid_for: &str,
) -> (String, PathBuf) {
    let mut cmd = Command::new(binary("sigil-issuer"));
    cmd.args(["owner", "consent", "--id", owner, "--key"])
        .arg(key)
        .args(["--spiffe-id", spiffe_id, "--valid-for", valid_for])
        // Signing is offline: no socket is needed, and none is reachable.
        .env("SIGIL_ADMIN_SOCKET", dir.join("no-such.sock"));
    for s in selectors {
        cmd.args(["--selector", s]);
    }
    let (ok, out, err) = run_blocking(cmd).await;
    assert!(ok, "owner consent failed:\n{out}\n{err}");
    let path = dir.join(format!("{name}.jws"));
    std::fs::write(&path, &out).unwrap();
    (out.trim().to_owned(), path)
}

pub async fn register_owner(issuer: &TestIssuer, id: &str, public_pem: &Path) -> adm::Owner {
    issuer
        .admin()
        .await
        .register_owner(adm::RegisterOwnerRequest {
            id: id.into(),
            public_key: std::fs::read_to_string(public_pem).unwrap(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub fn selectors(values: &[&str]) -> Vec<pb::Selector> {
    values
        .iter()
        .map(|v| {
            let (kind, value) = v.split_once(':').unwrap();
            pb::Selector {
                r#type: kind.into(),
                value: value.into(),
            }
        })
        .collect()
}

pub fn fields(
    spiffe_id: &str,
    parent: &str,
    selector: &[&str],
    owner: &str,
    consent: &str,
) -> adm::EntryFields {
    adm::EntryFields {
        spiffe_id: spiffe_id.into(),
        parent_id: parent.into(),
        selectors: selectors(selector),
        owner_id: owner.into(),
        consent: consent.into(),
        ..Default::default()
    }
}

/// Revokes owner `id` through the admin API.
pub async fn revoke_owner(issuer: &TestIssuer, id: &str) {
    issuer
        .admin()
        .await
        .revoke_owner(adm::OwnerId { id: id.into() })
        .await
        .unwrap();
}

/// What the leaf of the X509-SVID served for `spiffe_id` says.
pub fn served_leaf(
    response: &proto::workload::X509svidResponse,
    spiffe_id: &str,
) -> workload_api::x509svid::LeafInfo {
    let svid = response
        .svids
        .iter()
        .find(|s| s.spiffe_id == spiffe_id)
        .unwrap_or_else(|| panic!("no X509-SVID served for {spiffe_id}"));
    let chain = workload_api::bundle::split_der_concat(&svid.x509_svid).unwrap();
    workload_api::x509svid::check_leaf(&chain[0]).unwrap()
}
