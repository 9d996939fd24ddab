//! How records and leases sit in DynamoDB items (doc/INDEX-DYNAMODB.md §1):
//! attribute names, the hash partitioning of record keys, the lease sort
//! key, and the conversions between items and the index's types. Every
//! attribute is a plain readable value; nothing is an opaque blob.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::super::{Claim, ClaimKind, Entry, IndexError, Lease, Millis, Record, SweepFailure};

/// One DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// Hash partitions of one directory bucket's records. Part of the layout:
/// items written under another count would not be found, so changing it
/// needs new tables.
pub const PARTITIONS: u8 = 16;

/// Longest sort key DynamoDB stores, in bytes.
pub const MAX_SORT_KEY_BYTES: usize = 1024;

// Records table.
pub const PK: &str = "pk";
pub const KEY: &str = "key";
pub const SOURCE_BUCKET: &str = "source_bucket";
pub const SOURCE_KEY: &str = "source_key";
pub const SOURCE_ETAG: &str = "source_etag";
pub const SIZE: &str = "size";
pub const SOURCE_LAST_MODIFIED: &str = "source_last_modified";
pub const DEST_ETAG: &str = "dest_etag";
pub const CACHED_AT: &str = "cached_at";
pub const CLAIM_OWNER: &str = "claim_owner";
pub const CLAIM_KIND: &str = "claim_kind";
pub const CLAIM_DEADLINE: &str = "claim_deadline";
pub const UNCONFIRMED: &str = "unconfirmed";
/// The records table's TTL attribute (epoch seconds), on claim-only items.
pub const GC_AT: &str = "gc_at";

// Leases table.
pub const DIRECTORY_BUCKET: &str = "directory_bucket";
pub const LEASE: &str = "lease";
pub const PREFIX: &str = "prefix";
pub const EXPIRES_AT: &str = "expires_at";
pub const EPOCH: &str = "epoch";
pub const KIND: &str = "kind";
pub const SWEEP_ATTEMPTS: &str = "sweep_attempts";
pub const SWEEP_ERROR: &str = "sweep_error";
pub const SWEEP_RETRY_AT: &str = "sweep_retry_at";
/// The global secondary index the sweeper reads expired leases from.
pub const BY_EXPIRY: &str = "by_expiry";
/// The value of [`KIND`] on every lease: the index's one partition.
pub const LEASE_KIND: &str = "lease";

// Operations table (doc/INDEX-DYNAMODB.md §7): operation items and
// request-id items share the partition key `pk`.
pub const ID: &str = "id";
pub const REQUEST_ID: &str = "request_id";
/// On an operation item with a request id: the TTL its request id's item
/// was given (epoch seconds). A final state earlier than it leaves that
/// item alone; items of earlier releases have none and get theirs then.
pub const RID_GC_AT: &str = "rid_gc_at";
pub const REQUEST: &str = "request";
pub const STATE: &str = "state";
pub const DONE: &str = "done";
pub const STATUS: &str = "status";
pub const CREATED_AT: &str = "created_at";
pub const CREATED_KEY: &str = "created_key";
pub const UPDATED_AT: &str = "updated_at";
/// A finished operation's `updated_at` (its last write), projected into
/// [`BY_STATUS`] for the purge.
pub const FINISHED_AT: &str = "finished_at";
pub const RESUMPTIONS: &str = "resumptions";
pub const RUN_REPLICA: &str = "run_replica";
pub const RUN_ATTEMPT: &str = "run_attempt";
pub const RUN_DEADLINE: &str = "run_deadline";
pub const CANCEL_REQUESTED: &str = "cancel_requested";
/// The attempt that offered the operation to other replicas' warms, and
/// the latest attempt that withdrew its offer (fleet/remote.rs).
pub const OFFERED_ATTEMPT: &str = "offered_attempt";
pub const WITHDRAWN_ATTEMPT: &str = "withdrawn_attempt";
pub const CRASHES: &str = "crashes";
pub const CRASH_PENDING: &str = "crash_pending";
pub const LEASE_EPOCHS: &str = "lease_epochs";
/// On a request-id item: the operation that holds the request id.
pub const OPERATION_ID: &str = "operation_id";
/// The operations table's global secondary index: `status` x `created_key`.
pub const BY_STATUS: &str = "by_status";
/// The status of an unfinished operation (the stem of its [`STATUS`]).
pub const RUNNING: &str = "running";
/// The status of a finished operation (the stem of its [`STATUS`]).
pub const FINISHED: &str = "finished";
/// Shards of each status in [`BY_STATUS`]. An operation's [`STATUS`] is
/// its status, `#`, and a shard `00..STATUS_SHARDS` hashed from its id:
/// a burst of operations (a job array's launchers arriving or finishing
/// together) spreads over this many partition keys of the index instead
/// of landing on one, which DynamoDB caps at 1,000 writes a second. Part
/// of the layout: readers query every shard (and the unsharded value
/// earlier releases wrote), so changing it needs new tables.
pub const STATUS_SHARDS: u8 = 8;

