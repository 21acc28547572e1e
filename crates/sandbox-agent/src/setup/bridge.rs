//! The model gateway inside the sandbox: PID 1 listens on a loopback TCP
//! port of the sandbox's network namespace and forwards each connection to
//! a Unix socket the runtime serves on the host, on which the runtime knows
//! the connection comes from this sandbox's session. Code in the sandbox
//! reaches the gateway at `http://127.0.0.1:PORT` and holds no secret.
//!
//! The host socket's directory is opened before PID 1 pivots into the new
//! root and reached through `/proc/self/fd` afterwards, so the socket is in
//! no directory the sandbox's processes can see.

use std::fs::File;
use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;

use serde::{Deserialize, Serialize};

/// Where the bridge listens and where it forwards.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BridgeConfig {
    /// The runtime's Unix socket for this sandbox, a host path.
    pub socket: std::path::PathBuf,
    /// The loopback port inside the sandbox.
    pub port: u16,
}

/// The host socket's directory, opened while it is still reachable.
pub struct Bridge {
    dir: File,
    name: std::ffi::OsString,
    port: u16,
}

impl Bridge {
    /// Opens the socket's directory; call before leaving the host's tree.
    pub fn open(config: &BridgeConfig) -> Result<Bridge, String> {
        let parent = config.socket.parent().unwrap_or(Path::new("/"));
        let name = config.socket.file_name().ok_or_else(|| format!("bridge socket {} has no file name", config.socket.display()))?;
        let dir = File::open(parent).map_err(|e| format!("open {}: {e}", parent.display()))?;
        Ok(Bridge { dir, name: name.to_owned(), port: config.port })
    }

    /// Binds the port (loopback must be up) and forwards in the background.
    pub fn start(self) -> Result<(), String> {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).map_err(|e| format!("bind 127.0.0.1:{}: {e}", self.port))?;
        let target = Path::new("/proc/self/fd").join(self.dir.as_raw_fd().to_string()).join(&self.name);
        thread::Builder::new()
            .name("gateway-bridge".into())
            .spawn(move || {
                // Keeps the directory open as long as the bridge runs.
                let _dir = self.dir;
                for conn in listener.incoming().flatten() {
                    let target = target.clone();
                    let _ = thread::Builder::new().name("bridge-conn".into()).spawn(move || forward(conn, &target));
                }
            })
            .map(drop)
            .map_err(|e| format!("start the gateway bridge: {e}"))
    }
}

/// Copies bytes both ways until each side has finished sending.
fn forward(client: TcpStream, target: &Path) {
    let Ok(upstream) = UnixStream::connect(target) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut client_r), Ok(mut upstream_w)) = (client.try_clone(), upstream.try_clone()) else { return };
    let up = thread::Builder::new().name("bridge-up".into()).spawn(move || {
        let _ = io::copy(&mut client_r, &mut upstream_w);
        let _ = upstream_w.shutdown(Shutdown::Write);
    });
    let (mut upstream_r, mut client_w) = (upstream, client);
    let _ = io::copy(&mut upstream_r, &mut client_w);
    let _ = client_w.shutdown(Shutdown::Write);
    if let Ok(up) = up {
        let _ = up.join();
    }
}
