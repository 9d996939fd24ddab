//! What `warm` reads: `--bucket B --prefix P/`, or `s3://B/P/` given as
//! arguments (the form every S3 tool prints), or both for one bucket; or
//! exact keys: `s3://B/KEY` arguments (a URL not ending in `/` is one
//! object) and `--files-from FILE`.

use std::path::Path;

use expresscache::names::{prefix_for_key, split_s3_url};
use expresscache::FieldViolation;

/// The source bucket, and its prefixes or exact keys, of a warm, from its
/// command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub bucket: String,
    pub prefixes: Vec<String>,
    /// Objects named by `s3://B/KEY` arguments.
    pub keys: Vec<String>,
}

/// `s3://B/P/` and `s3://B/KEY` arguments, then `--bucket` and `--prefix`,
/// resolved into one bucket and its prefixes (those of the URLs first) and
/// keys; every problem at once if they do not make one source. With a key
/// list (`key_list`: `--files-from`), `s3://B` names just the bucket.
pub fn resolve(
    urls: &[String],
    bucket: Option<&str>,
    prefixes: &[String],
    key_list: bool,
) -> Result<Source, Vec<String>> {
    let mut problems = Vec::new();
    let mut from_urls: Vec<(String, String)> = Vec::new();
    for url in urls {
        match split_s3_url(url) {
            None => problems.push(format!(
                "{url:?} is not a source: give s3://BUCKET/PREFIX/ (a prefix), s3://BUCKET/KEY \
                 (one object), or --bucket BUCKET --prefix PREFIX/"
            )),
            Some((b, key)) => from_urls.push((b.to_owned(), key.to_owned())),
        }
    }
    // One warm reads one bucket: every URL, and --bucket, must agree.
    let mut buckets: Vec<&str> = from_urls.iter().map(|(b, _)| b.as_str()).collect();
    buckets.extend(bucket);
    let mut distinct = buckets.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() > 1 {
        problems.push(format!(
            "one warm reads one bucket, and these name {}: run one warm per bucket",
            distinct.join(", ")
        ));
    }
    // A URL given as a prefix is the most common slip: say what it meant.
    let hints: Vec<String> = prefixes.iter().filter_map(|p| prefix_url_hint(p)).collect();
    let Some(&bucket) = buckets.first() else {
        problems.push(
            "warm needs a source: s3://BUCKET/PREFIX/, s3://BUCKET/KEY, or --bucket BUCKET \
             --prefix PREFIX/ (--prefix \"\" for the whole bucket) or --files-from FILE"
                .into(),
        );
        problems.extend(hints);
        return Err(problems);
    };
    if from_urls.is_empty() && prefixes.is_empty() && !key_list {
        problems.push(format!(
            "--bucket {bucket} needs at least one --prefix (--prefix \"\" for the whole bucket), \
             or --files-from FILE"
        ));
    }
    if !problems.is_empty() {
        problems.extend(hints);
        return Err(problems);
    }
    let bucket = bucket.to_owned();
    let mut keys = Vec::new();
    let mut url_prefixes = Vec::new();
    for (_, key) in from_urls {
        if key.is_empty() && key_list {
            // `s3://B --files-from F`: the keys of F in bucket B.
            continue;
        }
        if key.is_empty() || key.ends_with('/') {
            url_prefixes.push(key);
        } else {
            keys.push(key);
        }
    }
    let prefixes = url_prefixes
        .into_iter()
        .chain(prefixes.iter().cloned())
        .collect();
    Ok(Source {
        bucket,
        prefixes,
        keys,
    })
}

/// Most problems reported from one key list file.
const MAX_LIST_PROBLEMS: usize = 10;

/// The keys of a `--files-from` file (`-`: standard input) for `bucket`:
/// one per line; blank lines and lines whose first non-blank character is
/// `#` are skipped; a line `s3://BUCKET/KEY` of the same bucket is KEY.
pub fn read_key_list(path: &Path, bucket: &str) -> Result<Vec<String>, Vec<String>> {
    let (name, text) = if path == Path::new("-") {
        (
            "standard input".to_owned(),
            std::io::read_to_string(std::io::stdin()),
        )
    } else {
        (path.display().to_string(), std::fs::read_to_string(path))
    };
    let text = text.map_err(|e| vec![format!("--files-from {name}: {e}")])?;
    let keys = parse_key_list(&text, bucket).map_err(|p| {
        p.into_iter()
            .map(|l| format!("--files-from {name}: {l}"))
            .collect::<Vec<_>>()
    })?;
    if keys.is_empty() {
        return Err(vec![format!(
            "--files-from {name}: no key in it (blank lines and # comments are skipped)"
        )]);
    }
    Ok(keys)
}

/// The keys of a key list's text (see [`read_key_list`]).
pub fn parse_key_list(text: &str, bucket: &str) -> Result<Vec<String>, Vec<String>> {
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    // `lines` drops "\n" and "\r\n" line ends.
    for (n, line) in text.lines().enumerate() {
        let blank = line.trim();
        if blank.is_empty() || blank.starts_with('#') {
            continue;
        }
        match split_s3_url(line) {
            Some((b, key)) if b == bucket => keys.push(key.to_owned()),
            Some((b, _)) => {
                if problems.len() < MAX_LIST_PROBLEMS {
                    problems.push(format!(
                        "line {}: {line:?} is in bucket {b}, not {bucket}: one warm reads one bucket",
                        n + 1
                    ));
                }
            }
            None => keys.push(line.to_owned()),
        }
    }
    if problems.is_empty() {
        Ok(keys)
    } else {
        Err(problems)
    }
}

