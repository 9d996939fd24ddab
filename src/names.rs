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

/// Checks an exact object key named by a request (`WarmCacheRequest.keys`):
/// 1-1024 bytes, no control characters, not ending in `/` (that names a
/// prefix), not an `s3://` URL.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some((bucket, k)) = split_s3_url(key) {
        return Err(format!(
            "{key:?} is a URL, not a key: keys name objects inside the bucket; \
             did you mean key {k:?} of bucket {bucket:?}?"
        ));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "is {} bytes long; keys are at most {MAX_KEY_BYTES} bytes",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(format!("{key:?} contains a control character"));
    }
    if key.ends_with('/') {
        return Err(format!(
            "{key:?} ends in '/': that names a prefix (warm it as a prefix), not an object"
        ));
    }
    Ok(())
}

/// The directory `key` is in: the key up to and including its last `/`, or
/// `""` for a key without one.
pub fn key_directory(key: &str) -> &str {
    key.rfind('/').map_or("", |i| &key[..=i])
}

/// The directory above `dir` (`""` or ending in `/`): `"a/b/"` -> `"a/"`,
/// `"a/"` -> `""`, `""` -> `""`.
pub fn parent_directory(dir: &str) -> &str {
    let trimmed = dir.strip_suffix('/').unwrap_or(dir);
    key_directory(trimmed)
}

/// Longest glob pattern, in bytes.
pub const MAX_GLOB_BYTES: usize = 1024;

/// A glob pattern on object keys (`WarmCacheRequest.include`/`exclude`),
/// matched against the whole key from the root of the bucket:
///
/// - `*` any run of characters except `/` (none included);
/// - `**` any run of characters, `/` included; `**/` at the start of the
///   pattern or after a `/` is zero or more whole directories (`a/**/x`
///   matches `a/x`, `a/b/x` and `a/b/c/x`);
/// - `?` one character except `/`;
/// - `[abc]`, `[a-z]`, `[!a-z]` (or `[^a-z]`) one character except `/`
///   in (or not in) the set; a `]` first in the set, or a `-` first or
///   last, is literal;
/// - `\c` the character `c` itself (`\*`, `\[`, `\\`);
/// - any other character itself (case-sensitive, as S3 keys are).
///
/// Matching simulates the pattern's automaton over the key (no
/// backtracking): time linear in the key's length times the pattern's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    source: String,
    tokens: Vec<GlobToken>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum GlobToken {
    /// This character.
    Literal(char),
    /// `?`: one character but `/`.
    One,
    /// `[...]`: one character but `/`, in (or, negated, not in) the
    /// ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `*`: any run of characters but `/`.
    Star,
    /// `**`: any run of characters.
    AnyPath,
    /// Matches nothing itself: the automaton may go on with the next token
    /// or jump to the token at this index (how `**/`, "nothing, or `**`
    /// then `/`", is built).
    Skip(usize),
}

