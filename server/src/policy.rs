//! Who may do what: the access policy.
//!
//! A TOML file maps *principals* to what they may do. A principal is the
//! string the server derived from how the caller authenticated:
//!
//! - mutual TLS: the client certificate's subject, e.g.
//!   `CN=launcher,O=genomics`;
//! - bearer token: the name the token file gives the token, e.g.
//!   `ci-runner`.
//!
//! Names are compared as exact, case-sensitive strings.
//!
//! # File format
//!
//! ```toml
//! # Principals not listed get [default] if the file has one, else nothing.
//!
//! # A job launcher authenticated by its client certificate.
//! [principals."CN=launcher,O=genomics"]
//! warm_from = ["s3://genomics-raw/runs/", "s3://reference-data"]
//! write_to = ["s3://cache--use1-az4--x-s3/genomics/"]
//! max_ttl = "7d"
//! may_evict = true
//! may_force = false
//! may_force_copy = true
//! see_all_operations = false
//!
//! # A CI job authenticated by a bearer token named "ci-runner".
//! [principals.ci-runner]
//! warm_from = ["s3://genomics-raw/runs/"]
//! write_to = ["s3://cache--use1-az4--x-s3/ci/"]
//! max_ttl = "12h"
//!
//! # An operator: everything, forced evictions included.
//! [principals."CN=oncall,O=platform"]
//! warm_from = ["s3://genomics-raw", "s3://reference-data"]
//! write_to = ["s3://cache--use1-az4--x-s3"]
//! may_evict = true
//! may_force = true
//! may_force_copy = true
//! see_all_operations = true
//!
//! # Anyone else who authenticates: reference data only, for a day at most.
//! [default]
//! warm_from = ["s3://reference-data/"]
//! write_to = ["s3://cache--use1-az4--x-s3/shared/"]
//! max_ttl = "1d"
//! ```
//!
//! Both tables are optional; every key of an entry is optional and its
//! absence grants nothing (`max_ttl` absent: only the server's own
//! `--max-ttl` applies). Keys:
//!
//! - `warm_from`: `s3://BUCKET` (the whole bucket) or `s3://BUCKET/PREFIX/`
//!   entries naming general-purpose buckets. A warm may read a requested
//!   prefix when it is at or under one entry of the same bucket.
//! - `write_to`: `s3://DIRECTORY-BUCKET` or `s3://DIRECTORY-BUCKET/PREFIX/`.
//!   A warm may write, and an evict delete, only keys at or under one of
//!   them. A general-purpose bucket name is accepted too, for servers run
//!   with `allow_general_purpose_destination`.
//! - `max_ttl`: the longest TTL the principal may ask for (humantime:
//!   `12h`, `7d`, `2weeks`); more than zero.
//! - `may_evict`: may call Evict. `may_force`: may evict with `force`
//!   (delete what other leases still cover); needs `may_evict`.
//! - `may_force_copy`: may warm with `force_copy`.
//! - `see_all_operations`: sees (lists, watches, asks about) every
//!   principal's operations, not only its own, and may ask GetStatus about
//!   any prefix (otherwise only where it may write).
//! - `may_cancel_others`: may cancel other principals' operations (seeing
//!   them is not enough to stop them).
//!
//! Unknown keys are errors, so a typo cannot silently grant or withhold
//! anything.
//!
//! # Prefixes
//!
//! Matching is by string prefix on S3 keys, so a prefix must end in `/`:
//! `s3://b/runs/` covers `runs/2024/` but not `runs-old/`. An entry such
//! as `s3://b/runs` is refused at load time (with a hint to add the `/`)
//! rather than silently normalised. Empty path segments (`s3://b//x/`,
//! `s3://b/x//y/`) are refused too. `s3://b` and `s3://b/` both mean the
//! whole bucket; a request for the whole bucket (prefix `""`) is allowed
//! only by a whole-bucket entry.
//!
//! # Rules
//!
//! Each check stops at the first rule broken and returns a [`Denial`] with a
//! stable reason code (for `google.rpc.ErrorInfo`), the request field it
//! concerns and a message naming the principal, what was refused and what
//! is allowed:
//!
//! | reason | field | when |
//! |---|---|---|
//! | `UNKNOWN_PRINCIPAL` | `""` | not listed, and the file has no `[default]` |
//! | `SOURCE_NOT_ALLOWED` | `bucket` / `prefixes` | warm: no `warm_from` entry of that bucket / a requested prefix under none of them |
//! | `DESTINATION_NOT_ALLOWED` | `directory_bucket` | warm or evict: no `write_to` entry of that directory bucket |
//! | `DESTINATION_NOT_ALLOWED` | `destination_prefix` | warm: `destination_prefix` + a requested prefix (where its keys land) under no `write_to` entry |
//! | `DESTINATION_NOT_ALLOWED` | `prefixes` | evict: a prefix under no `write_to` entry |
//! | `TTL_ABOVE_PRINCIPAL_MAX` | `ttl` | warm: `ttl` above `max_ttl` |
//! | `FORCE_COPY_NOT_ALLOWED` | `force_copy` | warm: `force_copy` without `may_force_copy` |
//! | `EVICT_NOT_ALLOWED` | `""` | evict without `may_evict` |
//! | `FORCE_NOT_ALLOWED` | `force` | evict: `force` without `may_force` |
//!
//! A listed principal gets exactly its own entry: `[default]` applies only
//! to principals the file does not list.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use expresscache::{BucketName, DirectoryBucketName, EvictSpec, Prefix, WarmSpec};
use serde::Deserialize;

/// Callers are named by [`crate::auth`].
pub use crate::auth::Principal;

/// A request the policy refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Stable UPPER_SNAKE reason code (`google.rpc.ErrorInfo.reason`): one
    /// of the associated constants.
    pub reason: &'static str,
    /// The request field refused, or `""` when it is the principal itself.
    pub field: &'static str,
    /// For people: the principal, the value refused and what is allowed.
    pub message: String,
}

