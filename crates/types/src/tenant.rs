//! Who makes a request: tenants, roles and principals.
//!
//! Every object (agent, session, event, approval, policy) belongs to one
//! tenant. A request is made by a [`Principal`]: an API key of a tenant with
//! a [`Role`], or a session acting with its own short-lived credential.

use serde::{Deserialize, Serialize};

use crate::ids::{KeyId, SessionId};

/// The tenant that exists from the first start. Its admins also manage the
/// other tenants and read node-wide data (metrics).
pub const DEFAULT_TENANT: &str = "default";

/// What an API key may do within its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Run sessions, submit input, read logs, decide approvals.
    Operator,
    /// Everything an operator may, plus manage agents, keys and policies.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Whether `name` can name a tenant: 1–64 of `a-z 0-9 - _`.
pub fn is_tenant_name(name: &str) -> bool {
    crate::spec::is_agent_name(name)
}

/// The authenticated maker of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    /// An API key.
    Key { tenant: String, key_id: KeyId, name: String, role: Role },
    /// A session using its own credential: may read only its own session.
    Session { tenant: String, agent: String, session_id: SessionId },
    /// `serve --dev`: authentication is off and every request acts as an
    /// admin of the default tenant.
    Dev,
}

impl Principal {
    /// The tenant whose objects this principal sees.
    pub fn tenant(&self) -> &str {
        match self {
            Principal::Key { tenant, .. } | Principal::Session { tenant, .. } => tenant,
            Principal::Dev => DEFAULT_TENANT,
        }
    }

    /// The role of a key (`Dev` counts as admin); `None` for a session.
    pub fn role(&self) -> Option<Role> {
        match self {
            Principal::Key { role, .. } => Some(*role),
            Principal::Dev => Some(Role::Admin),
            Principal::Session { .. } => None,
        }
    }

    /// Whether the principal has at least `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.role().is_some_and(|r| r >= role)
    }

    /// An admin of the default tenant: manages tenants and node-wide data.
    pub fn is_system_admin(&self) -> bool {
        self.has_role(Role::Admin) && self.tenant() == DEFAULT_TENANT
    }

    /// How the principal is recorded in events (e.g. an approver).
    pub fn display(&self) -> String {
        match self {
            Principal::Key { tenant, key_id, name, .. } => format!("key:{key_id} ({name}) of tenant {tenant}"),
            Principal::Session { agent, session_id, .. } => session_principal(agent, session_id),
            Principal::Dev => "dev (authentication off)".into(),
        }
    }
}

/// The principal name of a session: `agent:{name}/session:{id}`.
pub fn session_principal(agent: &str, session: &SessionId) -> String {
    format!("agent:{agent}/session:{session}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_and_tenant_admins() {
        let op = Principal::Key { tenant: "acme".into(), key_id: KeyId::generate(), name: "ci".into(), role: Role::Operator };
        assert!(op.has_role(Role::Operator) && !op.has_role(Role::Admin));
        let admin = Principal::Key { tenant: "acme".into(), key_id: KeyId::generate(), name: "a".into(), role: Role::Admin };
        assert!(admin.has_role(Role::Operator) && !admin.is_system_admin());
        assert!(Principal::Dev.is_system_admin());
        let s = Principal::Session { tenant: "acme".into(), agent: "bot".into(), session_id: SessionId::generate() };
        assert!(!s.has_role(Role::Operator));
        assert!(s.display().starts_with("agent:bot/session:ses_"));
    }
}