pub const COPY: &str = "copy";
pub const EVICT: &str = "evict";

/// Separates a lease's prefix from its source bucket in the sort key: a
/// prefix holds no control characters, and U+0001 sorts below every
/// character it can hold, so the sort key orders leases by (prefix, source
/// bucket) and `begins_with(prefix + SEP)` finds exactly one prefix's leases.
pub const LEASE_SEP: char = '\u{1}';

/// How long a claim-only item outlives its claim's deadline before
/// DynamoDB's TTL may collect it (only items a crashed copier left behind
/// are still there by then).
const GC_GRACE_SECS: i64 = 7 * 24 * 3600;

/// FNV-1a, 64 bits, over the key's UTF-8 bytes: stable across releases and
/// languages, which the layout needs (a different hash would look for keys
/// in the wrong partitions).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The hash partition of `key`, `0..PARTITIONS`.
pub fn partition_of(key: &str) -> u8 {
    // The remainder is below PARTITIONS, so it fits.
    (fnv1a64(key.as_bytes()) % u64::from(PARTITIONS)) as u8
}

/// The [`STATUS`] of operation `id` in `status` ([`RUNNING`] or
/// [`FINISHED`]): its shard of that status.
pub fn status_key(status: &str, id: &str) -> String {
    let shard = fnv1a64(id.as_bytes()) % u64::from(STATUS_SHARDS);
    format!("{status}#{shard:02}")
}

/// Every [`STATUS`] value an operation in `status` may have: its shards,
/// then the bare status that releases before the sharding wrote (such
/// items leave it when they finish or are purged, so the extra Query
/// answers nothing once they are gone).
pub fn status_keys(status: &str) -> Vec<String> {
    (0..STATUS_SHARDS)
        .map(|shard| format!("{status}#{shard:02}"))
        .chain(std::iter::once(status.to_owned()))
        .collect()
}

/// The records table's partition key of partition `n` of `dir`.
pub fn partition_key(dir: &str, n: u8) -> String {
    format!("{dir}#{n:02}")
}

/// The records table's primary key of `key` in `dir`.
pub fn record_key(dir: &str, key: &str) -> Item {
    HashMap::from([
        (PK.to_owned(), s(partition_key(dir, partition_of(key)))),
        (KEY.to_owned(), s(key)),
    ])
}

/// The leases table's sort key of a lease, or an error if DynamoDB cannot
/// store it (the prefix is too long).
pub fn lease_sort_key(prefix: &str, source_bucket: &str) -> Result<String, IndexError> {
    let sk = format!("{prefix}{LEASE_SEP}{source_bucket}");
    if sk.len() > MAX_SORT_KEY_BYTES {
        return Err(IndexError::Storage(format!(
            "lease prefix is {} bytes; the DynamoDB index stores lease prefixes of at most {} \
             bytes with source bucket {source_bucket:?}",
            prefix.len(),
            MAX_SORT_KEY_BYTES - 1 - source_bucket.len()
        )));
    }
    Ok(sk)
}

/// The `begins_with` operand that finds every lease of `prefix`, or `None`
/// when no lease of a prefix that long can be stored (so none exists).
pub fn lease_prefix_operand(prefix: &str) -> Option<String> {
    // The shortest bucket name has 3 characters.
    (prefix.len() + 1 + 3 <= MAX_SORT_KEY_BYTES).then(|| format!("{prefix}{LEASE_SEP}"))
}

