//! Planning: a source listing page merged with the index entries of the same
//! key range decides, per object, hit or copy. Both inputs are key-ordered,
//! so the merge is one linear pass and a hit costs no per-object request.

use crate::index::Entry;
use crate::store::ObjectMeta;

/// Why an object must be copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyReason {
    /// Not in the cache.
    Missing,
    /// Cached, but the source's ETag or size differs from what was copied.
    Changed,
    /// `force_copy` was set.
    Forced,
}

/// What to do with one listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Cached and current: nothing to do.
    Hit,
    Copy(CopyReason),
    /// The destination key is cached from another source bucket; copying
    /// would silently replace that source's object.
    Clash {
        cached_from: String,
    },
}

/// Decides for one object given its index entry, if any.
pub fn decide(
    obj: &ObjectMeta,
    entry: Option<&Entry>,
    source_bucket: &str,
    force: bool,
) -> Decision {
    match entry {
        Some(e) if e.source_bucket != source_bucket => Decision::Clash {
            cached_from: e.source_bucket.clone(),
        },
        _ if force => Decision::Copy(CopyReason::Forced),
        None => Decision::Copy(CopyReason::Missing),
        Some(e) if e.source_etag != obj.etag || e.size != obj.size => {
            Decision::Copy(CopyReason::Changed)
        }
        Some(_) => Decision::Hit,
    }
}

/// Decides for every object of a key-ordered listing page, given the
/// key-ordered index entries covering the same key range (extra entries for
/// keys no longer in the source are skipped).
pub fn plan_page<'a>(
    objects: &'a [ObjectMeta],
    entries: &[Entry],
    source_bucket: &str,
    force: bool,
) -> Vec<(&'a ObjectMeta, Decision)> {
    let mut out = Vec::with_capacity(objects.len());
    let mut entries = entries.iter().peekable();
    for obj in objects {
        while entries.next_if(|e| e.key < obj.key).is_some() {}
        let entry = entries.next_if(|e| e.key == obj.key);
        out.push((obj, decide(obj, entry, source_bucket, force)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, etag: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            etag: etag.into(),
            size,
            last_modified: None,
        }
    }

    fn entry(key: &str, etag: &str, size: u64, src: &str) -> Entry {
        Entry {
            directory_bucket: "d--use1-az4--x-s3".into(),
            key: key.into(),
            source_bucket: src.into(),
            source_key: key.into(),
            source_etag: etag.into(),
            size,
            source_last_modified: None,
            dest_etag: "\"d\"".into(),
            cached_at: 0,
        }
    }

    #[test]
    fn merge_decides_each_object() {
        let objects = [
            obj("a", "e1", 1),
            obj("b", "e2", 2),
            obj("c", "e3", 3),
            obj("d", "e4", 4),
            obj("e", "e5", 5),
        ];
        let entries = [
            entry("a", "e1", 1, "src"),
            entry("b", "old", 2, "src"),
            entry("bb", "stale", 9, "src"),
            entry("c", "e3", 30, "src"),
            entry("e", "e5", 5, "other"),
        ];
        let got: Vec<Decision> = plan_page(&objects, &entries, "src", false)
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(
            got,
            [
                Decision::Hit,
                Decision::Copy(CopyReason::Changed),
                Decision::Copy(CopyReason::Changed),
                Decision::Copy(CopyReason::Missing),
                Decision::Clash {
                    cached_from: "other".into()
                },
            ]
        );
    }

    #[test]
    fn force_copies_hits_but_never_overwrites_another_source() {
        let o = obj("a", "e1", 1);
        assert_eq!(
            decide(&o, Some(&entry("a", "e1", 1, "src")), "src", true),
            Decision::Copy(CopyReason::Forced)
        );
        assert!(matches!(
            decide(&o, Some(&entry("a", "e1", 1, "x")), "src", true),
            Decision::Clash { .. }
        ));
    }
}
