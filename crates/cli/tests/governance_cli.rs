//! The governance commands end to end through the real binary: API keys and
//! tenants, revocation, Cedar policies, approvals, session credentials, and
//! audit export verified offline.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

const ASSISTANT: &str = "../../examples/agents/assistant.toml";

/// Runs `agentrt` against `url` as `key`; returns (exit code, stdout, stderr).
fn cli_as(args: &[&str], url: &str, key: &str) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).env("AGENTRT_URL", url).env("AGENTRT_API_KEY", key).output().expect("run agentrt");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `agentrt` as the server's admin with `stdin` piped in.
fn cli_stdin(args: &[&str], url: &str, stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("AGENTRT_URL", url)
        .env("AGENTRT_API_KEY", key_for(url).expect("a server this test started"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agentrt");
    child.stdin.take().expect("stdin piped").write_all(stdin.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait for agentrt");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `keys create` in text mode; returns (key id, secret).
fn create_key(url: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    let (code, out, err) = cli(&all, Some(url));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("shown only once"), "{out}");
    let secret = out.lines().map(str::trim).find(|l| l.starts_with("art_")).unwrap_or_else(|| panic!("no secret in {out}")).to_owned();
    let id = out.split_whitespace().find(|w| w.starts_with("key_")).unwrap_or_else(|| panic!("no key id in {out}")).to_owned();
    (id, secret)
}

#[tokio::test]
async fn an_operator_key_from_the_cli_authenticates_with_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (id, secret) = create_key(&server.url, &["--name", "ci runner", "--role", "operator"]);

    let (code, out, err) = cli_as(&["whoami"], &server.url, &secret);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("tenant:    default"), "{out}");
    assert!(out.contains("role:      operator"), "{out}");
    assert!(out.contains(&format!("key:{id} (ci runner)")), "{out}");
    let (code, out, _) = cli_as(&["--json", "whoami"], &server.url, &secret);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["principal"]["kind"].as_str(), v["principal"]["key_id"].as_str()), (Some("key"), Some(id.as_str())));

    let (code, out, err) = cli(&["keys", "list"], Some(&server.url));
    assert_eq!(code, 0, "{err}");
    let row = out.lines().find(|l| l.starts_with(&id)).unwrap_or_else(|| panic!("{id} not listed:\n{out}"));
    assert!(row.contains("ci runner") && row.contains("operator") && row.ends_with("active"), "{row}");

    // An operator may not make keys.
    let (code, out, err) = cli_as(&["keys", "create", "--name", "x", "--role", "admin"], &server.url, &secret);
    assert_ne!(code, 0, "{out}");
    assert!(err.starts_with("error: forbidden:") && err.contains("admin role"), "{err}");
}

#[tokio::test]
async fn a_new_tenants_admin_key_sees_only_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (code, out, err) = cli(&["tenants", "create", "acme"], Some(&server.url));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "tenant acme created");
    let (code, out, _) = cli(&["tenants", "list"], Some(&server.url));
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("acme ")), "{out}");

    let (id, secret) = create_key(&server.url, &["--name", "acme admin", "--role", "admin", "--tenant", "acme"]);
    let (code, out, _) = cli_as(&["whoami"], &server.url, &secret);
    assert_eq!(code, 0);
    assert!(out.contains("tenant:    acme") && out.contains("role:      admin"), "{out}");

    let (code, out, _) = cli_as(&["--json", "keys", "list"], &server.url, &secret);
    assert_eq!(code, 0);
    let keys: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = keys["keys"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str()], "acme sees only its own key");
    let (code, _, _) = cli(&["keys", "list", "--tenant", "acme"], Some(&server.url));
    assert_eq!(code, 0, "a default-tenant admin may list another tenant's keys");

    let (code, _, err) = cli_as(&["tenants", "list"], &server.url, &secret);
    assert_ne!(code, 0);
    assert!(err.contains("admin key of the default tenant"), "{err}");
}

#[tokio::test]
async fn a_revoked_key_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let (id, secret) = create_key(&server.url, &["--name", "laptop", "--role", "operator"]);
    let (code, _, err) = cli_as(&["whoami"], &server.url, &secret);
    assert_eq!(code, 0, "{err}");

    let (code, out, err) = cli(&["keys", "revoke", &id], Some(&server.url));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("key {id} (laptop) revoked"));

    let (code, out, err) = cli_as(&["whoami"], &server.url, &secret);
    assert_ne!(code, 0, "{out}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.trim(), "error: unauthorized: this API key has been revoked");
    let (code, out, _) = cli(&["keys", "list"], Some(&server.url));
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with(&id) && l.contains("revoked")), "{out}");
}