/// The leases table's primary key of a lease.
pub fn lease_key(lease: &Lease) -> Result<Item, IndexError> {
    Ok(HashMap::from([
        (DIRECTORY_BUCKET.to_owned(), s(&lease.directory_bucket)),
        (
            LEASE.to_owned(),
            s(lease_sort_key(&lease.prefix, &lease.source_bucket)?),
        ),
    ]))
}

/// The TTL (epoch seconds) of a claim-only item whose claim ends at
/// `deadline` (ms).
pub fn gc_at(deadline: Millis) -> i64 {
    (deadline / 1000).saturating_add(GC_GRACE_SECS)
}

/// A fresh lease epoch: 16 hex digits.
pub fn new_epoch() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..16].to_owned()
}

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn corrupt(what: &str, attr: &str, item: &Item) -> IndexError {
    let key = item
        .get(KEY)
        .or_else(|| item.get(LEASE))
        .or_else(|| item.get(ID))
        .and_then(|v| v.as_s().ok())
        .map_or("?", String::as_str);
    IndexError::Corrupt(format!(
        "{what} {key:?}: attribute {attr} missing or malformed"
    ))
}

pub(super) fn get_s<'a>(item: &'a Item, attr: &str) -> Option<&'a str> {
    item.get(attr)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

pub(super) fn req_s(what: &str, item: &Item, attr: &str) -> Result<String, IndexError> {
    get_s(item, attr)
        .map(str::to_owned)
        .ok_or_else(|| corrupt(what, attr, item))
}

pub(super) fn get_n(what: &str, item: &Item, attr: &str) -> Result<Option<i64>, IndexError> {
    match item.get(attr) {
        None => Ok(None),
        Some(v) => v
            .as_n()
            .ok()
            .and_then(|n| n.parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| corrupt(what, attr, item)),
    }
}

pub(super) fn req_n(what: &str, item: &Item, attr: &str) -> Result<i64, IndexError> {
    get_n(what, item, attr)?.ok_or_else(|| corrupt(what, attr, item))
}

/// The claim an item holds, if any.
pub fn claim_of(item: &Item) -> Result<Option<Claim>, IndexError> {
    let Some(owner) = get_s(item, CLAIM_OWNER) else {
        return Ok(None);
    };
    let kind = match get_s(item, CLAIM_KIND) {
        Some(COPY) => ClaimKind::Copy,
        Some(EVICT) => ClaimKind::Evict,
        _ => return Err(corrupt("record", CLAIM_KIND, item)),
    };
    Ok(Some(Claim {
        owner: owner.to_owned(),
        kind,
        deadline: req_n("record", item, CLAIM_DEADLINE)?,
    }))
}

/// A records-table item as the index's [`Record`].
pub fn record_of(dir: &str, item: &Item) -> Result<Record, IndexError> {
    let key = req_s("record", item, KEY)?;
    let entry = match get_s(item, SOURCE_ETAG) {
        None => None,
        Some(etag) => Some(Entry {
            directory_bucket: dir.to_owned(),
            source_bucket: req_s("record", item, SOURCE_BUCKET)?,
            // Stored only when it differs from the key.
            source_key: get_s(item, SOURCE_KEY).unwrap_or(&key).to_owned(),
            source_etag: etag.to_owned(),
            size: u64::try_from(req_n("record", item, SIZE)?)
                .map_err(|_| corrupt("record", SIZE, item))?,
            source_last_modified: get_n("record", item, SOURCE_LAST_MODIFIED)?,
            dest_etag: req_s("record", item, DEST_ETAG)?,
            cached_at: req_n("record", item, CACHED_AT)?,
            key: key.clone(),
        }),
    };
    let unconfirmed = matches!(item.get(UNCONFIRMED), Some(AttributeValue::Bool(true)));
    Ok(Record {
        key,
        entry,
        claim: claim_of(item)?,
        unconfirmed,
    })
}

