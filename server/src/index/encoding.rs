//! How the operation log stores an operation's request and state: its own
//! versioned documents, apart from the wire format (the proto can change
//! without a data migration) and from the domain types (renaming a field in
//! code does not silently change what is on disk). Every backend stores the
//! same documents: SQLite as JSON text, DynamoDB as map attributes.
//!
//! Version 1 is the first; a later version adds a variant here and a
//! decode path for the older ones, never a change to an existing one.

use std::collections::BTreeMap;
use std::time::Duration;

use expresscache::{BucketName, DirectoryBucketName, Prefix, RequestId, WarmSpec};
use serde::{Deserialize, Serialize};

use super::IndexError;
use crate::core::clock::Millis;
use crate::core::operation::OperationRecord;
use crate::core::operation::{Counters, KeyFailure, OperationState, Outcome, Phase};

/// The only document version this release writes.
pub const VERSION: u32 = 1;

/// A stored `WarmSpec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestDoc {
    pub v: u32,
    pub source: String,
    pub prefixes: Vec<String>,
    pub directory_bucket: String,
    /// Nanoseconds: exact, so a retried submission compares equal.
    pub ttl_ns: u64,
    pub force_copy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Absent when empty (the root): DynamoDB releases before May 2020,
    /// DynamoDB Local's among them, refuse empty strings in attributes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_prefix: String,
    /// Milliseconds; 0 (and absent, from earlier releases): always list.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_staleness_ms: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch_operations: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_empty: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// The keys of a key list (`prefixes` then holds their directories,
    /// as the spec does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// The principal that submitted it (absent: anonymous, or an earlier
    /// release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Stored counters, by name: a counter added later reads as 0 from an
/// older document, and one dropped later is ignored.
pub type CountersDoc = BTreeMap<String, u64>;

/// Where one counter lives in [`Counters`].
type CounterField = fn(&mut Counters) -> &mut u64;

/// The stored name of each counter, and where it lives in [`Counters`].
const COUNTERS: [(&str, CounterField); 11] = [
    ("objects_listed", |c| &mut c.objects_listed),
    ("objects_hit", |c| &mut c.objects_hit),
    ("objects_to_copy", |c| &mut c.objects_to_copy),
    ("objects_copied", |c| &mut c.objects_copied),
    ("objects_failed", |c| &mut c.objects_failed),
    ("objects_shared", |c| &mut c.objects_shared),
    ("bytes_listed", |c| &mut c.bytes_listed),
    ("bytes_to_copy", |c| &mut c.bytes_to_copy),
    ("bytes_copied", |c| &mut c.bytes_copied),
    ("copy_retries", |c| &mut c.copy_retries),
    ("throttle_events", |c| &mut c.throttle_events),
];

fn counters_doc(c: &Counters) -> CountersDoc {
    let mut c = *c;
    COUNTERS
        .iter()
        .map(|(name, field)| ((*name).to_owned(), *field(&mut c)))
        .collect()
}

fn counters_of(doc: &CountersDoc) -> Counters {
    let mut c = Counters::default();
    for (name, field) in COUNTERS {
        *field(&mut c) = doc.get(name).copied().unwrap_or(0);
    }
    c
}

/// A stored key failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDoc {
    pub key: String,
    pub code: String,
    pub message: String,
}

/// A stored `OperationState`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateDoc {
    pub v: u32,
    pub operation_id: String,
    /// "queued", "planning", "copying" or "done".
    pub phase: String,
    pub counters: CountersDoc,
    /// "succeeded", "partially_failed", "failed" or "cancelled" once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailureDoc>,
    #[serde(default)]
    pub failures_omitted: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: Millis,
    pub elapsed_ms: u64,
    #[serde(default)]
    pub concurrency_limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_operation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_operation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fresh_from_operation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub empty_prefixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lease_epochs: Vec<(String, String)>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

const PHASES: [(Phase, &str); 4] = [
    (Phase::Queued, "queued"),
    (Phase::Planning, "planning"),
    (Phase::Copying, "copying"),
    (Phase::Done, "done"),
];

const OUTCOMES: [(Outcome, &str); 4] = [
    (Outcome::Succeeded, "succeeded"),
    (Outcome::PartiallyFailed, "partially_failed"),
    (Outcome::Failed, "failed"),
    (Outcome::Cancelled, "cancelled"),
];