#[tokio::test]
async fn policies_round_trip_and_a_bad_one_shows_cedars_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let good = "@id(\"reads\")\npermit (principal, action == Action::\"clock.now\", resource);\n";
    let (code, out, err) = cli_stdin(&["policies", "put", "-"], &server.url, good);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "policies version 1 stored for tenant default");

    let bad = dir.path().join("bad.cedar");
    std::fs::write(&bad, "@id(\"p1\")\npermit (principal, action == Action::\"nope\", resource);\n").unwrap();
    let (code, out, err) = cli(&["policies", "put", bad.to_str().unwrap()], Some(&server.url));
    assert_ne!(code, 0, "{out}");
    assert!(err.starts_with("error: invalid_policy: "), "{err}");
    assert!(err.contains("for policy `p1`, unrecognized action `Action::\"nope\"`"), "{err}");

    // The bad upload left version 1 current.
    let (code, out, _) = cli(&["policies", "get"], Some(&server.url));
    assert_eq!(code, 0);
    assert_eq!(out, good);
    let (code, out, _) = cli(&["--json", "policies", "get", "--version", "1"], Some(&server.url));
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["version"].as_u64(), v["text"].as_str()), (Some(1), Some(good)));
    let (code, _, err) = cli(&["policies", "get", "--version", "2"], Some(&server.url));
    assert_ne!(code, 0);
    assert!(err.starts_with("error: not_found"), "{err}");

    let (code, out, _) = cli(&["policies", "schema"], Some(&server.url));
    assert_eq!(code, 0);
    assert!(out.contains("\"kv.set\""), "the schema declares the built-in tools:\n{out}");
}

#[tokio::test]
async fn approvals_are_listed_shown_and_decided() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.apply("assistant", &std::fs::read_to_string(ASSISTANT).unwrap()).await;
    let policies = dir.path().join("p.cedar");
    std::fs::write(
        &policies,
        "@id(\"reads\")\npermit (principal, action == Action::\"clock.now\", resource);\n\
         @id(\"writes\")\n@approval(\"writes need a human\")\npermit (principal, action == Action::\"kv.set\", resource);\n",
    )
    .unwrap();
    let (code, out, err) = cli(&["policies", "put", policies.to_str().unwrap()], Some(&server.url));
    assert_eq!(code, 0, "{out}{err}");

    let session = server.session("assistant").await;
    let turn = server.submit(&session, "remember the milk").await;
    let events = read_sse(&server.url, &session, None, 100, |e| e["type"] == "approval.requested").await;
    let approval = events.last().filter(|e| e["type"] == "approval.requested").expect("an approval was requested")["approval_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (code, out, err) = cli(&["approvals", "list", "--session", &session], Some(&server.url));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ID "), "{out}");
    let row = out.lines().find(|l| l.starts_with(&approval)).unwrap_or_else(|| panic!("{approval} not listed:\n{out}"));
    for cell in [session.as_str(), "kv.set", "writes need a human", "pending"] {
        assert!(row.contains(cell), "{cell:?} missing from {row}");
    }
    let (code, out, _) = cli(&["approvals", "show", &approval], Some(&server.url));
    assert_eq!(code, 0);
    assert!(out.contains("remember the milk") && out.contains("policies:  writes"), "{out}");

    let (code, out, err) = cli(&["approvals", "approve", &approval, "--comment", "fine"], Some(&server.url));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("approval {approval} approved: kv.set"));
    assert_eq!(server.wait_turn(&session, &turn).await["status"], "completed");

    let (code, _, err) = cli(&["approvals", "deny", &approval], Some(&server.url));
    assert_ne!(code, 0);
    assert!(err.starts_with("error: conflict:") && err.contains("already approved"), "{err}");
    let (code, out, _) = cli(&["approvals", "list"], Some(&server.url));
    assert_eq!(code, 0);
    assert!(!out.contains(&approval), "no longer pending:\n{out}");
    let (code, out, _) = cli(&["--json", "approvals", "list", "--status", "approved"], Some(&server.url));
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["approvals"][0]["comment"], "fine");
}

