//! Configuration files of Sigil's binaries: reading TOML (unknown keys are
//! refused by the callers' `deny_unknown_fields`, and named here), durations,
//! and the errors that name the key at fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::id::{parse_trust_domain, TrustDomain};

/// Why a configuration was refused. Every variant names the file, the key
/// or the value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or an unknown or mistyped key (which the message names).
    #[error("config file {}: {}", .path.display(), .source.message())]
    Toml {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// As [`ConfigError::Toml`], for configuration given as text.
    #[error("config: {}", .source.message())]
    TomlText { source: toml::de::Error },
    #[error("config key {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("config key {key} is required")]
    Missing { key: &'static str },
    #[error("{text:?} is not a duration: {source}")]
    Duration {
        text: String,
        source: humantime::DurationError,
    },
}

/// Reads a TOML configuration file; errors name the file and, for unknown
/// or mistyped keys, the key.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Toml {
        path: path.to_owned(),
        source,
    })
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
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|source| ConfigError::Duration {
        text: text.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_seconds_or_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        let error = parse_duration("soon").unwrap_err();
        assert!(
            matches!(&error, ConfigError::Duration { text, .. } if text == "soon"),
            "{error:?}"
        );
        assert!(error
            .to_string()
            .starts_with("\"soon\" is not a duration: "));
    }

    #[test]
    fn files_name_what_is_wrong() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct File {
            known: Option<String>,
        }
        let missing = Path::new("/nonexistent/sigil.toml");
        let error = load_toml::<File>(missing).unwrap_err();
        assert!(
            matches!(&error, ConfigError::Read { path, .. } if path == missing),
            "{error:?}"
        );
        assert!(error
            .to_string()
            .starts_with("config file /nonexistent/sigil.toml: "));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sigil.toml");
        std::fs::write(&path, "unknwon = 1\n").unwrap();
        let error = load_toml::<File>(&path).unwrap_err().to_string();
        assert!(error.starts_with("config file "), "{error}");
        assert!(error.contains("unknwon"), "{error}");
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
