//! `agentrt audit …`: check the hash chain of session logs — in a data dir
//! directly (works with the server stopped), through a server, or in
//! exported JSON Lines files offline — and export logs with their chain.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use agentrt_store::sqlite::SqliteStore;
use agentrt_store::{SessionFilter, Store};
use agentrt_types::event::{verify_chain_to, verify_segment, AuditRecord, StoredRecord};
use agentrt_types::SessionId;
use anyhow::{anyhow, Context};
use clap::Subcommand;

use crate::client::Client;
use crate::commands::Ctx;
use crate::output;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of one session, or of every session.
    Verify {
        session: Option<String>,
        /// Read the store in this data dir directly instead of asking the server.
        #[arg(long, conflicts_with = "file")]
        data_dir: Option<PathBuf>,
        /// Verify an `audit export` file offline (repeatable; records of a
        /// session may be spread over several files).
        #[arg(long = "file", value_name = "FILE", conflicts_with = "session")]
        file: Vec<PathBuf>,
    },
    /// Export session logs with their hash chain as JSON Lines.
    Export {
        /// Only this session [default: every session of your tenant].
        #[arg(long)]
        session: Option<String>,
        /// Start at the first event at or after this time: RFC 3339 (UTC
        /// unless it has an offset) or unix milliseconds.
        #[arg(long)]
        since: Option<String>,
        /// Write to FILE instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

pub async fn audit(ctx: &Ctx, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let (session, data_dir, files) = match cmd {
        AuditCommand::Export { session, since, output } => return export(ctx, session, since.as_deref(), output.as_deref()).await,
        AuditCommand::Verify { session, data_dir, file } => (session, data_dir, file),
    };
    if !files.is_empty() {
        return verify_files(&files);
    }
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
    let ids = match session {
        Some(id) => vec![id.to_owned()],
        None => session_ids(&c).await?,
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

/// Every session of the caller's tenant, paging through `GET /v1/sessions`.
async fn session_ids(c: &Client) -> anyhow::Result<Vec<String>> {
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
            None => return Ok(ids),
        }
    }
}

/// A time given on the command line: unix milliseconds, or an RFC 3339
/// time. humantime reads only UTC, so a trailing `±HH:MM` offset is
/// applied here.
pub(crate) fn parse_time(raw: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = raw.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || anyhow!("time {raw:?} is neither unix milliseconds nor an RFC 3339 time like 2025-01-31T12:00:00Z");
    let split = raw.len().checked_sub(6).and_then(|i| Some((raw.get(..i)?, raw.get(i..)?.as_bytes())));
    let (base, offset_s) = match split {
        Some((base, &[sign @ (b'+' | b'-'), h1, h2, b':', m1, m2])) => {
            let digits = [h1, h2, m1, m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let [h1, h2, m1, m2] = digits.map(|d| i64::from(d - b'0'));
            let offset = (h1 * 10 + h2) * 3600 + (m1 * 10 + m2) * 60;
            (base, if sign == b'-' { -offset } else { offset })
        }
        _ => (raw, 0),
    };
    let t = humantime::parse_rfc3339_weak(base).map_err(|_| bad())?;
    let ms = t.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_millis() as i64;
    Ok(ms - offset_s * 1000)
}

async fn export(ctx: &Ctx, session: Option<String>, since: Option<&str>, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let since = since.map(parse_time).transpose()?;
    let c = ctx.client()?;
    let ids = match session {
        Some(id) => vec![id],
        None => session_ids(&c).await?,
    };
    // Into a temp file renamed at the end, so a failed export leaves no
    // half file that looks complete.
    let mut file = match out {
        Some(path) => {
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".partial");
            let tmp = PathBuf::from(tmp);
            let f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
            Some((tmp, std::io::BufWriter::new(f)))
        }
        None => None,
    };
    let mut events = 0;
    for id in &ids {
        let path = match since {
            Some(ms) => format!("/v1/sessions/{id}/audit?since={ms}"),
            None => format!("/v1/sessions/{id}/audit"),
        };
        let text = c.get_text(&path).await.with_context(|| format!("export session {id}"))?;
        events += text.lines().filter(|l| !l.trim().is_empty()).count();
        match &mut file {
            Some((tmp, w)) => w.write_all(text.as_bytes()).with_context(|| format!("write {}", tmp.display()))?,
            None => output::partial(&text),
        }
    }
    if let (Some((tmp, w)), Some(path)) = (file, out) {
        w.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all()).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        output::line(&format!("exported {events} event(s) of {} session(s) to {}", ids.len(), path.display()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Verifies exported files: records grouped by session and sorted by seq,
/// each session's run checked with [`verify_segment`].
fn verify_files(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut sessions: BTreeMap<String, Vec<StoredRecord>> = BTreeMap::new();
    let mut bad_lines = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<AuditRecord>(line) {
                Ok(r) => sessions.entry(r.session_id.to_string()).or_default().push(r.into_stored()),
                Err(e) => bad_lines.push(format!("{}:{}  not an audit record: {e}", path.display(), i + 1)),
            }
        }
    }
    if sessions.is_empty() && bad_lines.is_empty() {
        return Err(anyhow!("no audit records in the given file(s)"));
    }
    for line in &bad_lines {
        output::line(&format!("BROKEN  {line}"));
    }
    let mut broken = bad_lines.len();
    for (id, mut records) in sessions {
        records.sort_by_key(|r| r.seq);
        // The same record exported twice (overlapping exports) is not a break.
        records.dedup_by(|a, b| a.seq == b.seq && a.hash == b.hash && a.prev_hash == b.prev_hash && a.body_text == b.body_text);
        match verify_segment(records) {
            Ok((first, last)) => output::line(&format!("ok      {id}  events {first}..{last}")),
            Err(e) => {
                broken += 1;
                output::line(&format!("BROKEN  {id}  {e}"));
            }
        }
    }
    if broken > 0 {
        output::error(&format!("{broken} problem(s) found in the exported audit log"));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn since_takes_unix_ms_or_rfc3339() {
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("2023-11-14T23:13:20+01:00").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("2023-11-14T21:43:20.5-00:30").unwrap(), 1_700_000_000_500);
        assert!(parse_time("yesterday").is_err());
    }
}
