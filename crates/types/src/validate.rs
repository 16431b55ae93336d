//! Field validation helpers. Every error names the field (a dotted path such as
//! `spec.poolsize`) and says what was expected.

use std::fmt;

/// A value that failed validation: which field, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    /// Dotted path of the field, e.g. `spec.functionTimeout`.
    pub field: String,
    /// What was wrong and what was expected, lower case, no trailing period.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Turns a serde error message ("unknown field `x`, expected one of ..." / "missing field
    /// `spec`" / "spec.poolsize: invalid type ...") into a field error.
    pub fn from_serde(message: &str) -> Self {
        let field = extract_backticked(message)
            .or_else(|| {
                message
                    .split(':')
                    .next()
                    .filter(|p| p.contains('.'))
                    .map(str::to_string)
            })
            .unwrap_or_default();
        Self::new(field, message.to_string())
    }
}

fn extract_backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_string())
}

/// A list of host ports (`hostPorts`): each 1 to 65535, none twice.
pub fn host_ports(field: &str, ports: &[u16]) -> Result<(), ValidationError> {
    for (i, port) in ports.iter().enumerate() {
        if *port == 0 {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                "0 is not a port: expected 1 to 65535",
            ));
        }
        if ports[..i].contains(port) {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                format!("port {port} is listed twice: expected each port once"),
            ));
        }
    }
    Ok(())
}

/// Maximum length of a DNS-1123 label.
pub const MAX_NAME_LEN: usize = 63;

/// A DNS-1123 label: lowercase letters, digits and '-', starting and ending with an
/// alphanumeric, at most 63 characters.
pub fn dns1123_label(field: &str, value: &str) -> Result<(), ValidationError> {
    let expected = "expected a DNS-1123 label (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)";
    if value.is_empty() {
        return Err(ValidationError::new(
            field,
            format!("must not be empty; {expected}"),
        ));
    }
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = value
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
        && value
            .as_bytes()
            .last()
            .is_some_and(u8::is_ascii_alphanumeric);
    if value.len() > MAX_NAME_LEN || !ok_chars || !ok_ends {
        return Err(ValidationError::new(
            field,
            format!("{value:?} is not valid: {expected}"),
        ));
    }
    Ok(())
}

/// A number within an inclusive range.
pub fn in_range<T: PartialOrd + fmt::Display + Copy>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ValidationError> {
    if value < min || value > max {
        return Err(ValidationError::new(
            field,
            format!("{value} is out of range: expected {min} to {max}"),
        ));
    }
    Ok(())
}

/// A non-empty string.
pub fn non_empty(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    Ok(())
}

/// An entrypoint: dotted identifiers (`module.func`, `pkg.mod.handler`, `index.hello`) or a
/// file name (`handler.sh`, `hello`); no path separators, no whitespace, no control characters.
pub fn entrypoint(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Ok(());
    }
    let ok = value.len() <= 255
        && !value.starts_with('.')
        && !value.ends_with('.')
        && !value.contains("..")
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' || c == '$');
    if !ok {
        return Err(ValidationError::new(
            field,
            format!(
                "{value:?} is not a valid entrypoint: expected names of letters, digits, '_' or '-' joined by single dots, e.g. \"hello.main\""
            ),
        ));
    }
    Ok(())
}

/// An HTTP method token.
pub fn http_method(field: &str, value: &str) -> Result<(), ValidationError> {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    if !METHODS.contains(&value) {
        return Err(ValidationError::new(
            field,
            format!(
                "{value:?} is not an HTTP method: expected one of {}",
                METHODS.join(", ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "hello", "hello-world", "a1", &"a".repeat(63)] {
            dns1123_label("metadata.name", ok).unwrap();
        }
        for bad in [
            "",
            "Hello",
            "-a",
            "a-",
            "a_b",
            "a.b",
            "../etc",
            &"a".repeat(64),
        ] {
            let e = dns1123_label("metadata.name", bad).unwrap_err();
            assert_eq!(e.field, "metadata.name");
        }
    }

    #[test]
    fn entrypoints() {
        for ok in [
            "",
            "main",
            "hello.main",
            "pkg.mod.handler",
            "index.hello",
            "handler.sh",
        ] {
            entrypoint("spec.package.functionName", ok).unwrap();
        }
        for bad in ["../x", "a/b", ".a", "a.", "a b", "a..b"] {
            entrypoint("spec.package.functionName", bad).unwrap_err();
        }
    }

    #[test]
    fn serde_messages_name_the_field() {
        let e = ValidationError::from_serde("unknown field `poolsiz`, expected one of `runtime`");
        assert_eq!(e.field, "poolsiz");
        let e = ValidationError::from_serde("missing field `spec`");
        assert_eq!(e.field, "spec");
    }
}