impl Denial {
    /// Not listed, and the file has no `[default]`.
    pub const UNKNOWN_PRINCIPAL: &'static str = "UNKNOWN_PRINCIPAL";
    /// A warm's source bucket or prefix is outside `warm_from`.
    pub const SOURCE_NOT_ALLOWED: &'static str = "SOURCE_NOT_ALLOWED";
    /// Keys would be written (or evicted) outside `write_to`.
    pub const DESTINATION_NOT_ALLOWED: &'static str = "DESTINATION_NOT_ALLOWED";
    /// A warm's TTL is above the principal's `max_ttl`.
    pub const TTL_ABOVE_PRINCIPAL_MAX: &'static str = "TTL_ABOVE_PRINCIPAL_MAX";
    /// Evict without `may_evict`.
    pub const EVICT_NOT_ALLOWED: &'static str = "EVICT_NOT_ALLOWED";
    /// Evict with `force` without `may_force`.
    pub const FORCE_NOT_ALLOWED: &'static str = "FORCE_NOT_ALLOWED";
    /// Warm with `force_copy` without `may_force_copy`.
    pub const FORCE_COPY_NOT_ALLOWED: &'static str = "FORCE_COPY_NOT_ALLOWED";

    fn new(reason: &'static str, field: &'static str, message: String) -> Self {
        Self {
            reason,
            field,
            message,
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a policy file could not be loaded.
#[derive(Debug)]
pub enum PolicyError {
    /// The file could not be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type; toml's
    /// message shows the line and the key.
    Syntax {
        path: Option<PathBuf>,
        source: toml::de::Error,
    },
    /// Well-formed, but a value breaks a rule; `key` is its path, e.g.
    /// `principals."ci-runner".warm_from[0]`.
    Invalid {
        path: Option<PathBuf>,
        key: String,
        message: String,
    },
}

impl PolicyError {
    /// The same error, naming the file it came from.
    fn in_file(self, file: &Path) -> Self {
        match self {
            Self::Syntax { source, .. } => Self::Syntax {
                path: Some(file.to_path_buf()),
                source,
            },
            Self::Invalid { key, message, .. } => Self::Invalid {
                path: Some(file.to_path_buf()),
                key,
                message,
            },
            read @ Self::Read { .. } => read,
        }
    }
}

fn heading(path: Option<&Path>) -> String {
    match path {
        Some(p) => format!("invalid policy file {}", p.display()),
        None => "invalid policy".to_owned(),
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read { path, source } => {
                write!(f, "cannot read policy file {}: {source}", path.display())
            }
            Self::Syntax { path, source } => write!(
                f,
                "{}: {}",
                heading(path.as_deref()),
                source.to_string().trim_end()
            ),
            Self::Invalid { path, key, message } => {
                write!(f, "{}: {key}: {message}", heading(path.as_deref()))
            }
        }
    }
}

impl std::error::Error for PolicyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read { source, .. } => Some(source),
            Self::Syntax { source, .. } => Some(source),
            Self::Invalid { .. } => None,
        }
    }
}

fn invalid(key: &str, message: String) -> PolicyError {
    PolicyError::Invalid {
        path: None,
        key: key.to_owned(),
        message,
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    principals: BTreeMap<String, RawGrant>,
    #[serde(default, rename = "default")]
    default_grant: Option<RawGrant>,
}

/// One entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    #[serde(default)]
    warm_from: Vec<String>,
    #[serde(default)]
    write_to: Vec<String>,
    #[serde(default)]
    max_ttl: Option<String>,
    #[serde(default)]
    may_evict: bool,
    #[serde(default)]
    may_force: bool,
    #[serde(default)]
    may_force_copy: bool,
    #[serde(default)]
    see_all_operations: bool,
    #[serde(default)]
    may_cancel_others: bool,
}

/// A `warm_from` entry: a general-purpose bucket and a prefix in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceEntry {
    bucket: BucketName,
    prefix: Prefix,
}

/// A `write_to` entry: a directory bucket and a prefix in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DestEntry {
    bucket: DirectoryBucketName,
    prefix: Prefix,
}

/// `s3://bucket/prefix`: `s3://bucket/` for the whole bucket.
fn s3_url(bucket: &str, prefix: &Prefix) -> String {
    format!("s3://{bucket}/{}", prefix.as_str())
}

impl SourceEntry {
    fn url(&self) -> String {
        s3_url(self.bucket.as_str(), &self.prefix)
    }
}

impl DestEntry {
    fn url(&self) -> String {
        s3_url(self.bucket.as_str(), &self.prefix)
    }
}

/// What one principal (or `[default]`) may do, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    warm_from: Vec<SourceEntry>,
    write_to: Vec<DestEntry>,
    max_ttl: Option<Duration>,
    may_evict: bool,
    may_force: bool,
    may_force_copy: bool,
    see_all_operations: bool,
    may_cancel_others: bool,
}

/// Splits `s3://bucket[/prefix/]` into the bucket name (unchecked) and the
/// prefix (`""` for the whole bucket).
fn parse_s3_url(url: &str) -> Result<(&str, Prefix), String> {
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(format!(
            "{url:?} is not an s3:// URL (expected s3://BUCKET or s3://BUCKET/PREFIX/)"
        ));
    };
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("{url:?} names no bucket"));
    }
    if path.is_empty() {
        return Ok((bucket, Prefix::root()));
    }
    let Some(inner) = path.strip_suffix('/') else {
        return Err(format!(
            "{url:?}: prefix {path:?} must end in '/' (prefixes match whole path segments; did you mean \"s3://{bucket}/{path}/\"?)"
        ));
    };
    if inner.split('/').any(str::is_empty) {
        return Err(format!(
            "{url:?} has an empty path segment (a '//' or a '/' right after the bucket)"
        ));
    }
    let prefix = Prefix::parse(path).map_err(|e| format!("{url:?}: prefix {e}"))?;
    Ok((bucket, prefix))
}

