//! A dead letter's AMQP headers and properties as plain JSON, for the store (which operators read
//! and query) and back again, for a replay.
//!
//! Plain, not typed: strings stay strings and integers numbers, so `headers->>'x-failure-reason'`
//! reads as it looks. Going back, an integer becomes a long-long and a string a long string,
//! which are the types this product writes its own headers in. Other producers' headers may come
//! back wider (a short int as a long-long), decimals as text and non-finite floats as void: a
//! replay carries what this product reads exactly, the rest as near as JSON allows.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use serde_json::{Map, Number, Value};

use crate::broker;

/// `headers` as a JSON object.
pub fn headers_to_json(headers: &FieldTable) -> Value {
    Value::Object(table_to_map(headers))
}

/// The JSON object of [`headers_to_json`] as AMQP headers again.
pub fn headers_from_json(value: &Value) -> FieldTable {
    let mut table = FieldTable::default();
    if let Value::Object(map) = value {
        for (name, value) in map {
            table.insert(name.as_str().into(), value_from_json(value));
        }
    }
    table
}

/// The properties a replay publishes again (headers apart, which have their own column): the
/// string properties that are set, with the timestamp and priority.
pub fn properties_to_json(properties: &BasicProperties) -> Value {
    let mut map = Map::new();
    for (name, value) in string_properties(properties) {
        if let Some(value) = value {
            map.insert(name.to_owned(), Value::String(value.as_str().to_owned()));
        }
    }
    if let Some(timestamp) = *properties.timestamp() {
        map.insert("timestamp".to_owned(), Value::from(timestamp));
    }
    if let Some(priority) = *properties.priority() {
        map.insert("priority".to_owned(), Value::from(priority));
    }
    Value::Object(map)
}

/// The properties of [`properties_to_json`] again, with `headers`.
pub fn properties_from_json(value: &Value, headers: FieldTable) -> BasicProperties {
    let text = |name: &str| -> Option<ShortString> {
        value
            .get(name)
            .and_then(Value::as_str)
            .map(ShortString::from)
    };
    let mut properties = BasicProperties::default().with_headers(headers);
    type Set = fn(BasicProperties, ShortString) -> BasicProperties;
    let setters: [(&str, Set); 6] = [
        ("content_type", BasicProperties::with_content_type),
        ("content_encoding", BasicProperties::with_content_encoding),
        ("correlation_id", BasicProperties::with_correlation_id),
        ("type", BasicProperties::with_type),
        ("app_id", BasicProperties::with_app_id),
        ("message_id", BasicProperties::with_message_id),
    ];
    for (name, set) in setters {
        if let Some(value) = text(name) {
            properties = set(properties, value);
        }
    }
    if let Some(timestamp) = value.get("timestamp").and_then(Value::as_u64) {
        properties = properties.with_timestamp(timestamp);
    }
    if let Some(priority) = value
        .get("priority")
        .and_then(Value::as_u64)
        .and_then(|p| u8::try_from(p).ok())
    {
        properties = properties.with_priority(priority);
    }
    properties
}

fn string_properties(p: &BasicProperties) -> [(&'static str, &Option<ShortString>); 6] {
    [
        ("content_type", p.content_type()),
        ("content_encoding", p.content_encoding()),
        ("correlation_id", p.correlation_id()),
        ("type", p.kind()),
        ("app_id", p.app_id()),
        ("message_id", p.message_id()),
    ]
}

fn table_to_map(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value_to_json(value)))
        .collect()
}

fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => Value::String(format!("{d:?}")),
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into()),
        AMQPValue::ByteArray(bytes) => {
            Value::String(String::from_utf8_lossy(bytes.as_slice()).into())
        }
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(value_to_json).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(table_to_map(table)),
        AMQPValue::Void => Value::Null,
    }
}

fn value_from_json(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(n) => AMQPValue::LongLongInt(n),
            None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => broker::long_string(s),
        Value::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(value_from_json).collect::<Vec<_>>(),
        )),
        Value::Object(_) => AMQPValue::FieldTable(headers_from_json(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_product_s_own_headers_survive_the_round_trip_exactly() {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-received-at-ms".into(),
            AMQPValue::LongLongInt(1_764_300_000_123),
        );
        headers.insert(
            "x-failure-reason".into(),
            broker::long_string("email_conflict"),
        );
        headers.insert("traceparent".into(), broker::long_string("00-abc-def-01"));
        let mut death = FieldTable::default();
        death.insert("reason".into(), broker::long_string("delivery_limit"));
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        let json = headers_to_json(&headers);
        assert_eq!(json["x-failure-reason"], "email_conflict");
        assert_eq!(json["x-death"][0]["reason"], "delivery_limit");
        assert_eq!(headers_from_json(&json), headers);
    }

    #[test]
    fn properties_come_back_with_the_headers_given() {
        let original = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("msg_1".into())
            .with_timestamp(1_764_300_000);
        let json = properties_to_json(&original);
        let mut headers = FieldTable::default();
        headers.insert("x-replay-count".into(), AMQPValue::LongLongInt(1));
        let back = properties_from_json(&json, headers.clone());
        assert_eq!(back, original.with_headers(headers));
    }
}
