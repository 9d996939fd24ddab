//! Validated requests: what a handler works with once the wire message passed
//! every check.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use crate::names::{
    check_key, key_directory, parent_directory, BucketName, DirectoryBucketName, Glob, Prefix,
    RequestId,
};
use crate::proto::v1 as pb;
use crate::violation::{InvalidRequest, Violations};

/// Bounds the server enforces on requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest TTL a warm may ask for.
    pub max_ttl: Duration,
    /// Shortest TTL a warm may ask for. A lease shorter than the time a warm
    /// takes to list and record would leave its own hits unprotected (and a
    /// TTL under a millisecond would truncate to zero).
    pub min_ttl: Duration,
    /// Most prefixes one request may name.
    pub max_prefixes: usize,
    /// Accept general-purpose bucket names where a directory bucket is
    /// expected (for S3-compatible endpoints without directory buckets).
    pub allow_general_purpose_destination: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_ttl: Duration::from_secs(30 * 24 * 3600),
            min_ttl: Duration::from_secs(1),
            max_prefixes: 1000,
            allow_general_purpose_destination: false,
        }
    }
}

/// A validated `WarmCacheRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmSpec {
    pub source: BucketName,
    pub prefixes: Vec<Prefix>,
    pub directory_bucket: DirectoryBucketName,
    pub ttl: Duration,
    pub force_copy: bool,
    pub request_id: Option<RequestId>,
    /// Prepended to every source key to form its destination key.
    pub destination_prefix: Prefix,
    /// Answer from a SUCCEEDED warm of the same data that finished at most
    /// this long ago, if its leases are live, without listing; zero:
    /// always list.
    pub max_staleness: Duration,
    /// Copy through an S3 Batch Operations job.
    pub batch_operations: bool,
    /// A warm in which no prefix lists any object succeeds (by default it
    /// fails: an empty result is far more often a wrong prefix than the
    /// intent).
    pub allow_empty: bool,
    /// Which keys under the prefixes the warm takes (default: all). For a
    /// key list, `prefixes` are the directories of its keys
    /// ([`key_directories`]): what is listed and leased.
    pub selection: KeySelection,
}

/// Most glob patterns, `include` and `exclude` together, one warm may give.
pub const MAX_GLOBS: usize = 100;

/// Most exact keys one warm may name.
pub const MAX_KEYS: usize = 100_000;

/// Most directories a key list is listed and leased by: the keys' own
/// directories, or their parents when there are more (the same bound as
/// the prefixes of a request).
pub const MAX_KEY_DIRECTORIES: usize = 1000;

/// Most violations reported one by one for `keys` (then one line counts
/// the rest): 100,000 bad keys must not make a 10 MB error.
const MAX_KEY_VIOLATIONS: usize = 10;

/// Which of the keys under a warm's prefixes it takes: those the key list
/// names (all, without one) that match an `include` pattern (any, without
/// one) and no `exclude` pattern. Keys not taken are neither listed
/// (counted), copied, leased nor priced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySelection {
    pub include: Vec<Glob>,
    pub exclude: Vec<Glob>,
    /// Exact keys; empty: every key under the prefixes.
    pub keys: BTreeSet<String>,
}

/// Glob patterns as the wire and the stored request carry them.
pub fn patterns(globs: &[Glob]) -> Vec<String> {
    globs.iter().map(|g| g.as_str().to_owned()).collect()
}

impl KeySelection {
    /// Whether every key under the prefixes is taken (nothing to filter).
    pub fn is_everything(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty() && self.keys.is_empty()
    }

    /// Whether the warm takes `key` (a source key, from the bucket's root).
    pub fn selects(&self, key: &str) -> bool {
        (self.keys.is_empty() || self.keys.contains(key))
            && (self.include.is_empty() || self.include.iter().any(|g| g.matches(key)))
            && !self.exclude.iter().any(|g| g.matches(key))
    }

    /// Whether some key under `prefix` (`""` or ending in `/`) may be
    /// taken: false when none can be, so a listing skips the directory.
    pub fn may_select_under(&self, prefix: &str) -> bool {
        let named = self.keys.is_empty()
            || self
                .keys
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .is_some_and(|k| k.starts_with(prefix));
        named
            && (self.include.is_empty() || self.include.iter().any(|g| g.may_match_under(prefix)))
            && !self.exclude.iter().any(|g| g.matches_all_under(prefix))
    }
}

