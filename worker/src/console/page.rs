//! What every console page shares: rendering a template, and the refusals a request can meet,
//! each a page of its own with the right status.

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};

/// Renders `template` as an HTML answer; a template that fails to render is a 500 with no
/// detail (the error is logged).
pub fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "a console template failed to render");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Why the console will not do what was asked.
#[derive(Debug)]
pub enum Refusal {
    /// No session: the login form.
    LogIn,
    /// A bearer token that is not the console's.
    Unauthorized,
    /// CONSOLE_READ_ONLY is set.
    ReadOnly,
    NotFound(String),
    BadRequest(String),
    /// The database or the broker failed; the detail is logged, not shown.
    Failed(String),
}

#[derive(Template)]
#[template(path = "console/refusal.html")]
struct RefusalPage<'a> {
    title: &'a str,
    message: &'a str,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, title, message) = match &self {
            Refusal::LogIn => return Redirect::to("/login").into_response(),
            Refusal::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "Not authorized",
                "That token is not this console's.",
            ),
            Refusal::ReadOnly => (
                StatusCode::FORBIDDEN,
                "Read-only",
                "This console is read-only (CONSOLE_READ_ONLY): it shows, it does not act.",
            ),
            Refusal::NotFound(what) => (StatusCode::NOT_FOUND, "Not found", what.as_str()),
            Refusal::BadRequest(why) => (StatusCode::BAD_REQUEST, "Bad request", why.as_str()),
            Refusal::Failed(error) => {
                tracing::error!(%error, "a console request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something failed",
                    "The database or the broker did not answer; see the worker's log.",
                )
            }
        };
        let mut response = render(&RefusalPage { title, message });
        *response.status_mut() = status;
        if matches!(self, Refusal::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<crate::dead_letter::DlqError> for Refusal {
    fn from(error: crate::dead_letter::DlqError) -> Self {
        Refusal::Failed(error.to_string())
    }
}

impl From<sea_orm::DbErr> for Refusal {
    fn from(error: sea_orm::DbErr) -> Self {
        Refusal::Failed(error.to_string())
    }
}