#[tokio::test]
async fn a_session_credential_is_printed_alone_and_reads_only_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.apply("assistant", &std::fs::read_to_string(ASSISTANT).unwrap()).await;
    let session = server.session("assistant").await;
    let (code, out, err) = cli(&["session", "credential", &session, "--ttl", "600"], Some(&server.url));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "only the token: {out}");
    let token = out.trim();

    let (code, out, err) = cli_as(&["session", "get", &session], &server.url, token);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&session), "{out}");
    let (code, out, _) = cli_as(&["whoami"], &server.url, token);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("agent:assistant/session:{session}")) && out.contains("session credential"), "{out}");
    let (code, _, err) = cli_as(&["session", "list"], &server.url, token);
    assert_ne!(code, 0);
    assert!(err.starts_with("error: forbidden"), "{err}");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn an_exported_audit_log_verifies_offline_until_one_byte_changes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    server.apply("assistant", &std::fs::read_to_string(ASSISTANT).unwrap()).await;
    let session = server.session("assistant").await;
    let turn = server.submit(&session, "remember the milk").await;
    assert_eq!(server.wait_turn(&session, &turn).await["status"], "completed");
    // A `--since` that falls between the two turns: wait for the clock to
    // pass the first turn's last event.
    let last_ts = server.events(&session).await.last().unwrap()["ts"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while now_ms() <= last_ts {
        assert!(std::time::Instant::now() < deadline, "the clock does not advance");
        std::thread::yield_now();
    }
    let since = now_ms();
    let first_turn_events = server.events(&session).await.len();
    let turn = server.submit(&session, "and the eggs").await;
    assert_eq!(server.wait_turn(&session, &turn).await["status"], "completed");
    let n = server.events(&session).await.len();
    let other = server.session("assistant").await;
    let m = server.events(&other).await.len();

    let file = dir.path().join("audit.jsonl");
    let path = file.to_str().unwrap();
    let (code, out, err) = cli(&["audit", "export", "--session", &session, "--output", path], Some(&server.url));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("exported {n} event(s) of 1 session(s)")), "{out}");
    let (code, out, err) = cli(&["audit", "verify", "--file", path], None);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("ok      {session}  events 1..{n}"));

    // Every session, to stdout; verified together with the first file,
    // whose records it repeats.
    let (code, all, err) = cli(&["audit", "export"], Some(&server.url));
    assert_eq!(code, 0, "{err}");
    assert_eq!(all.lines().count(), n + m, "{all}");
    let all_file = dir.path().join("all.jsonl");
    std::fs::write(&all_file, &all).unwrap();
    let (code, out, err) = cli(&["audit", "verify", "--file", path, "--file", all_file.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("ok      {other}  events 1..{m}")), "{out}");

    // The second turn alone verifies from its first record's prev_hash.
    let tail_file = dir.path().join("tail.jsonl");
    let since = since.to_string();
    let tail_args = ["audit", "export", "--session", &session, "--since", &since, "-o", tail_file.to_str().unwrap()];
    let (code, out, err) = cli(&tail_args, Some(&server.url));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&["audit", "verify", "--file", tail_file.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("ok      {session}  events {}..{n}", first_turn_events + 1));

    // Change one digit of event 5's timestamp.
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let line = &mut lines[4];
    let ts = line.find("\"event\":").and_then(|e| line[e..].find("\"ts\":").map(|t| e + t + 5)).expect("event 5 has a ts");
    let digit = line.as_bytes()[ts];
    assert!(digit.is_ascii_digit(), "{line}");
    line.replace_range(ts..ts + 1, &((digit - b'0' + 1) % 10).to_string());
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let (code, out, err) = cli(&["audit", "verify", "--file", path], None);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out.trim(), format!("BROKEN  {session}  event 5: content does not match its hash (event was modified)"));
    assert!(err.starts_with("error: "), "{err}");

    // A line that is not a record is named by its line number.
    std::fs::write(&all_file, format!("{all}not a record\n")).unwrap();
    let (code, out, _) = cli(&["audit", "verify", "--file", all_file.to_str().unwrap()], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("BROKEN  {}:{}  not an audit record", all_file.display(), n + m + 1)), "{out}");
}
