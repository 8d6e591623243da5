//! A bound on requests pipelined by a peer that does not read the answers.
//!
//! hyper answers pipelined requests one after another for as long as the kernel takes the
//! answers, and Linux grows a socket's send buffer to megabytes: measured here, 200 clients
//! that pipelined 404s and never read kept both cores busy, each connection answering about
//! 3,500 requests before its send buffer filled and the write deadline closed it.
//!
//! A client that reads sends its next request only after reading the answer before it, and its
//! acknowledgement of that answer rides on the request, so when the request arrives nothing
//! this side sent is still unacknowledged (`SIOCOUTQ` is 0). A request that arrives while
//! answers are still unacknowledged was pipelined past them; after
//! [`MAX_PIPELINED`] of those in a row the connection is closed at once. Measured the same way,
//! the 200 clients then cost about half a core, most of it accepting their reconnections.

use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Requests in a row that may arrive while earlier answers are unread.
pub const MAX_PIPELINED: u32 = 16;

/// One connection's count of requests pipelined past unread answers.
pub struct Pipelining {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::RawFd,
    in_a_row: AtomicU32,
    exceeded: CancellationToken,
}

impl Pipelining {
    /// For `stream`'s socket, asked about by its descriptor.
    ///
    /// # Safety
    /// `stream` must stay open across every call to [`Self::request_arrived`]: afterwards the
    /// descriptor could name another file.
    pub unsafe fn new(stream: &TcpStream) -> Self {
        #[cfg(not(target_os = "linux"))]
        let _ = stream;
        Self {
            #[cfg(target_os = "linux")]
            fd: std::os::fd::AsRawFd::as_raw_fd(stream),
            in_a_row: AtomicU32::new(0),
            exceeded: CancellationToken::new(),
        }
    }

    /// Called as each request head arrives.
    pub fn request_arrived(&self) {
        if self.unacknowledged_bytes() == 0 {
            self.in_a_row.store(0, Ordering::Relaxed);
        } else if self.in_a_row.fetch_add(1, Ordering::Relaxed) + 1 > MAX_PIPELINED {
            self.exceeded.cancel();
        }
    }

    /// Resolves once the peer pipelined more than the bound.
    pub async fn exceeded(&self) {
        self.exceeded.cancelled().await;
    }

    /// Bytes sent on the socket and not yet acknowledged by the peer (0 if unknown).
    #[cfg(target_os = "linux")]
    fn unacknowledged_bytes(&self) -> u32 {
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; `fd` is the connection's open socket,
        // owned by the task that calls this for as long as the connection lives.
        let done = unsafe { libc::ioctl(self.fd, libc::TIOCOUTQ, &mut queued) };
        if done == 0 {
            u32::try_from(queued).unwrap_or(0)
        } else {
            0
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn unacknowledged_bytes(&self) -> u32 {
        0
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connecting = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(connecting, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn a_peer_that_reads_is_never_counted() {
        let (mut client, mut server) = pair().await;
        // SAFETY: `server` lives to the end of the test.
        let pipelining = unsafe { Pipelining::new(&server) };
        for _ in 0..(MAX_PIPELINED * 2) {
            server.write_all(b"an answer").await.unwrap();
            let mut answer = [0u8; 9];
            client.read_exact(&mut answer).await.unwrap();
            // The acknowledgement travels with the peer's next request.
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut [0u8; 1]).await.unwrap();
            pipelining.request_arrived();
        }
        assert!(!pipelining.exceeded.is_cancelled());
    }

    #[tokio::test]
    async fn answers_left_unacknowledged_past_the_bound_close_the_connection() {
        let (client, server) = pair().await;
        // A peer whose receive window is full acknowledges nothing more.
        let socket = socket2::SockRef::from(&client);
        socket.set_recv_buffer_size(4096).unwrap();
        // SAFETY: `server` lives to the end of the test.
        let pipelining = unsafe { Pipelining::new(&server) };
        let mut server = server;
        let filler = vec![0u8; 1 << 20];
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            server.write_all(&filler),
        )
        .await;
        for _ in 0..MAX_PIPELINED {
            pipelining.request_arrived();
        }
        assert!(!pipelining.exceeded.is_cancelled(), "up to the bound");
        pipelining.request_arrived();
        assert!(pipelining.exceeded.is_cancelled());
        drop(client);
    }
}
