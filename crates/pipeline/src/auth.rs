//! Identity registry: who may connect, checked by hashed token in constant time.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::Identity;

/// An identity and the SHA-256 of its token. The token itself is never kept.
#[derive(Debug, Clone)]
pub struct IdentityEntry {
    pub identity: Arc<Identity>,
    pub token_sha256: [u8; 32],
}

/// All static identities, looked up by name.
#[derive(Debug, Default, Clone)]
pub struct IdentityRegistry {
    by_name: HashMap<String, IdentityEntry>,
}

/// Why authentication failed. Deliberately coarse: the client learns only
/// that the name/token pair was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication failed")]
    BadCredentials,
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl IdentityRegistry {
    pub fn new(entries: Vec<IdentityEntry>) -> Self {
        let by_name = entries
            .into_iter()
            .map(|e| (e.identity.name.clone(), e))
            .collect();
        IdentityRegistry { by_name }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Identity>> {
        self.by_name.get(name).map(|e| &e.identity)
    }

    pub fn identities(&self) -> impl Iterator<Item = &Arc<Identity>> {
        self.by_name.values().map(|e| &e.identity)
    }

    /// Checks `token` for identity `name`. Unknown names cost the same hash
    /// and comparison as known ones, so timing does not reveal which exist.
    pub fn authenticate(&self, name: &str, token: &[u8]) -> Result<Arc<Identity>, AuthError> {
        let presented = sha256(token);
        match self.by_name.get(name) {
            Some(entry) => {
                if bool::from(presented.ct_eq(&entry.token_sha256)) {
                    Ok(entry.identity.clone())
                } else {
                    Err(AuthError::BadCredentials)
                }
            }
            None => {
                let _ = presented.ct_eq(&[0u8; 32]);
                Err(AuthError::BadCredentials)
            }
        }
    }

    /// Finds the identity whose token hashes to `token` (bearer tokens on the API).
    pub fn by_token(&self, token: &[u8]) -> Option<Arc<Identity>> {
        let presented = sha256(token);
        let mut found = None;
        for e in self.by_name.values() {
            if bool::from(presented.ct_eq(&e.token_sha256)) {
                found = Some(e.identity.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IdentityKind;

    fn reg() -> IdentityRegistry {
        IdentityRegistry::new(vec![IdentityEntry {
            identity: Arc::new(Identity {
                name: "agent".into(),
                kind: IdentityKind::Agent,
                groups: vec!["agents".into()],
            }),
            token_sha256: sha256(b"s3cret"),
        }])
    }

    #[test]
    fn right_token_authenticates() {
        assert_eq!(
            reg().authenticate("agent", b"s3cret").unwrap().name,
            "agent"
        );
    }

    #[test]
    fn wrong_token_or_name_fails_alike() {
        let r = reg();
        assert_eq!(
            r.authenticate("agent", b"nope"),
            Err(AuthError::BadCredentials)
        );
        assert_eq!(
            r.authenticate("nobody", b"s3cret"),
            Err(AuthError::BadCredentials)
        );
    }

    #[test]
    fn bearer_lookup() {
        assert!(reg().by_token(b"s3cret").is_some());
        assert!(reg().by_token(b"x").is_none());
    }
}
