//! Selectors: `type:value` properties of a node or workload that registration
//! entries require (`unix:uid:1000`, `k8s:ns:prod`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A caller's selectors, shared without copying between the attestor's cache
/// and the calls it answers.
pub type Selectors = Arc<[Selector]>;

/// Why text is not a selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    #[error("selector {selector:?} is not of the form TYPE:VALUE")]
    Malformed { selector: String },
}

/// One selector. The value may itself contain colons.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Selector {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl Selector {
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Selector {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// Parses `TYPE:VALUE`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        match s.split_once(':') {
            Some((kind, value)) if !kind.is_empty() && !value.is_empty() => {
                Ok(Selector::new(kind, value))
            }
            _ => Err(SelectorError::Malformed {
                selector: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Whether every selector an entry requires is among the caller's.
pub fn all_present(required: &[Selector], present: &[Selector]) -> bool {
    !required.is_empty() && required.iter().all(|r| present.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let s = Selector::parse("unix:uid:1000").unwrap();
        assert_eq!((s.kind.as_str(), s.value.as_str()), ("unix", "uid:1000"));
        assert_eq!(s.to_string(), "unix:uid:1000");
        assert_eq!(
            Selector::parse("unix").unwrap_err().to_string(),
            "selector \"unix\" is not of the form TYPE:VALUE"
        );
        assert!(Selector::parse(":x").is_err());
        assert!(Selector::parse("x:").is_err());
        let present = [s.clone(), Selector::parse("unix:gid:1").unwrap()];
        assert!(all_present(std::slice::from_ref(&s), &present));
        assert!(!all_present(
            &[Selector::parse("unix:uid:0").unwrap()],
            &present
        ));
        assert!(
            !all_present(&[], &present),
            "an entry without selectors matches nothing"
        );
    }
}
