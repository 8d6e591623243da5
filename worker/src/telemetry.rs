//! Log set-up: `RUST_LOG` filters (default `info`), `LOG_FORMAT` picks JSON or text, on stderr.
//!
//! No level shows a secret. One library line would: lapin traces every frame it sends, and the
//! connection's Start-Ok frame carries the SASL response, user and password (as a byte list).
//! That line is dropped whatever `RUST_LOG` says ([`shows_no_secret`]).

use tracing::Metadata;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber once, at start-up. A second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(filter_fn(shows_no_secret));
    let layer = fmt::layer().with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_current_span(true))
            .try_init(),
        LogFormat::Text => registry.with(layer).try_init(),
    };
}

/// False for lapin's trace line of each frame it writes (its `next_msg` field): the first frames
/// of a connection carry the credentials.
fn shows_no_secret(metadata: &Metadata<'_>) -> bool {
    let frame_trace =
        metadata.target().starts_with("lapin") && metadata.fields().field("next_msg").is_some();
    !frame_trace
}
