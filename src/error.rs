//! Error types shared across the crate. Client input is never an error (a
//! bad cookie yields a fresh session, a bad command is ignored); these are
//! for configuration and for the server's own resources.

use std::fmt;

/// A directive value that cannot be used. One sentence naming the
/// directive, the value and what is expected; httpd prints it when
/// `apachectl -t` fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub directive: String,
    pub value: String,
    pub expected: String,
}

impl ConfigError {
    pub fn new(directive: &str, value: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError {
            directive: directive.to_string(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Control characters in a bad value would garble the message.
        let shown: String = self.value.chars().flat_map(char::escape_default).collect();
        write!(
            f,
            "{} '{}': expected {}",
            self.directive, shown, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}
