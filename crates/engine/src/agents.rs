//! Loaded agent versions: spec, model provider and tool set, built once per
//! `(tenant, name, version)` and shared by every turn pinned to that version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentrt_model::ModelProvider;
use agentrt_store::AgentVersion;
use agentrt_tools::ToolSet;

/// An agent version ready to run.
pub struct LoadedAgent {
    pub version: AgentVersion,
    /// `Err` holds why the provider could not be built (e.g. a missing API
    /// key); turns of this agent fail with that message.
    pub provider: Result<Arc<dyn ModelProvider>, String>,
    pub tools: ToolSet,
    /// Retries, rate limits and breakers, shared by the version's sessions.
    pub router: agentrt_tools::router::ToolRouter,
}

/// Cache of loaded agents.
#[derive(Default)]
pub struct AgentCache {
    loaded: Mutex<HashMap<(String, String, u32), Arc<LoadedAgent>>>,
}

impl AgentCache {
    pub fn get(&self, tenant: &str, name: &str, version: u32) -> Option<Arc<LoadedAgent>> {
        self.loaded.lock().expect("agent cache lock poisoned").get(&(tenant.to_owned(), name.to_owned(), version)).cloned()
    }

    pub fn insert(&self, tenant: &str, agent: LoadedAgent) -> Arc<LoadedAgent> {
        let key = (tenant.to_owned(), agent.version.name.clone(), agent.version.version);
        let agent = Arc::new(agent);
        self.loaded.lock().expect("agent cache lock poisoned").insert(key, agent.clone());
        agent
    }
}
