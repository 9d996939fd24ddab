//! The operation log's versioned documents ([`encoding`]) as DynamoDB
//! attributes: a document is serialized to a `serde_json::Value` and that
//! tree mapped onto attribute values one to one (numbers N, strings S,
//! booleans BOOL, null NULL, arrays L, objects M), so an operation's
//! request and state are readable maps in the console and in exports, not
//! blobs. Reading maps the attributes back and deserializes the document,
//! which then decodes (and version-checks) as from SQLite's JSON text.
//!
//! [`encoding`]: crate::index::encoding

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::index::IndexError;

/// `v` as an attribute value.
pub fn to_attr(v: &Value) -> AttributeValue {
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_attr).collect()),
        Value::Object(fields) => AttributeValue::M(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_attr(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

/// The JSON value an attribute holds; an error names what does not map
/// back (a set or binary type, a number JSON cannot hold).
pub fn from_attr(a: &AttributeValue) -> Result<Value, String> {
    Ok(match a {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(n) => Value::Number(number(n)?),
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::L(items) => {
            Value::Array(items.iter().map(from_attr).collect::<Result<_, _>>()?)
        }
        AttributeValue::M(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), from_attr(v)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
        other => return Err(format!("unexpected attribute type {other:?}")),
    })
}

/// A DynamoDB number as JSON: an integer when it is one (u64 or i64, the
/// documents' counters and times), else a finite float.
fn number(n: &str) -> Result<Number, String> {
    if let Ok(u) = n.parse::<u64>() {
        return Ok(u.into());
    }
    if let Ok(i) = n.parse::<i64>() {
        return Ok(i.into());
    }
    n.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .ok_or_else(|| format!("number {n:?} does not fit a document"))
}

/// A document (one of [`encoding`](crate::index::encoding)'s) as a map
/// attribute.
pub fn doc_attr<T: Serialize>(doc: &T) -> AttributeValue {
    // Plain structs of strings, numbers and maps with string keys:
    // serialization cannot fail.
    to_attr(&serde_json::to_value(doc).unwrap_or(Value::Null))
}

/// The document stored in `attr` (`what` names it in errors).
pub fn doc_of<T: DeserializeOwned>(attr: &AttributeValue, what: &str) -> Result<T, IndexError> {
    let value = from_attr(attr).map_err(|e| IndexError::Corrupt(format!("stored {what}: {e}")))?;
    serde_json::from_value(value).map_err(|e| IndexError::Corrupt(format!("stored {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use expresscache::{BucketName, DirectoryBucketName, Prefix, RequestId, WarmSpec};

    use super::*;
    use crate::core::operation::{KeyFailure, OperationState, Outcome};
    use crate::index::encoding::{RequestDoc, StateDoc};

    #[test]
    fn every_json_value_maps_to_an_attribute_and_back() {
        let v = serde_json::json!({
            "s": "text", "empty": "", "t": true, "f": false, "null": null,
            "big": u64::MAX, "neg": i64::MIN, "float": 1.5,
            "list": [1, "two", [3], {"four": 4}], "nested": {"": {"x": []}}
        });
        assert_eq!(from_attr(&to_attr(&v)).unwrap(), v);
        assert_eq!(
            to_attr(&serde_json::json!(u64::MAX)),
            AttributeValue::N("18446744073709551615".into()),
            "integers are exact"
        );
    }

    #[test]
    fn documents_are_readable_maps_that_round_trip() {
        let spec = WarmSpec {
            source: BucketName::parse("src").unwrap(),
            prefixes: vec![Prefix::root(), Prefix::parse("a b/ü/").unwrap()],
            directory_bucket: DirectoryBucketName::parse("cache--use1-az4--x-s3").unwrap(),
            ttl: Duration::new(90, 123),
            force_copy: true,
            request_id: Some(RequestId::parse("job-1").unwrap()),
            destination_prefix: Prefix::root(),
            max_staleness: std::time::Duration::ZERO,
            batch_operations: false,
            allow_empty: false,
            selection: Default::default(),
        };
        let attr = doc_attr(&RequestDoc::from(&spec));
        let map = attr.as_m().unwrap();
        assert_eq!(map["source"], AttributeValue::S("src".into()));
        assert_eq!(map["ttl_ns"], AttributeValue::N("90000000123".into()));
        assert_eq!(map["v"], AttributeValue::N("1".into()));
        let back: RequestDoc = doc_of(&attr, "request").unwrap();
        assert_eq!(back.decode().unwrap(), spec);

        let mut state = OperationState::queued("op", 7);
        state.counters.bytes_copied = u64::MAX;
        state.failures.push(KeyFailure {
            key: "k\"'".into(),
            code: "AccessDenied".into(),
            message: String::new(),
        });
        state.lease_expires_at = Some(-5);
        let state = state.ended(Outcome::PartiallyFailed, Some("why".into()));
        let attr = doc_attr(&StateDoc::from(&state));
        let back: StateDoc = doc_of(&attr, "state").unwrap();
        assert_eq!(back.decode().unwrap(), state);
    }

    #[test]
    fn what_does_not_map_back_is_corrupt() {
        let set = AttributeValue::Ss(vec!["a".into()]);
        assert!(from_attr(&set)
            .unwrap_err()
            .contains("unexpected attribute type"));
        assert!(number("1e400").is_err());
        let err = doc_of::<StateDoc>(&AttributeValue::S("x".into()), "state").unwrap_err();
        assert!(matches!(err, IndexError::Corrupt(_)), "{err}");
    }
}
