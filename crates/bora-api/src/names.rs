//! Names of apps, services and secrets: DNS labels, because an app and a
//! service name make up the host name `<service>.<app>.<domain>`.

/// Why a name is not allowed; the message says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty: use 1 to 63 characters, lower-case letters, digits and '-'")]
    Empty,
    #[error("name {0:?} is longer than 63 characters")]
    TooLong(String),
    #[error(
        "name {0:?} is not allowed: use lower-case letters, digits and '-', starting with a letter and not ending with '-'"
    )]
    BadCharacters(String),
}

/// Checks a DNS-label name (`web`, `hello-api`).
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong(name.to_string()));
    }
    let bytes = name.as_bytes();
    let ok_chars = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if !ok_chars || !bytes[0].is_ascii_lowercase() || bytes[bytes.len() - 1] == b'-' {
        return Err(NameError::BadCharacters(name.to_string()));
    }
    Ok(())
}

/// Checks a secret name: like other names, but `_` and `.` are allowed too,
/// since secrets often mirror environment variable or file names.
pub fn validate_secret_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong(name.to_string()));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        return Err(NameError::BadCharacters(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["web", "a", "hello-api", "v2", &"a".repeat(63)] {
            validate_name(ok).unwrap();
        }
    }

    #[test]
    fn rejects_others() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_name(&"a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        for bad in ["Web", "1web", "-web", "web-", "we_b", "we.b", "wéb"] {
            assert!(
                matches!(validate_name(bad), Err(NameError::BadCharacters(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn secret_names_allow_underscores() {
        validate_secret_name("DB_PASSWORD").unwrap();
        validate_secret_name("db-pass").unwrap();
        assert!(validate_secret_name("_x").is_err());
        assert!(validate_secret_name("a b").is_err());
    }
}
