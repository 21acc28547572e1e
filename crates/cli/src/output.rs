//! Everything the CLI prints goes through here.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;

use serde_json::Value;

// Writes ignore errors: a closed pipe (`agentrt … | head`) is not a crash.

/// Prints one line to stdout.
pub fn line(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Prints text to stdout without a newline and flushes.
pub fn partial(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{text}");
    let _ = out.flush();
}

/// Prints a JSON value, pretty.
pub fn json(v: &Value) {
    line(&serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// Prints one JSON value on one line (for streams).
pub fn json_line(v: &Value) {
    line(&v.to_string());
}

/// Prints an error line to stderr.
pub fn error(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "error: {text}");
}

/// Prints a table with a header row; columns padded to fit.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let fmt = |cells: Vec<String>| -> String {
        cells.iter().enumerate().map(|(i, c)| format!("{:<w$}", c, w = widths[i])).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    line(&fmt(header.iter().map(|s| s.to_string()).collect()));
    for r in rows {
        line(&fmt(r.clone()));
    }
}
