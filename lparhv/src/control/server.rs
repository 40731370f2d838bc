//! The control socket server: accepts the operator's connections, reads
//! request lines ([`super::protocol`]) and answers each against the
//! daemon's services — the system state, the slot service and the
//! configured storage servers, which the daemon hands in ([`Operated`]).
//!
//! Only lparhv's own user (and root) may command it: each connection's peer
//! uid (`SO_PEERCRED`, taken by the kernel at connect time) is checked
//! before a byte is read; anyone else gets one refusal line and the
//! connection is closed. The socket's mode (0600) and the private state
//! directory already keep others out; this check holds even if they are
//! loosened by hand.

use super::protocol::{ControlReply, ControlRequest, ViosAction, MAX_LINE};
use crate::slots::{Caller, SlotControl};
use crate::state::paths::bind_socket;
use crate::state::{lock, OpError, Shared};
use crate::storage::served::{freeze_json, planned_json, ServerView, StorageServers};
use anyhow::Result;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{info, warn};

/// The services a control request operates on.
#[derive(Clone)]
pub struct Operated {
    pub system: Shared,
    pub slots: Arc<SlotControl>,
    /// The configured storage servers (None: the config has no `[[vios]]`).
    pub storage: Option<Arc<StorageServers>>,
}

/// Answers one request against the system. `down` only answers; the
/// caller triggers the shutdown.
pub fn handle(services: &Operated, request: &ControlRequest) -> ControlReply {
    let system = &services.system;
    // Partition commands talk to QEMU for seconds: not under the lock.
    match request {
        ControlRequest::Partition(cmd) => {
            let outcome = services.slots.execute(&Caller::Operator, cmd);
            return if outcome.code == 0 || outcome.fenced {
                ControlReply::ok(outcome)
            } else {
                ControlReply {
                    ok: false,
                    error: Some(format!("{} ({}): {}", outcome.result, outcome.code, outcome.message)),
                    code: Some(outcome.code),
                    result: serde_json::to_value(&outcome).ok(),
                }
            };
        }
        ControlRequest::Slots => {
            return ControlReply::ok(services.slots.view());
        }
        ControlRequest::Vios { action, name } => {
            let Some(servers) = &services.storage else {
                if *action == ViosAction::List {
                    return ControlReply::ok(Vec::<ServerView>::new());
                }
                return ControlReply::err(
                    "this system configures no storage server ([[vios]] in its config)".into(),
                    Some(hypercall_abi::ReturnCode::NotFound.raw()),
                );
            };
            let name = match (action, name) {
                (ViosAction::List, _) => return ControlReply::ok(servers.view(system)),
                (_, Some(n)) => match servers.unknown(n) {
                    Some(why) => return ControlReply::err(why, Some(hypercall_abi::ReturnCode::NotFound.raw())),
                    None => n,
                },
                (_, None) => {
                    return ControlReply::err("vios restart/crash needs a name".into(), Some(hypercall_abi::ReturnCode::Parameter.raw()))
                }
            };
            let r = match action {
                ViosAction::Restart => servers.restart(system, name).map(|r| planned_json(&r)),
                _ => servers.crash(name).map(|r| freeze_json(&r)),
            };
            return match r {
                Ok(v) => ControlReply::ok(v),
                Err(e) => ControlReply::err(format!("{e:#}"), None),
            };
        }
        _ => {}
    }
    let mut sys = lock(system);
    let op = |r: Result<Value, OpError>| match r {
        Ok(v) => ControlReply { ok: true, result: Some(v), error: None, code: None },
        Err(e) => ControlReply::err(e.to_string(), Some(e.code.raw())),
    };
    match request {
        ControlRequest::Status => {
            let mut status = sys.status();
            status.cpu_control = services.slots.cpu().describe();
            ControlReply::ok(status)
        }
        ControlRequest::Down => ControlReply::ok("shutting down"),
        ControlRequest::Resources => ControlReply::ok(sys.resources()),
        ControlRequest::Events { limit } => ControlReply::ok(sys.events(limit.unwrap_or(100))),
        ControlRequest::Grant { resource, to, offset, length } => {
            op(sys.owner_grant(resource, to, *offset, *length).map(|g| serde_json::to_value(g).unwrap_or(Value::Null)))
        }
        ControlRequest::Rescind { cookie, partition, force } => {
            op(sys.owner_rescind(cookie, partition, *force).map(|r| serde_json::to_value(r).unwrap_or(Value::Null)))
        }
        ControlRequest::Partition(_) | ControlRequest::Slots | ControlRequest::Vios { .. } => {
            ControlReply::err("handled above".into(), None)
        }
    }
}

/// The control socket server.
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Binds `path` and serves; a `down` request notifies `shutdown`.
    pub fn start(services: Operated, path: &Path, shutdown: Arc<Notify>) -> Result<ControlServer> {
        let listener = bind_socket(path)?;
        info!(socket = %path.display(), "control socket listening");
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => { conns.spawn(serve_if_allowed(services.clone(), stream, shutdown.clone())); }
                        Err(e) => {
                            warn!("control accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(ControlServer { path: path.to_path_buf(), task })
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a peer with effective uid `peer` may command a daemon running as
/// `daemon`: the same user, or root.
fn peer_allowed(peer: u32, daemon: u32) -> bool {
    peer == daemon || peer == 0
}

/// Serves the connection if its peer's uid is allowed; otherwise answers
/// one refusal and closes it.
async fn serve_if_allowed(services: Operated, mut stream: UnixStream, shutdown: Arc<Notify>) {
    let daemon = rustix::process::geteuid().as_raw();
    let peer = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            warn!("control connection without peer credentials refused: {e}");
            return;
        }
    };
    if !peer_allowed(peer, daemon) {
        warn!(peer_uid = peer, daemon_uid = daemon, "control connection from another user refused");
        let reply = ControlReply::err(format!("permission denied: uid {peer} may not command this lparhv (it runs as uid {daemon})"), None);
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
        // Closing with the peer's request still unread would reset the
        // connection and lose the refusal: read (and ignore) what it sent,
        // for a moment and a line at most.
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_millis(500), (&mut stream).take(MAX_LINE as u64).read_to_end(&mut sink)).await;
        return;
    }
    serve(services, stream, shutdown).await
}

async fn serve(services: Operated, stream: UnixStream, shutdown: Arc<Notify>) {
    let (rd, mut wr) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut lines).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let (reply, down) = if line.len() > MAX_LINE {
            (ControlReply::err(format!("request longer than {MAX_LINE} bytes"), None), false)
        } else {
            match serde_json::from_slice::<ControlRequest>(&line) {
                Ok(req) => {
                    info!(?req, "control request");
                    let down = req == ControlRequest::Down;
                    let services = services.clone();
                    // Blocking work (QMP, waiting for ejects) off the runtime.
                    let reply = tokio::task::spawn_blocking(move || handle(&services, &req))
                        .await
                        .unwrap_or_else(|e| ControlReply::err(format!("request failed: {e}"), None));
                    (reply, down)
                }
                Err(e) => (ControlReply::err(format!("bad request: {e}"), None), false),
            }
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        if wr.write_all(&out).await.is_err() {
            return;
        }
        if down {
            shutdown.notify_one();
        }
        if line.len() > MAX_LINE {
            return; // the rest of the line is not worth reading
        }
    }
}

#[cfg(test)]
mod tests {
    use super::peer_allowed;

    #[test]
    fn only_the_daemons_user_and_root_may_command_it() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(65534, 1000));
        assert!(!peer_allowed(65534, 0));
    }
}
