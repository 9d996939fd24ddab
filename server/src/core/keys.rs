//! Key arithmetic of prefix-shaped data: the range of keys an index read
//! covers, the prefixes that can cover a key, and where a prefix's keys end.

use std::ops::Bound;

/// The keys of a [`Records::records`] read: those starting with
/// `prefix`, narrowed by `start` and `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRange<'a> {
    pub prefix: &'a str,
    pub start: Bound<&'a str>,
    pub end: Bound<&'a str>,
}

impl<'a> KeyRange<'a> {
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &'a str) -> Self {
        Self {
            prefix,
            start: Bound::Unbounded,
            end: Bound::Unbounded,
        }
    }

    /// Only keys after `key` (unchanged when `None`).
    #[must_use]
    pub fn after(mut self, key: Option<&'a str>) -> Self {
        if let Some(k) = key {
            self.start = Bound::Excluded(k);
        }
        self
    }

    /// Only keys up to and including `key` (unchanged when `None`).
    #[must_use]
    pub fn upto(mut self, key: Option<&'a str>) -> Self {
        if let Some(k) = key {
            self.end = Bound::Included(k);
        }
        self
    }

    /// The range as one interval of keys, the prefix folded into its
    /// bounds: what a backend seeks to (lower bound always set; upper bound
    /// unbounded only for the empty prefix, or a prefix of `0xff` bytes).
    pub fn interval(&self) -> (Bound<String>, Bound<String>) {
        let prefix = self.prefix;
        let lower = match self.start {
            Bound::Included(k) if k >= prefix => Bound::Included(k.to_owned()),
            Bound::Excluded(k) if k >= prefix => Bound::Excluded(k.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let successor = prefix_successor(prefix);
        let upper = match (self.end, successor) {
            (Bound::Included(k), Some(e)) if k >= e.as_str() => Bound::Excluded(e),
            (Bound::Excluded(k), Some(e)) if k > e.as_str() => Bound::Excluded(e),
            (Bound::Included(k), _) => Bound::Included(k.to_owned()),
            (Bound::Excluded(k), _) => Bound::Excluded(k.to_owned()),
            (Bound::Unbounded, Some(e)) => Bound::Excluded(e),
            (Bound::Unbounded, None) => Bound::Unbounded,
        };
        (lower, upper)
    }
}

/// `key` and each of its ancestor prefixes: "" and every prefix of it ending
/// in '/'. These are the lease prefixes that can cover it.
pub fn ancestors(key: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    out.extend(
        key.char_indices()
            .filter(|(_, c)| *c == '/')
            .map(|(i, _)| key[..=i].to_owned()),
    );
    if !key.is_empty() && !key.ends_with('/') {
        out.push(key.to_owned());
    }
    out
}

/// The smallest key greater than every key starting with `prefix`, if any:
/// the exclusive upper bound of a prefix range scan.
pub fn prefix_successor(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            // Keys are UTF-8; bumping the final byte of a prefix that ends in
            // an ASCII '/' (all non-empty prefixes) stays valid UTF-8.
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(r: KeyRange<'_>) -> (Bound<String>, Bound<String>) {
        r.interval()
    }

    #[test]
    fn key_ranges_take_the_tighter_bound() {
        let own = |s: &str| s.to_owned();
        assert_eq!(
            interval(KeyRange::prefix("a/").after(Some("a/x")).upto(Some("a/z"))),
            (Bound::Excluded(own("a/x")), Bound::Included(own("a/z")))
        );
        assert_eq!(
            interval(KeyRange::prefix("a/")),
            (Bound::Included(own("a/")), Bound::Excluded(own("a0")))
        );
        assert_eq!(
            interval(KeyRange::prefix("").after(Some("k"))),
            (Bound::Excluded(own("k")), Bound::Unbounded)
        );
        assert_eq!(
            interval(KeyRange::prefix("a/").after(Some("0")).upto(Some("b"))),
            (Bound::Included(own("a/")), Bound::Excluded(own("a0")))
        );
        let exact = KeyRange {
            prefix: "a/k",
            start: Bound::Included("a/k"),
            end: Bound::Included("a/k"),
        };
        assert_eq!(
            interval(exact),
            (Bound::Included(own("a/k")), Bound::Included(own("a/k")))
        );
    }
}
