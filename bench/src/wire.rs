//! A loopback proxy in front of PostgreSQL that counts what a worker asks of it: statements
//! (simple queries and executes of the extended protocol) and round trips (each Sync or simple
//! query, which the client answers only once the server said ReadyForQuery). It reads the
//! frontend protocol's framing only; the bytes go through unchanged.
//!
//! The proxy costs latency, so throughput is never measured through it: a short pass of its own
//! counts, and the main pass talks to PostgreSQL directly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What crossed the proxy from clients to the server, since it started.
#[derive(Debug, Default)]
pub struct Counts {
    statements: AtomicU64,
    round_trips: AtomicU64,
}

impl Counts {
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }
}

pub struct CountingProxy {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    acceptor: JoinHandle<()>,
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let acceptor = tokio::spawn(accept(listener, upstream, counts.clone()));
        Ok(Self {
            addr,
            counts,
            acceptor,
        })
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, counts: Arc<Counts>) {
    while let Ok((client, _)) = listener.accept().await {
        let counts = counts.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_in, client_out) = client.into_split();
            let (server_in, server_out) = server.into_split();
            tokio::select! {
                () = forward_counting(client_in, server_out, &counts) => {}
                () = forward(server_in, client_out) => {}
            }
        });
    }
}

async fn forward(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
}

/// Copies the client's bytes to the server, counting its messages on the way.
async fn forward_counting(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    counts: &Counts,
) {
    let mut framing = Framing::default();
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for kind in framing.feed(&buffer[..n]) {
            match kind {
                b'Q' => {
                    counts.statements.fetch_add(1, Ordering::Relaxed);
                    counts.round_trips.fetch_add(1, Ordering::Relaxed);
                }
                b'E' => {
                    counts.statements.fetch_add(1, Ordering::Relaxed);
                }
                b'S' => {
                    counts.round_trips.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// The frontend protocol's framing, fed in arbitrary chunks: untyped start-up messages (length,
/// then a code: an SSL or GSS request, then the start-up packet) until the start-up packet, then
/// typed messages (a kind byte, then a length that counts itself).
#[derive(Default)]
struct Framing {
    started: bool,
    /// Bytes of the message in progress, up to its header.
    header: Vec<u8>,
    /// Body bytes of the current message still to skip.
    remaining: usize,
}

/// Start-up codes that are requests answered before the real start-up packet.
const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;

impl Framing {
    /// The kinds of the typed messages whose headers complete in `bytes`.
    fn feed(&mut self, mut bytes: &[u8]) -> Vec<u8> {
        let mut kinds = Vec::new();
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len());
                self.remaining -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            // Start-up messages: 4 bytes of length and 4 of code; typed: 1 kind and 4 length.
            let header_len = if self.started { 5 } else { 8 };
            let take = (header_len - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.header.len() < header_len {
                continue;
            }
            let header = std::mem::take(&mut self.header);
            if self.started {
                let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                self.remaining = (len as usize).saturating_sub(4);
                kinds.push(header[0]);
            } else {
                let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                let code = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                self.remaining = (len as usize).saturating_sub(8);
                self.started = code != SSL_REQUEST && code != GSS_REQUEST;
            }
        }
        kinds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut message = vec![kind];
        message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        message.extend_from_slice(body);
        message
    }

    fn untyped(code: u32, body: &[u8]) -> Vec<u8> {
        let mut message = (body.len() as u32 + 8).to_be_bytes().to_vec();
        message.extend_from_slice(&code.to_be_bytes());
        message.extend_from_slice(body);
        message
    }

    #[test]
    fn start_up_then_typed_messages_are_told_apart_in_any_chunking() {
        let mut stream = untyped(SSL_REQUEST, &[]);
        stream.extend(untyped(196_608, b"user\0postgres\0\0"));
        stream.extend(typed(b'p', b"password\0"));
        stream.extend(typed(b'B', &[0; 20]));
        stream.extend(typed(b'E', &[0; 9]));
        stream.extend(typed(b'S', &[]));
        stream.extend(typed(b'Q', b"BEGIN\0"));
        for chunk in [1, 3, 7, stream.len()] {
            let mut framing = Framing::default();
            let kinds: Vec<u8> = stream.chunks(chunk).flat_map(|c| framing.feed(c)).collect();
            assert_eq!(kinds, b"pBESQ".to_vec(), "chunks of {chunk}");
        }
    }
}
