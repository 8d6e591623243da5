//! A deadline on writing each answer. hyper 1.x times the reading of a request head but never a
//! write: a peer that pipelines requests and never reads the answers fills the socket's send
//! queue, hyper then waits to write and reads no new head, so no timer of its own is armed and
//! the connection (and its slot) would be held for ever.
//!
//! The timer starts when a write (or flush) first finds the socket full and stops once hyper
//! flushes, which it does when everything it had to send went into the kernel: a peer that
//! drips a byte now and then does not reset it. When it fires, the pending write fails with
//! `TimedOut` and hyper closes the connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `inner` with a deadline of `timeout` on each write that has to wait for the peer.
pub struct WriteDeadline<T> {
    inner: T,
    timeout: Duration,
    /// Armed while a write waits; cleared once everything was flushed.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteDeadline<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
        }
    }

    /// A write that must wait: pending until the deadline, then `TimedOut`.
    fn wait<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The inner write's result, or the deadline's while it is pending.
    fn timed<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Pending => self.wait(cx),
            ready => ready,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.timed(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        if polled.is_ready() {
            // Everything hyper had to send is in the kernel: the answer is written.
            this.timer = None;
        }
        this.timed(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.timed(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_peer_that_never_reads_fails_the_write_after_the_timeout() {
        // A pipe whose far end is never read: the writer's buffer fills, then writes wait.
        let (near, _far) = tokio::io::duplex(1024);
        let mut writer = WriteDeadline::new(near, TIMEOUT);
        let started = std::time::Instant::now();
        let written = writer.write_all(&[0u8; 64 * 1024]).await;
        let err = written.expect_err("the write cannot finish");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= TIMEOUT);
        assert!(started.elapsed() < TIMEOUT * 10, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_peer_that_reads_in_time_gets_everything() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut writer = WriteDeadline::new(near, TIMEOUT);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut far, &mut all)
                .await
                .map(|_| all.len())
        });
        writer.write_all(&[7u8; 64 * 1024]).await.expect("written");
        writer.flush().await.expect("flushed");
        writer.shutdown().await.expect("shut down");
        assert_eq!(reader.await.expect("joined").expect("read"), 64 * 1024);
    }

    #[tokio::test]
    async fn a_flush_disarms_the_timer_so_the_next_answer_gets_a_whole_deadline() {
        let (near, mut far) = tokio::io::duplex(16);
        let mut writer = WriteDeadline::new(near, TIMEOUT);
        for _ in 0..3 {
            // Each answer waits for the reader for most of a deadline, then is read whole.
            let write = async {
                writer.write_all(&[1u8; 32]).await?;
                writer.flush().await
            };
            let read = async {
                tokio::time::sleep(TIMEOUT * 3 / 4).await;
                let mut buffer = [0u8; 32];
                let reading = tokio::io::AsyncReadExt::read_exact(&mut far, &mut buffer);
                tokio::time::timeout(TIMEOUT * 4, reading).await
            };
            let (written, read) = tokio::join!(write, read);
            written.expect("each answer within its own deadline");
            read.expect("read in time").expect("read");
        }
    }
}
