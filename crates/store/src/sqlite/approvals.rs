//! The approvals projection: one row per `approval.requested`, kept in step
//! with `approval.decided` and with the end of its turn, inside the same
//! transaction as the events (so it never disagrees with the log).

use agentrt_types::{ApprovalId, Event, EventData, SessionId};
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::schema::db;
use super::writer::to_json;
use crate::{Approval, ApprovalFilter, ApprovalStatus, StoreError};

/// Applies one appended event of a session of `tenant`.
pub fn apply(tx: &Transaction<'_>, tenant: &str, event: &Event) -> Result<(), StoreError> {
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
            tx.prepare_cached(
                "INSERT INTO approvals (id, tenant, session_id, turn_id, status, summary) VALUES (?1, ?2, ?3, ?4, 'pending', ?5)",
            )
            .map_err(db)?
            .execute(params![approval_id.as_str(), tenant, approval.session_id.as_str(), turn_id.as_str(), to_json(&approval)?])
            .map_err(db)?;
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
            let pending: Vec<String> = {
                let mut stmt = tx
                    .prepare_cached("SELECT summary FROM approvals WHERE session_id = ?1 AND turn_id = ?2 AND status = 'pending'")
                    .map_err(db)?;
                let rows = stmt.query_map(params![event.body.session_id.as_str(), turn.as_str()], |r| r.get(0)).map_err(db)?;
                rows.collect::<Result<_, _>>().map_err(db)?
            };
            for text in pending {
                let mut approval: Approval = parse(&text)?;
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
pub fn check_pending(tx: &Transaction<'_>, session: &SessionId, id: &ApprovalId) -> Result<(), StoreError> {
    match get(tx, id)? {
        Some(a) if &a.session_id == session && a.status == ApprovalStatus::Pending => Ok(()),
        Some(a) => Err(StoreError::PreconditionFailed(format!("approval {id} is already {}", a.status.as_str()))),
        None => Err(StoreError::PreconditionFailed(format!("approval {id} not found"))),
    }
}

fn save(tx: &Transaction<'_>, a: &Approval) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE approvals SET status = ?2, summary = ?3 WHERE id = ?1")
        .map_err(db)?
        .execute(params![a.id.as_str(), a.status.as_str(), to_json(a)?])
        .map_err(db)?;
    Ok(())
}

/// One approval by id (a transaction is a connection too).
pub fn get(conn: &Connection, id: &ApprovalId) -> Result<Option<Approval>, StoreError> {
    let text: Option<String> =
        conn.query_row("SELECT summary FROM approvals WHERE id = ?1", params![id.as_str()], |r| r.get(0)).optional().map_err(db)?;
    text.map(|t| parse(&t)).transpose()
}

fn parse(text: &str) -> Result<Approval, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("approval: {e}")))
}

/// A tenant's approvals, newest first.
pub fn list(conn: &Connection, f: &ApprovalFilter) -> Result<Vec<Approval>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT summary FROM approvals WHERE tenant = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR session_id = ?3)
             ORDER BY id DESC LIMIT ?4",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![f.tenant, f.status.map(|s| s.as_str()), f.session.as_ref().map(|s| s.as_str()), f.limit as i64], |r| {
            r.get::<_, String>(0)
        })
        .map_err(db)?;
    rows.map(|r| parse(&r.map_err(db)?)).collect()
}