impl Grant {
    /// Validates `raw`, found at `key` (`default` or `principals."name"`).
    fn from_raw(key: &str, raw: RawGrant) -> Result<Self, PolicyError> {
        let mut warm_from = Vec::with_capacity(raw.warm_from.len());
        for (i, url) in raw.warm_from.iter().enumerate() {
            let at = format!("{key}.warm_from[{i}]");
            let (bucket, prefix) = parse_s3_url(url).map_err(|m| invalid(&at, m))?;
            let bucket = BucketName::parse(bucket)
                .map_err(|m| invalid(&at, format!("{url:?}: invalid bucket name: {m}")))?;
            warm_from.push(SourceEntry { bucket, prefix });
        }
        let mut write_to = Vec::with_capacity(raw.write_to.len());
        for (i, url) in raw.write_to.iter().enumerate() {
            let at = format!("{key}.write_to[{i}]");
            let (bucket, prefix) = parse_s3_url(url).map_err(|m| invalid(&at, m))?;
            let bucket = DirectoryBucketName::parse_with(bucket, true)
                .map_err(|m| invalid(&at, format!("{url:?}: invalid bucket name: {m}")))?;
            write_to.push(DestEntry { bucket, prefix });
        }
        let max_ttl = match raw.max_ttl {
            None => None,
            Some(text) => {
                let at = format!("{key}.max_ttl");
                let ttl = humantime::parse_duration(&text).map_err(|e| {
                    invalid(
                        &at,
                        format!("invalid duration {text:?} (e.g. \"12h\", \"7d\"): {e}"),
                    )
                })?;
                if ttl.is_zero() {
                    return Err(invalid(&at, format!("{text:?} must be greater than zero")));
                }
                Some(ttl)
            }
        };
        if raw.may_force && !raw.may_evict {
            return Err(invalid(
                &format!("{key}.may_force"),
                "may_force = true needs may_evict = true (force is an option of Evict)".to_owned(),
            ));
        }
        Ok(Self {
            warm_from,
            write_to,
            max_ttl,
            may_evict: raw.may_evict,
            may_force: raw.may_force,
            may_force_copy: raw.may_force_copy,
            see_all_operations: raw.see_all_operations,
            may_cancel_others: raw.may_cancel_others,
        })
    }
}

/// Most items a denial message lists before "and N more".
const MAX_LISTED: usize = 10;

/// `a, b, c`, at most [`MAX_LISTED`] of them, or `none`.
fn list(items: Vec<String>) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    let more = items.len().saturating_sub(MAX_LISTED);
    let mut out = items
        .into_iter()
        .take(MAX_LISTED)
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

/// Who may do what: the parsed policy file.
#[derive(Debug, Clone)]
pub struct Policy {
    principals: HashMap<String, Grant>,
    default_grant: Option<Grant>,
}

impl Policy {
    /// Reads and parses the policy file at `path`; errors name the file and
    /// the key at fault.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| e.in_file(path))
    }

    /// Parses a policy from TOML text (the format of the module docs).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy =
            toml::from_str(text).map_err(|source| PolicyError::Syntax { path: None, source })?;
        let mut principals = HashMap::with_capacity(raw.principals.len());
        for (name, grant) in raw.principals {
            let key = format!("principals.{name:?}");
            if name.trim().is_empty() {
                return Err(invalid(
                    &key,
                    "a principal name must not be empty".to_owned(),
                ));
            }
            if name.trim() != name {
                return Err(invalid(
                    &key,
                    "a principal name must not start or end with white space".to_owned(),
                ));
            }
            let grant = Grant::from_raw(&key, grant)?;
            principals.insert(name, grant);
        }
        let default_grant = match raw.default_grant {
            Some(grant) => Some(Grant::from_raw("default", grant)?),
            None => None,
        };
        Ok(Self {
            principals,
            default_grant,
        })
    }

    /// How many principals the file lists by name (`[default]` not counted).
    pub fn principals(&self) -> usize {
        self.principals.len()
    }

    /// The grant `who` gets and how to name `who` in a denial.
    fn grant(&self, who: &Principal) -> Result<(&Grant, String), Denial> {
        if let Some(grant) = self.principals.get(who.0.as_str()) {
            return Ok((grant, format!("principal {:?}", who.0)));
        }
        if let Some(grant) = &self.default_grant {
            return Ok((grant, format!("principal {:?} (under [default])", who.0)));
        }
        Err(Denial::new(
            Denial::UNKNOWN_PRINCIPAL,
            "",
            format!(
                "principal {:?} is not in the access policy, which has no [default] entry",
                who.0
            ),
        ))
    }

    /// Whether `who` may run the warm `spec`: its source, where its keys
    /// land, its TTL and `force_copy`.
    pub fn check_warm(&self, who: &Principal, spec: &WarmSpec) -> Result<(), Denial> {
        let (grant, name) = self.grant(who)?;

        warm_source_allowed(grant, &name, spec)?;
        warm_destination_allowed(grant, &name, spec)?;
        if let Some(max) = grant.max_ttl {
            if spec.ttl > max {
                return Err(Denial::new(
                    Denial::TTL_ABOVE_PRINCIPAL_MAX,
                    "ttl",
                    format!(
                        "{name} may ask for a ttl of at most {} (requested {})",
                        humantime::format_duration(max),
                        humantime::format_duration(spec.ttl)
                    ),
                ));
            }
        }

        if spec.force_copy && !grant.may_force_copy {
            return Err(Denial::new(
                Denial::FORCE_COPY_NOT_ALLOWED,
                "force_copy",
                format!("{name} may not warm with force_copy (allowed: force_copy = false)"),
            ));
        }
        Ok(())
    }

    /// Whether `who` may run the eviction `spec`: at all, where, and with
    /// `force`.
    pub fn check_evict(&self, who: &Principal, spec: &EvictSpec) -> Result<(), Denial> {
        let (grant, name) = self.grant(who)?;
        if !grant.may_evict {
            return Err(Denial::new(
                Denial::EVICT_NOT_ALLOWED,
                "",
                format!("{name} may not evict (may_evict is not set)"),
            ));
        }
        let dests = dest_entries(grant, &spec.directory_bucket);
        if dests.is_empty() {
            return Err(Denial::new(
                Denial::DESTINATION_NOT_ALLOWED,
                "directory_bucket",
                format!(
                    "{name} may not evict from directory bucket {} (allowed: {})",
                    spec.directory_bucket,
                    list(grant.write_to.iter().map(DestEntry::url).collect())
                ),
            ));
        }
        let mut refused = Vec::new();
        for p in &spec.prefixes {
            if !dests.iter().any(|e| e.prefix.covers(p)) {
                refused.push(s3_url(spec.directory_bucket.as_str(), p));
            }
        }
        if !refused.is_empty() {
            return Err(Denial::new(
                Denial::DESTINATION_NOT_ALLOWED,
                "prefixes",
                format!(
                    "{name} may not evict {} (allowed: {})",
                    list(refused),
                    list(dests.iter().map(|e| e.url()).collect())
                ),
            ));
        }
        if spec.force && !grant.may_force {
            return Err(Denial::new(
                Denial::FORCE_NOT_ALLOWED,
                "force",
                format!("{name} may not evict with force (allowed: force = false)"),
            ));
        }
        Ok(())
    }

    /// Whether `who` may ask how warm `prefixes` of `directory_bucket` are
    /// (cached counts, leases and the sources behind them, sweep errors):
    /// where it may write, or anywhere with `see_all_operations`.
    pub fn check_status(
        &self,
        who: &Principal,
        directory_bucket: &DirectoryBucketName,
        prefixes: &[Prefix],
    ) -> Result<(), Denial> {
        let (grant, name) = self.grant(who)?;
        if grant.see_all_operations {
            return Ok(());
        }
        let dests = dest_entries(grant, directory_bucket);
        let refused: Vec<String> = prefixes
            .iter()
            .filter(|p| !dests.iter().any(|e| e.prefix.covers(p)))
            .map(|p| s3_url(directory_bucket.as_str(), p))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        Err(Denial::new(
            Denial::DESTINATION_NOT_ALLOWED,
            "prefixes",
            format!(
                "{name} may not look at {} (allowed: where it may write, {})",
                list(refused),
                list(grant.write_to.iter().map(DestEntry::url).collect())
            ),
        ))
    }

    /// Whether `who` may cancel other principals' operations (seeing them
    /// is `see_all_operations`; stopping them is this).
    pub fn may_cancel_others(&self, who: &Principal) -> bool {
        self.principals
            .get(who.0.as_str())
            .or(self.default_grant.as_ref())
            .is_some_and(|g| g.may_cancel_others)
    }

    /// Whether `who` sees every principal's operations rather than only its
    /// own. Unknown principals without a `[default]` see none.
    pub fn sees_all_operations(&self, who: &Principal) -> bool {
        self.principals
            .get(who.0.as_str())
            .or(self.default_grant.as_ref())
            .is_some_and(|g| g.see_all_operations)
    }
}

