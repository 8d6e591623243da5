//! Properties of the header parser and the verifier on arbitrary input: no panic, the limits
//! hold for whatever is accepted, and the MAC bound holds for any signature header.

use axum::http::HeaderValue;
use proptest::prelude::*;

use super::*;

const SECRET_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_B: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
use super::tests::{HEADER_NAMES as NAMES, verifier};
const CODES: [&str; 4] = [
    "missing_header",
    "invalid_header",
    "timestamp_out_of_tolerance",
    "invalid_signature",
];

/// Any bytes a header value may hold (visible ASCII, space, tab, obs-text): a short run, or one
/// repeated past the size limit.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    let run = proptest::collection::vec(any::<u8>(), 1..64);
    let repeats = prop_oneof![3 => Just(1), 1 => 60usize..150];
    (run, repeats).prop_filter_map("a valid header value", |(run, repeats)| {
        let allowed = |byte: &u8| *byte == b'\t' || (*byte >= 0x20 && *byte != 0x7f);
        let run: Vec<u8> = run.into_iter().filter(allowed).collect();
        HeaderValue::from_bytes(&run.repeat(repeats)).ok()
    })
}

/// Short values shaped like the real ones, so that parsing gets past the first check often.
fn plausible_value() -> impl Strategy<Value = HeaderValue> {
    let text = prop_oneof![
        "msg_[A-Za-z0-9]{0,30}",
        "[+-]?[0-9 ]{0,14}",
        "((v1|v2|v1,|)[A-Za-z0-9+/=,]{0,50} ?){0,20}",
    ];
    text.prop_filter_map("a valid header value", |text| {
        HeaderValue::from_str(&text).ok()
    })
}

/// Up to eight of the six names, each with an arbitrary or a plausible value; half the time
/// replacing values of a valid set, so that parsing often gets to the last check.
fn header_map() -> impl Strategy<Value = HeaderMap> {
    let value = prop_oneof![header_value(), plausible_value()];
    let entries =
        proptest::collection::vec((proptest::sample::select(NAMES.to_vec()), value), 0..8);
    (any::<bool>(), entries).prop_map(|(from_valid, entries)| {
        let mut map = HeaderMap::new();
        if from_valid {
            map.insert("svix-id", HeaderValue::from_static("msg_1"));
            map.insert("svix-timestamp", HeaderValue::from_static("1614265330"));
            map.insert("svix-signature", HeaderValue::from_static("v1,AAAA"));
        }
        for (name, value) in entries {
            if from_valid {
                map.insert(name, value);
            } else {
                map.append(name, value);
            }
        }
        map
    })
}

/// A clock and a timestamp: arbitrary, or within a few minutes of each other so that
/// verification gets past the tolerance check.
fn clock_and_timestamp() -> impl Strategy<Value = (i64, i64)> {
    prop_oneof![
        (any::<i64>(), any::<i64>()),
        (any::<i64>(), -400i64..400).prop_map(|(now, skew)| (now, now.saturating_add(skew))),
    ]
}

/// Signature headers mixing entries that can and cannot be a tag, and arbitrary text.
fn signature_header() -> impl Strategy<Value = String> {
    let entry = (
        proptest::sample::select(vec!["v1,", "v2,", "v1", ""]),
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(version, bytes)| format!("{version}{}", STANDARD.encode(bytes)));
    prop_oneof![
        proptest::collection::vec(entry, 0..40).prop_map(|entries| entries.join(" ")),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_header_parser_never_panics_and_what_it_accepts_is_within_the_limits(
        map in header_map(),
    ) {
        match SignedHeaders::from_headers(&map) {
            Ok(signed) => {
                prop_assert!(!signed.id.is_empty() && signed.id.len() <= MAX_ID_LEN);
                prop_assert!((0..=9_999_999_999).contains(&signed.timestamp));
                prop_assert!(signed.signature.len() <= MAX_HEADER_BYTES);
                prop_assert!(entries(&signed.signature).count() <= MAX_SIGNATURES);
            }
            Err(err) => prop_assert!(CODES.contains(&err.as_str())),
        }
    }

    #[test]
    fn the_verifier_never_panics_and_macs_at_most_once_per_secret(
        signature in signature_header(),
        (now, timestamp) in clock_and_timestamp(),
        id in ".{0,20}",
    ) {
        let verifier = verifier(&format!("{SECRET_A} {SECRET_B}"));
        let signed = SignedHeaders { id, timestamp, signature };
        let (result, macs) = mac_count::during(|| verifier.verify(&signed, b"{}", now));
        prop_assert!(macs <= 2, "{macs} MACs");
        prop_assert_ne!(result, Ok(()));
    }

    #[test]
    fn a_valid_signature_among_any_decoys_verifies_with_at_most_one_mac_per_secret(
        decoys in signature_header(),
        before in any::<bool>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let valid = sign(SECRET_B, "msg_1", 1_614_265_330, &body).unwrap();
        let signature = if before { format!("{valid} {decoys}") } else { format!("{decoys} {valid}") };
        let verifier = verifier(&format!("{SECRET_A} {SECRET_B}"));
        let signed = SignedHeaders { id: "msg_1".into(), timestamp: 1_614_265_330, signature };
        let (result, macs) = mac_count::during(|| verifier.verify(&signed, &body, 1_614_265_330));
        prop_assert_eq!(result, Ok(()));
        prop_assert!(macs <= 2, "{macs} MACs");
    }
}
