use secrecy::ExposeSecret;

use super::*;

/// A password with every character that ends a URL's user info early.
const PASSWORD: &str = "pa/ss#wo?rd@Zq7Xk9";
const ENCODED: &str = "pa%2Fss%23wo%3Frd%40Zq7Xk9";

fn password_of(target: &PostgresTarget) -> Option<&str> {
    target.password.as_ref().map(ExposeSecret::expose_secret)
}

/// Neither the password nor its distinctive tail, raw or encoded, is in `text`.
fn assert_hidden(text: &str) {
    for secret in [PASSWORD, ENCODED, "Zq7Xk9", "wo?rd", "wo%3Frd"] {
        assert!(!text.contains(secret), "{secret:?} in {text:?}");
    }
}

#[test]
fn a_percent_encoded_password_is_decoded_and_taken_out_of_the_url() {
    let target = postgres(&format!("postgres://app:{ENCODED}@db:5432/provisioning")).unwrap();
    assert_eq!(target.url, "postgres://app@db:5432/provisioning");
    assert_eq!(password_of(&target), Some(PASSWORD));
    assert_hidden(&format!("{target:?}"));
}

#[test]
fn a_raw_at_sign_belongs_to_the_password_the_last_one_ends_it() {
    let target = postgres("postgres://app:p@ss@w0rd@db/provisioning").unwrap();
    assert_eq!(target.url, "postgres://app@db/provisioning");
    assert_eq!(password_of(&target), Some("p@ss@w0rd"));
    let uri = amqp("amqp://app:p@ss@w0rd@mq:5672/%2f").unwrap();
    assert_eq!(uri.authority.userinfo.password, "p@ss@w0rd");
    assert_eq!(uri.authority.host, "mq");
}

#[test]
fn a_password_in_the_query_string_is_taken_out_too() {
    let target = postgres(&format!(
        "postgresql://app@db/provisioning?sslmode=disable&password={ENCODED}"
    ))
    .unwrap();
    assert_eq!(
        target.url,
        "postgresql://app@db/provisioning?sslmode=disable"
    );
    assert_eq!(password_of(&target), Some(PASSWORD));
    let only = postgres(&format!(
        "postgres://app@db/provisioning?password={ENCODED}"
    ))
    .unwrap();
    assert_eq!(only.url, "postgres://app@db/provisioning");
}

#[test]
fn unencoded_slash_question_mark_or_hash_in_a_password_is_refused_without_echo() {
    for raw in [
        format!("postgres://app:{PASSWORD}@db/provisioning"),
        "postgres://app:pa/ssZq7Xk9@db/provisioning".to_owned(),
        "postgres://app:pa?ssZq7Xk9@db/provisioning".to_owned(),
        "postgres://app:pa#ssZq7Xk9@db/provisioning".to_owned(),
        // Digits first: the URL parses, the rest of the password lands after the host.
        "postgres://app:12/wo?rdZq7Xk9@db/provisioning".to_owned(),
        "postgres://app:12?wo?rdZq7Xk9@db/provisioning".to_owned(),
        "postgres://app:12#wo?rdZq7Xk9@db/provisioning".to_owned(),
        format!("amqp://app:{PASSWORD}@mq:5672/%2f"),
        "amqp://app:12#wo?rdZq7Xk9@mq:5672/%2f".to_owned(),
    ] {
        let postgres_err = postgres(&raw).map(|_| ()).unwrap_err();
        let amqp_err = amqp(&raw).map(|_| ()).unwrap_err();
        assert_hidden(&postgres_err.to_string());
        assert_hidden(&amqp_err.to_string());
        assert_eq!(redact(&raw), INVALID_URL, "{raw}");
    }
}

#[test]
fn an_amqp_url_without_slashes_is_refused_without_echo() {
    let err = amqp("amqp:guest:wo?rdZq7Xk9@127.0.0.1:5672/%2f").unwrap_err();
    assert_eq!(
        err,
        UrlError::NoAuthority {
            expected: "amqp://"
        }
    );
    assert_hidden(&err.to_string());
    assert_eq!(
        redact("amqp:guest:wo?rdZq7Xk9@127.0.0.1:5672/%2f"),
        INVALID_URL
    );
}

#[test]
fn wrong_schemes_and_non_urls_are_refused() {
    assert_eq!(
        postgres("mysql://u:Zq7Xk9@h/db").unwrap_err(),
        UrlError::Scheme {
            expected: "postgres://"
        }
    );
    assert_eq!(
        amqp("postgres://u:Zq7Xk9@h/db").unwrap_err(),
        UrlError::Scheme {
            expected: "amqp://"
        }
    );
    assert!(matches!(
        postgres("not a url Zq7Xk9"),
        Err(UrlError::Syntax(_))
    ));
    assert_eq!(
        amqp("amqp://h:5672/%2f?heartbeat=soon").unwrap_err(),
        UrlError::Amqp
    );
}

#[test]
fn unknown_postgres_parameters_are_refused_by_name() {
    let err = postgres("postgres://h/db?sslpassword=Zq7Xk9").unwrap_err();
    assert_eq!(err, UrlError::UnknownParameter("`sslpassword`".into()));
    assert_hidden(&err.to_string());
    let odd = postgres("postgres://h/db?wo%3FrdZq7Xk9").unwrap_err();
    assert_hidden(&odd.to_string());
    assert!(postgres("postgres://h/db?sslmode=disable&options[search_path]=app").is_ok());
}

#[test]
fn redaction_hides_user_info_and_query_passwords() {
    assert_eq!(
        redact(&format!(
            "postgres://app:{ENCODED}@db/provisioning?password={ENCODED}"
        )),
        "postgres://app:***@db/provisioning?password=***"
    );
    assert_eq!(
        redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
        "amqp://guest:***@127.0.0.1:5672/%2f"
    );
    assert_eq!(
        redact("postgres://app@db/provisioning"),
        "postgres://app@db/provisioning"
    );
    assert_eq!(redact("not a url Zq7Xk9"), INVALID_URL);
}