/// The directories a key list is listed and leased by: each key's
/// directory ([`key_directory`]), and while there are more than
/// [`MAX_KEY_DIRECTORIES`], the deepest of them replaced by their parents,
/// a level at a time. Sorted, each once.
pub fn key_directories<'k>(keys: impl IntoIterator<Item = &'k String>) -> Vec<Prefix> {
    let mut dirs: BTreeSet<String> = keys
        .into_iter()
        .map(|k| key_directory(k).to_owned())
        .collect();
    while dirs.len() > MAX_KEY_DIRECTORIES {
        let depth = |d: &str| d.matches('/').count();
        let deepest = dirs.iter().map(|d| depth(d.as_str())).max().unwrap_or(0);
        dirs = dirs
            .into_iter()
            .map(|d| {
                if depth(d.as_str()) == deepest {
                    parent_directory(&d).to_owned()
                } else {
                    d
                }
            })
            .collect();
    }
    // The directory of a valid key is a valid prefix.
    dirs.iter().filter_map(|d| Prefix::parse(d).ok()).collect()
}

/// Longest `destination_prefix`, in bytes: half a key, so real keys fit.
pub const MAX_DESTINATION_PREFIX_BYTES: usize = 512;

/// A validated `EvictRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictSpec {
    pub directory_bucket: DirectoryBucketName,
    /// Prefixes of destination keys.
    pub prefixes: Vec<Prefix>,
    /// Delete even what other live leases cover.
    pub force: bool,
}

/// A validated `GetStatusRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusQuery {
    /// The state of one operation.
    Operation(String),
    /// How warm these prefixes of a directory bucket are.
    Prefixes {
        directory_bucket: DirectoryBucketName,
        prefixes: Vec<Prefix>,
    },
}

