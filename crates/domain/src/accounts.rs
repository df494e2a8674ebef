//! Staff accounts: usernames, display names, passwords, token names.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A sign-in name: 1–64 characters of `a-z 0-9 . _ - @`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsernameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 64 characters")]
    TooLong,
    #[error(
        "may contain only lower-case letters, digits, '.', '_', '-' and '@', and must start with a letter or digit"
    )]
    BadCharacters,
}

impl Username {
    pub fn parse(raw: &str) -> Result<Self, UsernameError> {
        let s = raw.trim();
        if s.is_empty() {
            return Err(UsernameError::Empty);
        }
        if s.chars().count() > 64 {
            return Err(UsernameError::TooLong);
        }
        let first_ok = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok = s.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '@')
        });
        if !(first_ok && rest_ok) {
            return Err(UsernameError::BadCharacters);
        }
        Ok(Self(s.to_owned()))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = UsernameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Username> for String {
    fn from(value: Username) -> Self {
        value.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Free text shown to people (display names, token names): 1–120 printable characters.
pub fn parse_label(raw: &str) -> Result<String, LabelError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(LabelError::Empty);
    }
    if s.chars().count() > 120 {
        return Err(LabelError::TooLong);
    }
    if s.chars().any(char::is_control) {
        return Err(LabelError::ControlCharacters);
    }
    Ok(s.to_owned())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 120 characters")]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacters,
}

/// Password policy for staff accounts: at least 12 characters, at most 1024.
pub fn check_password(raw: &str) -> Result<(), PasswordError> {
    let n = raw.chars().count();
    if n < 12 {
        return Err(PasswordError::TooShort);
    }
    if raw.len() > 1024 {
        return Err(PasswordError::TooLong);
    }
    Ok(())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("must be at least 12 characters")]
    TooShort,
    #[error("must be at most 1024 bytes")]
    TooLong,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_trimmed_and_checked() {
        assert_eq!(
            Username::parse("  alice.b ").map(|u| u.0),
            Ok("alice.b".into())
        );
        assert_eq!(Username::parse(""), Err(UsernameError::Empty));
        assert_eq!(Username::parse("Alice"), Err(UsernameError::BadCharacters));
        assert_eq!(Username::parse("-x"), Err(UsernameError::BadCharacters));
        assert_eq!(Username::parse("a/b"), Err(UsernameError::BadCharacters));
        assert_eq!(
            Username::parse(&"a".repeat(65)),
            Err(UsernameError::TooLong)
        );
    }

    #[test]
    fn labels_refuse_control_characters_and_empty_text() {
        assert_eq!(parse_label(" Night shift "), Ok("Night shift".into()));
        assert_eq!(parse_label("   "), Err(LabelError::Empty));
        assert_eq!(parse_label("a\u{7}b"), Err(LabelError::ControlCharacters));
    }

    #[test]
    fn passwords_need_twelve_characters() {
        assert_eq!(check_password("short"), Err(PasswordError::TooShort));
        assert_eq!(check_password("long enough pass"), Ok(()));
    }
}
