//! A user-space TCP proxy on a loopback port, standing in for a network link where the
//! kernel offers no `netem`: every byte is held for a fixed one-way delay (both directions,
//! as `tc netem delay` on both ends of a link), and the link can be cut under live
//! connections (they stop carrying anything, as when a cable is pulled or a NAT forgets
//! the flow: neither end hears a FIN) while new connections still get through.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub struct Proxy {
    pub port: u16,
    /// Connections opened before this generation are cut.
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// Bytes in flight per direction and connection (the link's buffer).
const IN_FLIGHT_CHUNKS: usize = 256;

impl Proxy {
    /// Forwards 127.0.0.1:`port` (a new port) to 127.0.0.1:`upstream`, each direction
    /// delayed by `one_way`.
    pub async fn start(upstream: u16, one_way: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let port = listener.local_addr().expect("proxy addr").port();
        let generation = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let generation = generation.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let born = generation.load(Ordering::SeqCst);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pipe(cr, sw, one_way, generation.clone(), born));
                    tokio::spawn(pipe(sr, cw, one_way, generation.clone(), born));
                }
            }
        });
        Proxy {
            port,
            generation,
            task,
        }
    }

    /// Cuts every connection open now: from here on they carry nothing either way and
    /// stay open. Connections made afterwards work.
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    generation: Arc<AtomicU64>,
    born: u64,
) {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(IN_FLIGHT_CHUNKS);
    let cut = {
        let generation = generation.clone();
        move || generation.load(Ordering::SeqCst) != born
    };
    let writer = tokio::spawn({
        let cut = cut.clone();
        async move {
            while let Some((due, bytes)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if cut() {
                    // Hold the socket open and silent, as a dead path does.
                    std::future::pending::<()>().await;
                }
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut() {
            std::future::pending::<()>().await;
        }
        let due = tokio::time::Instant::now() + delay;
        if tx.send((due, buf[..n].to_vec())).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
