//! Logging set-up shared by Sigil's binaries: a level (or per-target filter)
//! checked before use, text or JSON lines on stderr.

use crate::config_file::ConfigError;

/// The levels `log_level` accepts on its own.
pub const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// Reads the `log_format` key; text when unset.
    pub fn parse(value: Option<&str>) -> Result<Self, ConfigError> {
        match value {
            None | Some("text") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(ConfigError::Invalid {
                key: "log_format",
                reason: format!("{other:?} is not one of text, json"),
            }),
        }
    }
}

/// Checks the `log_level` key: one of [`LEVELS`], or per-target directives
/// such as `info,sigil_agent=debug`. A bare word that is not a level would
/// otherwise be read as a target name and silently log everything.
pub fn parse_level(value: Option<&str>, default: &str) -> Result<String, ConfigError> {
    let level = value.unwrap_or(default);
    let refused = || ConfigError::Invalid {
        key: "log_level",
        reason: format!(
            "{level:?} is not a log level; use one of {} or target=level directives",
            LEVELS.join(", ")
        ),
    };
    for directive in level.split(',') {
        let wanted = directive.rsplit('=').next().unwrap_or_default();
        let named_target = directive.contains('=');
        if !LEVELS.contains(&wanted.to_ascii_lowercase().as_str())
            || (named_target && directive.starts_with('='))
        {
            return Err(refused());
        }
    }
    tracing_subscriber::EnvFilter::try_new(level).map_err(|_| refused())?;
    Ok(level.to_owned())
}

/// Installs the global tracing subscriber, writing to stderr. `level` must
/// have passed [`parse_level`].
pub fn init(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_are_accepted() {
        for ok in ["info", "DEBUG", "off", "warn,sigil_agent=debug", "h2=error"] {
            assert_eq!(parse_level(Some(ok), "info").unwrap(), ok);
        }
        assert_eq!(parse_level(None, "warn").unwrap(), "warn");
    }

    #[test]
    fn unknown_levels_are_refused_with_the_accepted_ones() {
        for bad in ["verbose", "info,loud", "sigil=chatty", "=debug", ""] {
            let err = parse_level(Some(bad), "info").unwrap_err().to_string();
            assert!(err.starts_with("config key log_level:"), "{bad}: {err}");
            assert!(
                err.contains("off, error, warn, info, debug, trace"),
                "{err}"
            );
        }
    }

    #[test]
    fn formats() {
        assert_eq!(LogFormat::parse(None).unwrap(), LogFormat::Text);
        assert_eq!(LogFormat::parse(Some("json")).unwrap(), LogFormat::Json);
        let err = LogFormat::parse(Some("xml")).unwrap_err().to_string();
        assert!(
            err.contains("log_format") && err.contains("\"xml\""),
            "{err}"
        );
    }
}
