//! Session credentials: short-lived signed tokens (JWT, HS256) that let a
//! session act as its own principal, `agent:{name}/session:{id}` of its
//! tenant. A token stops working when it expires or its session ends.
//! The signing key is generated once per store and kept in it, so every
//! node of a cluster verifies the same tokens.

use agentrt_types::tenant::session_principal;
use agentrt_types::time::now_ms;
use agentrt_types::{Principal, SessionId, SessionStatus};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::identity::random_hex;
use crate::{Engine, EngineError};

/// Longest lifetime a credential can be issued for.
pub const MAX_CREDENTIAL_SECONDS: u64 = 24 * 3600;
/// Lifetime when none is asked for.
pub const DEFAULT_CREDENTIAL_SECONDS: u64 = 3600;
const SETTING: &str = "session_credential_key";

#[derive(Serialize, Deserialize)]
struct Claims {
    /// `agent:{name}/session:{id}`
    sub: String,
    tenant: String,
    agent: String,
    sid: String,
    iat: u64,
    exp: u64,
}

/// A credential just issued.
#[derive(Clone, Debug, Serialize)]
pub struct SessionCredential {
    pub token: String,
    pub principal: String,
    pub expires_ms: i64,
}

impl Engine {
    async fn signing_key(&self) -> Result<Vec<u8>, EngineError> {
        let key = self
            .inner
            .signing_key
            .get_or_try_init(|| async {
                let init = random_hex(32)?;
                let hex_key = self.inner.store.setting_or_init(SETTING, &init).await?;
                hex::decode(hex_key).map_err(|e| EngineError::Internal(format!("stored credential key is corrupt: {e}")))
            })
            .await?;
        Ok(key.clone())
    }

    /// Issues a credential for a live session, valid for `ttl_seconds`.
    pub async fn issue_session_credential(&self, id: &SessionId, ttl_seconds: Option<u64>) -> Result<SessionCredential, EngineError> {
        let ttl = ttl_seconds.unwrap_or(DEFAULT_CREDENTIAL_SECONDS);
        if ttl == 0 || ttl > MAX_CREDENTIAL_SECONDS {
            return Err(EngineError::InvalidInput(format!("ttl_seconds must be between 1 and {MAX_CREDENTIAL_SECONDS}")));
        }
        let session = self.get_session(id).await?;
        if session.status == SessionStatus::Terminated {
            return Err(EngineError::SessionTerminated(id.clone()));
        }
        let now = (now_ms() / 1000) as u64;
        let claims = Claims {
            sub: session_principal(&session.agent, id),
            tenant: session.tenant.clone(),
            agent: session.agent.clone(),
            sid: id.to_string(),
            iat: now,
            exp: now + ttl,
        };
        let key = self.signing_key().await?;
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&key))
            .map_err(|e| EngineError::Internal(format!("sign credential: {e}")))?;
        Ok(SessionCredential { token, principal: claims.sub, expires_ms: (claims.exp * 1000) as i64 })
    }

    /// The session principal a credential stands for, if it is genuine,
    /// unexpired and its session is still live.
    pub(crate) async fn verify_session_credential(&self, token: &str) -> Result<Principal, EngineError> {
        let key = self.signing_key().await?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&key), &validation).map_err(|e| {
            EngineError::Unauthorized(match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the session credential has expired; ask for a new one".into(),
                _ => "invalid bearer token: not an API key (art_…) nor a valid session credential".into(),
            })
        })?;
        let c = data.claims;
        let id = SessionId::parse(&c.sid).ok_or_else(|| EngineError::Unauthorized("malformed session credential".into()))?;
        match self.inner.store.get_session(&id).await? {
            Some(s) if s.status != SessionStatus::Terminated && s.tenant == c.tenant => {
                Ok(Principal::Session { tenant: c.tenant, agent: c.agent, session_id: id })
            }
            _ => Err(EngineError::Unauthorized("the session credential was revoked: its session has ended".into())),
        }
    }
}
