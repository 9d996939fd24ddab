//! What `warm` reads: `--bucket B --prefix P/`, or `s3://B/P/` given as
//! arguments (the form every S3 tool prints), or both for one bucket.

use expresscache::names::{prefix_for_key, split_s3_url};
use expresscache::FieldViolation;

/// The source bucket and prefixes of a warm, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub bucket: String,
    pub prefixes: Vec<String>,
}

/// `s3://B/P/` arguments, then `--bucket` and `--prefix`, resolved into one
/// bucket and its prefixes (those of the URLs first); every problem at
/// once if they do not make one source.
pub fn resolve(
    urls: &[String],
    bucket: Option<&str>,
    prefixes: &[String],
) -> Result<Source, Vec<String>> {
    let mut problems = Vec::new();
    let mut from_urls: Vec<(String, String)> = Vec::new();
    for url in urls {
        match split_s3_url(url) {
            None => problems.push(format!(
                "{url:?} is not a source: give s3://BUCKET/PREFIX/, or --bucket BUCKET --prefix PREFIX/"
            )),
            Some((b, key)) if !key.is_empty() && !key.ends_with('/') => problems.push(format!(
                "{url:?}: a source names a prefix, which ends in '/'; did you mean s3://{b}/{}?",
                prefix_for_key(key)
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
            "warm needs a source: s3://BUCKET/PREFIX/, or --bucket BUCKET --prefix PREFIX/ \
             (--prefix \"\" for the whole bucket)"
                .into(),
        );
        problems.extend(hints);
        return Err(problems);
    };
    if from_urls.is_empty() && prefixes.is_empty() {
        problems.push(format!(
            "--bucket {bucket} needs at least one --prefix (--prefix \"\" for the whole bucket)"
        ));
    }
    if !problems.is_empty() {
        problems.extend(hints);
        return Err(problems);
    }
    let bucket = bucket.to_owned();
    let prefixes = from_urls
        .into_iter()
        .map(|(_, key)| key)
        .chain(prefixes.iter().cloned())
        .collect();
    Ok(Source { bucket, prefixes })
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
        )
        .unwrap();
        assert_eq!(s.bucket, "demo-src");
        assert_eq!(s.prefixes, ["datasets/", "models/", "extra/"]);
        // The whole bucket, and --bucket naming the same one.
        let s = resolve(&strings(&["s3://demo-src"]), Some("demo-src"), &[]).unwrap();
        assert_eq!(
            (s.bucket.as_str(), s.prefixes),
            ("demo-src", strings(&[""]))
        );
    }

    #[test]
    fn flags_alone_are_as_before() {
        let s = resolve(&[], Some("b-1"), &strings(&["", "d/"])).unwrap();
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
        )
        .unwrap_err();
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].contains(r#""data/" is not a source"#), "{e:#?}");
        assert!(e[1].contains("did you mean s3://a-1/file/?"), "{e:#?}");
        assert!(e[2].contains("a-1, b-1, c-1"), "{e:#?}");
        let e = resolve(&[], None, &strings(&["s3://demo-src/datasets/"])).unwrap_err();
        assert!(e[0].starts_with("warm needs a source"), "{e:#?}");
        assert!(
            e[1].contains("did you mean --bucket demo-src --prefix datasets/ ?"),
            "{e:#?}"
        );
        let e = resolve(&[], Some("b-1"), &[]).unwrap_err();
        assert!(e[0].contains("needs at least one --prefix"), "{e:#?}");
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
