//! Who is calling the API: bearer token to identity, identity to role.

use std::sync::Arc;

use airlock_pipeline::model::Identity;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::ApiState;
use super::error::ApiError;

/// What a caller may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Auditor,
    /// Any other identity: its own sessions only.
    Member,
}

impl Role {
    /// Admins and auditors read every session and the audit log.
    pub fn sees_everything(self) -> bool {
        match self {
            Role::Admin | Role::Auditor => true,
            Role::Member => false,
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Arc<Identity>,
    pub role: Role,
}

impl Caller {
    fn new(identity: Arc<Identity>, state: &ApiState) -> Self {
        let member_of = |groups: &[String]| groups.iter().any(|g| identity.in_group(g));
        let role = if member_of(&state.admin_groups) {
            Role::Admin
        } else if member_of(&state.auditor_groups) {
            Role::Auditor
        } else {
            Role::Member
        };
        Caller { identity, role }
    }

    /// True if the caller may read the session of `identity`.
    pub fn may_read(&self, identity: &str) -> bool {
        self.role.sees_everything() || self.identity.name == identity
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme case-insensitive).
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        // The registry is a snapshot: reloads swap it without blocking here.
        let identity = state
            .identities
            .load()
            .by_token(token.as_bytes())
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Caller::new(identity, state))
    }
}
