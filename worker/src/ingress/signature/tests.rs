//! Svix's published test vectors (from the test suites of svix/svix-webhooks), with the clock
//! injected.

use super::*;

/// Every header name Svix signs under, branded and unbranded: the contract, spelled out.
pub(super) const HEADER_NAMES: [&str; 6] = [
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ID_A: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TS_A: i64 = 1_614_265_330;
const BODY_A: &[u8] = br#"{"test": 2432232314}"#;
const SIG_A: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

const SECRET_B: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const ID_B: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
const TS_B: i64 = 1_649_367_553;
const BODY_B: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
const SIG_B: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

fn headers(id: &str, timestamp: i64, signature: &str) -> SignedHeaders {
    SignedHeaders {
        id: id.into(),
        timestamp,
        signature: signature.into(),
    }
}

/// A verifier of the space-separated `secrets`.
pub(super) fn verifier(secrets: &str) -> Verifier {
    Verifier::new(WebhookSecret::parse(secrets).unwrap())
}

fn verify(secret: &str, h: &SignedHeaders, body: &[u8], now: i64) -> Result<(), SignatureError> {
    verifier(secret).verify(h, body, now)
}

#[test]
fn vector_a_cross_language_verifies() {
    assert_eq!(
        verify(SECRET_A, &headers(ID_A, TS_A, SIG_A), BODY_A, TS_A),
        Ok(())
    );
}

#[test]
fn vector_b_rust_library_verifies() {
    assert_eq!(
        verify(SECRET_B, &headers(ID_B, TS_B, SIG_B), BODY_B, TS_B),
        Ok(())
    );
}

#[test]
fn vector_c_large_payloads_verify() {
    let cases = [
        (1_048_576, "v1,txpEUxqWZJ5nteTnymUVa+7C4NHpBeXJ6CsBAW0c3/A="),
        (262_144, "v1,Mw4Pe2WgApuT7NSqnSq0PQPV9gbLdggCl9B865x5Xh0="),
    ];
    for (n, signature) in cases {
        let body = vec![b'a'; n];
        assert_eq!(
            verify(SECRET_A, &headers(ID_A, TS_A, signature), &body, TS_A),
            Ok(()),
            "{n}"
        );
    }
}

#[test]
fn a_changed_last_character_is_rejected() {
    let tampered = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
    let result = verify(SECRET_A, &headers(ID_A, TS_A, tampered), BODY_A, TS_A);
    assert_eq!(result, Err(SignatureError::NoMatch));
}

#[test]
fn vector_b_with_a_wrong_signature_is_rejected() {
    let wrong = "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=";
    assert_eq!(
        verify(SECRET_B, &headers(ID_B, TS_B, wrong), BODY_B, TS_B),
        Err(SignatureError::NoMatch)
    );
}

#[test]
fn bare_truncated_and_other_version_signatures_are_rejected() {
    for signature in [
        "v1,",
        "v1,g0hM9SsE+OTPJTGt",
        "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "",
        "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ] {
        let result = verify(SECRET_A, &headers(ID_A, TS_A, signature), BODY_A, TS_A);
        assert_eq!(result, Err(SignatureError::NoMatch), "{signature:?}");
    }
}

#[test]
fn decoys_before_and_after_the_valid_signature_are_fine() {
    let signature = format!(
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= {SIG_A} v1,bm9wZQ=="
    );
    assert_eq!(
        verify(SECRET_A, &headers(ID_A, TS_A, &signature), BODY_A, TS_A),
        Ok(())
    );
}

#[test]
fn a_tampered_body_or_id_is_rejected() {
    let body = br#"{"test": 2432232315}"#;
    assert_eq!(
        verify(SECRET_A, &headers(ID_A, TS_A, SIG_A), body, TS_A),
        Err(SignatureError::NoMatch)
    );
    let other_id = headers("msg_other", TS_A, SIG_A);
    assert_eq!(
        verify(SECRET_A, &other_id, BODY_A, TS_A),
        Err(SignatureError::NoMatch)
    );
}

#[test]
fn the_wrong_secret_is_rejected() {
    assert_eq!(
        verify(SECRET_B, &headers(ID_A, TS_A, SIG_A), BODY_A, TS_A),
        Err(SignatureError::NoMatch)
    );
}

#[test]
fn any_of_several_secrets_verifies() {
    let rotated = format!("{SECRET_B} {SECRET_A}");
    let verifier = verifier(&rotated);
    assert_eq!(
        verifier.verify(&headers(ID_A, TS_A, SIG_A), BODY_A, TS_A),
        Ok(())
    );
    assert_eq!(
        verifier.verify(&headers(ID_B, TS_B, SIG_B), BODY_B, TS_B),
        Ok(())
    );
}

#[test]
fn timestamps_beyond_five_minutes_either_way_are_rejected() {
    let h = headers(ID_A, TS_A, SIG_A);
    assert_eq!(verify(SECRET_A, &h, BODY_A, TS_A + 300), Ok(()));
    assert_eq!(verify(SECRET_A, &h, BODY_A, TS_A - 300), Ok(()));
    assert_eq!(
        verify(SECRET_A, &h, BODY_A, TS_A + 301),
        Err(SignatureError::TimestampOutOfTolerance)
    );
    assert_eq!(
        verify(SECRET_A, &h, BODY_A, TS_A - 301),
        Err(SignatureError::TimestampOutOfTolerance)
    );
}

#[test]
fn signing_reproduces_the_vectors() {
    assert_eq!(sign(SECRET_A, ID_A, TS_A, BODY_A).unwrap(), SIG_A);
    assert_eq!(sign(SECRET_B, ID_B, TS_B, BODY_B).unwrap(), SIG_B);
}

#[test]
fn headers_are_read_in_both_brandings_and_each_missing_one_is_named() {
    let mut map = HeaderMap::new();
    map.insert("webhook-id", ID_A.parse().unwrap());
    map.insert("webhook-timestamp", TS_A.to_string().parse().unwrap());
    map.insert("webhook-signature", SIG_A.parse().unwrap());
    assert_eq!(
        SignedHeaders::from_headers(&map),
        Ok(headers(ID_A, TS_A, SIG_A))
    );

    for (missing, named) in [
        ("svix-id", "svix-id"),
        ("svix-timestamp", "svix-timestamp"),
        ("svix-signature", "svix-signature"),
    ] {
        let mut map = HeaderMap::new();
        map.insert("svix-id", ID_A.parse().unwrap());
        map.insert("svix-timestamp", TS_A.to_string().parse().unwrap());
        map.insert("svix-signature", SIG_A.parse().unwrap());
        map.remove(missing);
        assert_eq!(
            SignedHeaders::from_headers(&map),
            Err(SignatureError::MissingHeader(named))
        );
    }
}

#[test]
fn a_non_numeric_timestamp_or_oversized_id_is_invalid() {
    let mut map = HeaderMap::new();
    map.insert("svix-id", ID_A.parse().unwrap());
    map.insert("svix-timestamp", "yesterday".parse().unwrap());
    map.insert("svix-signature", SIG_A.parse().unwrap());
    assert_eq!(
        SignedHeaders::from_headers(&map),
        Err(SignatureError::InvalidHeader("svix-timestamp"))
    );
    map.insert("svix-timestamp", TS_A.to_string().parse().unwrap());
    map.insert("svix-id", "m".repeat(256).parse().unwrap());
    assert_eq!(
        SignedHeaders::from_headers(&map),
        Err(SignatureError::InvalidHeader("svix-id"))
    );
}

/// The three headers as `SignedHeaders::from_headers` reads them, each replaceable.
fn header_map(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("svix-id", id.parse().unwrap());
    map.insert("svix-timestamp", timestamp.parse().unwrap());
    map.insert("svix-signature", signature.parse().unwrap());
    map
}

/// `count` space-separated copies of `entry`.
fn repeated(entry: &str, count: usize) -> String {
    vec![entry; count].join(" ")
}

/// A well-formed v1 entry (32 bytes) that matches nothing.
const DECOY: &str = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";

fn macs_to_verify(secrets: &str, signature: &str) -> (Result<(), SignatureError>, usize) {
    let verifier = verifier(secrets);
    let h = headers(ID_A, TS_A, signature);
    mac_count::during(|| verifier.verify(&h, BODY_A, TS_A))
}

#[test]
fn forty_thousand_empty_entries_cost_no_mac() {
    let (result, macs) = macs_to_verify(SECRET_A, &repeated("v1,", 40_000));
    assert_eq!((result, macs), (Err(SignatureError::NoMatch), 0));
}

#[test]
fn entries_that_cannot_be_a_tag_cost_no_mac() {
    let short_long_or_not_base64 = [
        "v1,bm9wZQ==",
        "v1,AAAA",
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mcA",
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc",
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6m*=",
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mcAAA==",
        "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    ]
    .join(" ");
    let rotated = format!("{SECRET_A} {SECRET_B}");
    let (result, macs) = macs_to_verify(&rotated, &short_long_or_not_base64);
    assert_eq!((result, macs), (Err(SignatureError::NoMatch), 0));
}

#[test]
fn forty_thousand_tag_shaped_decoys_cost_one_mac_per_secret() {
    let decoys = repeated(DECOY, 40_000);
    assert_eq!(
        macs_to_verify(SECRET_A, &decoys),
        (Err(SignatureError::NoMatch), 1)
    );
    let rotated = format!("{SECRET_B} {SECRET_A}");
    assert_eq!(
        macs_to_verify(&rotated, &decoys),
        (Err(SignatureError::NoMatch), 2)
    );
}

#[test]
fn a_match_among_decoys_costs_at_most_one_mac_per_secret() {
    let signature = format!(
        "{} {SIG_A} {}",
        repeated(DECOY, 20_000),
        repeated(DECOY, 20_000)
    );
    assert_eq!(macs_to_verify(SECRET_A, &signature), (Ok(()), 1));
    let matching_secret_second = format!("{SECRET_B} {SECRET_A}");
    assert_eq!(
        macs_to_verify(&matching_secret_second, &signature),
        (Ok(()), 2)
    );
    let matching_secret_first = format!("{SECRET_A} {SECRET_B}");
    assert_eq!(
        macs_to_verify(&matching_secret_first, &signature),
        (Ok(()), 1)
    );
}

#[test]
fn an_out_of_tolerance_timestamp_costs_no_mac() {
    let verifier = verifier(SECRET_A);
    let h = headers(ID_A, TS_A, SIG_A);
    let (result, macs) = mac_count::during(|| verifier.verify(&h, BODY_A, TS_A + 301));
    assert_eq!(
        (result, macs),
        (Err(SignatureError::TimestampOutOfTolerance), 0)
    );
}

#[test]
fn sixteen_signatures_are_read_and_seventeen_are_invalid() {
    let sixteen = format!("{} {SIG_A}", repeated("v1,", 15));
    let map = header_map(ID_A, &TS_A.to_string(), &sixteen);
    assert_eq!(
        SignedHeaders::from_headers(&map),
        Ok(headers(ID_A, TS_A, &sixteen))
    );
    for seventeen in [
        format!("{sixteen} v2,x"),
        repeated("v1,", 17),
        repeated("v1,", 40_000),
    ] {
        let map = header_map(ID_A, &TS_A.to_string(), &seventeen);
        assert_eq!(
            SignedHeaders::from_headers(&map),
            Err(SignatureError::InvalidHeader("svix-signature"))
        );
    }
}

#[test]
fn a_value_over_four_kib_under_any_of_the_six_names_is_invalid() {
    let oversized = "m".repeat(MAX_HEADER_BYTES + 1);
    let at_limit = format!(
        "{SIG_A} v2,{}",
        "x".repeat(MAX_HEADER_BYTES - SIG_A.len() - 4)
    );
    assert_eq!(at_limit.len(), MAX_HEADER_BYTES);
    let map = header_map(ID_A, &TS_A.to_string(), &at_limit);
    assert!(SignedHeaders::from_headers(&map).is_ok());

    for name in HEADER_NAMES {
        let mut map = header_map(ID_A, &TS_A.to_string(), SIG_A);
        map.append(name, oversized.parse().unwrap());
        assert_eq!(
            SignedHeaders::from_headers(&map),
            Err(SignatureError::InvalidHeader(name)),
            "{name}"
        );
    }
}

#[test]
fn a_timestamp_is_one_to_ten_ascii_digits() {
    for valid in ["0", "1614265330", "9999999999", "0000000001"] {
        let map = header_map(ID_A, valid, SIG_A);
        let parsed = SignedHeaders::from_headers(&map).map(|h| h.timestamp);
        assert_eq!(parsed, Ok(valid.parse().unwrap()), "{valid:?}");
    }
    for invalid in [
        "",
        " ",
        "+1614265330",
        "-1614265330",
        "-0",
        "16142653300",
        "16142653300000",
        "99999999999999999999",
        " 1614265330",
        "1614265330 ",
        "1614265330\t",
        "1_614_265_330",
        "1614265330.0",
        "0x5f",
        "abc",
    ] {
        let map = header_map(ID_A, invalid, SIG_A);
        assert_eq!(
            SignedHeaders::from_headers(&map),
            Err(SignatureError::InvalidHeader("svix-timestamp")),
            "{invalid:?}"
        );
    }
}

#[test]
fn the_tolerance_check_cannot_overflow() {
    for (timestamp, now) in [
        (i64::MIN, i64::MAX),
        (i64::MAX, i64::MIN),
        (0, i64::MIN),
        (i64::MIN, 0),
    ] {
        assert_eq!(
            headers(ID_A, timestamp, SIG_A).check_timestamp(now),
            Err(SignatureError::TimestampOutOfTolerance),
            "{timestamp} at {now}"
        );
    }
    assert_eq!(
        headers(ID_A, i64::MAX, SIG_A).check_timestamp(i64::MAX - 300),
        Ok(())
    );
    assert_eq!(
        headers(ID_A, i64::MIN, SIG_A).check_timestamp(i64::MIN + 300),
        Ok(())
    );
}

#[test]
fn a_zero_timestamp_reads_and_is_out_of_tolerance() {
    let map = header_map(ID_A, "0", SIG_A);
    let h = SignedHeaders::from_headers(&map).unwrap();
    assert_eq!(
        h.check_timestamp(TS_A),
        Err(SignatureError::TimestampOutOfTolerance)
    );
}

#[test]
fn every_header_limit_is_the_invalid_header_code() {
    for name in ["svix-id", "svix-timestamp", "svix-signature", "webhook-id"] {
        assert_eq!(
            SignatureError::InvalidHeader(name).as_str(),
            "invalid_header"
        );
    }
}
