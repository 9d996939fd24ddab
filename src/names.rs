//! Validated names: buckets, directory buckets, prefixes, request ids.
//!
//! Each type can only be built through its `parse`, so holding one is proof
//! the value follows the rules below. Error strings are shown to users as-is.

use std::fmt;

/// Longest S3 object key (and so prefix), in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// A general-purpose S3 bucket name.
///
/// Rules (AWS "General purpose bucket naming rules"): 3-63 characters of
/// lowercase letters, digits, `.` and `-`; starts and ends with a letter or
/// digit; no `..`; not shaped like an IPv4 address; none of the reserved
/// prefixes (`xn--`, `sthree-`, `amzn-s3-demo-`) or suffixes (`-s3alias`,
/// `--ol-s3`, `.mrap`, `--x-s3`, `--table-s3`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketName(String);

/// An S3 Express One Zone directory bucket name: `base-name--zone-id--x-s3`.
///
/// The base name is lowercase letters, digits and `-` (no dots), starting and
/// ending with a letter or digit; the zone id is an Availability Zone or Local
/// Zone id such as `use1-az4` or `usw2-lax1-az1`; the whole name is 3-63
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DirectoryBucketName(String);

/// A key prefix: `""` (everything) or a string ending in `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix(String);

/// A client-chosen idempotency key: 1-128 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

const RESERVED_PREFIXES: &[&str] = &["xn--", "sthree-", "amzn-s3-demo-"];
const RESERVED_SUFFIXES: &[&str] = &["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"];
const DIRECTORY_SUFFIX: &str = "--x-s3";

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn check_length(name: &str) -> Result<(), String> {
    match name.len() {
        0 => Err("must not be empty".into()),
        1..=2 => Err(format!(
            "{name:?} is too short: bucket names have 3-63 characters"
        )),
        3..=63 => Ok(()),
        n => Err(format!(
            "is {n} characters long: bucket names have 3-63 characters"
        )),
    }
}

fn check_ends(name: &str) -> Result<(), String> {
    let ok = |c: Option<char>| c.is_some_and(is_lower_alnum);
    if !ok(name.chars().next()) || !ok(name.chars().last()) {
        return Err(format!(
            "{name:?} must start and end with a lowercase letter or digit"
        ));
    }
    Ok(())
}

impl BucketName {
    /// Checks `name` against the general-purpose bucket naming rules.
    pub fn parse(name: &str) -> Result<Self, String> {
        check_length(name)?;
        if let Some(c) = name
            .chars()
            .find(|&c| !(is_lower_alnum(c) || c == '.' || c == '-'))
        {
            return Err(format!(
                "{name:?} contains {c:?}: bucket names use only lowercase letters, digits, '.' and '-'"
            ));
        }
        check_ends(name)?;
        if name.contains("..") {
            return Err(format!("{name:?} must not contain two adjacent periods"));
        }
        if name.split('.').count() == 4 && name.split('.').all(|p| p.parse::<u8>().is_ok()) {
            return Err(format!("{name:?} must not be formatted as an IP address"));
        }
        if name.ends_with(DIRECTORY_SUFFIX) {
            return Err(format!(
                "{name:?} is a directory bucket name; the source must be a general-purpose bucket"
            ));
        }
        if let Some(p) = RESERVED_PREFIXES.iter().find(|p| name.starts_with(*p)) {
            return Err(format!(
                "{name:?} must not start with the reserved prefix {p:?}"
            ));
        }
        if let Some(s) = RESERVED_SUFFIXES.iter().find(|s| name.ends_with(*s)) {
            return Err(format!(
                "{name:?} must not end with the reserved suffix {s:?}"
            ));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as sent to S3.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_zone_id(zone: &str) -> Result<(), String> {
    // Availability Zone ids look like `use1-az4`; Local Zone ids add a
    // location segment (`usw2-lax1-az1`). Either way: 2+ dash-separated
    // lowercase alphanumeric segments, the last `az<digits>`.
    let segments: Vec<&str> = zone.split('-').collect();
    let well_formed = segments.len() >= 2
        && segments
            .iter()
            .all(|s| !s.is_empty() && s.chars().all(is_lower_alnum))
        && segments.last().is_some_and(|last| {
            last.strip_prefix("az")
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        });
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "zone id {zone:?} is not an Availability Zone id such as \"use1-az4\""
        ))
    }
}

