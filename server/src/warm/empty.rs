//! Which requested prefixes the listing found empty. A warm whose every
//! prefix is empty almost always names the wrong data (a typo, an
//! `s3://` URL taken as a key prefix), so it must not report "ready".

use std::sync::Mutex;

use crate::store::ObjectMeta;

/// The requested prefixes no listed key has fallen under yet.
#[derive(Debug)]
pub(super) struct EmptyPrefixes {
    requested: usize,
    unseen: Mutex<Vec<String>>,
}

impl EmptyPrefixes {
    pub fn new<'p>(prefixes: impl IntoIterator<Item = &'p str>) -> Self {
        let unseen: Vec<String> = prefixes.into_iter().map(str::to_owned).collect();
        Self {
            requested: unseen.len(),
            unseen: Mutex::new(unseen),
        }
    }

    /// Notes the keys of one listing page (ascending, as a general-purpose
    /// bucket lists them): each unseen prefix costs one binary search, so a
    /// warm of many prefixes does not pay prefixes x keys.
    pub fn observe(&self, page: &[ObjectMeta]) {
        let mut unseen = self.unseen.lock().unwrap_or_else(|e| e.into_inner());
        if unseen.is_empty() || page.is_empty() {
            return;
        }
        let sorted = page.windows(2).all(|w| w[0].key <= w[1].key);
        unseen.retain(|prefix| {
            let found = if sorted {
                let at = page.partition_point(|o| o.key.as_str() < prefix.as_str());
                page.get(at)
                    .is_some_and(|o| o.key.starts_with(prefix.as_str()))
            } else {
                page.iter().any(|o| o.key.starts_with(prefix.as_str()))
            };
            !found
        });
    }

    /// The requested prefixes still without a key.
    pub fn remaining(&self) -> Vec<String> {
        self.unseen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether no requested prefix had a key.
    pub fn all_empty(&self) -> bool {
        self.requested > 0 && self.remaining().len() == self.requested
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(keys: &[&str]) -> Vec<ObjectMeta> {
        keys.iter()
            .map(|k| ObjectMeta {
                key: (*k).to_owned(),
                etag: "\"e\"".to_owned(),
                size: 1,
                last_modified: None,
            })
            .collect()
    }

    #[test]
    fn a_prefix_is_seen_once_any_page_has_a_key_under_it() {
        let e = EmptyPrefixes::new(["a/", "a/b/", "c/", "d/"]);
        e.observe(&page(&["a/1", "a/2"]));
        e.observe(&page(&["c/x", "cz"]));
        assert_eq!(e.remaining(), ["a/b/", "d/"]);
        assert!(!e.all_empty());
        // Unsorted pages are searched in full.
        e.observe(&page(&["z", "a/b/q"]));
        assert_eq!(e.remaining(), ["d/"]);
    }

    #[test]
    fn a_warm_whose_every_prefix_is_empty_is_all_empty() {
        let e = EmptyPrefixes::new(["s3://bucket/x/", "2026-13-01/"]);
        e.observe(&page(&["2026-12-01/a"]));
        assert!(e.all_empty());
        let whole = EmptyPrefixes::new([""]);
        whole.observe(&page(&["k"]));
        assert!(!whole.all_empty());
        assert!(!EmptyPrefixes::new(Vec::<&str>::new()).all_empty());
    }
}
