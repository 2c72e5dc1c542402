//! Bearer tokens: loading them (environment or files), and checking a caller's in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Route, complete, stream, record outcomes: a client or an admin token.
    Client,
    /// Reload the model, read stats and metrics: an admin token.
    Admin,
}

/// Who called, once their token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's configured name (a team, a service); the decision's tenant unless the
    /// request names its own.
    pub name: String,
    /// An admin token.
    pub admin: bool,
}

/// Why a call was refused. The messages never say which part of a token was wrong.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token, or one that matches nothing.
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    /// A valid client token on an admin call.
    #[error("this call needs an admin token")]
    Forbidden,
}

/// One token as kept in memory: its name and the SHA-256 of its value (never the value).
#[derive(Clone)]
pub struct Token {
    /// The configured name.
    pub name: String,
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Shortest accepted token: anything shorter is guessable.
pub const MIN_TOKEN_BYTES: usize = 16;

impl Token {
    /// A token from its secret value; `None` if it is too short (after trimming).
    pub fn new(name: impl Into<String>, secret: &str) -> Option<Self> {
        let secret = secret.trim();
        (secret.len() >= MIN_TOKEN_BYTES).then(|| Self {
            name: name.into(),
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }
}

/// The validated `[auth]` section: with no tokens at all, every call is let through (the
/// loopback default); with any, every call needs one.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// Tokens for client calls.
    pub clients: Vec<Token>,
    /// Tokens for admin calls (they serve client calls too).
    pub admins: Vec<Token>,
    /// Serve a non-loopback address with no tokens (refused at start otherwise).
    pub allow_unauthenticated: bool,
}

impl Auth {
    /// Whether any token is configured.
    pub fn enabled(&self) -> bool {
        !self.clients.is_empty() || !self.admins.is_empty()
    }

    /// Refuses to serve a non-loopback address with no tokens, unless the operator said so
    /// (`auth.allow_unauthenticated`): any host that can reach it could spend the providers' keys.
    pub fn check_bind(&self, addr: std::net::SocketAddr) -> Result<(), String> {
        if self.enabled() || self.allow_unauthenticated || addr.ip().is_loopback() {
            return Ok(());
        }
        Err(format!(
            "refusing to serve {addr} without authentication: configure auth.tokens, or set auth.allow_unauthenticated = true to accept calls from anyone who can reach it"
        ))
    }

    /// Checks a presented token (the bearer value, already stripped of `Bearer `) for `scope`.
    /// Every configured token is compared, in constant time, so the time taken says nothing
    /// about which one, or which part, matched.
    pub fn check(
        &self,
        presented: Option<&str>,
        scope: Scope,
    ) -> Result<Option<Identity>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let Some(presented) = presented else {
            return Err(AuthError::Unauthenticated);
        };
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let find = |tokens: &[Token]| {
            let mut found = None;
            for t in tokens {
                if bool::from(t.digest.ct_eq(&digest)) && found.is_none() {
                    found = Some(t.name.clone());
                }
            }
            found
        };
        let (admin, client) = (find(&self.admins), find(&self.clients));
        match (admin, client, scope) {
            (Some(name), _, _) => Ok(Some(Identity { name, admin: true })),
            (None, Some(name), Scope::Client) => Ok(Some(Identity { name, admin: false })),
            (None, Some(_), Scope::Admin) => Err(AuthError::Forbidden),
            (None, None, _) => Err(AuthError::Unauthenticated),
        }
    }
}

/// The token in an `Authorization: Bearer …` value (scheme case-insensitive), or a bare
/// `x-api-key` value as the Anthropic SDK sends it.
pub fn bearer(authorization: Option<&str>, api_key: Option<&str>) -> Option<String> {
    if let Some(v) = authorization {
        let (scheme, rest) = v.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_string());
    }
    api_key.map(|k| k.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth {
            clients: vec![
                Token::new("team-a", "a-secret-token-0001").unwrap(),
                Token::new("team-a-next", "a-secret-token-0002").unwrap(),
            ],
            admins: vec![Token::new("ops", "the-admin-token-9999").unwrap()],
            allow_unauthenticated: false,
        }
    }

    #[test]
    fn tokens_are_checked_per_scope_and_named() {
        let a = auth();
        let who = |t: &str, s| a.check(Some(t), s);
        assert_eq!(
            who("a-secret-token-0002", Scope::Client)
                .unwrap()
                .unwrap()
                .name,
            "team-a-next"
        );
        assert_eq!(
            who("a-secret-token-0001", Scope::Admin),
            Err(AuthError::Forbidden)
        );
        let ops = who("the-admin-token-9999", Scope::Client).unwrap().unwrap();
        assert!(ops.admin && ops.name == "ops");
        assert_eq!(
            who("a-secret-token-000", Scope::Client),
            Err(AuthError::Unauthenticated)
        );
        assert_eq!(
            a.check(None, Scope::Client),
            Err(AuthError::Unauthenticated)
        );
        assert_eq!(Auth::default().check(None, Scope::Admin), Ok(None));
        assert!(Token::new("short", "tooshort").is_none());
        assert!(!format!("{a:?}").contains("a-secret"));
    }

    #[test]
    fn public_addresses_need_tokens_or_an_explicit_opt_out() {
        let open = Auth::default();
        assert!(open.check_bind("127.0.0.1:1".parse().unwrap()).is_ok());
        assert!(open.check_bind("[::1]:1".parse().unwrap()).is_ok());
        let err = open.check_bind("0.0.0.0:1".parse().unwrap()).unwrap_err();
        assert!(err.contains("auth.allow_unauthenticated"), "{err}");
        assert!(auth().check_bind("0.0.0.0:1".parse().unwrap()).is_ok());
        let opted = Auth {
            allow_unauthenticated: true,
            ..Auth::default()
        };
        assert!(opted.check_bind("10.0.0.1:1".parse().unwrap()).is_ok());
    }

    #[test]
    fn bearer_values_are_parsed_from_either_header() {
        assert_eq!(bearer(Some("Bearer abc"), None).as_deref(), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc "), None).as_deref(), Some("abc"));
        assert_eq!(bearer(Some("Basic abc"), None), None);
        assert_eq!(bearer(Some("abc"), None), None);
        assert_eq!(bearer(None, Some("k-1")).as_deref(), Some("k-1"));
        assert_eq!(bearer(None, None), None);
    }
}