impl DirectoryBucketName {
    /// Checks `name` against the directory bucket naming rules.
    /// Checks `name` as a directory bucket name or, when
    /// `allow_general_purpose` (a server setting for S3-compatible test
    /// endpoints that have no directory buckets), as any bucket name.
    pub fn parse_with(name: &str, allow_general_purpose: bool) -> Result<Self, String> {
        match Self::parse(name) {
            Err(_) if allow_general_purpose && !name.ends_with(DIRECTORY_SUFFIX) => {
                BucketName::parse(name).map(|b| Self(b.0))
            }
            other => other,
        }
    }

    pub fn parse(name: &str) -> Result<Self, String> {
        check_length(name)?;
        let Some(stem) = name.strip_suffix(DIRECTORY_SUFFIX) else {
            return Err(format!(
                "{name:?} is not a directory bucket name: expected \"base-name--zone-id--x-s3\", e.g. \"my-cache--use1-az4--x-s3\""
            ));
        };
        let Some((base, zone)) = stem.rsplit_once("--") else {
            return Err(format!(
                "{name:?} lacks a zone id: expected \"base-name--zone-id--x-s3\", e.g. \"my-cache--use1-az4--x-s3\""
            ));
        };
        if base.is_empty() {
            return Err(format!("{name:?} has an empty base name"));
        }
        if let Some(c) = base.chars().find(|&c| !(is_lower_alnum(c) || c == '-')) {
            return Err(format!(
                "{name:?} contains {c:?}: directory bucket base names use only lowercase letters, digits and '-'"
            ));
        }
        check_ends(base).map_err(|_| {
            format!("base name {base:?} must start and end with a lowercase letter or digit")
        })?;
        check_zone_id(zone)?;
        Ok(Self(name.to_owned()))
    }

