//! A TCP relay on loopback between clients and a server, with which a test breaks the network
//! path the ways real networks do: cut every connection (both ends see it close), refuse new
//! ones, or go silent (forward nothing and close nothing, as a dead path does).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What the relay does with the connections it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Read and throw away, in both directions.
    Silent,
    Closed,
}

/// A connection's forwarding, told to change mode through its own `watch`.
struct Pair {
    mode: watch::Sender<Mode>,
}

pub struct Relay {
    pub addr: SocketAddr,
    pairs: Arc<Mutex<Vec<Pair>>>,
    refusing: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

impl Relay {
    /// A relay on a free port of 127.0.0.1 to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pairs = Arc::new(Mutex::new(Vec::<Pair>::new()));
        let refusing = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (pairs, refusing, accepted) = (pairs.clone(), refusing.clone(), accepted.clone());
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    if refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        continue;
                    };
                    let (mode, watching) = watch::channel(Mode::Forward);
                    pairs.lock().unwrap().push(Pair { mode });
                    tokio::spawn(forward(client, server, watching));
                }
            }
        });
        Relay {
            addr,
            pairs,
            refusing,
            accepted,
            task,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    pub fn tcp_url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes every connection the relay holds, on both sides.
    pub fn cut(&self) {
        for pair in self.pairs.lock().unwrap().drain(..) {
            let _ = pair.mode.send(Mode::Closed);
        }
    }

    /// Stops forwarding on every connection held, and keeps them open.
    pub fn silence(&self) {
        for pair in self.pairs.lock().unwrap().iter() {
            let _ = pair.mode.send(Mode::Silent);
        }
    }

    /// While on, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }
}

async fn forward(mut client: TcpStream, mut server: TcpStream, mut mode: watch::Receiver<Mode>) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        let forwarding = *mode.borrow() == Mode::Forward;
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Mode::Closed {
                    return;
                }
            }
            read = client_read.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) if forwarding => {
                    if server_write.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            },
            read = server_read.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) if forwarding => {
                    if client_write.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            },
        }
    }
}
