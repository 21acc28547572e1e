//! Human-readable rendering of events, sessions and turns.

use serde_json::Value;

fn short(v: &Value, max: usize) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.chars().count() <= max {
        s
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// One line describing an event, for `session events`.
pub fn event_line(e: &Value) -> String {
    let seq = e["seq"].as_u64().unwrap_or(0);
    let kind = e["type"].as_str().unwrap_or("?");
    let detail = match kind {
        "session.created" => format!("agent {} v{}", short(&e["agent"], 40), e["agent_version"]),
        "turn.submitted" => format!("{} {}", short(&e["turn_id"], 40), short(&e["input"], 80)),
        "model.requested" => format!("step {} {}/{}", e["step"], short(&e["provider"], 20), short(&e["model"], 40)),
        "model.completed" => {
            let calls = e["tool_calls"].as_array().map(|a| a.len()).unwrap_or(0);
            format!(
                "step {} {} tokens in/{} out, {} tool call(s)",
                e["step"], e["usage"]["input_tokens"], e["usage"]["output_tokens"], calls
            )
        }
        "tool.requested" => format!("step {} {}({})", e["step"], short(&e["tool"], 40), short(&e["arguments"], 80)),
        "tool.completed" => {
            format!("step {} {} {} {}", e["step"], short(&e["tool"], 40), short(&e["outcome"], 10), short(&e["output"], 80))
        }
        "message" => short(&e["content"], 120),
        "turn.completed" => format!("{} steps", e["steps"]),
        "turn.failed" => format!("{}: {}", short(&e["code"], 40), short(&e["message"], 100)),
        "policy.decided" => format!("{} {} by {}", short(&e["tool"], 40), short(&e["decision"], 20), policies(e)),
        "approval.requested" => format!(
            "{} {}({}): {}",
            short(&e["approval_id"], 40),
            short(&e["tool"], 40),
            short(&e["arguments"], 60),
            short(&e["reason"], 60)
        ),
        "approval.decided" => format!("{} {} by {}", short(&e["approval_id"], 40), short(&e["decision"], 20), short(&e["approver"], 60)),
        "turn.cancelled" | "turn.cancel_requested" | "session.terminated" => short(&e["reason"], 100),
        _ => String::new(),
    };
    format!("{seq:>5}  {kind:<22} {detail}")
}

/// The deciding policies of a `policy.decided` event.
fn policies(e: &Value) -> String {
    match e["policies"].as_array().map(|p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>()) {
        Some(ids) if !ids.is_empty() => ids.join(", "),
        _ => "the default".into(),
    }
}

/// What `session send --follow` and `run` show for an event, if anything.
pub fn progress_line(e: &Value) -> Option<String> {
    match e["type"].as_str()? {
        "tool.requested" => Some(format!("  → {}({})", short(&e["tool"], 40), short(&e["arguments"], 100))),
        "tool.completed" => {
            let mark = if e["outcome"] == "ok" { "←" } else { "✗" };
            Some(format!("  {mark} {} {}", short(&e["tool"], 40), short(&e["output"], 100)))
        }
        "turn.failed" => Some(format!("turn failed: {}: {}", short(&e["code"], 40), short(&e["message"], 200))),
        "turn.cancelled" => Some(format!("turn cancelled: {}", short(&e["reason"], 200))),
        "approval.requested" => Some(format!(
            "  ⏸ {}({}) waits for approval {} ({}); decide with: agentrt approvals approve|deny {}",
            short(&e["tool"], 40),
            short(&e["arguments"], 80),
            short(&e["approval_id"], 40),
            short(&e["reason"], 80),
            short(&e["approval_id"], 40)
        )),
        "approval.decided" => {
            Some(format!("  {} {} by {}", short(&e["decision"], 20), short(&e["approval_id"], 40), short(&e["approver"], 60)))
        }
        _ => None,
    }
}

/// Rows of `session list`.
pub fn session_row(s: &Value) -> Vec<String> {
    vec![
        short(&s["id"], 40),
        format!("{} v{}", short(&s["agent"], 30), s["agent_version"]),
        short(&s["status"], 16),
        s["turn_count"].to_string(),
        format!("{}", s["usage"]["input_tokens"].as_u64().unwrap_or(0) + s["usage"]["output_tokens"].as_u64().unwrap_or(0)),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn governance_events_say_who_decided_and_how_to_decide() {
        let decided = json!({"seq": 7, "type": "policy.decided", "tool": "pay", "decision": "forbid", "policies": ["no-big"]});
        assert!(event_line(&decided).contains("pay forbid by no-big"), "{}", event_line(&decided));
        let by_default = json!({"seq": 8, "type": "policy.decided", "tool": "pay", "decision": "forbid", "policies": []});
        assert!(event_line(&by_default).contains("by the default"));
        let waiting =
            json!({"type": "approval.requested", "approval_id": "apr_1", "tool": "pay", "arguments": {"amount": 5}, "reason": "big"});
        let line = progress_line(&waiting).unwrap();
        assert!(line.contains("waits for approval apr_1") && line.contains("agentrt approvals approve|deny apr_1"), "{line}");
    }
}