fn check_prefixes(
    v: &mut Violations,
    field: &str,
    raw: &[String],
    limits: &Limits,
) -> Option<Vec<Prefix>> {
    if raw.is_empty() {
        v.push(
            field,
            "at least one prefix is required (use \"\" for the whole bucket)",
        );
        return None;
    }
    if raw.len() > limits.max_prefixes {
        v.push(
            field,
            format!(
                "{} prefixes given; at most {} per request",
                raw.len(),
                limits.max_prefixes
            ),
        );
        return None;
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    let mut ok = true;
    for (i, p) in raw.iter().enumerate() {
        let name = format!("{field}[{i}]");
        match v.check(&name, Prefix::parse(p)) {
            Some(prefix) => {
                if !seen.insert(p.as_str()) {
                    v.push(name, format!("{p:?} is listed more than once"));
                    ok = false;
                } else {
                    out.push(prefix);
                }
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// What a warm lists: its prefixes, or the directories of its exact keys
/// (never both), with the keys.
fn check_scope(
    v: &mut Violations,
    req: &pb::WarmCacheRequest,
    limits: &Limits,
) -> Option<(Vec<Prefix>, BTreeSet<String>)> {
    if req.keys.is_empty() {
        return check_prefixes(v, "prefixes", &req.prefixes, limits).map(|p| (p, BTreeSet::new()));
    }
    if !req.prefixes.is_empty() {
        v.push(
            "keys",
            "a warm names either prefixes or exact keys, not both: leave prefixes empty to warm \
             the keys, or warm the prefixes with include patterns",
        );
        return None;
    }
    let keys = check_keys(v, &req.keys)?;
    Some((key_directories(&keys), keys))
}

/// `keys`: at most [`MAX_KEYS`], each a valid key, none twice; the first
/// [`MAX_KEY_VIOLATIONS`] problems one by one, then how many more.
fn check_keys(v: &mut Violations, raw: &[String]) -> Option<BTreeSet<String>> {
    if raw.len() > MAX_KEYS {
        v.push(
            "keys",
            format!(
                "{} keys given; at most {MAX_KEYS} per request (split the list into several warms)",
                raw.len()
            ),
        );
        return None;
    }
    let mut keys = BTreeSet::new();
    let mut bad = 0usize;
    for (i, k) in raw.iter().enumerate() {
        let problem = match check_key(k) {
            Err(e) => Some(e),
            Ok(()) if !keys.insert(k.clone()) => Some(format!("{k:?} is listed more than once")),
            Ok(()) => None,
        };
        if let Some(p) = problem {
            bad += 1;
            if bad <= MAX_KEY_VIOLATIONS {
                v.push(format!("keys[{i}]"), p);
            }
        }
    }
    if bad > MAX_KEY_VIOLATIONS {
        v.push(
            "keys",
            format!(
                "{} more keys are invalid (only the first {MAX_KEY_VIOLATIONS} are shown)",
                bad - MAX_KEY_VIOLATIONS
            ),
        );
    }
    (bad == 0).then_some(keys)
}

/// `include` and `exclude`: at most [`MAX_GLOBS`] together, each a valid
/// pattern.
fn check_globs(v: &mut Violations, req: &pb::WarmCacheRequest) -> Option<(Vec<Glob>, Vec<Glob>)> {
    let total = req.include.len() + req.exclude.len();
    if total > MAX_GLOBS {
        let field = if req.include.len() >= req.exclude.len() {
            "include"
        } else {
            "exclude"
        };
        v.push(
            field,
            format!("{total} patterns given in include and exclude together; at most {MAX_GLOBS}"),
        );
        return None;
    }
    let mut each = |field: &str, raw: &[String]| {
        let mut ok = true;
        let mut out = Vec::with_capacity(raw.len());
        for (i, p) in raw.iter().enumerate() {
            match v.check(format!("{field}[{i}]"), Glob::parse(p)) {
                Some(g) => out.push(g),
                None => ok = false,
            }
        }
        ok.then_some(out)
    };
    let include = each("include", req.include.as_slice());
    let exclude = each("exclude", req.exclude.as_slice());
    Some((include?, exclude?))
}

/// `max_staleness`: unset or zero is "always list"; otherwise at most the
/// longest TTL, and not with `force_copy` (which asks to copy again).
fn check_staleness(
    v: &mut Violations,
    req: &pb::WarmCacheRequest,
    limits: &Limits,
) -> Option<Duration> {
    let Some(d) = req.max_staleness.as_ref() else {
        return Some(Duration::ZERO);
    };
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        v.push("max_staleness", "must be a non-negative duration");
        return None;
    }
    let d = Duration::new(d.seconds as u64, d.nanos as u32);
    if d > limits.max_ttl {
        v.push(
            "max_staleness",
            format!(
                "{:?} is above this server's maximum TTL of {:?}",
                d, limits.max_ttl
            ),
        );
        return None;
    }
    if !d.is_zero() && req.force_copy {
        v.push(
            "max_staleness",
            "cannot be combined with force_copy (which copies everything again)",
        );
        return None;
    }
    Some(d)
}

fn check_ttl(
    v: &mut Violations,
    ttl: Option<&prost_types::Duration>,
    limits: &Limits,
) -> Option<Duration> {
    let Some(ttl) = ttl else {
        v.push("ttl", "is required (how long the data must stay cached)");
        return None;
    };
    if ttl.seconds < 0 || ttl.nanos < 0 || (ttl.seconds == 0 && ttl.nanos == 0) {
        v.push("ttl", "must be greater than zero");
        return None;
    }
    if !(0..1_000_000_000).contains(&ttl.nanos) {
        v.push("ttl", "nanos must be in 0..1e9");
        return None;
    }
    let d = Duration::new(ttl.seconds as u64, ttl.nanos as u32);
    if d < limits.min_ttl {
        v.push(
            "ttl",
            format!(
                "{:?} is below this server's minimum of {:?}",
                d, limits.min_ttl
            ),
        );
        return None;
    }
    if d > limits.max_ttl {
        v.push(
            "ttl",
            format!(
                "{}s exceeds this server's maximum of {}s",
                d.as_secs(),
                limits.max_ttl.as_secs()
            ),
        );
        return None;
    }
    Some(d)
}

impl WarmSpec {
    /// Validates every field of `req`, reporting all violations at once.
    pub fn parse(req: &pb::WarmCacheRequest, limits: &Limits) -> Result<Self, InvalidRequest> {
        let mut v = Violations::default();
        let source = v.check("bucket", BucketName::parse(&req.bucket));
        let scope = check_scope(&mut v, req, limits);
        let directory_bucket = v.check(
            "directory_bucket",
            DirectoryBucketName::parse_with(
                &req.directory_bucket,
                limits.allow_general_purpose_destination,
            ),
        );
        let ttl = check_ttl(&mut v, req.ttl.as_ref(), limits);
        let request_id = if req.request_id.is_empty() {
            Some(None)
        } else {
            v.check("request_id", RequestId::parse(&req.request_id).map(Some))
        };
        let destination_prefix = v.check(
            "destination_prefix",
            Prefix::parse(&req.destination_prefix).and_then(|p| {
                if p.as_str().len() > MAX_DESTINATION_PREFIX_BYTES {
                    Err(format!(
                        "is {} bytes long; at most {MAX_DESTINATION_PREFIX_BYTES}",
                        p.as_str().len()
                    ))
                } else {
                    Ok(p)
                }
            }),
        );
        let max_staleness = check_staleness(&mut v, req, limits);
        let globs = check_globs(&mut v, req);
        v.finish()?;
        match (
            source,
            scope,
            directory_bucket,
            ttl,
            request_id,
            destination_prefix,
            globs,
        ) {
            (
                Some(source),
                Some((prefixes, keys)),
                Some(directory_bucket),
                Some(ttl),
                Some(request_id),
                Some(destination_prefix),
                Some((include, exclude)),
            ) => Ok(Self {
                source,
                prefixes,
                directory_bucket,
                ttl,
                force_copy: req.force_copy,
                request_id,
                destination_prefix,
                max_staleness: max_staleness.unwrap_or_default(),
                batch_operations: req.batch_operations,
                allow_empty: req.allow_empty,
                selection: KeySelection {
                    include,
                    exclude,
                    keys,
                },
            }),
            _ => unreachable!("every missing field recorded a violation"),
        }
    }

    /// Whether the warm names exact keys (its prefixes are their
    /// directories).
    pub fn is_key_list(&self) -> bool {
        !self.selection.keys.is_empty()
    }

    /// Checks the spec against `limits` again (a stored request resumed by
    /// a server whose limits changed since it was accepted).
    pub fn within(&self, limits: &Limits) -> Result<(), InvalidRequest> {
        Self::parse(&pb::WarmCacheRequest::from(self), limits).map(|_| ())
    }

    /// The destination key of source key `key`.
    pub fn dest_key(&self, key: &str) -> String {
        format!("{}{key}", self.destination_prefix)
    }

    /// The requested prefixes in destination key space: what leases cover.
    pub fn lease_prefixes(&self) -> Vec<Prefix> {
        self.prefixes
            .iter()
            .map(|p| Prefix::join(&self.destination_prefix, p))
            .collect()
    }

    /// The smallest set of prefixes whose listings cover every requested
    /// prefix: a child whose parent is also requested is dropped, so no key
    /// is listed twice.
    pub fn listing_prefixes(&self) -> Vec<Prefix> {
        minimal_cover(&self.prefixes)
    }
}

impl From<&WarmSpec> for pb::WarmCacheRequest {
    fn from(s: &WarmSpec) -> Self {
        Self {
            bucket: s.source.to_string(),
            // A key list's prefixes are derived from its keys.
            prefixes: if s.is_key_list() {
                Vec::new()
            } else {
                s.prefixes.iter().map(ToString::to_string).collect()
            },
            directory_bucket: s.directory_bucket.to_string(),
            ttl: Some(prost_types::Duration {
                seconds: i64::try_from(s.ttl.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(s.ttl.subsec_nanos()).unwrap_or(0),
            }),
            force_copy: s.force_copy,
            request_id: s
                .request_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            destination_prefix: s.destination_prefix.to_string(),
            max_staleness: (!s.max_staleness.is_zero()).then(|| prost_types::Duration {
                seconds: i64::try_from(s.max_staleness.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(s.max_staleness.subsec_nanos()).unwrap_or(0),
            }),
            // A spec is what runs: dry runs never become one.
            dry_run: false,
            batch_operations: s.batch_operations,
            allow_empty: s.allow_empty,
            include: patterns(&s.selection.include),
            exclude: patterns(&s.selection.exclude),
            keys: s.selection.keys.iter().cloned().collect(),
        }
    }
}

/// Drops every prefix that another prefix in `prefixes` covers; keeps order.
pub fn minimal_cover(prefixes: &[Prefix]) -> Vec<Prefix> {
    prefixes
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            !prefixes
                .iter()
                .enumerate()
                .any(|(j, q)| j != *i && q.covers(p) && (q != *p || j < *i))
        })
        .map(|(_, p)| p.clone())
        .collect()
}

impl EvictSpec {
    /// Validates every field of `req`.
    pub fn parse(req: &pb::EvictRequest, limits: &Limits) -> Result<Self, InvalidRequest> {
        let mut v = Violations::default();
        let directory_bucket = v.check(
            "directory_bucket",
            DirectoryBucketName::parse_with(
                &req.directory_bucket,
                limits.allow_general_purpose_destination,
            ),
        );
        let prefixes = check_prefixes(&mut v, "prefixes", &req.prefixes, limits);
        v.finish()?;
        match (directory_bucket, prefixes) {
            (Some(directory_bucket), Some(prefixes)) => Ok(Self {
                directory_bucket,
                prefixes,
                force: req.force,
            }),
            _ => unreachable!("every missing field recorded a violation"),
        }
    }
}

impl StatusQuery {
    /// Validates `req`: exactly one target, well-formed.
    pub fn parse(req: &pb::GetStatusRequest, limits: &Limits) -> Result<Self, InvalidRequest> {
        use pb::get_status_request::Target;
        let mut v = Violations::default();
        let out = match &req.target {
            None => {
                v.push("target", "set either operation_id or prefixes");
                None
            }
            Some(Target::OperationId(id)) => {
                if id.is_empty() || id.len() > 128 {
                    v.push("operation_id", "must be 1-128 characters");
                    None
                } else {
                    Some(Self::Operation(id.clone()))
                }
            }
            Some(Target::Prefixes(q)) => {
                let directory_bucket = v.check(
                    "prefixes.directory_bucket",
                    DirectoryBucketName::parse_with(
                        &q.directory_bucket,
                        limits.allow_general_purpose_destination,
                    ),
                );
                let prefixes = check_prefixes(&mut v, "prefixes.prefixes", &q.prefixes, limits);
                match (directory_bucket, prefixes) {
                    (Some(directory_bucket), Some(prefixes)) => Some(Self::Prefixes {
                        directory_bucket,
                        prefixes,
                    }),
                    _ => None,
                }
            }
        };
        v.finish()?;
        Ok(out.expect("a valid target was parsed"))
    }
}

/// Checks an operation id field: 1-128 printable ASCII characters.
pub fn parse_operation_id(field: &str, id: &str) -> Result<String, InvalidRequest> {
    let mut v = Violations::default();
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic()) {
        v.push(
            field,
            "must be 1-128 printable ASCII characters (an id printed by warm)",
        );
    }
    v.finish()?;
    Ok(id.to_owned())
}

/// Which operations a listing asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFilter {
    All,
    Running,
    Finished,
}

/// A validated `ListOperationsRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSpec {
    pub filter: ListFilter,
    pub page_size: usize,
    /// Continue after this (created_at ms, operation id).
    pub after: Option<(i64, String)>,
}

impl ListSpec {
    pub const MAX_PAGE: usize = 1000;

    pub fn parse(req: &pb::ListOperationsRequest) -> Result<Self, InvalidRequest> {
        let mut v = Violations::default();
        let filter = match pb::OperationFilter::try_from(req.filter) {
            Ok(pb::OperationFilter::Unspecified) => ListFilter::All,
            Ok(pb::OperationFilter::Running) => ListFilter::Running,
            Ok(pb::OperationFilter::Finished) => ListFilter::Finished,
            Err(_) => {
                v.push("filter", format!("unknown filter {}", req.filter));
                ListFilter::All
            }
        };
        let page_size = match req.page_size as usize {
            0 => 100,
            n if n > Self::MAX_PAGE => {
                v.push(
                    "page_size",
                    format!("{n} exceeds the maximum of {}", Self::MAX_PAGE),
                );
                0
            }
            n => n,
        };
        let after = if req.page_token.is_empty() {
            None
        } else {
            match decode_page_token(&req.page_token) {
                Some(c) => Some(c),
                None => {
                    v.push("page_token", "is not a token from a previous response");
                    None
                }
            }
        };
        v.finish()?;
        Ok(Self {
            filter,
            page_size,
            after,
        })
    }
}

/// The opaque cursor handed to clients: `<created_at ms>.<operation id>`.
pub fn encode_page_token(created_at: i64, id: &str) -> String {
    format!("{created_at}.{id}")
}

fn decode_page_token(token: &str) -> Option<(i64, String)> {
    let (t, id) = token.split_once('.')?;
    if id.is_empty() {
        return None;
    }
    Some((t.parse().ok()?, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::WarmCacheRequest {
        pb::WarmCacheRequest {
            bucket: "src-bucket".into(),
            prefixes: vec!["a/".into(), "".into()],
            directory_bucket: "cache--use1-az4--x-s3".into(),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            force_copy: false,
            request_id: "job-1".into(),
            destination_prefix: String::new(),
            max_staleness: None,
            dry_run: false,
            batch_operations: false,
            allow_empty: false,
            include: vec![],
            exclude: vec![],
            keys: vec![],
        }
    }

    #[test]
    fn max_staleness_is_bounded_and_never_with_force_copy() {
        let window = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        let spec = WarmSpec::parse(
            &pb::WarmCacheRequest {
                max_staleness: window(30),
                ..good()
            },
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(spec.max_staleness, Duration::from_secs(30));
        assert_eq!(
            WarmSpec::parse(&pb::WarmCacheRequest::from(&spec), &Limits::default()).unwrap(),
            spec,
            "round-trips"
        );
        for bad in [
            pb::WarmCacheRequest {
                max_staleness: window(30),
                force_copy: true,
                ..good()
            },
            pb::WarmCacheRequest {
                max_staleness: window(-1),
                ..good()
            },
            pb::WarmCacheRequest {
                max_staleness: window(365 * 24 * 3600),
                ..good()
            },
        ] {
            let e = WarmSpec::parse(&bad, &Limits::default()).unwrap_err();
            assert_eq!(fields(e), ["max_staleness"], "{bad:?}");
        }
    }

    fn fields(e: InvalidRequest) -> Vec<String> {
        e.violations.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_good_request_parses() {
        let spec = WarmSpec::parse(&good(), &Limits::default()).unwrap();
        assert_eq!(spec.prefixes.len(), 2);
        assert_eq!(spec.ttl, Duration::from_secs(3600));
        assert_eq!(spec.request_id.unwrap().as_str(), "job-1");
    }

    #[test]
    fn a_spec_goes_back_to_the_request_it_came_from() {
        let spec = WarmSpec::parse(&good(), &Limits::default()).unwrap();
        let wire = pb::WarmCacheRequest::from(&spec);
        assert_eq!(WarmSpec::parse(&wire, &Limits::default()).unwrap(), spec);
        assert!(spec.within(&Limits::default()).is_ok());
        let tight = Limits {
            max_ttl: Duration::from_secs(60),
            ..Limits::default()
        };
        assert_eq!(fields(spec.within(&tight).unwrap_err()), ["ttl"]);
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let req = pb::WarmCacheRequest {
            bucket: "Bad_Bucket".into(),
            prefixes: vec!["ok/".into(), "no-slash".into(), "ok/".into()],
            directory_bucket: "plain-bucket".into(),
            ttl: None,
            force_copy: false,
            request_id: "has space".into(),
            destination_prefix: "no-slash".into(),
            max_staleness: None,
            dry_run: false,
            batch_operations: false,
            allow_empty: false,
            include: vec![],
            exclude: vec![],
            keys: vec![],
        };
        let f = fields(WarmSpec::parse(&req, &Limits::default()).unwrap_err());
        assert_eq!(
            f,
            [
                "bucket",
                "prefixes[1]",
                "prefixes[2]",
                "directory_bucket",
                "ttl",
                "request_id",
                "destination_prefix"
            ]
        );
    }

    #[test]
    fn an_s3_url_as_a_prefix_is_refused_by_every_server_with_a_field_violation() {
        use tonic_types::StatusExt;
        let mut req = good();
        req.prefixes = vec!["ok/".into(), "s3://demo-src/datasets/".into()];
        let err = WarmSpec::parse(&req, &Limits::default()).unwrap_err();
        assert_eq!(fields(err.clone()), ["prefixes[1]"]);
        let status = err.to_status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let violation = &status
            .get_details_bad_request()
            .expect("bad request details")
            .field_violations[0];
        assert_eq!(violation.field, "prefixes[1]");
        assert!(
            violation
                .description
                .contains(r#"did you mean bucket "demo-src" with prefix "datasets/"?"#),
            "{}",
            violation.description
        );
    }

    #[test]
    fn general_purpose_destinations_only_when_allowed() {
        let mut req = good();
        req.directory_bucket = "plain-bucket".into();
        assert!(WarmSpec::parse(&req, &Limits::default()).is_err());
        let lenient = Limits {
            allow_general_purpose_destination: true,
            ..Limits::default()
        };
        assert!(WarmSpec::parse(&req, &lenient).is_ok());
        req.directory_bucket = "Bad_Name".into();
        assert!(
            WarmSpec::parse(&req, &lenient).is_err(),
            "still a valid bucket name"
        );
    }

    #[test]
    fn ttl_bounds() {
        let limits = Limits {
            max_ttl: Duration::from_secs(60),
            ..Limits::default()
        };
        for (s, n) in [(0, 0), (-1, 0), (61, 0), (1, -5)] {
            let mut req = good();
            req.ttl = Some(prost_types::Duration {
                seconds: s,
                nanos: n,
            });
            assert_eq!(fields(WarmSpec::parse(&req, &limits).unwrap_err()), ["ttl"]);
        }
        let mut req = good();
        req.ttl = Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        });
        assert!(WarmSpec::parse(&req, &limits).is_ok());
    }

    #[test]
    fn ttl_below_the_floor_is_refused_with_a_field_violation() {
        let limits = Limits::default();
        // 500 µs used to truncate to a 0 ms lease; 300 ms left a warm's own
        // hits unprotected. Both are below the default 1 s floor.
        for (s, n) in [(0, 500_000), (0, 300_000_000), (0, 999_999_999)] {
            let mut req = good();
            req.ttl = Some(prost_types::Duration {
                seconds: s,
                nanos: n,
            });
            let err = WarmSpec::parse(&req, &limits).unwrap_err();
            assert_eq!(fields(err.clone()), ["ttl"]);
            assert!(format!("{err:?}").contains("minimum"), "{err:?}");
        }
        let mut req = good();
        req.ttl = Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        });
        assert!(
            WarmSpec::parse(&req, &limits).is_ok(),
            "1 s is the floor itself"
        );
    }

    #[test]
    fn prefix_list_size_is_bounded() {
        let limits = Limits {
            max_prefixes: 2,
            ..Limits::default()
        };
        let mut req = good();
        req.prefixes = vec![];
        assert_eq!(
            fields(WarmSpec::parse(&req, &limits).unwrap_err()),
            ["prefixes"]
        );
        req.prefixes = vec!["a/".into(), "b/".into(), "c/".into()];
        assert_eq!(
            fields(WarmSpec::parse(&req, &limits).unwrap_err()),
            ["prefixes"]
        );
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn include_and_exclude_patterns_select_keys_and_go_back_to_the_wire() {
        let mut req = good();
        req.prefixes = strings(&[""]);
        req.include = strings(&["**/*.bin", "top.txt"]);
        req.exclude = strings(&["tmp/**"]);
        let spec = WarmSpec::parse(&req, &Limits::default()).unwrap();
        let s = &spec.selection;
        assert!(s.selects("a/b.bin") && s.selects("top.txt") && s.selects("c.bin"));
        assert!(!s.selects("tmp/x.bin"), "exclude wins");
        assert!(!s.selects("a/b.txt"));
        assert!(s.may_select_under("a/") && !s.may_select_under("tmp/"));
        assert_eq!(pb::WarmCacheRequest::from(&spec).include, req.include);
        assert_eq!(
            WarmSpec::parse(&pb::WarmCacheRequest::from(&spec), &Limits::default()).unwrap(),
            spec
        );
        assert!(WarmSpec::parse(&good(), &Limits::default())
            .unwrap()
            .selection
            .is_everything());
    }

    #[test]
    fn a_bad_pattern_is_a_field_violation_and_patterns_are_bounded() {
        let mut req = good();
        req.include = strings(&["ok/*", "a[bc"]);
        req.exclude = strings(&[""]);
        assert_eq!(
            fields(WarmSpec::parse(&req, &Limits::default()).unwrap_err()),
            ["include[1]", "exclude[0]"]
        );
        req.include = vec!["*".into(); 60];
        req.exclude = vec!["x".into(); 41];
        assert_eq!(
            fields(WarmSpec::parse(&req, &Limits::default()).unwrap_err()),
            ["include"]
        );
    }

    #[test]
    fn a_key_list_is_listed_and_leased_by_its_directories() {
        let mut req = good();
        req.prefixes = vec![];
        req.keys = strings(&["d/x/2.bin", "d/x/1.bin", "top.bin", "d/y.bin"]);
        let spec = WarmSpec::parse(&req, &Limits::default()).unwrap();
        assert!(spec.is_key_list());
        let dirs: Vec<&str> = spec.prefixes.iter().map(Prefix::as_str).collect();
        assert_eq!(dirs, ["", "d/", "d/x/"]);
        let s = &spec.selection;
        assert!(s.selects("d/x/1.bin") && !s.selects("d/x/3.bin"));
        assert!(s.may_select_under("d/x/") && !s.may_select_under("e/"));
        let wire = pb::WarmCacheRequest::from(&spec);
        assert!(wire.prefixes.is_empty());
        assert_eq!(wire.keys, ["d/x/1.bin", "d/x/2.bin", "d/y.bin", "top.bin"]);
        assert_eq!(WarmSpec::parse(&wire, &Limits::default()).unwrap(), spec);
    }

    #[test]
    fn bad_keys_are_refused_each_by_index_and_never_with_prefixes() {
        let mut req = good();
        req.keys = strings(&["a.bin"]);
        assert_eq!(
            fields(WarmSpec::parse(&req, &Limits::default()).unwrap_err()),
            ["keys"],
            "prefixes and keys"
        );
        req.prefixes = vec![];
        req.keys = strings(&["a.bin", "dir/", "a.bin", "s3://b/k"]);
        assert_eq!(
            fields(WarmSpec::parse(&req, &Limits::default()).unwrap_err()),
            ["keys[1]", "keys[2]", "keys[3]"]
        );
        // Thousands of bad keys: ten named, the rest counted.
        req.keys = (0..5000).map(|i| format!("d{i}/")).collect();
        let e = WarmSpec::parse(&req, &Limits::default()).unwrap_err();
        assert_eq!(e.violations.len(), MAX_KEY_VIOLATIONS + 1);
        assert!(e.violations[MAX_KEY_VIOLATIONS]
            .description
            .contains("4990 more keys"));
        req.keys = (0..=MAX_KEYS).map(|i| format!("k{i}")).collect();
        assert_eq!(
            fields(WarmSpec::parse(&req, &Limits::default()).unwrap_err()),
            ["keys"]
        );
    }

    #[test]
    fn keys_in_too_many_directories_are_leased_by_their_parents() {
        let keys: Vec<String> = (0..3000)
            .map(|i| format!("runs/{}/{i}/x.bin", i % 2))
            .collect();
        let dirs = key_directories(&keys);
        let dirs: Vec<&str> = dirs.iter().map(Prefix::as_str).collect();
        assert_eq!(dirs, ["runs/0/", "runs/1/"]);
        let few: Vec<String> = (0..10).map(|i| format!("a/{i}/x")).collect();
        assert_eq!(key_directories(&few).len(), 10);
    }

    #[test]
    fn minimal_cover_drops_children() {
        let p = |s: &str| Prefix::parse(s).unwrap();
        let cover = minimal_cover(&[p("a/b/"), p("c/"), p("a/"), p("c/d/")]);
        assert_eq!(cover, [p("c/"), p("a/")]);
        assert_eq!(minimal_cover(&[p("a/"), p("")]), [p("")]);
    }

    #[test]
    fn list_requests_and_tokens() {
        let ok = ListSpec::parse(&pb::ListOperationsRequest {
            filter: pb::OperationFilter::Running as i32,
            page_size: 0,
            page_token: encode_page_token(17, "op-1"),
        })
        .unwrap();
        assert_eq!(ok.page_size, 100);
        assert_eq!(ok.after, Some((17, "op-1".into())));
        let bad = ListSpec::parse(&pb::ListOperationsRequest {
            filter: 9,
            page_size: 5000,
            page_token: "garbage".into(),
        })
        .unwrap_err();
        assert_eq!(fields(bad), ["filter", "page_size", "page_token"]);
        assert!(parse_operation_id("operation_id", "").is_err());
    }

    #[test]
    fn status_needs_a_target() {
        let req = pb::GetStatusRequest { target: None };
        assert_eq!(
            fields(StatusQuery::parse(&req, &Limits::default()).unwrap_err()),
            ["target"]
        );
    }

    #[test]
    fn invalid_request_becomes_bad_request_status() {
        use tonic_types::StatusExt;
        let mut req = good();
        req.bucket = "x".into();
        let status = WarmSpec::parse(&req, &Limits::default())
            .unwrap_err()
            .to_status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let br = status
            .get_details_bad_request()
            .expect("bad request details");
        assert_eq!(br.field_violations[0].field, "bucket");
    }
}