/// What to type instead of `--prefix s3://B/K/`, if `prefix` is such a URL.
pub fn prefix_url_hint(prefix: &str) -> Option<String> {
    let (bucket, key) = split_s3_url(prefix)?;
    Some(format!(
        "--prefix {prefix:?}: a prefix is a key prefix inside --bucket, not a URL; \
         did you mean --bucket {bucket} --prefix {} ?",
        shell_word(&prefix_for_key(key))
    ))
}

/// A validation failure of a warm as the CLI prints it: `field: why`,
/// except that a `--prefix` given as an `s3://` URL gets the flags it
/// meant (`prefixes` are the request's, in order).
pub fn explain(v: &FieldViolation, prefixes: &[String]) -> String {
    let hint = v
        .field
        .strip_prefix("prefixes[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| prefixes.get(i))
        .and_then(|p| prefix_url_hint(p));
    hint.unwrap_or_else(|| format!("{}: {}", v.field, v.description))
}

/// `s` as one shell word: as is when it needs no quoting.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '=' | ':'));
    if plain {
        s.to_owned()
    } else {
        format!("{s:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn urls_of_one_bucket_become_its_prefixes() {
        let s = resolve(
            &strings(&["s3://demo-src/datasets/", "s3://demo-src/models/"]),
            None,
            &strings(&["extra/"]),
            false,
        )
        .unwrap();
        assert_eq!(s.bucket, "demo-src");
        assert_eq!(s.prefixes, ["datasets/", "models/", "extra/"]);
        // The whole bucket, and --bucket naming the same one.
        let s = resolve(&strings(&["s3://demo-src"]), Some("demo-src"), &[], false).unwrap();
        assert_eq!(
            (s.bucket.as_str(), s.prefixes),
            ("demo-src", strings(&[""]))
        );
    }

    #[test]
    fn flags_alone_are_as_before() {
        let s = resolve(&[], Some("b-1"), &strings(&["", "d/"]), false).unwrap();
        assert_eq!(
            (s.bucket.as_str(), s.prefixes),
            ("b-1", strings(&["", "d/"]))
        );
    }

    #[test]
    fn ambiguous_sources_are_refused_with_every_problem() {
        let e = resolve(
            &strings(&["s3://a-1/x/", "s3://b-1/y/", "data/", "s3://a-1/file"]),
            Some("c-1"),
            &[],
            false,
        )
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:#?}");
        assert!(e[0].contains(r#""data/" is not a source"#), "{e:#?}");
        assert!(e[1].contains("a-1, b-1, c-1"), "{e:#?}");
        let e = resolve(&[], None, &strings(&["s3://demo-src/datasets/"]), false).unwrap_err();
        assert!(e[0].starts_with("warm needs a source"), "{e:#?}");
        assert!(
            e[1].contains("did you mean --bucket demo-src --prefix datasets/ ?"),
            "{e:#?}"
        );
        let e = resolve(&[], Some("b-1"), &[], false).unwrap_err();
        assert!(e[0].contains("needs at least one --prefix"), "{e:#?}");
        assert!(
            resolve(&[], Some("b-1"), &[], true).is_ok(),
            "a key list needs no prefix"
        );
    }

    #[test]
    fn a_url_not_ending_in_a_slash_is_one_object() {
        let s = resolve(
            &strings(&["s3://demo-src/path/to/object.bin", "s3://demo-src/b.bin"]),
            None,
            &[],
            false,
        )
        .unwrap();
        assert_eq!(s.keys, ["path/to/object.bin", "b.bin"]);
        assert!(s.prefixes.is_empty());
        // With --files-from, s3://BUCKET only names the bucket.
        let s = resolve(&strings(&["s3://demo-src"]), None, &[], true).unwrap();
        assert_eq!(
            (s.bucket.as_str(), s.prefixes.len(), s.keys.len()),
            ("demo-src", 0, 0)
        );
    }

    #[test]
    fn a_key_list_skips_blank_lines_and_comments() {
        let text = "# training shards\n\nd/a.bin\r\n  \n  # indented comment\ns3://demo-src/d/b.bin\nkey with spaces \n";
        assert_eq!(
            parse_key_list(text, "demo-src").unwrap(),
            ["d/a.bin", "d/b.bin", "key with spaces "]
        );
        let e = parse_key_list("s3://other/x\n", "demo-src").unwrap_err();
        assert!(
            e[0].contains("line 1") && e[0].contains("not demo-src"),
            "{e:#?}"
        );
    }

    #[test]
    fn a_url_given_as_a_prefix_is_explained_with_the_flags_it_meant() {
        let v = FieldViolation::new("prefixes[1]", "whatever the server says");
        let prefixes = strings(&["ok/", "s3://demo-src/datasets/"]);
        assert_eq!(
            explain(&v, &prefixes),
            r#"--prefix "s3://demo-src/datasets/": a prefix is a key prefix inside --bucket, not a URL; did you mean --bucket demo-src --prefix datasets/ ?"#
        );
        let other = FieldViolation::new("ttl", "must be greater than zero");
        assert_eq!(explain(&other, &prefixes), "ttl: must be greater than zero");
        assert_eq!(
            prefix_url_hint("s3://b-1").unwrap(),
            r#"--prefix "s3://b-1": a prefix is a key prefix inside --bucket, not a URL; did you mean --bucket b-1 --prefix "" ?"#
        );
    }
}
