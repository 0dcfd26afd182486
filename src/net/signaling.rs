//! The signaling server peers meet through: matchbox's full-mesh server, as a
//! binary (`cargo run --bin peer-sync-signal -- --port 3536`) or in-process.
//!
//! Signaling only introduces peers; once their WebRTC data channels are open, game
//! traffic flows peer to peer and never touches this server.
//!
//! ```no_run
//! let server = bevy_peer_sync::net::signaling::start_signaling_server(([127, 0, 0, 1], 0)).unwrap();
//! println!("players join {}", server.room_url("my_room"));
//! // The server stops when `server` is dropped.
//! ```

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread::JoinHandle;

use matchbox_signaling::SignalingServer;
use tokio::sync::oneshot;

use crate::net::NetError;

/// A signaling server running on a thread of its own. Dropping it stops the server.
#[derive(Debug)]
pub struct LocalSignalingServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LocalSignalingServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `ws://` url of a room on this server.
    pub fn room_url(&self, room: &str) -> String {
        format!("ws://{}/{room}", self.addr)
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for LocalSignalingServer {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// Starts a full-mesh signaling server on `addr` (port 0 picks a free port) on a
/// thread of its own, and returns once it listens.
pub fn start_signaling_server(
    addr: impl Into<SocketAddr>,
) -> Result<LocalSignalingServer, NetError> {
    let addr = addr.into();
    let fail = |reason: String| NetError::Signaling {
        addr: addr.to_string(),
        reason,
    };
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (bound_tx, bound_rx) = mpsc::channel::<Result<SocketAddr, String>>();
    let thread = std::thread::Builder::new()
        .name("peer-sync-signal".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = bound_tx.send(Err(error.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut server = SignalingServer::full_mesh_builder(addr)
                    .with_shutdown(shutdown_rx)
                    .build();
                match server.bind() {
                    Ok(bound) => {
                        let _ = bound_tx.send(Ok(bound));
                    }
                    Err(error) => {
                        let _ = bound_tx.send(Err(error.to_string()));
                        return;
                    }
                }
                if let Err(error) = server.serve().await {
                    bevy::log::error!("signaling server stopped: {error}");
                }
            });
        })
        .map_err(|e| fail(e.to_string()))?;
    match bound_rx.recv() {
        Ok(Ok(bound)) => Ok(LocalSignalingServer {
            addr: bound,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }),
        Ok(Err(reason)) => {
            let _ = thread.join();
            Err(fail(reason))
        }
        Err(_) => {
            let _ = thread.join();
            Err(fail("the server thread ended before binding".into()))
        }
    }
}
