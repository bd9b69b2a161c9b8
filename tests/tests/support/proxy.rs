//! A TCP proxy on a loopback port that holds the pulls it sees until the test
//! lets them through: requests that reach the server in another order than the
//! device sent them, as they can over separate connections.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// See the module.
pub struct HoldingProxy {
    address: SocketAddr,
    open: watch::Sender<bool>,
    held: watch::Receiver<usize>,
}

impl HoldingProxy {
    /// Forwards every connection to `upstream`; a connection whose first
    /// request is a pull waits until [`release`](Self::release).
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (open, gate) = watch::channel(false);
        let (count, held) = watch::channel(0usize);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (gate, count) = (gate.clone(), count.clone());
                tokio::spawn(forward(client, upstream, gate, count));
            }
        });
        HoldingProxy {
            address,
            open,
            held,
        }
    }

    /// The URL of database `name` through the proxy.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/v1/db/{name}", self.address)
    }

    /// Returns once `n` pulls are held.
    pub async fn holding(&mut self, n: usize) {
        self.held.wait_for(|&held| held >= n).await.unwrap();
    }

    /// Lets the held pulls, and every later request, through.
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut gate: watch::Receiver<bool>,
    count: watch::Sender<usize>,
) {
    // The first request's head, to see what it is.
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    if line.windows(5).any(|w| w == b"/pull") && !*gate.borrow() {
        count.send_modify(|held| *held += 1);
        if gate.wait_for(|&open| open).await.is_err() {
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    if server.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
