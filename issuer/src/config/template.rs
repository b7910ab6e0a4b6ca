//! Identity rule templates: text with `{placeholder}`s filled from a pod,
//! e.g. `spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}`.
//! Templates are parsed when the configuration is read, so a misspelt
//! placeholder stops the issuer at start rather than at the first pod.

use std::collections::BTreeMap;

/// What a template can name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    TrustDomain,
    Cluster,
    Namespace,
    ServiceAccount,
    PodName,
    PodUid,
    NodeName,
    /// `{label:KEY}`: the pod's label KEY.
    Label(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// The facts about a pod that templates draw on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodFacts {
    pub trust_domain: String,
    pub cluster: String,
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
}

/// The placeholders, as listed in errors.
pub const PLACEHOLDERS: &str = "{trust_domain}, {cluster}, {namespace}, {service_account}, \
                                {pod_name}, {pod_uid}, {node_name}, {label:KEY}";

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("{text:?} has a '}}' without its '{{'"));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("{text:?} has a '{{' without its '}}'"))?;
            let name = &after[..close];
            parts.push(match name {
                "trust_domain" => Part::TrustDomain,
                "cluster" => Part::Cluster,
                "namespace" => Part::Namespace,
                "service_account" => Part::ServiceAccount,
                "pod_name" => Part::PodName,
                "pod_uid" => Part::PodUid,
                "node_name" => Part::NodeName,
                _ => match name.strip_prefix("label:") {
                    Some(key) if !key.is_empty() && !key.contains('{') => {
                        Part::Label(key.to_owned())
                    }
                    _ => return Err(format!("{text:?}: {{{name}}} is not one of {PLACEHOLDERS}")),
                },
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Fills the template; a label the pod does not carry is an error, so a
    /// pod without it gets no identity rather than a wrong one.
    pub fn render(&self, pod: &PodFacts) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            out.push_str(match part {
                Part::Text(text) => text,
                Part::TrustDomain => &pod.trust_domain,
                Part::Cluster => &pod.cluster,
                Part::Namespace => &pod.namespace,
                Part::ServiceAccount => &pod.service_account,
                Part::PodName => &pod.pod_name,
                Part::PodUid => &pod.pod_uid,
                Part::NodeName => &pod.node_name,
                Part::Label(key) => pod
                    .labels
                    .get(key)
                    .ok_or_else(|| format!("the pod has no label {key:?}"))?,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodFacts {
        PodFacts {
            trust_domain: "example.org".into(),
            cluster: "demo".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            pod_name: "web-7d4f9".into(),
            pod_uid: "0b6f".into(),
            node_name: "node-1".into(),
            labels: BTreeMap::from([("app".into(), "web".into())]),
        }
    }

    #[test]
    fn placeholders_are_filled() {
        let render = |text: &str| Template::parse(text).unwrap().render(&pod());
        assert_eq!(
            render("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").unwrap(),
            "spiffe://example.org/ns/shop/sa/web"
        );
        assert_eq!(
            render(
                "spiffe://{trust_domain}/{cluster}/{node_name}/{pod_name}/{pod_uid}/{label:app}"
            )
            .unwrap(),
            "spiffe://example.org/demo/node-1/web-7d4f9/0b6f/web"
        );
        assert_eq!(
            render("spiffe://x/{label:tier}").unwrap_err(),
            "the pod has no label \"tier\""
        );
    }

    #[test]
    fn malformed_templates_are_refused_with_the_placeholders_listed() {
        for text in [
            "spiffe://{trust_domain/x",
            "spiffe://x}/",
            "spiffe://{label:}/",
        ] {
            assert!(Template::parse(text).is_err(), "{text}");
        }
        let err = Template::parse("spiffe://{td}/x").unwrap_err();
        assert!(err.contains("{td} is not one of {trust_domain}"), "{err}");
    }
}