fn name_of<T: PartialEq + Copy>(table: &[(T, &'static str)], v: T) -> &'static str {
    table
        .iter()
        .find(|(t, _)| *t == v)
        .map_or("unknown", |(_, n)| n)
}

fn value_of<T: Copy>(table: &[(T, &str)], name: &str, what: &str) -> Result<T, IndexError> {
    table
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(t, _)| *t)
        .ok_or_else(|| IndexError::Corrupt(format!("unknown {what} {name:?}")))
}

fn check_version(v: u32, what: &str) -> Result<(), IndexError> {
    if v == VERSION {
        Ok(())
    } else {
        Err(IndexError::Corrupt(format!(
            "{what} document version {v} is not one this release reads (it reads {VERSION}); \
             was the index written by a newer release?"
        )))
    }
}

impl From<&WarmSpec> for RequestDoc {
    fn from(s: &WarmSpec) -> Self {
        Self {
            v: VERSION,
            source: s.source.to_string(),
            prefixes: s.prefixes.iter().map(ToString::to_string).collect(),
            directory_bucket: s.directory_bucket.to_string(),
            ttl_ns: u64::try_from(s.ttl.as_nanos()).unwrap_or(u64::MAX),
            force_copy: s.force_copy,
            request_id: s.request_id.as_ref().map(ToString::to_string),
            destination_prefix: s.destination_prefix.to_string(),
            max_staleness_ms: u64::try_from(s.max_staleness.as_millis()).unwrap_or(u64::MAX),
            batch_operations: s.batch_operations,
            allow_empty: s.allow_empty,
            include: expresscache::request::patterns(&s.selection.include),
            exclude: expresscache::request::patterns(&s.selection.exclude),
            keys: s.selection.keys.iter().cloned().collect(),
            owner: None,
        }
    }
}

impl RequestDoc {
    /// The stored request of `op`: its spec and its owner.
    pub fn of_record(op: &OperationRecord) -> Self {
        Self {
            owner: op.owner.clone(),
            ..Self::from(&op.request)
        }
    }
}

impl RequestDoc {
    /// The spec again, every name re-validated (the server's limits are
    /// not: a stored request was within the limits it was accepted under).
    pub fn decode(self) -> Result<WarmSpec, IndexError> {
        check_version(self.v, "request")?;
        let bad = |field: &str, e: String| IndexError::Corrupt(format!("stored {field}: {e}"));
        let globs = |field: &str, raw: &[String]| {
            raw.iter()
                .map(|p| expresscache::names::Glob::parse(p).map_err(|e| bad(field, e)))
                .collect::<Result<Vec<_>, _>>()
        };
        let selection = expresscache::request::KeySelection {
            include: globs("include", &self.include)?,
            exclude: globs("exclude", &self.exclude)?,
            keys: self
                .keys
                .iter()
                .map(|k| {
                    expresscache::names::check_key(k)
                        .map(|()| k.clone())
                        .map_err(|e| bad("keys", e))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(WarmSpec {
            source: BucketName::parse(&self.source).map_err(|e| bad("bucket", e))?,
            prefixes: self
                .prefixes
                .iter()
                .map(|p| Prefix::parse(p).map_err(|e| bad("prefix", e)))
                .collect::<Result<_, _>>()?,
            // Accepted once under this server's or an earlier setting;
            // the name's form was checked then.
            directory_bucket: DirectoryBucketName::parse_with(&self.directory_bucket, true)
                .map_err(|e| bad("directory_bucket", e))?,
            ttl: Duration::from_nanos(self.ttl_ns),
            force_copy: self.force_copy,
            request_id: self
                .request_id
                .as_deref()
                .map(RequestId::parse)
                .transpose()
                .map_err(|e| bad("request_id", e))?,
            destination_prefix: Prefix::parse(&self.destination_prefix)
                .map_err(|e| bad("destination_prefix", e))?,
            max_staleness: Duration::from_millis(self.max_staleness_ms),
            batch_operations: self.batch_operations,
            allow_empty: self.allow_empty,
            selection,
        })
    }
}

impl From<&OperationState> for StateDoc {
    fn from(s: &OperationState) -> Self {
        Self {
            v: VERSION,
            operation_id: s.operation_id.clone(),
            phase: name_of(&PHASES, s.phase).to_owned(),
            counters: counters_doc(&s.counters),
            outcome: s.outcome.map(|o| name_of(&OUTCOMES, o).to_owned()),
            failures: s
                .failures
                .iter()
                .map(|f| FailureDoc {
                    key: f.key.clone(),
                    code: f.code.clone(),
                    message: f.message.clone(),
                })
                .collect(),
            failures_omitted: s.failures_omitted,
            error: s.error.clone(),
            started_at: s.started_at,
            elapsed_ms: u64::try_from(s.elapsed.as_millis()).unwrap_or(u64::MAX),
            concurrency_limit: s.concurrency_limit,
            lease_expires_at: s.lease_expires_at,
            superseded_operation_id: s.superseded_operation_id.clone(),
            joined_operation_id: s.joined_operation_id.clone(),
            fresh_from_operation_id: s.fresh_from_operation_id.clone(),
            batch_job_id: s.batch_job_id.clone(),
            empty_prefixes: s.empty_prefixes.clone(),
            lease_epochs: s.lease_epochs.clone(),
        }
    }
}

impl StateDoc {
    pub fn decode(self) -> Result<OperationState, IndexError> {
        check_version(self.v, "state")?;
        Ok(OperationState {
            counters: counters_of(&self.counters),
            operation_id: self.operation_id,
            phase: value_of(&PHASES, &self.phase, "phase")?,
            outcome: self
                .outcome
                .map(|o| value_of(&OUTCOMES, &o, "outcome"))
                .transpose()?,
            failures: self
                .failures
                .into_iter()
                .map(|f| KeyFailure {
                    key: f.key,
                    code: f.code,
                    message: f.message,
                })
                .collect(),
            failures_omitted: self.failures_omitted,
            error: self.error,
            started_at: self.started_at,
            elapsed: Duration::from_millis(self.elapsed_ms),
            concurrency_limit: self.concurrency_limit,
            lease_expires_at: self.lease_expires_at,
            superseded_operation_id: self.superseded_operation_id,
            joined_operation_id: self.joined_operation_id,
            fresh_from_operation_id: self.fresh_from_operation_id,
            batch_job_id: self.batch_job_id,
            batch_job: None,
            empty_prefixes: self.empty_prefixes,
            lease_epochs: self.lease_epochs,
        })
    }
}

/// `spec` as JSON text (the SQLite backend's column form).
pub fn request_json(spec: &WarmSpec) -> String {
    json(&RequestDoc::from(spec))
}

/// `state` as JSON text.
pub fn state_json(state: &OperationState) -> String {
    json(&StateDoc::from(state))
}

fn json<T: Serialize>(doc: &T) -> String {
    // Plain structs of strings and numbers: serialization cannot fail.
    serde_json::to_string(doc).unwrap_or_default()
}

/// The request of `op` as JSON text, with its owner.
pub fn record_request_json(op: &OperationRecord) -> String {
    json(&RequestDoc::of_record(op))
}

/// Reads a request stored by [`record_request_json`]: the spec and the
/// owner.
pub fn request_and_owner_from_json(text: &str) -> Result<(WarmSpec, Option<String>), IndexError> {
    let doc = serde_json::from_str::<RequestDoc>(text)
        .map_err(|e| IndexError::Corrupt(format!("stored request: {e}")))?;
    let owner = doc.owner.clone();
    Ok((doc.decode()?, owner))
}

/// Reads a request stored by [`request_json`].
#[cfg(any(test, feature = "testing"))]
pub fn request_from_json(text: &str) -> Result<WarmSpec, IndexError> {
    serde_json::from_str::<RequestDoc>(text)
        .map_err(|e| IndexError::Corrupt(format!("stored request: {e}")))?
        .decode()
}

/// Reads a state stored by [`state_json`].
pub fn state_from_json(text: &str) -> Result<OperationState, IndexError> {
    serde_json::from_str::<StateDoc>(text)
        .map_err(|e| IndexError::Corrupt(format!("stored state: {e}")))?
        .decode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WarmSpec {
        WarmSpec {
            source: BucketName::parse("src").unwrap(),
            prefixes: vec![Prefix::parse("a/").unwrap(), Prefix::root()],
            directory_bucket: DirectoryBucketName::parse("cache--use1-az4--x-s3").unwrap(),
            ttl: Duration::new(90, 500_000_123),
            force_copy: true,
            request_id: Some(RequestId::parse("job-7").unwrap()),
            destination_prefix: Prefix::parse("team/").unwrap(),
            max_staleness: std::time::Duration::ZERO,
            batch_operations: false,
            allow_empty: false,
            selection: Default::default(),
        }
    }

    #[test]
    fn documents_round_trip() {
        let s = spec();
        assert_eq!(request_from_json(&request_json(&s)).unwrap(), s);
        let mut st = OperationState::queued("op-1", 1_700_000_000_000);
        st.counters.objects_copied = 3;
        st.counters.throttle_events = 2;
        st.elapsed = Duration::from_millis(1_234);
        st.lease_expires_at = Some(1_700_000_090_000);
        st.failures.push(KeyFailure {
            key: "k".into(),
            code: "AccessDenied".into(),
            message: "no".into(),
        });
        st.superseded_operation_id = Some("op-0".into());
        let st = st.ended(Outcome::PartiallyFailed, Some("why".into()));
        assert_eq!(state_from_json(&state_json(&st)).unwrap(), st);
    }

    #[test]
    fn the_stored_form_is_readable_and_versioned() {
        let text = request_json(&spec());
        assert!(text.starts_with(r#"{"v":1,"source":"src","#), "{text}");
        assert!(text.contains(r#""ttl_ns":90500000123"#), "{text}");
    }

    #[test]
    fn counters_are_stored_by_name_and_missing_ones_read_as_zero() {
        let c = Counters {
            objects_copied: 5,
            throttle_events: 1,
            ..Counters::default()
        };
        let doc = counters_doc(&c);
        assert_eq!(doc.len(), 11, "every counter has a stored name");
        assert_eq!(counters_of(&doc), c);
        let partial: CountersDoc = [("objects_copied".to_owned(), 2), ("gone".to_owned(), 9)]
            .into_iter()
            .collect();
        let read = counters_of(&partial);
        assert_eq!((read.objects_copied, read.objects_hit), (2, 0));
    }

    #[test]
    fn a_newer_version_is_refused_with_a_clear_error() {
        let text = request_json(&spec()).replace(r#""v":1"#, r#""v":2"#);
        let err = request_from_json(&text).unwrap_err().to_string();
        assert!(err.contains("version 2"), "{err}");
    }
}
