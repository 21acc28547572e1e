//! The model gateway for code in a sandbox. The driver binds a Unix socket
//! for each sandbox in its run directory and hands it to the runtime's
//! [`GatewayBridge::serve`], which knows the session it belongs to; the
//! in-sandbox agent forwards a loopback TCP port to it. Code in the sandbox
//! finds the gateway in `OPENAI_BASE_URL` and holds no credential: the
//! socket is the credential.

use std::os::unix::net::UnixListener;
use std::sync::Arc;

/// Serves the gateway on a sandbox's socket for a session until aborted.
pub type ServeGateway = Arc<dyn Fn(String, UnixListener) -> tokio::task::AbortHandle + Send + Sync>;

/// How sandboxes reach the model gateway.
#[derive(Clone)]
pub struct GatewayBridge {
    /// The loopback port inside every sandbox.
    pub port: u16,
    pub serve: ServeGateway,
}

impl std::fmt::Debug for GatewayBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayBridge").field("port", &self.port).finish_non_exhaustive()
    }
}

impl GatewayBridge {
    /// What code in the sandbox is told: an OpenAI-compatible base URL and
    /// a placeholder key (SDKs insist on one; the socket is what counts).
    pub fn env(&self) -> Vec<(String, String)> {
        let url = format!("http://127.0.0.1:{}/v1", self.port);
        vec![
            ("OPENAI_BASE_URL".to_owned(), url.clone()),
            ("OPENAI_API_KEY".to_owned(), "agentrt-sandbox".to_owned()),
            ("AGENTRT_GATEWAY_URL".to_owned(), url),
        ]
    }
}

/// Stops serving a sandbox's socket when the sandbox goes.
pub struct Serving(pub tokio::task::AbortHandle);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.abort();
    }
}
