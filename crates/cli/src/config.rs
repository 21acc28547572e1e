//! Server configuration, layered: built-in defaults → TOML file
//! (`--config`) → `AGENTRT_*` environment variables → command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentrt_store::sqlite::Durability;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The effective server configuration (`agentrt config dump` prints it).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Directory holding the SQLite database (unless `store` says
    /// otherwise), sandbox workspaces and the lock file.
    pub data_dir: PathBuf,
    /// Where sessions are stored: empty for SQLite in `data-dir`, or a
    /// PostgreSQL URL (`postgres://user:password@host:5432/db`).
    pub store: String,
    /// `text` or `json` log lines on stderr.
    pub log_format: LogFormat,
    /// This node's name (lease holder); generated when empty.
    pub node_id: String,
    /// Seconds a session lease lasts without renewal.
    pub lease_ttl_seconds: u64,
    /// Largest turn input accepted, in bytes.
    pub max_input_bytes: usize,
    /// Seconds between SSE heartbeat comments.
    pub sse_heartbeat_seconds: u64,
    /// Timeout for model and HTTP tool requests, in seconds.
    pub http_timeout_seconds: u64,
    /// `fsync` (every commit survives power loss) or `os-buffered`
    /// (survives a crash of agentrt; faster; the last commits can be lost
    /// on power loss).
    pub store_durability: Durability,
    /// OTLP endpoint for traces (e.g. `http://127.0.0.1:4318`); empty = off
    /// unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    pub otel_endpoint: String,
    /// `http/protobuf` or `grpc`; empty = `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else `http/protobuf`.
    pub otel_protocol: String,
    /// Put prompt/completion content and tool arguments/results on spans.
    pub otel_capture_content: bool,
    /// Let agents run stdio MCP servers as host processes.
    pub mcp_stdio_on_host: bool,
    /// `linux`, or `none` to turn sandboxes off.
    pub sandbox_driver: String,
    /// The in-sandbox agent program; empty = `agentrt-sandbox-agent` beside
    /// this binary, else this binary itself.
    pub sandbox_agent: String,
    /// First host uid sandbox root maps to (each session gets one of the
    /// 65536 from here on).
    pub sandbox_uid_base: u32,
    /// Where sandbox workspaces go so that they follow their session to
    /// another node (PostgreSQL `store` only): a directory every node
    /// shares (an absolute path or `file://` URL), or `s3://BUCKET/PREFIX`
    /// (credentials, region and endpoint from the `AWS_*` variables).
    /// Empty: workspaces stay on the node that made them.
    pub workspace_store: String,
    /// Authentication off, every request acting as an admin of the default
    /// tenant; refused unless `listen` is a loopback address. For trying
    /// agentrt out on one machine, never for production.
    pub dev_mode: bool,
    /// Decision for a tool call that no policy matches, in a tenant that
    /// has policies: `forbid` (Cedar's default) or `permit`.
    pub policy_default: agentrt_engine::governance::PolicyDefault,
    /// Model routes of the gateway, `[models.NAME]`; their prices also
    /// price the agent loop's calls to the same upstream model.
    pub models: std::collections::BTreeMap<String, agentrt_gateway::RouteSpec>,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7700".parse().expect("valid default address"),
            data_dir: default_data_dir(),
            store: String::new(),
            log_format: LogFormat::Text,
            node_id: String::new(),
            lease_ttl_seconds: 30,
            max_input_bytes: 256 * 1024,
            sse_heartbeat_seconds: 15,
            http_timeout_seconds: 300,
            store_durability: Durability::Fsync,
            otel_endpoint: String::new(),
            otel_protocol: String::new(),
            otel_capture_content: false,
            mcp_stdio_on_host: false,
            sandbox_driver: "linux".into(),
            sandbox_agent: String::new(),
            sandbox_uid_base: 200_000,
            workspace_store: String::new(),
            dev_mode: false,
            policy_default: agentrt_engine::governance::PolicyDefault::Forbid,
            models: Default::default(),
        }
    }
}

/// `$XDG_DATA_HOME/agentrt`, else `~/.local/share/agentrt`, else `./agentrt-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("agentrt");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/agentrt");
    }
    PathBuf::from("agentrt-data")
}

/// Values given on the command line or in the environment (they win).
#[derive(Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub store: Option<String>,
    pub log_format: Option<LogFormat>,
    pub dev_mode: bool,
}

/// A partial config file: every key optional.
#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    log_format: Option<LogFormat>,
    node_id: Option<String>,
    lease_ttl_seconds: Option<u64>,
    max_input_bytes: Option<usize>,
    sse_heartbeat_seconds: Option<u64>,
    http_timeout_seconds: Option<u64>,
    store_durability: Option<Durability>,
    otel_endpoint: Option<String>,
    otel_protocol: Option<String>,
    otel_capture_content: Option<bool>,
    mcp_stdio_on_host: Option<bool>,
    sandbox_driver: Option<String>,
    sandbox_agent: Option<String>,
    sandbox_uid_base: Option<u32>,
    workspace_store: Option<String>,
    dev_mode: Option<bool>,
    policy_default: Option<agentrt_engine::governance::PolicyDefault>,
    models: Option<std::collections::BTreeMap<String, agentrt_gateway::RouteSpec>>,
}