/// Whether a warm's source is allowed: every requested prefix at or under
/// a warm_from entry of the same bucket.
fn warm_source_allowed(grant: &Grant, name: &str, spec: &WarmSpec) -> Result<(), Denial> {
    let sources: Vec<&SourceEntry> = grant
        .warm_from
        .iter()
        .filter(|e| e.bucket == spec.source)
        .collect();
    let mut refused = Vec::new();
    for p in &spec.prefixes {
        if !sources.iter().any(|e| e.prefix.covers(p)) {
            refused.push(s3_url(spec.source.as_str(), p));
        }
    }
    if !refused.is_empty() {
        let (field, allowed): (&'static str, Vec<String>) = if sources.is_empty() {
            (
                "bucket",
                grant.warm_from.iter().map(SourceEntry::url).collect(),
            )
        } else {
            ("prefixes", sources.iter().map(|e| e.url()).collect())
        };
        return Err(Denial::new(
            Denial::SOURCE_NOT_ALLOWED,
            field,
            format!(
                "{name} may not warm from {} (allowed: {})",
                list(refused),
                list(allowed)
            ),
        ));
    }
    Ok(())
}

/// Whether a warm's destination is allowed: keys land at
/// destination_prefix + source key, so destination_prefix + each requested
/// prefix must be at or under a write_to entry of the directory bucket.
fn warm_destination_allowed(grant: &Grant, name: &str, spec: &WarmSpec) -> Result<(), Denial> {
    let dests = dest_entries(grant, &spec.directory_bucket);
    if dests.is_empty() {
        return Err(Denial::new(
            Denial::DESTINATION_NOT_ALLOWED,
            "directory_bucket",
            format!(
                "{name} may not write to directory bucket {} (allowed: {})",
                spec.directory_bucket,
                list(grant.write_to.iter().map(DestEntry::url).collect())
            ),
        ));
    }
    let mut refused = Vec::new();
    for p in &spec.prefixes {
        let written = Prefix::join(&spec.destination_prefix, p);
        if !dests.iter().any(|e| e.prefix.covers(&written)) {
            refused.push(s3_url(spec.directory_bucket.as_str(), &written));
        }
    }
    if !refused.is_empty() {
        return Err(Denial::new(
            Denial::DESTINATION_NOT_ALLOWED,
            "destination_prefix",
            format!(
                "{name} may not write to {} (keys land at destination_prefix {:?} + source key; allowed: {})",
                list(refused),
                spec.destination_prefix.as_str(),
                list(dests.iter().map(|e| e.url()).collect())
            ),
        ));
    }
    Ok(())
}

/// The `write_to` entries of `bucket`.
fn dest_entries<'a>(grant: &'a Grant, bucket: &DirectoryBucketName) -> Vec<&'a DestEntry> {
    grant
        .write_to
        .iter()
        .filter(|e| &e.bucket == bucket)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the module docs, verbatim.
    const EXAMPLE: &str = r#"
# Principals not listed get [default] if the file has one, else nothing.

# A job launcher authenticated by its client certificate.
[principals."CN=launcher,O=genomics"]
warm_from = ["s3://genomics-raw/runs/", "s3://reference-data"]
write_to = ["s3://cache--use1-az4--x-s3/genomics/"]
max_ttl = "7d"
may_evict = true
may_force = false
may_force_copy = true
see_all_operations = false

# A CI job authenticated by a bearer token named "ci-runner".
[principals.ci-runner]
warm_from = ["s3://genomics-raw/runs/"]
write_to = ["s3://cache--use1-az4--x-s3/ci/"]
max_ttl = "12h"

# An operator: everything, forced evictions included.
[principals."CN=oncall,O=platform"]
warm_from = ["s3://genomics-raw", "s3://reference-data"]
write_to = ["s3://cache--use1-az4--x-s3"]
may_evict = true
may_force = true
may_force_copy = true
see_all_operations = true

