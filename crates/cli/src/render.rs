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
        "turn.cancelled" | "turn.cancel_requested" | "session.terminated" => short(&e["reason"], 100),
        _ => String::new(),
    };
    format!("{seq:>5}  {kind:<22} {detail}")
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
        _ => None,
    }
}

/// Rows of `session list`.
pub fn session_row(s: &Value) -> Vec<String> {
    vec![
        short(&s["id"], 40),
        format!("{} v{}", short(&s["agent"], 30), s["agent_version"]),
        short(&s["status"], 12),
        s["turn_count"].to_string(),
        format!("{}", s["usage"]["input_tokens"].as_u64().unwrap_or(0) + s["usage"]["output_tokens"].as_u64().unwrap_or(0)),
    ]
}
