//! Governance: each tenant's Cedar policies (versioned, validated on upload,
//! compiled once per version) and human approvals of tool calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentrt_policy::{Policies, ToolDecl};
use agentrt_store::{Approval, ApprovalFilter, ApprovalStatus, PolicyVersion, Precondition, StoreError};
use agentrt_types::event::{ApprovalDecision, AuditRecord, EventBody};
use agentrt_types::{ApprovalId, EventData, Principal, SessionId};
use serde::Deserialize;

use crate::{executor, Engine, EngineError, Inner};

/// What a tool call gets when the tenant has policies and none matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyDefault {
    Permit,
    /// Cedar's own default: deny unless a policy permits.
    #[default]
    Forbid,
}

/// A tenant's compiled policies, or why its stored version no longer compiles.
pub(crate) type Compiled = (u32, Result<Policies, String>);

/// Compiled policy versions, one per tenant.
#[derive(Default)]
pub struct PolicyCache {
    by_tenant: Mutex<HashMap<String, Arc<Compiled>>>,
}

/// Tool declarations every tenant's schema starts from: the built-in and sandbox tools.
fn builtin_decls() -> Vec<ToolDecl> {
    agentrt_tools::catalog()
        .into_iter()
        .map(|(def, server)| ToolDecl { name: def.name, server: server.into(), input_schema: def.input_schema })
        .collect()
}

fn compile(text: &str, schema: Option<&str>) -> Result<Policies, String> {
    Policies::compile(text, &builtin_decls(), schema).map_err(|e| e.to_string())
}

/// The tenant's current policies, compiled; `None` if it has none.
pub(crate) async fn tenant_policies(inner: &Inner, tenant: &str) -> Result<Option<Arc<Compiled>>, StoreError> {
    let Some(stored) = inner.store.get_policies(tenant, None).await? else {
        return Ok(None);
    };
    if let Some(c) = inner.policies.by_tenant.lock().expect("policy cache lock poisoned").get(tenant) {
        if c.0 == stored.version {
            return Ok(Some(c.clone()));
        }
    }
    let compiled = Arc::new((stored.version, compile(&stored.text, stored.schema.as_deref())));
    inner.policies.by_tenant.lock().expect("policy cache lock poisoned").insert(tenant.to_owned(), compiled.clone());
    Ok(Some(compiled))
}

impl Engine {
    /// Validates a policy set against the schema and stores it as the
    /// tenant's next version; later tool calls are decided by it.
    pub async fn put_policies(&self, by: &Principal, text: &str, schema: Option<&str>) -> Result<PolicyVersion, EngineError> {
        compile(text, schema).map_err(EngineError::InvalidPolicy)?;
        Ok(self.inner.store.put_policies(by.tenant(), text, schema, &by.display()).await?)
    }

    /// One version of the tenant's policies, or the latest.
    pub async fn get_policies(&self, tenant: &str, version: Option<u32>) -> Result<PolicyVersion, EngineError> {
        self.inner.store.get_policies(tenant, version).await?.ok_or_else(|| {
            EngineError::NotFound(match version {
                Some(v) => format!("policy version {v} not found"),
                None => "this tenant has no policies yet; every tool call is permitted".into(),
            })
        })
    }

    /// The Cedar schema policies are validated against, with an optional
    /// extra fragment (e.g. actions of MCP tools).
    pub fn policy_schema(&self, extra: Option<&str>) -> String {
        let mut text = agentrt_policy::schema_text(&builtin_decls());
        if let Some(extra) = extra {
            text.push_str("\n// Extra declarations\n");
            text.push_str(extra);
        }
        text
    }

    /// A session's log as audit records, from the first event at or after
    /// `since_ms` (all of it when `None`) to the end.
    pub async fn audit_records(&self, id: &SessionId, since_ms: Option<i64>) -> Result<Vec<AuditRecord>, EngineError> {
        let mut records = self.inner.store.read_records(id).await?;
        if let Some(since) = since_ms {
            let first = records.iter().position(|r| serde_json::from_str::<EventBody>(&r.body_text).map(|b| b.ts >= since).unwrap_or(true));
            records.drain(..first.unwrap_or(records.len()));
        }
        records
            .into_iter()
            .map(|r| AuditRecord::new(id, r).map_err(|e| EngineError::Internal(format!("stored event is not JSON: {e}"))))
            .collect()
    }

    /// Model usage totals, grouped.
    pub async fn usage(&self, query: &agentrt_store::UsageQuery) -> Result<Vec<agentrt_store::UsageRow>, EngineError> {
        Ok(self.inner.store.usage_summary(query).await?)
    }

    pub async fn list_approvals(&self, filter: &ApprovalFilter) -> Result<Vec<Approval>, EngineError> {
        Ok(self.inner.store.list_approvals(filter).await?)
    }

    /// An approval of the tenant; another tenant's is reported as not found.
    pub async fn get_approval(&self, tenant: &str, id: &ApprovalId) -> Result<Approval, EngineError> {
        match self.inner.store.get_approval(id).await? {
            Some(a) if a.tenant == tenant => Ok(a),
            _ => Err(EngineError::NotFound(format!("approval {id} not found"))),
        }
    }

    /// Records a human's decision on a pending approval and wakes the turn,
    /// which then runs or skips the call.
    pub async fn decide_approval(
        &self,
        by: &Principal,
        id: &ApprovalId,
        approve: bool,
        comment: Option<String>,
    ) -> Result<Approval, EngineError> {
        let approval = self.get_approval(by.tenant(), id).await?;
        if approval.status != ApprovalStatus::Pending {
            return Err(EngineError::Conflict(format!("approval {id} is already {}", approval.status.as_str())));
        }
        let decision = if approve { ApprovalDecision::Approved } else { ApprovalDecision::Denied };
        let event = EventData::ApprovalDecided {
            approval_id: id.clone(),
            turn_id: approval.turn_id.clone(),
            call_id: approval.call_id.clone(),
            decision,
            approver: by.display(),
            comment,
        };
        match self.client_append(&approval.session_id, Some(Precondition::ApprovalPending(id.clone())), vec![event.into()]).await {
            Ok(_) => {}
            Err(EngineError::Store(StoreError::PreconditionFailed(m))) => return Err(EngineError::Conflict(m)),
            Err(e) => return Err(e),
        }
        executor::ensure_running(&self.inner, &approval.session_id);
        self.get_approval(by.tenant(), id).await
    }
}
