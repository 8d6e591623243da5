//! The two connection URLs, parsed by our code before sea-orm or lapin see them, so that no parse
//! error and no library log line can carry a password: errors name the reason, never any part of
//! the URL, and sea-orm gets a URL without the password (which goes to the driver on its own).
//!
//! Credentials follow URL rules: `/`, `?`, `#` and `%` in a user name or password must be
//! percent-encoded (`%2F`, `%3F`, `%23`, `%25`). A raw `@` in a password is allowed: the last `@`
//! before the host ends the credentials, as in sqlx and lapin (`%40` works too).

use lapin::uri::AMQPUri;
use percent_encoding::percent_decode_str;
use secrecy::SecretString;
use url::Url;

/// What redaction shows instead of a URL that could not be parsed (it may hold a password).
pub const INVALID_URL: &str = "<invalid URL>";

/// Query parameters sqlx's PostgreSQL driver reads. sqlx logs any other one with its value, so
/// unknown ones are refused instead (a misspelt `sslmode` would also silently mean no TLS).
const POSTGRES_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "application_name",
    "options",
];

/// Why a URL was refused. No variant holds any part of the URL, except a parameter's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error(
        "is not a URL ({0}); a `/`, `?`, `#` or `%` in the user name or password must be \
         percent-encoded (%2F, %3F, %23, %25)"
    )]
    Syntax(url::ParseError),
    #[error("must start with {expected}")]
    Scheme { expected: &'static str },
    #[error("has no `//` after the scheme: write it as {expected}user:password@host...")]
    NoAuthority { expected: &'static str },
    #[error("has a `#`: a `#` in the password must be percent-encoded as %23")]
    Fragment,
    #[error(
        "has an `@` after the host: a `/` or `?` in the password must be percent-encoded as %2F \
         or %3F"
    )]
    AtAfterHost,
    #[error("has a user name or password that is not UTF-8 once percent-decoded")]
    NotUtf8,
    #[error("has a query parameter the PostgreSQL driver does not know: {0}")]
    UnknownParameter(String),
    #[error(
        "is refused by the AMQP client: a query parameter has an invalid value or the virtual \
         host is not UTF-8"
    )]
    Amqp,
}

/// The database URL split in two: `url` without any password (sea-orm records it in its trace
/// spans and echoes it in errors) and the password, given to the driver directly.
#[derive(Debug)]
pub struct PostgresTarget {
    pub url: String,
    pub password: Option<SecretString>,
}

/// Parses a PostgreSQL URL; a password in the user info or in `?password=` is taken out.
pub fn postgres(raw: &str) -> Result<PostgresTarget, UrlError> {
    let mut url = checked(raw, &["postgres", "postgresql"], "postgres://")?;
    let mut password = url.password().map(decode).transpose()?;
    let mut kept = Vec::new();
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "password" => password = Some(value.into_owned()),
            known if is_postgres_parameter(known) => {
                kept.push((key.into_owned(), value.into_owned()))
            }
            unknown => return Err(UrlError::UnknownParameter(shown_name(unknown))),
        }
    }
    decode(url.username())?;
    if url.password().is_some() {
        // Cannot fail: a URL with a password has a host.
        let _ = url.set_password(None);
    }
    set_query(&mut url, &kept);
    Ok(PostgresTarget {
        url: url.into(),
        password: password.map(SecretString::from),
    })
}

/// Parses an AMQP URL into the form lapin connects with, never passing lapin the raw string
/// (its own parse errors quote it whole).
pub fn amqp(raw: &str) -> Result<AMQPUri, UrlError> {
    let url = checked(raw, &["amqp", "amqps"], "amqp://")?;
    decode(url.username())?;
    url.password().map(decode).transpose()?;
    raw.parse().map_err(|_| UrlError::Amqp)
}

/// The URL with every password (user info, `password` query parameters) replaced by `***`, or
/// [`INVALID_URL`] when it cannot be parsed: the one redaction used in messages.
pub fn redact(raw: &str) -> String {
    let Ok(mut url) = checked(raw, &[], "scheme://") else {
        return INVALID_URL.to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(
            |(key, value)| match key.to_ascii_lowercase().contains("password") {
                true => (key.into_owned(), "***".to_owned()),
                false => (key.into_owned(), value.into_owned()),
            },
        )
        .collect();
    if !pairs.is_empty() {
        set_query(&mut url, &pairs);
    }
    url.into()
}

/// Parses `raw` (with one of `schemes`, unless empty) and refuses the shapes where part of a
/// password would end up outside the user info (host, path, query, fragment), where redaction
/// cannot find it.
fn checked(raw: &str, schemes: &[&str], expected: &'static str) -> Result<Url, UrlError> {
    let url = Url::parse(raw).map_err(UrlError::Syntax)?;
    if !schemes.is_empty() && !schemes.contains(&url.scheme()) {
        return Err(UrlError::Scheme { expected });
    }
    if !url.has_authority() {
        return Err(UrlError::NoAuthority { expected });
    }
    if url.fragment().is_some() {
        return Err(UrlError::Fragment);
    }
    if url.path().contains('@') || url.query().is_some_and(|query| query.contains('@')) {
        return Err(UrlError::AtAfterHost);
    }
    Ok(url)
}

/// A percent-decoded user name or password.
fn decode(encoded: &str) -> Result<String, UrlError> {
    percent_decode_str(encoded)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| UrlError::NotUtf8)
}

fn is_postgres_parameter(key: &str) -> bool {
    POSTGRES_PARAMETERS.contains(&key) || (key.starts_with("options[") && key.ends_with(']'))
}

/// A parameter's name for a message, unless it does not look like one (then it might be a
/// misplaced piece of a password).
fn shown_name(key: &str) -> String {
    let plain = key.len() <= 40
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '[' | ']' | '.'));
    match plain {
        true => format!("`{key}`"),
        false => "(a name not shown)".to_owned(),
    }
}

fn set_query(url: &mut Url, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
}

#[cfg(test)]
mod tests;