    /// The name as sent to S3.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `s3://BUCKET/KEY` (the scheme in any case) split into its bucket and
/// key; `None` for anything else. The key may be empty (`s3://bucket` and
/// `s3://bucket/` both name the whole bucket).
pub fn split_s3_url(s: &str) -> Option<(&str, &str)> {
    let scheme = s.get(..5)?;
    if !scheme.eq_ignore_ascii_case("s3://") {
        return None;
    }
    let rest = &s[5..];
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

/// The prefix a URL's key most likely meant: the key itself when it is
/// `""` or ends in `/`, else the key with a `/` added (a prefix names a
/// whole path segment).
pub fn prefix_for_key(key: &str) -> String {
    if key.is_empty() || key.ends_with('/') {
        key.to_owned()
    } else {
        format!("{key}/")
    }
}

impl Prefix {
    /// The whole bucket.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Checks `prefix`: `""`, or at most 1024 bytes ending in `/`, without
    /// control characters (which S3's XML listings cannot carry).
    pub fn parse(prefix: &str) -> Result<Self, String> {
        if prefix.is_empty() {
            return Ok(Self::root());
        }
        // A URL taken for a prefix would list nothing and report "ready"
        // with nothing cached: refuse it, saying what was probably meant.
        if let Some((bucket, key)) = split_s3_url(prefix) {
            return Err(format!(
                "{prefix:?} is a URL, not a key prefix: a prefix names keys inside the bucket; \
                 did you mean bucket {bucket:?} with prefix {:?}?",
                prefix_for_key(key)
            ));
        }
        if prefix.len() > MAX_KEY_BYTES {
            return Err(format!(
                "is {} bytes long; prefixes are at most {MAX_KEY_BYTES} bytes",
                prefix.len()
            ));
        }
        if prefix.chars().any(char::is_control) {
            return Err(format!("{prefix:?} contains a control character"));
        }
        if !prefix.ends_with('/') {
            return Err(format!(
                "{prefix:?} must end in '/' (directory buckets list by whole path segments; use \"\" for the whole bucket)"
            ));
        }
        Ok(Self(prefix.to_owned()))
    }

    /// The prefix as sent to S3.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `parent` followed by `child`: still a valid prefix, since both are
    /// `""` or end in `/`.
    pub fn join(parent: &Prefix, child: &Prefix) -> Prefix {
        Prefix(format!("{}{}", parent.0, child.0))
    }

    /// Whether `key` lies under this prefix.
    pub fn covers_key(&self, key: &str) -> bool {
        key.starts_with(&self.0)
    }

    /// Whether every key under `other` is also under `self`.
    pub fn covers(&self, other: &Prefix) -> bool {
        other.0.starts_with(&self.0)
    }
}

impl RequestId {
    /// Checks `id`: 1-128 characters of `[A-Za-z0-9._:-]`.
    pub fn parse(id: &str) -> Result<Self, String> {
        if id.is_empty() || id.len() > 128 {
            return Err(format!("must be 1-128 characters, got {}", id.len()));
        }
        if let Some(c) = id
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(format!("contains {c:?}; allowed are A-Z a-z 0-9 . _ : -"));
        }
        Ok(Self(id.to_owned()))
    }

    /// The id as the client sent it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
display_as_str!(BucketName, DirectoryBucketName, Prefix, RequestId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3_rules() {
        for ok in ["abc", "my-bucket", "my.bucket.1", "a1b", &"a".repeat(63)] {
            assert!(BucketName::parse(ok).is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "ab",
            &"a".repeat(64),
            "My-Bucket",
            "my_bucket",
            "-abc",
            "abc-",
            "a..b",
            "192.168.1.1",
            "xn--abc",
            "sthree-abc",
            "amzn-s3-demo-x",
            "abc-s3alias",
            "abc--ol-s3",
            "abc.mrap",
            "cache--use1-az4--x-s3",
            "abc--table-s3",
            "ab c",
        ] {
            assert!(
                BucketName::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn directory_bucket_names_need_zone_and_suffix() {
        for ok in [
            "cache--use1-az4--x-s3",
            "my-cache-1--usw2-az1--x-s3",
            "c--usw2-lax1-az1--x-s3",
        ] {
            assert!(
                DirectoryBucketName::parse(ok).is_ok(),
                "{ok} should be valid"
            );
        }
        for bad in [
            "cache",
            "cache--x-s3",
            "--use1-az4--x-s3",
            "ca.che--use1-az4--x-s3",
            "Cache--use1-az4--x-s3",
            "cache--use1--x-s3",
            "cache--use1-azx--x-s3",
            "cache---use1-az4--x-s3",
            "cache--use1-az4--x-s3x",
        ] {
            assert!(
                DirectoryBucketName::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let long = format!("{}--use1-az4--x-s3", "a".repeat(50));
        assert!(DirectoryBucketName::parse(&long).is_err());
    }

    #[test]
    fn prefixes_are_empty_or_end_in_slash() {
        assert_eq!(Prefix::parse("").unwrap().as_str(), "");
        assert!(Prefix::parse("data/").is_ok());
        assert!(Prefix::parse("a b/ü 'x'+%/").is_ok());
        assert!(Prefix::parse("data").is_err());
        assert!(Prefix::parse("da\nta/").is_err());
        assert!(Prefix::parse(&format!("{}/", "a".repeat(1024))).is_err());
        assert!(Prefix::parse(&format!("{}/", "a".repeat(1023))).is_ok());
    }

    #[test]
    fn an_s3_url_is_refused_as_a_prefix_with_what_it_meant() {
        let e = Prefix::parse("s3://demo-src/datasets/").unwrap_err();
        assert!(e.contains("is a URL, not a key prefix"), "{e}");
        assert!(
            e.contains(r#"did you mean bucket "demo-src" with prefix "datasets/"?"#),
            "{e}"
        );
        // Any case, with or without the closing slash, the whole bucket.
        let e = Prefix::parse("S3://demo-src/datasets").unwrap_err();
        assert!(e.contains(r#"prefix "datasets/""#), "{e}");
        let e = Prefix::parse("s3://demo-src").unwrap_err();
        assert!(e.contains(r#"bucket "demo-src" with prefix """#), "{e}");
        // A key that merely contains "s3://" further in is a key.
        assert!(Prefix::parse("logs/s3://x/").is_ok());
    }

    #[test]
    fn s3_urls_split_into_bucket_and_key() {
        assert_eq!(split_s3_url("s3://b/k/x/"), Some(("b", "k/x/")));
        assert_eq!(split_s3_url("S3://b"), Some(("b", "")));
        assert_eq!(split_s3_url("s3://b/"), Some(("b", "")));
        assert_eq!(split_s3_url("data/"), None);
        assert_eq!(split_s3_url("s3:/b/"), None);
        assert_eq!(split_s3_url("é"), None);
        assert_eq!(prefix_for_key("a"), "a/");
        assert_eq!(prefix_for_key("a/"), "a/");
        assert_eq!(prefix_for_key(""), "");
    }

    #[test]
    fn prefix_coverage() {
        let root = Prefix::root();
        let a = Prefix::parse("a/").unwrap();
        let ab = Prefix::parse("a/b/").unwrap();
        assert!(root.covers(&a) && a.covers(&ab) && a.covers(&a));
        assert!(!ab.covers(&a));
        assert!(a.covers_key("a/x") && !a.covers_key("ab/x"));
    }

    #[test]
    fn request_ids() {
        assert!(RequestId::parse("job-42:step.1_a").is_ok());
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse("a b").is_err());
        assert!(RequestId::parse(&"a".repeat(129)).is_err());
    }
}
