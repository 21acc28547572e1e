//! `agentrt audit verify`: checks the hash chain of session logs, either in
//! a data dir directly (works with the server stopped) or through a server.

use std::path::PathBuf;
use std::process::ExitCode;

use agentrt_store::sqlite::SqliteStore;
use agentrt_store::{SessionFilter, Store};
use agentrt_types::event::verify_chain_to;
use agentrt_types::SessionId;
use anyhow::{anyhow, Context};
use clap::Subcommand;

use crate::commands::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of one session, or of every session.
    Verify {
        session: Option<String>,
        /// Read the store in this data dir directly instead of asking the server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

pub async fn audit(ctx: &Ctx, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify { session, data_dir } = cmd;
    let results: Vec<(String, Result<u64, String>)> = match data_dir {
        Some(dir) => verify_local(&dir, session.as_deref()).await?,
        None => verify_remote(ctx, session.as_deref()).await?,
    };
    let mut broken = 0;
    for (id, r) in &results {
        match r {
            Ok(n) => output::line(&format!("ok      {id}  {n} events")),
            Err(e) => {
                broken += 1;
                output::line(&format!("BROKEN  {id}  {e}"));
            }
        }
    }
    if broken > 0 {
        output::error(&format!("{broken} of {} session log(s) failed verification", results.len()));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify_local(dir: &std::path::Path, session: Option<&str>) -> anyhow::Result<Vec<(String, Result<u64, String>)>> {
    let db = dir.join("agentrt.db");
    if !db.exists() {
        return Err(anyhow!("no agentrt store at {}", db.display()));
    }
    let store = SqliteStore::open(&db).with_context(|| format!("open {}", db.display()))?;
    let ids = match session {
        Some(raw) => vec![SessionId::parse(raw).ok_or_else(|| anyhow!("{raw:?} is not a session id"))?],
        None => {
            let mut ids = Vec::new();
            let mut before = None;
            loop {
                let page = store.list_sessions(&SessionFilter { before: before.clone(), limit: 500, ..Default::default() }).await?;
                let Some(last) = page.last() else { break };
                before = Some(last.id.clone());
                ids.extend(page.into_iter().map(|s| s.id));
            }
            ids
        }
    };
    let mut out = Vec::new();
    for id in ids {
        let session = store.get_session(&id).await?.ok_or_else(|| anyhow!("session {id} not found"))?;
        let records = store.read_records(&id).await?;
        out.push((id.to_string(), verify_chain_to(records, session.last_seq).map_err(|e| e.to_string())));
    }
    Ok(out)
}

async fn verify_remote(ctx: &Ctx, session: Option<&str>) -> anyhow::Result<Vec<(String, Result<u64, String>)>> {
    let c = ctx.client()?;
    let ids: Vec<String> = match session {
        Some(id) => vec![id.to_owned()],
        None => {
            let mut ids = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let path = match &cursor {
                    Some(cur) => format!("/v1/sessions?limit=500&cursor={cur}"),
                    None => "/v1/sessions?limit=500".to_owned(),
                };
                let page = c.get(&path).await?;
                for s in page["sessions"].as_array().into_iter().flatten() {
                    ids.push(s["id"].as_str().unwrap_or_default().to_owned());
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_owned()),
                    None => break,
                }
            }
            ids
        }
    };
    let mut out = Vec::new();
    for id in ids {
        let v = c.get(&format!("/v1/sessions/{id}/verify")).await?;
        let r =
            if v["ok"] == true { Ok(v["events"].as_u64().unwrap_or(0)) } else { Err(v["error"].as_str().unwrap_or("broken").to_owned()) };
        out.push((id, r));
    }
    Ok(out)
}
