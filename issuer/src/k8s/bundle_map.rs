//! Keeps each cluster's bundle ConfigMap holding the current trust bundle,
//! for agents to bootstrap from: `bundle.crt` (the X.509 roots, PEM) and
//! `bundle.spiffe` (the SPIFFE bundle, a JWK Set). Written by server-side
//! apply as field manager `sigil-issuer`, so the ConfigMap may be created by
//! the Helm chart or not exist at all. Written at start, on every bundle
//! change, and every [`RESYNC`] in case it was edited or deleted; a failed
//! write is retried with backoff and the newest bundle is what is written.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use workload_api::Bundle;

use super::client::{ClusterClient, Clusters};
use crate::state::IssuerState;

/// The key holding the X.509 roots as PEM.
pub const PEM_KEY: &str = "bundle.crt";
/// The key holding the SPIFFE bundle (JWK Set JSON).
pub const SPIFFE_KEY: &str = "bundle.spiffe";
/// The field manager of the writes.
const FIELD_MANAGER: &str = "sigil-issuer";
/// How often the ConfigMap is written without a bundle change.
const RESYNC: Duration = Duration::from_secs(300);
/// The first and the longest pause after a failed write.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// A publisher for each cluster with `bundle_config_map`, to be spawned.
pub fn tasks(state: &IssuerState, clusters: &Clusters) -> Vec<super::Task> {
    clusters
        .iter()
        .filter_map(|client| -> Option<super::Task> {
            let (namespace, name) = client.cluster.bundle_config_map.clone()?;
            Some(Box::pin(publish(
                state.clone(),
                client.clone(),
                namespace,
                name,
            )))
        })
        .collect()
}

/// The ConfigMap holding `bundle`.
pub fn config_map(name: &str, bundle: &Bundle) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (PEM_KEY.to_owned(), bundle.x509_pem()),
            (
                SPIFFE_KEY.to_owned(),
                String::from_utf8(bundle.to_jwks_json()).expect("JSON is UTF-8"),
            ),
        ])),
        ..Default::default()
    }
}

async fn publish(state: IssuerState, client: ClusterClient, namespace: String, name: String) {
    let api: Api<ConfigMap> = Api::namespaced(client.client.clone(), &namespace);
    let mut changes = state.ca.subscribe_bundle();
    let mut retry = FIRST_RETRY;
    loop {
        let bundle = changes.borrow_and_update().clone();
        let mut object = config_map(&name, &bundle);
        object.metadata.namespace = Some(namespace.clone());
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        let wait = match client
            .call(api.patch(&name, &apply, &Patch::Apply(&object)))
            .await
        {
            Ok(_) => {
                tracing::info!(cluster = %client.cluster.name, config_map = %format!("{namespace}/{name}"), sequence = bundle.sequence(), "bundle ConfigMap written");
                retry = FIRST_RETRY;
                RESYNC
            }
            Err(error) => {
                tracing::warn!(cluster = %client.cluster.name, config_map = %format!("{namespace}/{name}"), %error, "bundle ConfigMap write failed; retrying");
                let wait = retry;
                retry = (retry * 2).min(MAX_RETRY);
                wait
            }
        };
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
