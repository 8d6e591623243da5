//! The operator console: a web page, on its own address (`CONSOLE_ADDR`, off unless set), to
//! find, read, replay and discard dead letters from the store. Served by `worker run` and
//! `worker consume` beside the consumer.
//!
//! Server-rendered HTML from templates compiled into the binary, with its one stylesheet: no
//! CDN, no JavaScript, so it works in closed networks and reads without scripts. Every page
//! needs an [`session::Operator`] (the login form's signed cookie, or the token as `Bearer`);
//! every action is a POST, refused cross-site (tower-http's CSRF layer: `Sec-Fetch-Site` /
//! `Origin` against `Host`) and in read-only mode; a strict Content-Security-Policy; the ops
//! server's connection limits and head timeout.

mod actions;
mod bulk;
mod page;
mod pages;
pub mod session;
pub mod settings;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::csrf::CsrfLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::BrokerSettings;
use crate::db::Pool;
use crate::http_server;
use crate::metrics::Metrics;

use session::SessionKey;
pub use settings::ConsoleSettings;

/// Scripts, frames, other origins: none. Styles and forms: this origin only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const STYLESHEET: &str = include_str!("console.css");

/// What every console request can reach.
#[derive(Clone)]
pub struct ConsoleState {
    pub db: Pool,
    pub broker: BrokerSettings,
    /// The process's own figures: the overview's events per second and failure rate.
    pub metrics: Metrics,
    /// Whether this process consumes (`worker console` does not: it has no rates to show).
    pub consumes: bool,
    pub key: Arc<SessionKey>,
    pub read_only: bool,
    /// Mark the session cookie `Secure` (a console beyond loopback belongs behind TLS).
    pub secure_cookie: bool,
}

impl ConsoleState {
    pub fn new(
        settings: &ConsoleSettings,
        db: Pool,
        broker: BrokerSettings,
        metrics: Metrics,
        consumes: bool,
    ) -> Self {
        Self {
            db,
            broker,
            metrics,
            consumes,
            key: Arc::new(SessionKey::new(settings.token())),
            read_only: settings.console_read_only,
            secure_cookie: settings.is_public(),
        }
    }
}

/// Every page and action, with the console's protections.
pub fn router(state: ConsoleState) -> Router {
    let host_check = middleware::from_fn_with_state(state.clone(), loopback_host);
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(pages::login_form).post(pages::log_in))
        .route("/logout", post(pages::log_out))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/preview", post(bulk::preview))
        .route("/dead-letters/bulk", post(bulk::act))
        .route("/dead-letters/{svix_id}", get(pages::letter))
        .route("/users", get(pages::users))
        .route("/dead-letters/{svix_id}/replay", post(actions::replay_one))
        .route(
            "/dead-letters/{svix_id}/discard",
            post(actions::discard_one),
        )
        .route("/assets/console.css", get(stylesheet))
        .with_state(state)
        .layer(host_check)
        .layer(CsrfLayer::new())
        .layer(header_layer(
            header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        ))
        .layer(header_layer(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(header_layer(header::REFERRER_POLICY, "no-referrer"))
        .layer(header_layer(header::CACHE_CONTROL, "no-store"))
}

/// A console without a token listens on loopback and asks nobody for a secret, so a request
/// there naming another host is a web page in the operator's browser that rebound its own name
/// to 127.0.0.1 (DNS rebinding): its `Origin` matches its `Host`, which the CSRF check allows,
/// and it could log in with any name. Such requests are refused (421); with a token, the token
/// is the guard.
async fn loopback_host(
    State(state): State<ConsoleState>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok());
    if !state.key.needs_token() && !host.is_some_and(names_loopback) {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            "this console answers only to localhost and loopback addresses",
        )
            .into_response();
    }
    next.run(request).await
}

/// Whether a `Host` header names this machine: `localhost` or a loopback address, any port.
fn names_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn header_layer(name: HeaderName, value: &'static str) -> SetResponseHeaderLayer<HeaderValue> {
    SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLESHEET,
    )
        .into_response()
}

/// Serves the console on `listener` until `shutdown`, with the ops server's limits.
pub async fn serve(listener: TcpListener, state: ConsoleState, shutdown: CancellationToken) {
    http_server::serve(listener, router(state), crate::ops::LIMITS, None, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::names_loopback;

    #[test]
    fn only_this_machine_s_names_are_loopback() {
        for host in [
            "localhost",
            "localhost:9100",
            "127.0.0.1:9100",
            "[::1]:9100",
            "127.1.2.3",
        ] {
            assert!(names_loopback(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9100",
            "10.0.0.1:9100",
            "localhost.evil.example",
            "",
        ] {
            assert!(!names_loopback(host), "{host}");
        }
    }
}
