//! Admin tokens: bearer tokens with a role, loaded from `--admin-token-file`, compared in
//! constant time and never logged.

use subtle::ConstantTimeEq;

/// Checks a client-chosen request id (`X-Request-Id`): 1 to 128 of `A-Za-z0-9._:-`.
pub fn valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read configuration and status.
    Read,
    /// Read, and change configuration and membership.
    Write,
}

/// Why a request was not let in.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error(
        "missing or unknown admin token: send 'Authorization: Bearer TOKEN' with a token from --admin-token-file"
    )]
    Unauthenticated,
    #[error("this token may only read: use a write token for changes")]
    Forbidden,
}

/// The accepted tokens. `Tokens::open()` accepts every request (no token file was given).
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Option<Vec<(Vec<u8>, Role)>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.entries {
            None => f.write_str("Tokens(open)"),
            Some(e) => write!(f, "Tokens({} tokens)", e.len()),
        }
    }
}

impl Tokens {
    /// No authentication: every request may read and write.
    pub fn open() -> Tokens {
        Tokens { entries: None }
    }

    /// Parses a token file: one `ROLE TOKEN` per line (`read` or `write`), `#` comments and
    /// blank lines ignored; tokens of at least 16 characters.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(role), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!(
                    "line {}: expected 'read TOKEN' or 'write TOKEN'",
                    n + 1
                ));
            };
            let role = match role {
                "read" => Role::Read,
                "write" => Role::Write,
                other => {
                    return Err(format!(
                        "line {}: role '{other}' is neither read nor write",
                        n + 1
                    ));
                }
            };
            if token.len() < 16 {
                return Err(format!(
                    "line {}: the token is shorter than 16 characters; use a long random one",
                    n + 1
                ));
            }
            entries.push((token.as_bytes().to_vec(), role));
        }
        if entries.is_empty() {
            return Err(
                "no tokens in the file; add a line such as 'write <long random token>'".into(),
            );
        }
        Ok(Tokens {
            entries: Some(entries),
        })
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// Checks an `Authorization` header value for the role needed.
    pub fn check(&self, authorization: Option<&[u8]>, need: Role) -> Result<(), Denied> {
        let Some(entries) = &self.entries else {
            return Ok(());
        };
        let given = authorization
            .and_then(|h| {
                h.strip_prefix(b"Bearer ")
                    .or_else(|| h.strip_prefix(b"bearer "))
            })
            .map(|t| t.trim_ascii())
            .ok_or(Denied::Unauthenticated)?;
        // Compare against every token, so the time taken does not depend on which one matched.
        let mut found: Option<Role> = None;
        for (token, role) in entries {
            if bool::from(token.as_slice().ct_eq(given)) {
                found = found.max(Some(*role));
            }
        }
        match found {
            None => Err(Denied::Unauthenticated),
            Some(role) if role < need => Err(Denied::Forbidden),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_parsing() {
        let t = Tokens::parse("# admins\nread rrrrrrrrrrrrrrrrrrrr\nwrite wwwwwwwwwwwwwwwwwwww\n")
            .unwrap();
        let h = |s: &str| Some(format!("Bearer {s}").into_bytes());
        assert_eq!(t.check(None, Role::Read), Err(Denied::Unauthenticated));
        assert_eq!(
            t.check(h("nope-nope-nope-nope").as_deref(), Role::Read),
            Err(Denied::Unauthenticated)
        );
        assert_eq!(
            t.check(h("rrrrrrrrrrrrrrrrrrrr").as_deref(), Role::Read),
            Ok(())
        );
        assert_eq!(
            t.check(h("rrrrrrrrrrrrrrrrrrrr").as_deref(), Role::Write),
            Err(Denied::Forbidden)
        );
        assert_eq!(
            t.check(h("wwwwwwwwwwwwwwwwwwww").as_deref(), Role::Write),
            Ok(())
        );
        assert!(Tokens::parse("admin x").is_err());
        assert!(Tokens::parse("write short").is_err());
        assert!(Tokens::parse("# nothing").is_err());
        assert!(Tokens::open().check(None, Role::Write).is_ok());
    }
}