/// A leases-table item as the index's [`Lease`].
pub fn lease_of(item: &Item) -> Result<Lease, IndexError> {
    Ok(Lease {
        directory_bucket: req_s("lease", item, DIRECTORY_BUCKET)?,
        prefix: req_s("lease", item, PREFIX)?,
        source_bucket: req_s("lease", item, SOURCE_BUCKET)?,
        expires_at: req_n("lease", item, EXPIRES_AT)?,
        epoch: req_s("lease", item, EPOCH)?,
    })
}

/// The sweep failure a lease item records (attempts 0 if none).
pub fn sweep_failure_of(item: &Item) -> Result<SweepFailure, IndexError> {
    Ok(SweepFailure {
        lease: lease_of(item)?,
        attempts: u32::try_from(get_n("lease", item, SWEEP_ATTEMPTS)?.unwrap_or(0))
            .unwrap_or(u32::MAX),
        error: get_s(item, SWEEP_ERROR).unwrap_or_default().to_owned(),
        retry_at: get_n("lease", item, SWEEP_RETRY_AT)?.unwrap_or(0),
    })
}

/// The values of one request's expressions (`:name` -> value), and the
/// attribute names they use (every `#name` in the expressions, aliased to
/// itself: `key`, `size` and more are DynamoDB reserved words).
#[derive(Debug, Default, Clone)]
pub struct Vals(pub HashMap<String, AttributeValue>);

impl Vals {
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn s(mut self, name: &str, v: impl Into<String>) -> Self {
        self.0.insert(format!(":{name}"), s(v));
        self
    }

    #[must_use]
    pub fn n(mut self, name: &str, v: i64) -> Self {
        self.0.insert(format!(":{name}"), n(v));
        self
    }

    #[must_use]
    pub fn b(mut self, name: &str, v: bool) -> Self {
        self.0.insert(format!(":{name}"), AttributeValue::Bool(v));
        self
    }

    /// Any attribute value (a map, a list).
    #[must_use]
    pub fn v(mut self, name: &str, v: AttributeValue) -> Self {
        self.0.insert(format!(":{name}"), v);
        self
    }

    #[must_use]
    pub fn t(mut self, name: &str) -> Self {
        self.0
            .insert(format!(":{name}"), AttributeValue::Bool(true));
        self
    }

    /// `None` when empty: DynamoDB refuses an empty value map.
    pub fn into_map(self) -> Option<HashMap<String, AttributeValue>> {
        (!self.0.is_empty()).then_some(self.0)
    }
}