impl GlobToken {
    /// Whether the automaton may pass this token without a character.
    fn skippable(&self) -> bool {
        matches!(self, Self::Star | Self::AnyPath | Self::Skip(_))
    }
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn class_char(pattern: &str, chars: &mut Chars<'_>) -> Result<char, String> {
    let unclosed = || {
        format!("{pattern:?} has a '[' without its closing ']' (write \"\\[\" for a literal '[')")
    };
    match chars.next() {
        None => Err(unclosed()),
        Some('\\') => chars.next().ok_or_else(unclosed),
        Some(c) => Ok(c),
    }
}

/// The set after a `[`, up to and including its `]`.
fn parse_class(pattern: &str, chars: &mut Chars<'_>) -> Result<GlobToken, String> {
    let negated = matches!(chars.peek(), Some('!' | '^'));
    if negated {
        chars.next();
    }
    let mut ranges = Vec::new();
    loop {
        // A ']' first in the set is one of its characters.
        if !ranges.is_empty() && chars.peek() == Some(&']') {
            chars.next();
            break;
        }
        let low = class_char(pattern, chars)?;
        let mut ahead = chars.clone();
        let high = match (ahead.next(), ahead.peek()) {
            // "a-z"; a '-' just before the closing ']' is literal.
            (Some('-'), Some(next)) if *next != ']' => {
                chars.next();
                class_char(pattern, chars)?
            }
            _ => low,
        };
        if high < low {
            return Err(format!(
                "{pattern:?} has the range {low}-{high}, which is backwards (write {high}-{low})"
            ));
        }
        if !negated && low <= '/' && '/' <= high {
            return Err(format!(
                "{pattern:?} has a set that contains '/', which a set never matches \
                 (a set stands for one character within a directory)"
            ));
        }
        ranges.push((low, high));
    }
    Ok(GlobToken::Class { negated, ranges })
}

impl Glob {
    /// Checks and compiles `pattern` (syntax above): 1-1024 bytes, no
    /// control characters, every `[` closed, no `***`, not an `s3://` URL.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("must not be empty (\"**\" matches every key)".into());
        }
        if let Some((_, key)) = split_s3_url(pattern) {
            return Err(format!(
                "{pattern:?} is a URL, not a key pattern: patterns match keys from the root \
                 of the bucket; did you mean {key:?}?"
            ));
        }
        if pattern.len() > MAX_GLOB_BYTES {
            return Err(format!(
                "is {} bytes long; patterns are at most {MAX_GLOB_BYTES} bytes",
                pattern.len()
            ));
        }
        if pattern.chars().any(char::is_control) {
            return Err(format!("{pattern:?} contains a control character"));
        }
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e) => tokens.push(GlobToken::Literal(e)),
                    None => {
                        return Err(format!(
                            "{pattern:?} ends in a '\\' that escapes nothing (write \"\\\\\" for a literal '\\')"
                        ))
                    }
                },
                '?' => tokens.push(GlobToken::One),
                '[' => tokens.push(parse_class(pattern, &mut chars)?),
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    if chars.peek() == Some(&'*') {
                        return Err(format!(
                            "{pattern:?} has \"***\": use \"*\" (within a directory) or \"**\" (across directories)"
                        ));
                    }
                    let at_directory_start =
                        matches!(tokens.last(), None | Some(GlobToken::Literal('/')));
                    if at_directory_start && chars.peek() == Some(&'/') {
                        chars.next();
                        // "**/": nothing, or "**" then "/".
                        let after = tokens.len() + 3;
                        tokens.push(GlobToken::Skip(after));
                        tokens.push(GlobToken::AnyPath);
                        tokens.push(GlobToken::Literal('/'));
                    } else {
                        tokens.push(GlobToken::AnyPath);
                    }
                }
                '*' => tokens.push(GlobToken::Star),
                c => tokens.push(GlobToken::Literal(c)),
            }
        }
        Ok(Self {
            source: pattern.to_owned(),
            tokens,
        })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern matches the whole of `key`.
    pub fn matches(&self, key: &str) -> bool {
        self.run(key).last().copied().unwrap_or(false)
    }

    /// Whether some key that starts with `prefix` and is longer than it
    /// may match (false only when none can: a listing may skip the
    /// directory).
    pub fn may_match_under(&self, prefix: &str) -> bool {
        let states = self.run(prefix);
        self.tokens
            .iter()
            .zip(&states)
            .any(|(t, on)| *on && !matches!(t, GlobToken::Skip(_)))
    }

    /// Whether every key that starts with `prefix` and is longer than it
    /// matches (an exclude pattern such as `tmp/**` rules out the whole
    /// directory `tmp/`).
    pub fn matches_all_under(&self, prefix: &str) -> bool {
        let states = self.run(prefix);
        (0..self.tokens.len()).any(|i| {
            states[i]
                && self.tokens[i..]
                    .iter()
                    .all(|t| matches!(t, GlobToken::AnyPath))
        })
    }

    /// The automaton's states after reading `text`: `out[i]` is whether it
    /// may stand before token `i` (`out[len]`: past the last, a match).
    fn run(&self, text: &str) -> Vec<bool> {
        let n = self.tokens.len();
        let mut states = vec![false; n + 1];
        states[0] = true;
        self.close(&mut states);
        let mut next = vec![false; n + 1];
        for c in text.chars() {
            next.iter_mut().for_each(|s| *s = false);
            let mut alive = false;
            for (i, token) in self.tokens.iter().enumerate() {
                if !states[i] {
                    continue;
                }
                let (stay, advance) = match token {
                    GlobToken::Literal(l) => (false, *l == c),
                    GlobToken::One => (false, c != '/'),
                    GlobToken::Class { negated, ranges } => {
                        let within = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c));
                        (false, c != '/' && within != *negated)
                    }
                    GlobToken::Star => (c != '/', false),
                    GlobToken::AnyPath => (true, false),
                    GlobToken::Skip(_) => (false, false),
                };
                if stay {
                    next[i] = true;
                    alive = true;
                }
                if advance {
                    next[i + 1] = true;
                    alive = true;
                }
            }
            std::mem::swap(&mut states, &mut next);
            if !alive {
                return states;
            }
            self.close(&mut states);
        }
        states
    }

    /// Adds every state reachable without reading a character. Tokens only
    /// lead forward, so one pass in order suffices.
    fn close(&self, states: &mut [bool]) {
        for (i, token) in self.tokens.iter().enumerate() {
            if !states[i] || !token.skippable() {
                continue;
            }
            states[i + 1] = true;
            if let GlobToken::Skip(to) = token {
                if let Some(s) = states.get_mut(*to) {
                    *s = true;
                }
            }
        }
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
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

    fn glob(p: &str) -> Glob {
        Glob::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn a_star_stays_within_a_directory_and_two_stars_cross_them() {
        let g = glob("*.bin");
        assert!(g.matches("a.bin") && g.matches(".bin"));
        assert!(!g.matches("d/a.bin") && !g.matches("a.bin.tmp"));
        let g = glob("d/**");
        assert!(g.matches("d/x") && g.matches("d/x/y/z") && g.matches("d/"));
        assert!(!g.matches("e/x") && !g.matches("d"));
        let g = glob("**/*.bin");
        assert!(g.matches("a.bin") && g.matches("d/e/a.bin"));
        assert!(!g.matches("d/e/a.txt"));
        let g = glob("d/**/x");
        for k in ["d/x", "d/a/x", "d/a/b/x"] {
            assert!(g.matches(k), "{k}");
        }
        for k in ["d/ax", "d/a/bx", "e/x"] {
            assert!(!g.matches(k), "{k}");
        }
        // "**" inside a name crosses directories too.
        assert!(glob("d**.bin").matches("d/e/f.bin"));
    }

    #[test]
    fn question_marks_sets_and_escapes() {
        let g = glob("data/part-?.csv");
        assert!(g.matches("data/part-1.csv") && !g.matches("data/part-10.csv"));
        assert!(!glob("a?b").matches("a/b"), "? never matches '/'");
        let g = glob("[a-c]*");
        assert!(g.matches("alpha") && g.matches("c") && !g.matches("delta"));
        let g = glob("[!a-c]*");
        assert!(g.matches("delta") && !g.matches("alpha"));
        assert!(glob("[]x]").matches("]") && glob("[a-]").matches("-"));
        let g = glob(r"\*.bin");
        assert!(g.matches("*.bin") && !g.matches("a.bin"));
        assert!(glob("A*").matches("Abc") && !glob("A*").matches("abc"));
    }

    #[test]
    fn bad_patterns_say_what_is_wrong() {
        for (bad, says) in [
            ("", "must not be empty"),
            ("a[bc", "closing ']'"),
            ("a***", "\"***\""),
            ("[z-a]", "backwards"),
            ("a\\", "escapes nothing"),
            ("[/]", "contains '/'"),
            ("s3://b/d/*.bin", "did you mean \"d/*.bin\""),
            ("a\tb", "control character"),
        ] {
            let e = Glob::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(Glob::parse(&"a".repeat(MAX_GLOB_BYTES + 1)).is_err());
    }

    #[test]
    fn directories_a_pattern_can_never_match_under_are_known() {
        let g = glob("a/*/x.bin");
        assert!(g.may_match_under("") && g.may_match_under("a/") && g.may_match_under("a/b/"));
        assert!(!g.may_match_under("b/") && !g.may_match_under("a/b/c/"));
        assert!(glob("**/x").may_match_under("any/where/"));
        assert!(glob("tmp/**").matches_all_under("tmp/"));
        assert!(glob("tmp/**").matches_all_under("tmp/a/"));
        assert!(!glob("tmp/*").matches_all_under("tmp/"));
        assert!(!glob("tmp/**").matches_all_under("other/"));
        assert!(!glob("tmp/**/").matches_all_under("tmp/"));
    }

    #[test]
    fn keys_are_checked_and_have_directories() {
        assert!(check_key("a/b.bin").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("a/").unwrap_err().contains("names a prefix"));
        assert!(check_key("s3://b/k")
            .unwrap_err()
            .contains("did you mean key \"k\""));
        assert!(check_key(&"a".repeat(MAX_KEY_BYTES + 1)).is_err());
        assert_eq!(key_directory("a/b/c.bin"), "a/b/");
        assert_eq!(key_directory("c.bin"), "");
        assert_eq!(parent_directory("a/b/"), "a/");
        assert_eq!(parent_directory("a/"), "");
        assert_eq!(parent_directory(""), "");
    }

    #[test]
    fn request_ids() {
        assert!(RequestId::parse("job-42:step.1_a").is_ok());
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse("a b").is_err());
        assert!(RequestId::parse(&"a".repeat(129)).is_err());
    }
}
