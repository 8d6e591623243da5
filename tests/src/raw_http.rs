//! Requests written by hand on raw TCP, for the tests and benchmarks that play a hostile or
//! broken client: half-sent heads and bodies, pipelining, reading an answer byte by byte.
//! reqwest would refuse to be that client.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clerk::UserEvent;
use crate::webhook::{SECRET, Webhook};

/// How long any closing or answering may take in a test, whatever the configured limit (1 s or
/// 2 s): the machine is shared and noisy.
pub const GENEROUS: Duration = Duration::from_secs(10);

/// A request head for `POST /webhooks/clerk` declaring `content_length`, with the Svix headers
/// of `signed` when given.
pub fn head(signed: Option<&Webhook>, content_length: usize) -> String {
    let mut head = format!(
        "POST /webhooks/clerk HTTP/1.1\r\nhost: ingress\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n"
    );
    if let Some(webhook) = signed {
        head.push_str(&format!(
            "svix-id: {}\r\nsvix-timestamp: {}\r\nsvix-signature: {}\r\n",
            webhook.id, webhook.timestamp, webhook.signature
        ));
    }
    head.push_str("\r\n");
    head
}

/// A connection that has sent a signed head and the first half of the body, and stops there.
pub async fn half_sent(addr: SocketAddr, webhook: &Webhook) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connected");
    let half = webhook.body.len() / 2;
    stream
        .write_all(head(Some(webhook), webhook.body.len()).as_bytes())
        .await
        .expect("head sent");
    stream
        .write_all(&webhook.body[..half])
        .await
        .expect("half the body sent");
    stream
}

/// Everything the server sends until it closes the connection; `None` if it is still open
/// after `within`. A reset counts as closed.
pub async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let reading = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(within, reading).await.ok()?;
    Some(received)
}

/// The status, the body so far and the declared length of a response, once its head is in.
pub fn parse_response(bytes: &[u8]) -> Option<(u16, String, usize)> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0);
    Some((status(bytes), body.to_owned(), length))
}

/// The status code of a raw response, 0 if there is none.
pub fn status(response: &[u8]) -> u16 {
    String::from_utf8_lossy(response)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// The `error` code of a raw response's JSON body.
pub fn error_code(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str::<serde_json::Value>(body).map_or_else(
        |_| format!("<not JSON: {body}>"),
        |json| json["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The raw response on `stream`, read until it is whole (its declared length) or the server
/// closed the connection.
pub async fn read_whole(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while parse_response(&received).is_none_or(|(_, body, length)| body.len() < length) {
        let read = tokio::time::timeout(GENEROUS, stream.read(&mut buffer))
            .await
            .expect("an answer in time");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
        }
    }
    received
}

/// Sends a request on a new connection and returns the raw response.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connected");
    stream.write_all(request).await.expect("request sent");
    read_whole(&mut stream).await
}

/// A whole signed `user.created` webhook for `user`, head and body, as raw bytes.
pub fn signed_request(user: &str) -> Vec<u8> {
    let body = UserEvent::created(user, &format!("{user}@example.com"), None).body();
    let webhook = Webhook::signed(SECRET, &body);
    [head(Some(&webhook), body.len()).into_bytes(), body].concat()
}

/// A head an attacker without the key can send: well-formed Svix headers (a fresh id, the
/// current timestamp, a 44-character `v1,` signature) declaring `content_length` bytes of body.
pub fn forged_head(content_length: usize) -> String {
    let forged = Webhook {
        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        timestamp: chrono::Utc::now().timestamp(),
        body: Vec::new(),
        signature: format!("v1,{}=", "A".repeat(43)),
    };
    head(Some(&forged), content_length)
}

/// Many small requests (each answered 404), sent at once by a client that pipelines.
const PIPELINED: &[u8] = b"GET /nothing HTTP/1.1\r\nhost: ingress\r\n\r\n";

/// A client that pipelines requests as fast as the server takes them and never reads an
/// answer, with a small receive buffer so the server's answers back up soon. Closed on drop.
pub struct NeverReading {
    _unread: tokio::net::tcp::OwnedReadHalf,
    writer: tokio::task::JoinHandle<()>,
}

impl NeverReading {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let stream = socket.connect(addr).await?;
        let (unread, mut write) = stream.into_split();
        let batch = PIPELINED.repeat(100);
        let writer = tokio::spawn(async move { while write.write_all(&batch).await.is_ok() {} });
        Ok(Self {
            _unread: unread,
            writer,
        })
    }

    /// True once the server closed the connection (a write failed).
    pub fn closed(&self) -> bool {
        self.writer.is_finished()
    }
}

impl Drop for NeverReading {
    fn drop(&mut self) {
        self.writer.abort();
    }
}