impl Config {
    /// Builds the effective config and validates it.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Config> {
        let mut c = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
            let f: FileConfig = toml::from_str(&text).with_context(|| format!("parse config file {}", path.display()))?;
            macro_rules! take {
                ($($field:ident),*) => { $(if let Some(v) = f.$field { c.$field = v; })* };
            }
            take!(
                listen,
                data_dir,
                store,
                log_format,
                node_id,
                lease_ttl_seconds,
                max_input_bytes,
                sse_heartbeat_seconds,
                http_timeout_seconds,
                store_durability,
                otel_endpoint,
                otel_protocol,
                otel_capture_content,
                mcp_stdio_on_host,
                sandbox_driver,
                sandbox_agent,
                sandbox_uid_base,
                workspace_store,
                dev_mode,
                policy_default,
                models
            );
        }
        c = c.with_env(std::env::vars())?;
        if let Some(v) = overrides.listen {
            c.listen = v;
        }
        if let Some(v) = overrides.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = overrides.store {
            c.store = v;
        }
        if let Some(v) = overrides.log_format {
            c.log_format = v;
        }
        c.dev_mode |= overrides.dev_mode;
        c.validate()?;
        Ok(c)
    }

    /// Applies `AGENTRT_<KEY>` variables, one per config key (`lease-ttl-seconds`
    /// is `AGENTRT_LEASE_TTL_SECONDS`). Values are read as TOML values, or as
    /// strings when they do not parse as one.
    fn with_env(self, vars: impl Iterator<Item = (String, String)>) -> anyhow::Result<Config> {
        let mut table = toml::Table::try_from(&self).context("serialize config")?;
        let known: Vec<String> = table.keys().cloned().collect();
        let mut changed = false;
        for (name, raw) in vars {
            let Some(rest) = name.strip_prefix("AGENTRT_") else { continue };
            let key = rest.to_ascii_lowercase().replace('_', "-");
            if !known.contains(&key) {
                continue;
            }
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            table.insert(key, value);
            changed = true;
        }
        if !changed {
            return Ok(self);
        }
        Config::deserialize(table).context("read AGENTRT_* environment variables")
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.dev_mode && !self.listen.ip().is_loopback() {
            bail!("dev mode turns authentication off, so it listens only on a loopback address (e.g. 127.0.0.1:7700), not {}", self.listen);
        }
        if self.lease_ttl_seconds < 3 {
            bail!("lease-ttl-seconds must be at least 3");
        }
        if self.max_input_bytes == 0 || self.max_input_bytes > agentrt_api::MAX_BODY_BYTES / 2 {
            bail!("max-input-bytes must be between 1 and {}", agentrt_api::MAX_BODY_BYTES / 2);
        }
        if self.sse_heartbeat_seconds == 0 {
            bail!("sse-heartbeat-seconds must be at least 1");
        }
        if !["", "grpc", "http/protobuf"].contains(&self.otel_protocol.as_str()) {
            bail!("otel-protocol must be \"grpc\" or \"http/protobuf\"");
        }
        if !["linux", "none"].contains(&self.sandbox_driver.as_str()) {
            bail!("sandbox-driver must be \"linux\" or \"none\"");
        }
        if self.sandbox_uid_base == 0 || self.sandbox_uid_base > u32::MAX - 65_536 {
            bail!("sandbox-uid-base must be between 1 and {}", u32::MAX - 65_536);
        }
        if self.http_timeout_seconds == 0 {
            bail!("http-timeout-seconds must be at least 1");
        }
        if !self.store.is_empty() && !agentrt_store::postgres::is_url(&self.store) {
            bail!("store must be empty (SQLite in data-dir) or a PostgreSQL URL such as postgres://user:password@host:5432/db");
        }
        if !self.workspace_store.is_empty() && self.store.is_empty() {
            bail!("workspace-store moves workspaces between nodes, which share a PostgreSQL store: set store too, or leave workspace-store empty");
        }
        let ws = self.workspace_store.as_str();
        if !(ws.is_empty() || ws.starts_with('/') || ws.starts_with("file:///") || ws.starts_with("s3://")) {
            bail!("workspace-store {ws:?} must be an absolute directory, a file:// URL or an s3:// URL");
        }
        Ok(())
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nlease-ttl-seconds = 10\nsandbox-driver = \"none\"\nsandbox-uid-base = 5000\n")
            .unwrap();
        let c = Config::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!((c.listen.port(), c.lease_ttl_seconds), (9000, 10));
        assert_eq!((c.sandbox_driver.as_str(), c.sandbox_uid_base), ("none", 5000));
        let o = Overrides { listen: Some("127.0.0.1:9001".parse().unwrap()), ..Default::default() };
        assert_eq!(Config::load(Some(&path), o).unwrap().listen.port(), 9001);
    }

    #[test]
    fn environment_sits_between_file_and_flags() {
        let env = vec![
            ("AGENTRT_LEASE_TTL_SECONDS".to_owned(), "12".to_owned()),
            ("AGENTRT_OTEL_CAPTURE_CONTENT".to_owned(), "true".to_owned()),
            ("AGENTRT_OTEL_ENDPOINT".to_owned(), "http://127.0.0.1:4318".to_owned()),
            ("AGENTRT_URL".to_owned(), "not a config key".to_owned()),
        ];
        let c = Config::default().with_env(env.into_iter()).unwrap();
        assert_eq!((c.lease_ttl_seconds, c.otel_capture_content), (12, true));
        assert_eq!(c.otel_endpoint, "http://127.0.0.1:4318");
        let bad = vec![("AGENTRT_LEASE_TTL_SECONDS".to_owned(), "soon".to_owned())];
        let err = format!("{:#}", Config::default().with_env(bad.into_iter()).unwrap_err());
        assert!(err.contains("AGENTRT_"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listn = \"x\"\n").unwrap();
        let err = format!("{:#}", Config::load(Some(&path), Overrides::default()).unwrap_err());
        assert!(err.contains("listn"), "{err}");
        std::fs::write(&path, "lease-ttl-seconds = 1\n").unwrap();
        assert!(Config::load(Some(&path), Overrides::default()).is_err());
    }
}
