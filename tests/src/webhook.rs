//! Sending webhooks the way Clerk (through Svix) does: signed POSTs of raw bodies.

use std::net::SocketAddr;

use worker::ingress::signature;

/// A test signing secret (the key is 24 random-looking bytes, base64).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second secret, for rotation tests.
pub const OTHER_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// A webhook about to be sent; fields are public so tests can break any of them.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub id: String,
    pub timestamp: i64,
    pub body: Vec<u8>,
    pub signature: String,
}

impl Webhook {
    /// `body` signed with `secret`, now, under a fresh id.
    pub fn signed(secret: &str, body: &[u8]) -> Self {
        let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        Self::signed_at(secret, body, &id, chrono::Utc::now().timestamp())
    }

    pub fn signed_at(secret: &str, body: &[u8], id: &str, timestamp: i64) -> Self {
        let signature = signature::sign(secret, id, timestamp, body).expect("a valid test secret");
        Self {
            id: id.to_owned(),
            timestamp,
            body: body.to_vec(),
            signature,
        }
    }

    /// POSTs to `/webhooks/clerk`, leaving out the headers named in `omit`. A connection failure
    /// is status 0 with the error as the body.
    pub async fn post_without(
        &self,
        ingress: SocketAddr,
        omit: &[&str],
    ) -> (u16, serde_json::Value) {
        self.send(ingress, omit, &[]).await
    }

    /// POSTs to `/webhooks/clerk` with the `extra` headers besides Svix's.
    pub async fn post_with(
        &self,
        ingress: SocketAddr,
        extra: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        self.send(ingress, &[], extra).await
    }

    async fn send(
        &self,
        ingress: SocketAddr,
        omit: &[&str],
        extra: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let mut request = reqwest::Client::new()
            .post(format!("http://{ingress}/webhooks/clerk"))
            .header("content-type", "application/json")
            .body(self.body.clone());
        for (name, value) in [
            ("svix-id", self.id.clone()),
            ("svix-timestamp", self.timestamp.to_string()),
            ("svix-signature", self.signature.clone()),
        ] {
            if !omit.contains(&name) {
                request = request.header(name, value);
            }
        }
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return (0, serde_json::Value::String(err.to_string())),
        };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub async fn post(&self, ingress: SocketAddr) -> (u16, serde_json::Value) {
        self.post_without(ingress, &[]).await
    }
}
