//! Configuration files of Sigil's binaries: reading TOML (unknown keys are
//! refused by the callers' `deny_unknown_fields`, and named here), durations,
//! and the errors that name the key at fault.

use std::path::Path;
use std::time::Duration;

use crate::id::{parse_trust_domain, TrustDomain};

/// Why a configuration was refused. Every variant names the file or the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("config key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("config key {key} is required")]
    Missing { key: &'static str },
}

/// Reads a TOML configuration file; errors name the file and, for unknown
/// or mistyped keys, the key.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let failed = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    toml::from_str(&text).map_err(|e: toml::de::Error| failed(e.message().to_owned()))
}

/// The required `trust_domain` key, validated.
pub fn required_trust_domain(value: Option<&str>) -> Result<TrustDomain, ConfigError> {
    let value = value.ok_or(ConfigError::Missing {
        key: "trust_domain",
    })?;
    parse_trust_domain(value).map_err(|e| ConfigError::Invalid {
        key: "trust_domain",
        reason: e.to_string(),
    })
}

/// Parses `1h`, `90s`, `5m` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_seconds_or_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("soon").unwrap_err().contains("\"soon\""));
    }

    #[test]
    fn trust_domain_is_required_and_checked() {
        assert_eq!(
            required_trust_domain(None).unwrap_err().to_string(),
            "config key trust_domain is required"
        );
        assert!(required_trust_domain(Some("Bad Domain"))
            .unwrap_err()
            .to_string()
            .starts_with("config key trust_domain:"));
        assert_eq!(
            required_trust_domain(Some("example.org")).unwrap().as_str(),
            "example.org"
        );
    }
}