# Anyone else who authenticates: reference data only, for a day at most.
[default]
warm_from = ["s3://reference-data/"]
write_to = ["s3://cache--use1-az4--x-s3/shared/"]
max_ttl = "1d"
"#;

    const CACHE: &str = "cache--use1-az4--x-s3";
    const LAUNCHER: &str = "CN=launcher,O=genomics";
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn example() -> Policy {
        Policy::parse(EXAMPLE).unwrap()
    }

    fn who(name: &str) -> Principal {
        Principal(name.to_owned())
    }

    fn prefixes(ps: &[&str]) -> Vec<Prefix> {
        ps.iter().map(|p| Prefix::parse(p).unwrap()).collect()
    }

    /// A warm of `bucket`/`ps` into the example's cache bucket at `dest`,
    /// for an hour, without force_copy.
    fn warm(bucket: &str, ps: &[&str], dest: &str) -> WarmSpec {
        WarmSpec {
            source: BucketName::parse(bucket).unwrap(),
            prefixes: prefixes(ps),
            directory_bucket: DirectoryBucketName::parse(CACHE).unwrap(),
            ttl: HOUR,
            force_copy: false,
            request_id: None,
            destination_prefix: Prefix::parse(dest).unwrap(),
            max_staleness: std::time::Duration::ZERO,
            batch_operations: false,
            allow_empty: false,
            selection: Default::default(),
        }
    }

    fn evict(ps: &[&str], force: bool) -> EvictSpec {
        EvictSpec {
            directory_bucket: DirectoryBucketName::parse(CACHE).unwrap(),
            prefixes: prefixes(ps),
            force,
        }
    }

    /// (reason, field) of a denial.
    fn code(r: Result<(), Denial>) -> (&'static str, &'static str) {
        let d = r.unwrap_err();
        (d.reason, d.field)
    }

    fn parse_err(text: &str) -> String {
        Policy::parse(text).unwrap_err().to_string()
    }

    // ---- the file -------------------------------------------------------

    #[test]
    fn the_documented_example_parses() {
        let p = example();
        assert_eq!(p.principals(), 3);
        assert!(p.default_grant.is_some());
        let launcher = &p.principals[LAUNCHER];
        assert_eq!(launcher.max_ttl, Some(7 * DAY));
        assert_eq!(
            launcher
                .warm_from
                .iter()
                .map(SourceEntry::url)
                .collect::<Vec<_>>(),
            ["s3://genomics-raw/runs/", "s3://reference-data/"]
        );
        assert!(launcher.may_evict && !launcher.may_force && launcher.may_force_copy);
        let ci = &p.principals["ci-runner"];
        assert_eq!(ci.max_ttl, Some(12 * HOUR));
        assert!(!ci.may_evict && !ci.may_force_copy && !ci.see_all_operations);
    }

    #[test]
    fn the_module_doc_example_is_the_tested_one() {
        let doc: String = include_str!("policy.rs")
            .lines()
            .skip_while(|l| *l != "//! ```toml")
            .skip(1)
            .take_while(|l| *l != "//! ```")
            .map(|l| l.strip_prefix("//!").unwrap_or(l).trim_start())
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(doc.contains("[default]"), "{doc}");
        assert_eq!(Policy::parse(&doc).unwrap().principals(), 3);
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        assert_eq!(squash(&doc), squash(EXAMPLE));
    }

    #[test]
    fn every_toml_block_of_the_policy_doc_parses() {
        let md = include_str!("../../doc/POLICY.md");
        let mut blocks = 0;
        let mut rest = md;
        while let Some(start) = rest.find("```toml\n") {
            let body = &rest[start + "```toml\n".len()..];
            let end = body.find("```").expect("closed toml block");
            if let Err(e) = Policy::parse(&body[..end]) {
                panic!("doc/POLICY.md block {blocks}: {e}");
            }
            blocks += 1;
            rest = &body[end + 3..];
        }
        assert!(blocks >= 1);
    }

    #[test]
    fn an_empty_file_denies_everyone() {
        let p = Policy::parse("").unwrap();
        assert_eq!(p.principals(), 0);
        assert_eq!(
            code(p.check_warm(&who("x"), &warm("reference-data", &[""], ""))),
            (Denial::UNKNOWN_PRINCIPAL, "")
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = parse_err("[principals.a]\nmax_tll = \"1d\"\n");
        assert!(e.starts_with("invalid policy: "), "{e}");
        assert!(e.contains("unknown field `max_tll`"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = parse_err("[principal.a]\nmax_ttl = \"1d\"\n");
        assert!(e.contains("unknown field `principal`"), "{e}");
        let e = parse_err("[default]\nmay_evict = \"yes\"\n");
        assert!(e.contains("may_evict"), "{e}");
    }

    #[test]
    fn bad_urls_are_refused_naming_the_key() {
        let cases = [
            (
                "warm_from = [\"s3://ok-bucket/\", \"https://b/x/\"]",
                "principals.\"a\".warm_from[1]: \"https://b/x/\" is not an s3:// URL",
            ),
            (
                "warm_from = [\"s3:///x/\"]",
                "principals.\"a\".warm_from[0]: \"s3:///x/\" names no bucket",
            ),
            (
                "warm_from = [\"s3://genomics-raw/runs\"]",
                "principals.\"a\".warm_from[0]: \"s3://genomics-raw/runs\": prefix \"runs\" must end in '/' (prefixes match whole path segments; did you mean \"s3://genomics-raw/runs/\"?)",
            ),
            (
                "warm_from = [\"s3://genomics-raw//runs/\"]",
                "principals.\"a\".warm_from[0]: \"s3://genomics-raw//runs/\" has an empty path segment",
            ),
            (
                "warm_from = [\"s3://genomics-raw/a//b/\"]",
                "has an empty path segment",
            ),
            (
                "warm_from = [\"s3://Genomics/\"]",
                "principals.\"a\".warm_from[0]: \"s3://Genomics/\": invalid bucket name: \"Genomics\" contains 'G'",
            ),
            (
                "warm_from = [\"s3://cache--use1-az4--x-s3/\"]",
                "is a directory bucket name",
            ),
            (
                "write_to = [\"s3://cache--use1--x-s3/\"]",
                "principals.\"a\".write_to[0]: \"s3://cache--use1--x-s3/\": invalid bucket name: zone id \"use1\"",
            ),
            (
                "write_to = [\"s3://\"]",
                "principals.\"a\".write_to[0]: \"s3://\" names no bucket",
            ),
        ];
        for (line, want) in cases {
            let e = parse_err(&format!("[principals.a]\n{line}\n"));
            assert!(e.contains(want), "{line}: {e}");
            assert!(e.starts_with("invalid policy: "), "{e}");
        }
    }

    #[test]
    fn whole_bucket_urls_with_or_without_slash() {
        let p = Policy::parse(
            "[default]\nwarm_from = [\"s3://a-bucket\", \"s3://b-bucket/\"]\nwrite_to = [\"s3://gp-bucket/x/\"]\n",
        )
        .unwrap();
        let g = p.default_grant.unwrap();
        assert!(g.warm_from.iter().all(|e| e.prefix == Prefix::root()));
        // A general-purpose destination is accepted (for servers allowing
        // one); requests are still validated against the server's setting.
        assert_eq!(g.write_to[0].url(), "s3://gp-bucket/x/");
    }

    #[test]
    fn bad_durations_are_refused_naming_the_key() {
        let e = parse_err("[principals.\"CN=x\"]\nmax_ttl = \"7x\"\n");
        assert!(
            e.starts_with(
                "invalid policy: principals.\"CN=x\".max_ttl: invalid duration \"7x\" (e.g. \"12h\", \"7d\"): "
            ),
            "{e}"
        );
        assert!(e.contains("unknown time unit"), "{e}");
        let e = parse_err("[default]\nmax_ttl = \"0s\"\n");
        assert_eq!(
            e,
            "invalid policy: default.max_ttl: \"0s\" must be greater than zero"
        );
        let e = parse_err("[default]\nmax_ttl = 7\n");
        assert!(e.contains("max_ttl"), "{e}");
    }

    #[test]
    fn inconsistent_or_empty_entries_are_refused() {
        let e = parse_err("[principals.a]\nmay_force = true\n");
        assert_eq!(
            e,
            "invalid policy: principals.\"a\".may_force: may_force = true needs may_evict = true (force is an option of Evict)"
        );
        let e = parse_err("[principals.\"\"]\nmay_evict = true\n");
        assert!(
            e.contains("principals.\"\": a principal name must not be empty"),
            "{e}"
        );
        let e = parse_err("[principals.\" x\"]\n");
        assert!(e.contains("white space"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        let missing = Policy::load(&path).unwrap_err().to_string();
        assert!(missing.starts_with("cannot read policy file "), "{missing}");
        assert!(missing.contains("policy.toml"), "{missing}");

        std::fs::write(&path, EXAMPLE).unwrap();
        assert_eq!(Policy::load(&path).unwrap().principals(), 3);

        std::fs::write(&path, "[default]\nwarm_from = [\"s3://b/runs\"]\n").unwrap();
        let e = Policy::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "invalid policy file {}: default.warm_from[0]: ",
                path.display()
            )),
            "{e}"
        );

        std::fs::write(&path, "[default]\nwarm_frm = []\n").unwrap();
        let e = Policy::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("invalid policy file {}: ", path.display())),
            "{e}"
        );
        assert!(e.contains("warm_frm"), "{e}");
    }

    // ---- principals -----------------------------------------------------

    #[test]
    fn unknown_principals_without_default_are_denied_everything() {
        let p = Policy::parse("[principals.ci-runner]\nwarm_from = [\"s3://b-bucket\"]\nwrite_to = [\"s3://cache--use1-az4--x-s3\"]\nmay_evict = true\n").unwrap();
        let stranger = who("CN=stranger");
        let d = p
            .check_warm(&stranger, &warm("b-bucket", &["x/"], ""))
            .unwrap_err();
        assert_eq!(
            d,
            Denial {
                reason: Denial::UNKNOWN_PRINCIPAL,
                field: "",
                message: "principal \"CN=stranger\" is not in the access policy, which has no [default] entry".to_owned(),
            }
        );
        assert_eq!(
            code(p.check_evict(&stranger, &evict(&["x/"], false))),
            (Denial::UNKNOWN_PRINCIPAL, "")
        );
        assert!(!p.sees_all_operations(&stranger));
        // The listed one is allowed the same requests.
        let ci = who("ci-runner");
        assert_eq!(p.check_warm(&ci, &warm("b-bucket", &["x/"], "")), Ok(()));
        assert_eq!(p.check_evict(&ci, &evict(&["x/"], false)), Ok(()));
    }

    #[test]
    fn default_applies_to_unlisted_principals_only() {
        let p = example();
        let stranger = who("CN=someone,O=elsewhere");
        assert_eq!(
            p.check_warm(&stranger, &warm("reference-data", &["hg38/"], "shared/")),
            Ok(())
        );
        let d = p
            .check_warm(&stranger, &warm("genomics-raw", &["runs/"], "shared/"))
            .unwrap_err();
        assert_eq!(d.reason, Denial::SOURCE_NOT_ALLOWED);
        assert_eq!(
            d.message,
            "principal \"CN=someone,O=elsewhere\" (under [default]) may not warm from s3://genomics-raw/runs/ (allowed: s3://reference-data/)"
        );
        // ci-runner is listed: its own entry, not [default], applies, even
        // where [default] would allow.
        assert_eq!(
            code(p.check_warm(
                &who("ci-runner"),
                &warm("reference-data", &["hg38/"], "ci/")
            )),
            (Denial::SOURCE_NOT_ALLOWED, "bucket")
        );
        // Principal names are exact and case-sensitive.
        assert_eq!(
            code(p.check_warm(&who("CI-RUNNER"), &warm("genomics-raw", &["runs/"], "ci/"))),
            (Denial::SOURCE_NOT_ALLOWED, "bucket")
        );
    }

    #[test]
    fn seeing_all_operations() {
        let p = example();
        assert!(p.sees_all_operations(&who("CN=oncall,O=platform")));
        assert!(!p.sees_all_operations(&who(LAUNCHER)));
        assert!(!p.sees_all_operations(&who("ci-runner")));
        assert!(!p.sees_all_operations(&who("unlisted")));
        let open = Policy::parse("[default]\nsee_all_operations = true\n").unwrap();
        assert!(open.sees_all_operations(&who("unlisted")));
    }

    // ---- warm: source ---------------------------------------------------

    #[test]
    fn sources_under_an_allowed_prefix_are_allowed() {
        let p = example();
        let l = who(LAUNCHER);
        let cases: [&[&str]; 3] = [&["runs/"], &["runs/2024/"], &["runs/a/", "runs/b/c/"]];
        for ps in cases {
            assert_eq!(
                p.check_warm(&l, &warm("genomics-raw", ps, "genomics/")),
                Ok(()),
                "{ps:?}"
            );
        }
    }

    #[test]
    fn prefix_boundaries_are_path_segments() {
        let p = example();
        let d = p
            .check_warm(&who("ci-runner"), &warm("genomics-raw", &["other/"], "ci/"))
            .unwrap_err();
        assert_eq!(
            d,
            Denial {
                reason: Denial::SOURCE_NOT_ALLOWED,
                field: "prefixes",
                message: "principal \"ci-runner\" may not warm from s3://genomics-raw/other/ (allowed: s3://genomics-raw/runs/)".to_owned(),
            }
        );
        // "runs/" does not cover "runs-old/", nor its own parent.
        for bad in ["runs-old/", "run/", ""] {
            assert_eq!(
                code(p.check_warm(&who("ci-runner"), &warm("genomics-raw", &[bad], "ci/"))),
                (Denial::SOURCE_NOT_ALLOWED, "prefixes"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn one_refused_prefix_refuses_the_warm_and_is_named() {
        let p = example();
        let d = p
            .check_warm(
                &who(LAUNCHER),
                &warm(
                    "genomics-raw",
                    &["runs/1/", "runs-old/", "runs/2/", "tmp/"],
                    "genomics/",
                ),
            )
            .unwrap_err();
        assert_eq!(d.field, "prefixes");
        assert_eq!(
            d.message,
            "principal \"CN=launcher,O=genomics\" may not warm from s3://genomics-raw/runs-old/, s3://genomics-raw/tmp/ (allowed: s3://genomics-raw/runs/)"
        );
    }

    #[test]
    fn other_buckets_are_refused_on_the_bucket_field() {
        let p = example();
        let d = p
            .check_warm(
                &who(LAUNCHER),
                &warm("other-bucket", &["data/"], "genomics/"),
            )
            .unwrap_err();
        assert_eq!(d.reason, Denial::SOURCE_NOT_ALLOWED);
        assert_eq!(d.field, "bucket");
        assert_eq!(
            d.message,
            "principal \"CN=launcher,O=genomics\" may not warm from s3://other-bucket/data/ (allowed: s3://genomics-raw/runs/, s3://reference-data/)"
        );
        let nothing = Policy::parse("[default]\nmay_evict = true\n").unwrap();
        let d = nothing
            .check_warm(&who("x"), &warm("other-bucket", &["data/"], ""))
            .unwrap_err();
        assert!(d.message.ends_with("(allowed: none)"), "{}", d.message);
    }

    #[test]
    fn whole_bucket_entries_allow_everything_in_the_bucket() {
        let p = example();
        let l = who(LAUNCHER);
        let cases: [&[&str]; 3] = [&[""], &["hg38/"], &["a/b/c/", ""]];
        for ps in cases {
            assert_eq!(
                p.check_warm(&l, &warm("reference-data", ps, "genomics/")),
                Ok(()),
                "{ps:?}"
            );
        }
        // The whole bucket is allowed only by a whole-bucket entry.
        assert_eq!(
            code(p.check_warm(&l, &warm("genomics-raw", &[""], "genomics/"))),
            (Denial::SOURCE_NOT_ALLOWED, "prefixes")
        );
    }

    // ---- warm: destination ----------------------------------------------

    #[test]
    fn destinations_are_destination_prefix_plus_requested_prefix() {
        let p = example();
        let l = who(LAUNCHER);
        // Keys land at "genomics/" + "runs/...": allowed.
        assert_eq!(
            p.check_warm(&l, &warm("genomics-raw", &["runs/"], "genomics/")),
            Ok(())
        );
        assert_eq!(
            p.check_warm(&l, &warm("genomics-raw", &["runs/"], "genomics/2024/")),
            Ok(())
        );
        // No destination_prefix, but the requested prefix itself lies under
        // "genomics/": the keys land there, so it is allowed.
        assert_eq!(
            p.check_warm(&l, &warm("reference-data", &["genomics/hg38/"], "")),
            Ok(())
        );
        // Keys would land at "runs/...": refused.
        let d = p
            .check_warm(&l, &warm("genomics-raw", &["runs/"], ""))
            .unwrap_err();
        assert_eq!(
            d,
            Denial {
                reason: Denial::DESTINATION_NOT_ALLOWED,
                field: "destination_prefix",
                message: "principal \"CN=launcher,O=genomics\" may not write to s3://cache--use1-az4--x-s3/runs/ (keys land at destination_prefix \"\" + source key; allowed: s3://cache--use1-az4--x-s3/genomics/)".to_owned(),
            }
        );
        // Segment boundary on the destination side too.
        let d = p
            .check_warm(&l, &warm("genomics-raw", &["runs/"], "genomics-old/"))
            .unwrap_err();
        assert_eq!(
            (d.reason, d.field),
            (Denial::DESTINATION_NOT_ALLOWED, "destination_prefix")
        );
        assert!(
            d.message
                .contains("s3://cache--use1-az4--x-s3/genomics-old/runs/"),
            "{}",
            d.message
        );
        // A whole-bucket destination prefix "" + a whole-bucket source ""
        // writes the whole directory bucket: only a whole-bucket entry.
        assert_eq!(
            code(p.check_warm(&l, &warm("reference-data", &[""], ""))),
            (Denial::DESTINATION_NOT_ALLOWED, "destination_prefix")
        );
        assert_eq!(
            p.check_warm(
                &who("CN=oncall,O=platform"),
                &warm("reference-data", &[""], "")
            ),
            Ok(())
        );
    }

    #[test]
    fn other_directory_buckets_are_refused() {
        let p = example();
        let mut spec = warm("genomics-raw", &["runs/"], "genomics/");
        spec.directory_bucket = DirectoryBucketName::parse("other--use1-az4--x-s3").unwrap();
        let d = p.check_warm(&who(LAUNCHER), &spec).unwrap_err();
        assert_eq!(
            d,
            Denial {
                reason: Denial::DESTINATION_NOT_ALLOWED,
                field: "directory_bucket",
                message: "principal \"CN=launcher,O=genomics\" may not write to directory bucket other--use1-az4--x-s3 (allowed: s3://cache--use1-az4--x-s3/genomics/)".to_owned(),
            }
        );
        // Even for the operator, whose entry is a whole (other) bucket.
        assert_eq!(
            code(p.check_warm(&who("CN=oncall,O=platform"), &spec)),
            (Denial::DESTINATION_NOT_ALLOWED, "directory_bucket")
        );
    }

    // ---- warm: ttl and force_copy ---------------------------------------

    #[test]
    fn ttl_is_bounded_by_the_principal_max() {
        let p = example();
        let l = who(LAUNCHER);
        let mut spec = warm("genomics-raw", &["runs/"], "genomics/");
        spec.ttl = 7 * DAY;
        assert_eq!(p.check_warm(&l, &spec), Ok(()));
        spec.ttl = 8 * DAY;
        let d = p.check_warm(&l, &spec).unwrap_err();
        assert_eq!(
            d,
            Denial {
                reason: Denial::TTL_ABOVE_PRINCIPAL_MAX,
                field: "ttl",
                message: "principal \"CN=launcher,O=genomics\" may ask for a ttl of at most 7days (requested 8days)".to_owned(),
            }
        );
        // Without max_ttl, only the server's own limit applies.
        spec.ttl = 365 * DAY;
        assert_eq!(p.check_warm(&who("CN=oncall,O=platform"), &spec), Ok(()));
        // [default]'s max applies to the unlisted.
        let mut shared = warm("reference-data", &["hg38/"], "shared/");
        shared.ttl = DAY + Duration::from_secs(1);
        assert_eq!(
            code(p.check_warm(&who("unlisted"), &shared)),
            (Denial::TTL_ABOVE_PRINCIPAL_MAX, "ttl")
        );
    }

    #[test]
    fn force_copy_needs_may_force_copy() {
        let p = example();
        let mut spec = warm("genomics-raw", &["runs/"], "ci/");
        spec.force_copy = true;
        let d = p.check_warm(&who("ci-runner"), &spec).unwrap_err();
        assert_eq!(
            d,
            Denial {
                reason: Denial::FORCE_COPY_NOT_ALLOWED,
                field: "force_copy",
                message: "principal \"ci-runner\" may not warm with force_copy (allowed: force_copy = false)".to_owned(),
            }
        );
        spec.force_copy = false;
        assert_eq!(p.check_warm(&who("ci-runner"), &spec), Ok(()));
        let mut spec = warm("genomics-raw", &["runs/"], "genomics/");
        spec.force_copy = true;
        assert_eq!(p.check_warm(&who(LAUNCHER), &spec), Ok(()));
    }

    // ---- evict ----------------------------------------------------------

    #[test]
    fn evict_needs_may_evict() {
        let p = example();
        let d = p
            .check_evict(&who("ci-runner"), &evict(&["ci/"], false))
            .unwrap_err();
        assert_eq!(
            d,
            Denial {
                reason: Denial::EVICT_NOT_ALLOWED,
                field: "",
                message: "principal \"ci-runner\" may not evict (may_evict is not set)".to_owned(),
            }
        );
        assert_eq!(
            code(p.check_evict(&who("unlisted"), &evict(&["shared/"], false))),
            (Denial::EVICT_NOT_ALLOWED, "")
        );
        assert_eq!(
            p.check_evict(&who(LAUNCHER), &evict(&["genomics/"], false)),
            Ok(())
        );
        assert_eq!(
            p.check_evict(
                &who(LAUNCHER),
                &evict(&["genomics/runs/", "genomics/x/"], false)
            ),
            Ok(())
        );
    }

    #[test]
    fn evict_stays_within_write_to() {
        let p = example();
        let l = who(LAUNCHER);
        let d = p
            .check_evict(&l, &evict(&["genomics/a/", "genomics-old/", ""], false))
            .unwrap_err();
        assert_eq!(
            d,
            Denial {
                reason: Denial::DESTINATION_NOT_ALLOWED,
                field: "prefixes",
                message: "principal \"CN=launcher,O=genomics\" may not evict s3://cache--use1-az4--x-s3/genomics-old/, s3://cache--use1-az4--x-s3/ (allowed: s3://cache--use1-az4--x-s3/genomics/)".to_owned(),
            }
        );
        let mut spec = evict(&["genomics/"], false);
        spec.directory_bucket = DirectoryBucketName::parse("other--use1-az4--x-s3").unwrap();
        assert_eq!(
            code(p.check_evict(&l, &spec)),
            (Denial::DESTINATION_NOT_ALLOWED, "directory_bucket")
        );
        // A whole-bucket entry allows evicting the whole bucket.
        assert_eq!(
            p.check_evict(&who("CN=oncall,O=platform"), &evict(&[""], false)),
            Ok(())
        );
    }

    #[test]
    fn force_needs_may_force() {
        let p = example();
        let d = p
            .check_evict(&who(LAUNCHER), &evict(&["genomics/"], true))
            .unwrap_err();
        assert_eq!(
            d,
            Denial {
                reason: Denial::FORCE_NOT_ALLOWED,
                field: "force",
                message: "principal \"CN=launcher,O=genomics\" may not evict with force (allowed: force = false)".to_owned(),
            }
        );
        assert_eq!(
            p.check_evict(&who("CN=oncall,O=platform"), &evict(&["genomics/"], true)),
            Ok(())
        );
    }

    #[test]
    fn long_lists_are_cut() {
        let items: Vec<String> = (0..12).map(|i| i.to_string()).collect();
        assert_eq!(list(items), "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more");
        assert_eq!(list(Vec::new()), "none");
    }

    #[test]
    fn denials_display_their_message() {
        let d = example()
            .check_evict(&who("ci-runner"), &evict(&["ci/"], true))
            .unwrap_err();
        assert_eq!(d.to_string(), d.message);
    }
}
