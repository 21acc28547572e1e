//! The policy gate in front of every tool call, and the approvals it can
//! ask for. A requested call is decided by the tenant's policies when the
//! model asks for it, in the same append as the model's answer: permitted
//! calls get their intent, forbidden ones an error result naming the policy,
//! and calls that need approval an `approval.requested` — their intent is
//! journaled only once a human approves, so a call never runs unapproved.

use agentrt_policy::{Decision, ToolCallRequest, TurnState};
use agentrt_types::event::ApprovalDecision;
use agentrt_types::time::now_ms;
use agentrt_types::{ApprovalId, EventData, NewEvent, Outcome, ToolCall};
use serde_json::json;

use super::TurnRun;
use crate::governance::PolicyDefault;
use crate::history::GatedCall;

/// Who decides an approval that expired.
const EXPIRY_APPROVER: &str = "system:expiry";

impl TurnRun {
    /// The intent of a tool call.
    pub(super) fn requested(&self, step: u32, call: &ToolCall) -> NewEvent {
        EventData::ToolRequested {
            turn_id: self.turn.turn_id.clone(),
            step,
            call_id: call.id.clone(),
            tool: call.name.clone(),
            arguments: call.arguments.clone(),
            idempotent: self.agent().tools.is_idempotent(&call.name),
            idempotency_key: self.key(step),
        }
        .into()
    }

    /// A result for a call that never ran.
    pub(super) fn refused(&self, step: u32, call: &ToolCall, message: String) -> NewEvent {
        EventData::ToolCompleted {
            turn_id: self.turn.turn_id.clone(),
            step,
            call_id: call.id.clone(),
            tool: call.name.clone(),
            outcome: Outcome::Error,
            output: json!({ "error": message }),
            latency_us: 0,
            attempts: 0,
            sandbox_cpu_us: None,
        }
        .into()
    }

    /// What to journal for a call the model just asked for.
    pub(super) fn gate(&self, step: u32, call: &ToolCall) -> Vec<NewEvent> {
        let Some(compiled) = &self.policies else {
            return vec![self.requested(step, call)];
        };
        let (version, policies) = (compiled.0, &compiled.1);
        let decision = match policies {
            Ok(p) => p.decide(&ToolCallRequest {
                tenant: &self.tenant,
                agent: &self.agent_name,
                session_id: self.session.as_str(),
                tool: &call.name,
                server: &self.agent().tools.server_of(&call.name),
                arguments: &call.arguments,
                turn: TurnState {
                    steps: self.progress.steps_done as u64,
                    input_tokens: self.progress.usage.input_tokens,
                    output_tokens: self.progress.usage.output_tokens,
                },
                now_ms: now_ms(),
            }),
            Err(e) => Decision::Forbid { policies: vec![], reason: format!("policy version {version} no longer compiles: {e}") },
        };
        let (decision, default) = match decision {
            Decision::NoMatch => match self.inner.config.policy_default {
                PolicyDefault::Permit => (Decision::Permit { policies: vec![] }, true),
                PolicyDefault::Forbid => (
                    Decision::Forbid { policies: vec![], reason: "forbidden: no policy permits this call (the default is forbid)".into() },
                    true,
                ),
            },
            d => (d, false),
        };
        let (kind, policies, reason) = match &decision {
            Decision::Permit { policies } => ("permit", policies.clone(), None),
            Decision::Forbid { policies, reason } => ("forbid", policies.clone(), Some(reason.clone())),
            Decision::RequireApproval { policies, reason } => ("require_approval", policies.clone(), Some(reason.clone())),
            Decision::NoMatch => unreachable!("the default was applied above"),
        };
        let decided = EventData::PolicyDecided {
            turn_id: self.turn.turn_id.clone(),
            call_id: call.id.clone(),
            tool: call.name.clone(),
            decision: kind.into(),
            policies: policies.clone(),
            reason: reason.clone(),
            default,
            policy_version: version,
        };
        let then = match decision {
            Decision::Permit { .. } => self.requested(step, call),
            Decision::Forbid { policies, reason } => {
                // The policy crate's reasons name the deciding policies already.
                let message = if reason.starts_with("forbidden") || policies.is_empty() {
                    reason
                } else {
                    format!("forbidden by policy {}: {reason}", policies.join(", "))
                };
                self.refused(step, call, message)
            }
            _ => {
                let timeout = self.agent().version.spec.limits.approval_timeout_seconds;
                EventData::ApprovalRequested {
                    approval_id: ApprovalId::generate(),
                    turn_id: self.turn.turn_id.clone(),
                    step,
                    call_id: call.id.clone(),
                    tool: call.name.clone(),
                    arguments: call.arguments.clone(),
                    reason: reason.unwrap_or_default(),
                    policies,
                    expires_ms: timeout.map(|s| now_ms() + s as i64 * 1000),
                }
                .into()
            }
        };
        vec![decided.into(), then]
    }

    /// Events that settle gated calls whose approval was decided or has
    /// expired: an intent for an approved call, an error result otherwise.
    pub(super) fn settle_gated(&self) -> Vec<NewEvent> {
        let now = now_ms();
        let mut events = Vec::new();
        for g in &self.progress.gated {
            match &g.decision {
                Some((ApprovalDecision::Approved, _, _)) => events.push(self.requested(g.step, &g.call)),
                Some((decision, approver, comment)) => events.push(self.refused(g.step, &g.call, denial(*decision, approver, comment))),
                None if g.expires_ms.is_some_and(|at| at <= now) => {
                    events.push(self.expired(g));
                    events.push(self.refused(g.step, &g.call, denial(ApprovalDecision::Expired, EXPIRY_APPROVER, &None)));
                }
                None => {}
            }
        }
        events
    }

    fn expired(&self, g: &GatedCall) -> NewEvent {
        EventData::ApprovalDecided {
            approval_id: g.approval_id.clone(),
            turn_id: self.turn.turn_id.clone(),
            call_id: g.call.id.clone(),
            decision: ApprovalDecision::Expired,
            approver: EXPIRY_APPROVER.into(),
            comment: None,
        }
        .into()
    }

    /// When the earliest undecided approval expires, if any does.
    pub(super) fn next_expiry(&self) -> Option<i64> {
        self.progress.gated.iter().filter(|g| g.decision.is_none()).filter_map(|g| g.expires_ms).min()
    }
}

/// What the model is told about a call a human did not approve.
fn denial(decision: ApprovalDecision, approver: &str, comment: &Option<String>) -> String {
    let what = match decision {
        ApprovalDecision::Expired => "not approved in time: the approval request expired".to_owned(),
        _ => format!("denied by {approver}"),
    };
    match comment {
        Some(c) => format!("{what}: {c}"),
        None => what,
    }
}
