//! The approvals projection: one row per `approval.requested`, kept in step
//! with `approval.decided` and with the end of its turn, inside the same
//! transaction as the events (so it never disagrees with the log).

use agentrt_types::{ApprovalId, Event, EventData, SessionId};

use super::{args, parse, to_json, Db};
use crate::{Approval, ApprovalFilter, ApprovalStatus, StoreError};

/// Applies one appended event of a session of `tenant`.
pub fn apply(tx: &dyn Db, tenant: &str, event: &Event) -> Result<(), StoreError> {
    let ts = event.body.ts;
    match &event.body.data {
        EventData::ApprovalRequested { approval_id, turn_id, call_id, tool, arguments, reason, policies, expires_ms, .. } => {
            let approval = Approval {
                id: approval_id.clone(),
                tenant: tenant.to_owned(),
                session_id: event.body.session_id.clone(),
                turn_id: turn_id.clone(),
                call_id: call_id.clone(),
                tool: tool.clone(),
                arguments: arguments.clone(),
                reason: reason.clone(),
                policies: policies.clone(),
                status: ApprovalStatus::Pending,
                requested_ms: ts,
                expires_ms: *expires_ms,
                decided_ms: None,
                approver: None,
                comment: None,
            };
            tx.exec(
                "INSERT INTO approvals (id, tenant, session_id, turn_id, status, summary) VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
                args![approval_id.as_str(), tenant, approval.session_id.as_str(), turn_id.as_str(), to_json(&approval)?],
            )?;
        }
        EventData::ApprovalDecided { approval_id, decision, approver, comment, .. } => {
            let Some(mut approval) = get(tx, approval_id)? else {
                return Err(StoreError::PreconditionFailed(format!("approval {approval_id} was never requested")));
            };
            approval.status = (*decision).into();
            approval.decided_ms = Some(ts);
            approval.approver = Some(approver.clone());
            approval.comment = comment.clone();
            save(tx, &approval)?;
        }
        d if d.ends_turn() => {
            let turn = d.turn_id().expect("turn-ending events name their turn");
            let pending = tx.rows(
                "SELECT summary FROM approvals WHERE session_id = ?1 AND turn_id = ?2 AND status = 'pending'",
                args![event.body.session_id.as_str(), turn.as_str()],
            )?;
            for row in pending {
                let mut approval: Approval = parse(&row.text(0)?, "approval")?;
                approval.status = ApprovalStatus::Cancelled;
                approval.decided_ms = Some(ts);
                save(tx, &approval)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Refuses unless the approval exists in this session and is pending.
pub fn check_pending(tx: &dyn Db, session: &SessionId, id: &ApprovalId) -> Result<(), StoreError> {
    match get(tx, id)? {
        Some(a) if &a.session_id == session && a.status == ApprovalStatus::Pending => Ok(()),
        Some(a) => Err(StoreError::PreconditionFailed(format!("approval {id} is already {}", a.status.as_str()))),
        None => Err(StoreError::PreconditionFailed(format!("approval {id} not found"))),
    }
}

fn save(tx: &dyn Db, a: &Approval) -> Result<(), StoreError> {
    tx.exec("UPDATE approvals SET status = ?2, summary = ?3 WHERE id = ?1", args![a.id.as_str(), a.status.as_str(), to_json(a)?])?;
    Ok(())
}

/// One approval by id.
pub fn get(conn: &dyn Db, id: &ApprovalId) -> Result<Option<Approval>, StoreError> {
    conn.text("SELECT summary FROM approvals WHERE id = ?1", args![id.as_str()])?.map(|t| parse(&t, "approval")).transpose()
}

/// A tenant's approvals, newest first.
pub fn list(conn: &dyn Db, f: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
    let rows = conn.rows(
        "SELECT summary FROM approvals WHERE tenant = ?1 AND (CAST(?2 AS TEXT) IS NULL OR status = ?2) AND (CAST(?3 AS TEXT) IS NULL OR session_id = ?3)
         ORDER BY id DESC LIMIT ?4",
        args![f.tenant.as_str(), f.status.map(|s| s.as_str()), f.session.as_ref().map(|s| s.as_str()), f.limit],
    )?;
    rows.iter().map(|r| parse(&r.text(0)?, "approval")).collect()
}
