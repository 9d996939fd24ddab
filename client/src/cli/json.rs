//! `--output json`: every answer of the server printed as the canonical
//! proto3 JSON of its message, generated from the wire contract's own
//! descriptors (the ones the server registers for reflection).
//!
//! Nothing is mapped by hand, so a field added to `cache.proto` appears
//! here without a change and none is ever missing: fields at their default
//! are printed too. Field names are the proto's (`objects_copied`, as in
//! `cache.proto` and the Python SDK), 64-bit integers are strings, enums
//! their names, timestamps RFC 3339 and durations `"1.5s"`, as the proto3
//! JSON mapping specifies; any proto3 JSON parser reads it back.

use std::sync::OnceLock;

use expresscache_client::pb;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, SerializeOptions};
use serde_json::Value;

/// A message of the wire contract, known to the descriptor pool by name.
pub trait Wire: Message {
    /// Its full protobuf name.
    const NAME: &'static str;
}

macro_rules! wire {
    ($($t:ident),* $(,)?) => {
        $(impl Wire for pb::$t {
            const NAME: &'static str = concat!("expresscache.v1.", stringify!($t));
        })*
    };
}

wire!(
    WarmProgress,
    WarmPlan,
    OperationStatus,
    PrefixStatus,
    EvictResponse,
    Lease,
    SweepFailure,
);

/// The contract's descriptors, decoded once.
fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(expresscache::FILE_DESCRIPTOR_SET)
            .expect("the contract's descriptor set is built into the binary")
    })
}

/// Proto3 JSON with the proto's field names and every field present.
const OPTIONS: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .skip_default_fields(false);

/// `m` as proto3 JSON.
pub fn to_json<M: Wire>(m: &M) -> Value {
    let desc = desc_of::<M>();
    // Re-decoding our own encoding against the descriptor it was generated
    // from cannot fail; neither can serializing into a `Value`.
    let dynamic = DynamicMessage::decode(desc, m.encode_to_vec().as_slice())
        .expect("a message decodes against its own descriptor");
    let mut v = dynamic
        .serialize_with_options(serde_json::value::Serializer, &OPTIONS)
        .expect("proto3 JSON serializes into a serde_json value");
    fill_unset(&mut v, &desc_of::<M>());
    v
}

fn desc_of<M: Wire>() -> MessageDescriptor {
    pool()
        .get_message_by_name(M::NAME)
        .unwrap_or_else(|| panic!("{} is in the contract", M::NAME))
}

/// Prints an unset message field (no counters yet, no ETA) as `null`,
/// which proto3 JSON reads as unset, so every field of the contract is a
/// key of the object; recurses into our own messages (a well-known type
/// such as a Timestamp is a JSON string, not an object).
fn fill_unset(v: &mut Value, desc: &MessageDescriptor) {
    let Some(object) = v.as_object_mut() else {
        return;
    };
    for field in desc.fields() {
        let Kind::Message(inner) = field.kind() else {
            continue;
        };
        if field.is_map() || inner.full_name().starts_with("google.protobuf.") {
            object.entry(field.name()).or_insert(Value::Null);
            continue;
        }
        match object.entry(field.name()).or_insert(Value::Null) {
            Value::Array(items) => items.iter_mut().for_each(|i| fill_unset(i, &inner)),
            nested => fill_unset(nested, &inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_present_with_the_protos_names_even_at_its_default() {
        let empty = to_json(&pb::WarmProgress::default());
        let desc = desc_of::<pb::WarmProgress>();
        let object = empty.as_object().expect("an object");
        for field in desc.fields() {
            assert!(
                object.contains_key(field.name()),
                "{} missing: {empty}",
                field.name()
            );
        }
        assert_eq!(object.len(), desc.fields().len(), "{empty}");
        // An unset message is null; a set one has every field.
        assert_eq!(empty["counters"], Value::Null, "{empty}");
        assert_eq!(empty["eta"], Value::Null, "{empty}");
        let counted = to_json(&pb::WarmProgress {
            counters: Some(pb::Counters::default()),
            batch_job: Some(pb::BatchJobProgress::default()),
            ..Default::default()
        });
        assert_eq!(counted["counters"]["objects_copied"], "0", "{counted}");
        assert_eq!(counted["batch_job"]["job_id"], "", "{counted}");
    }

    #[test]
    fn values_follow_the_proto3_json_mapping() {
        let p = pb::WarmProgress {
            operation_id: "op".into(),
            phase: pb::Phase::Done as i32,
            outcome: pb::Outcome::PartiallyFailed as i32,
            counters: Some(pb::Counters {
                objects_copied: 3,
                bytes_copied: 1 << 40,
                ..Default::default()
            }),
            concurrency_limit: 64,
            elapsed: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            started_at: Some(prost_types::Timestamp {
                seconds: 1_764_892_800,
                nanos: 0,
            }),
            failures: vec![pb::KeyFailure {
                key: "k".into(),
                code: "AccessDenied".into(),
                message: "no".into(),
            }],
            empty_prefixes: vec!["e/".into()],
            ..Default::default()
        };
        let v = to_json(&p);
        assert_eq!(v["operation_id"], "op");
        assert_eq!(v["phase"], "PHASE_DONE");
        assert_eq!(v["outcome"], "OUTCOME_PARTIALLY_FAILED");
        // 64-bit integers are strings (exact beyond 2^53); 32-bit are numbers.
        assert_eq!(v["counters"]["objects_copied"], "3");
        assert_eq!(v["counters"]["bytes_copied"], "1099511627776");
        assert_eq!(v["concurrency_limit"], 64);
        assert_eq!(v["elapsed"], "1.500s");
        assert_eq!(v["started_at"], "2025-12-05T00:00:00Z");
        assert_eq!(v["failures"][0]["code"], "AccessDenied");
        assert_eq!(v["empty_prefixes"][0], "e/");
    }
}
