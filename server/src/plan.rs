//! Planning: a source listing page merged with the index entries of the same
//! key range decides, per object, hit or copy. Both inputs are key-ordered,
//! so the merge is one linear pass and a hit costs no per-object request.

use crate::index::{Claim, Millis, Record};
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
    /// Cached, but an eviction of it ended without knowing whether the
    /// object was deleted (a lost reply, a crash between delete and
    /// record): the entry is not proof that the object is there.
    Unconfirmed,
}

/// What to do with one listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Cached and current: nothing to do.
    Hit,
    Copy(CopyReason),
    /// The destination key is cached from another source object; copying
    /// would silently replace it.
    Clash {
        cached_from: String,
    },
    /// Another operation is copying or evicting the key right now: wait for
    /// its outcome, then decide again.
    Wait(Claim),
}

/// Who is asking, and how.
#[derive(Debug, Clone, Copy)]
pub struct Planner<'a> {
    pub source_bucket: &'a str,
    /// The claim owner asking (see `index::attempt_owner`): its own claims
    /// and those of earlier attempts of its operation are no reason to wait.
    pub owner: &'a str,
    pub force: bool,
    pub now: Millis,
}

impl Planner<'_> {
    /// Decides for one object given the index record of its destination key.
    pub fn decide(&self, obj: &ObjectMeta, record: Option<&Record>) -> Decision {
        let entry = record.and_then(|r| r.entry.as_ref());
        let claim = record
            .and_then(|r| r.claim.as_ref())
            .filter(|c| c.blocks(self.owner, self.now));
        let unconfirmed = record.is_some_and(|r| r.is_unconfirmed(self.now));
        match (entry, claim) {
            (Some(e), _) if e.source_bucket != self.source_bucket || e.source_key != obj.key => {
                Decision::Clash {
                    cached_from: format!("{}/{}", e.source_bucket, e.source_key),
                }
            }
            (_, Some(c)) => Decision::Wait(c.clone()),
            _ if self.force => Decision::Copy(CopyReason::Forced),
            (Some(_), None) if unconfirmed => Decision::Copy(CopyReason::Unconfirmed),
            (None, None) => Decision::Copy(CopyReason::Missing),
            (Some(e), None) if e.source_etag != obj.etag || e.size != obj.size => {
                Decision::Copy(CopyReason::Changed)
            }
            (Some(_), None) => Decision::Hit,
        }
    }

    /// Decides for every object of a key-ordered listing page, given the
    /// key-ordered records covering the same destination key range (records
    /// for keys no longer in the source are skipped). `dest_key` maps a
    /// source key to its destination key and must preserve order.
    #[cfg(any(test, feature = "testing"))]
    pub fn plan_page<'o>(
        &self,
        objects: &'o [ObjectMeta],
        records: &[Record],
        dest_key: impl Fn(&str) -> String,
    ) -> Vec<(&'o ObjectMeta, String, Decision)> {
        let mut out = Vec::with_capacity(objects.len());
        let mut records = records.iter().peekable();
        for obj in objects {
            let key = dest_key(&obj.key);
            while records.next_if(|r| r.key < key).is_some() {}
            let record = records.next_if(|r| r.key == key);
            let decision = self.decide(obj, record);
            out.push((obj, key, decision));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{ClaimKind, Entry};

    fn obj(key: &str, etag: &str, size: u64) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            etag: etag.into(),
            size,
            last_modified: None,
        }
    }

    fn rec(key: &str, etag: &str, size: u64, src: &str) -> Record {
        Record {
            key: key.into(),
            entry: Some(Entry {
                directory_bucket: "d--use1-az4--x-s3".into(),
                key: key.into(),
                source_bucket: src.into(),
                source_key: key.into(),
                source_etag: etag.into(),
                size,
                source_last_modified: None,
                dest_etag: "\"d\"".into(),
                cached_at: 0,
            }),
            claim: None,
            unconfirmed: false,
        }
    }

    fn claimed(mut r: Record, owner: &str, deadline: Millis) -> Record {
        r.claim = Some(Claim {
            owner: owner.into(),
            kind: ClaimKind::Copy,
            deadline,
        });
        r
    }

    const P: Planner<'static> = Planner {
        source_bucket: "src",
        owner: "me",
        force: false,
        now: 100,
    };

    #[test]
    fn merge_decides_each_object() {
        let objects = [
            obj("a", "e1", 1),
            obj("b", "e2", 2),
            obj("c", "e3", 3),
            obj("d", "e4", 4),
            obj("e", "e5", 5),
            obj("f", "e6", 6),
        ];
        let records = [
            rec("a", "e1", 1, "src"),
            rec("b", "old", 2, "src"),
            rec("bb", "stale", 9, "src"),
            rec("c", "e3", 30, "src"),
            rec("e", "e5", 5, "other"),
            claimed(rec("f", "e6", 6, "src"), "them", 200),
        ];
        let got: Vec<Decision> = P
            .plan_page(&objects, &records, str::to_owned)
            .into_iter()
            .map(|(_, _, d)| d)
            .collect();
        assert_eq!(got[0], Decision::Hit);
        assert_eq!(got[1], Decision::Copy(CopyReason::Changed));
        assert_eq!(got[2], Decision::Copy(CopyReason::Changed));
        assert_eq!(got[3], Decision::Copy(CopyReason::Missing));
        assert!(matches!(got[4], Decision::Clash { .. }));
        assert!(matches!(got[5], Decision::Wait(_)));
    }

    #[test]
    fn claims_that_are_ours_or_expired_do_not_block() {
        let o = obj("a", "e1", 1);
        assert_eq!(
            P.decide(&o, Some(&claimed(rec("a", "e1", 1, "src"), "me", 200))),
            Decision::Hit
        );
        assert_eq!(
            P.decide(&o, Some(&claimed(rec("a", "e1", 1, "src"), "them", 100))),
            Decision::Hit
        );
        let bare = Record {
            key: "a".into(),
            entry: None,
            claim: None,
            unconfirmed: false,
        };
        assert_eq!(
            P.decide(&o, Some(&claimed(bare, "them", 101))),
            Decision::Wait(Claim {
                owner: "them".into(),
                kind: ClaimKind::Copy,
                deadline: 101
            })
        );
    }

    #[test]
    fn an_entry_marked_unconfirmed_is_copied_again() {
        let mut r = rec("k", "\"e\"", 1, "src");
        r.unconfirmed = true;
        assert_eq!(
            P.decide(&obj("k", "\"e\"", 1), Some(&r)),
            Decision::Copy(CopyReason::Unconfirmed),
            "even with no claim left (a recopy that gave up)"
        );
    }

    #[test]
    fn an_entry_whose_eviction_ended_unconfirmed_is_copied_again() {
        let mut r = rec("k", "\"e\"", 1, "src");
        r.claim = Some(Claim {
            owner: "evict:x".into(),
            kind: ClaimKind::Evict,
            deadline: 0,
        });
        assert_eq!(
            P.decide(&obj("k", "\"e\"", 1), Some(&r)),
            Decision::Copy(CopyReason::Unconfirmed),
            "a lapsed evict claim means the delete may have happened"
        );
        r.claim.as_mut().unwrap().deadline = i64::MAX;
        assert!(
            matches!(P.decide(&obj("k", "\"e\"", 1), Some(&r)), Decision::Wait(_)),
            "a live eviction is waited for"
        );
    }

    #[test]
    fn destination_prefix_maps_keys_in_order() {
        let objects = [obj("a", "e1", 1), obj("b", "e2", 2)];
        let records = [rec("team/a", "e1", 1, "src")];
        let mut r = records[0].clone();
        r.entry.as_mut().unwrap().source_key = "a".into();
        let got = P.plan_page(&objects, &[r], |k| format!("team/{k}"));
        assert_eq!(got[0].1, "team/a");
        assert_eq!(got[0].2, Decision::Hit);
        assert_eq!(got[1].2, Decision::Copy(CopyReason::Missing));
    }

    #[test]
    fn force_copies_hits_but_never_overwrites_another_source() {
        let o = obj("a", "e1", 1);
        let f = Planner { force: true, ..P };
        assert_eq!(
            f.decide(&o, Some(&rec("a", "e1", 1, "src"))),
            Decision::Copy(CopyReason::Forced)
        );
        assert!(matches!(
            f.decide(&o, Some(&rec("a", "e1", 1, "x"))),
            Decision::Clash { .. }
        ));
    }
}