/// The `#name` placeholders used in `exprs`, each mapped to the attribute
/// of the same name.
pub fn names_in(exprs: &[&str]) -> Option<HashMap<String, String>> {
    let mut names = HashMap::new();
    for expr in exprs {
        let mut rest = *expr;
        while let Some(i) = rest.find('#') {
            let tail = &rest[i + 1..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(format!("#{}", &tail[..end]), tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    (!names.is_empty()).then_some(names)
}

/// The condition "the record item is still exactly as `seen` shows it", as
/// far as claim decisions depend on it: present or not, entry or not, and
/// the same claim (owner, kind and deadline) or none. Adds its values to
/// `vals` under `seen_*` names.
pub fn record_guard(seen: Option<&Item>, vals: Vals) -> Result<(String, Vals), IndexError> {
    let Some(item) = seen else {
        return Ok(("attribute_not_exists(#key)".to_owned(), vals));
    };
    let entry = if item.contains_key(SOURCE_ETAG) {
        "attribute_exists(#source_etag)"
    } else {
        "attribute_not_exists(#source_etag)"
    };
    Ok(match claim_of(item)? {
        None => (
            format!("attribute_exists(#key) AND {entry} AND attribute_not_exists(#claim_owner)"),
            vals,
        ),
        Some(c) => (
            format!(
                "{entry} AND #claim_owner = :seen_owner AND #claim_kind = :seen_kind \
                 AND #claim_deadline = :seen_deadline"
            ),
            vals.s("seen_owner", c.owner)
                .s("seen_kind", kind_name(c.kind))
                .n("seen_deadline", c.deadline),
        ),
    })
}

pub fn kind_name(kind: ClaimKind) -> &'static str {
    match kind {
        ClaimKind::Copy => COPY,
        ClaimKind::Evict => EVICT,
    }
}

/// Drops the values no expression in `exprs` uses: DynamoDB refuses
/// unused expression attribute values.
pub fn prune(vals: Vals, exprs: &[&str]) -> Vals {
    let mut out = Vals::new();
    for (name, v) in vals.0 {
        if exprs.iter().any(|e| uses(e, &name)) {
            out.0.insert(name, v);
        }
    }
    out
}

/// Whether `expr` uses the placeholder `name` (not just a longer one
/// starting with it).
fn uses(expr: &str, name: &str) -> bool {
    expr.match_indices(name).any(|(i, _)| {
        !expr[i + name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_operations_spreads_over_every_status_shard() {
        // 1,000 launchers of a job array: no shard of the index's status
        // key takes much more than its share of their writes.
        let mut per_key: HashMap<String, usize> = HashMap::new();
        for i in 0..1000_u128 {
            // Operation ids are UUIDs; these are fixed, spread ones.
            let id =
                uuid::Uuid::from_u128(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
                    .to_string();
            let key = status_key(RUNNING, &id);
            assert!(status_keys(RUNNING).contains(&key), "{key}");
            assert_eq!(status_key(RUNNING, &id), key, "stable for {i}");
            *per_key.entry(key).or_default() += 1;
        }
        assert_eq!(per_key.len(), usize::from(STATUS_SHARDS));
        let most = per_key.values().max().copied().unwrap_or_default();
        assert!(
            most < 1000 / usize::from(STATUS_SHARDS) * 3 / 2,
            "{per_key:?}"
        );
        // Readers also look where earlier releases wrote.
        assert_eq!(
            status_keys(FINISHED).last().map(String::as_str),
            Some(FINISHED)
        );
        assert_eq!(status_keys(FINISHED).len(), usize::from(STATUS_SHARDS) + 1);
    }

    #[test]
    fn the_partition_hash_is_fnv1a_64() {
        // Published FNV-1a test vectors: the layout depends on this exact
        // function, not on whatever std's hasher does in this release.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(partition_of("a"), 12);
        assert_eq!(
            partition_key("d--use1-az4--x-s3", 7),
            "d--use1-az4--x-s3#07"
        );
    }

    #[test]
    fn lease_sort_keys_order_by_prefix_then_source() {
        let mut keys = [
            lease_sort_key("a/b/", "src").unwrap(),
            lease_sort_key("a/", "zz-src").unwrap(),
            lease_sort_key("a/ /", "src").unwrap(),
            lease_sort_key("a/", "src").unwrap(),
            lease_sort_key("", "src").unwrap(),
        ];
        keys.sort();
        let prefixes: Vec<&str> = keys
            .iter()
            .map(|k| k.split(LEASE_SEP).next().unwrap())
            .collect();
        assert_eq!(prefixes, ["", "a/", "a/", "a/ /", "a/b/"]);
        assert!(keys[1].ends_with("\u{1}src") && keys[2].ends_with("zz-src"));
        assert!(lease_sort_key(&"p/".repeat(600), "src").is_err());
        assert!(lease_prefix_operand(&"p".repeat(1021)).is_none());
    }

    #[test]
    fn expression_names_are_collected() {
        let names = names_in(&[
            "SET #a = :x, #b_c = :y",
            "#a > :z AND attribute_exists(#key)",
        ])
        .unwrap();
        assert_eq!(names.len(), 3);
        assert_eq!(names["#b_c"], "b_c");
        assert!(names_in(&["SET x = :y"]).is_none());
    }

    #[test]
    fn unused_values_are_pruned() {
        let v = prune(
            Vals::new().n("d", 1).n("deadline", 2).n("gc", 3),
            &["SET #a = :deadline", "#b = :gc"],
        );
        let mut names: Vec<&String> = v.0.keys().collect();
        names.sort();
        assert_eq!(names, [":deadline", ":gc"]);
    }

    #[test]
    fn claim_only_items_are_collected_a_week_after_their_deadline() {
        assert_eq!(gc_at(1_000_000), 1_000 + 7 * 24 * 3600);
        assert_eq!(gc_at(i64::MAX), i64::MAX / 1000 + 7 * 24 * 3600);
    }
}
