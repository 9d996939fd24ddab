//! What the cache is made of: the entry of a copied object, the lease that
//! keeps a prefix alive, the claim that reserves a key while it is copied
//! or evicted, and the record that joins them for one key. Plain values:
//! every backend of [`crate::index`] stores and returns these.

use super::clock::Millis;

/// The index record of one cached object. Written only after its copy
/// succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub directory_bucket: String,
    /// Key in the directory bucket.
    pub key: String,
    pub source_bucket: String,
    pub source_key: String,
    /// ETag of the source version that was copied.
    pub source_etag: String,
    pub size: u64,
    pub source_last_modified: Option<Millis>,
    /// ETag the copy produced in the directory bucket.
    pub dest_etag: String,
    pub cached_at: Millis,
}

/// Keeps everything under `prefix` of `directory_bucket` cached until
/// `expires_at`. A lease whose `expires_at` is not after "now" is absent
/// for every decision, even while its record still exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub directory_bucket: String,
    pub prefix: String,
    pub source_bucket: String,
    pub expires_at: Millis,
    /// Assigned by the index when the lease record is created, and changed
    /// whenever `end_leases` ends it (ignored on input). A warm that sees
    /// its lease's epoch change while it runs knows an `Evict` ended the
    /// lease and may have deleted what it had counted as ready.
    pub epoch: String,
}

impl Lease {
    /// A lease to write (its epoch is the index's to assign).
    pub fn new(
        directory_bucket: &str,
        prefix: &str,
        source_bucket: &str,
        expires_at: Millis,
    ) -> Self {
        Self {
            directory_bucket: directory_bucket.to_owned(),
            prefix: prefix.to_owned(),
            source_bucket: source_bucket.to_owned(),
            expires_at,
            epoch: String::new(),
        }
    }

    pub fn is_live(&self, now: Millis) -> bool {
        self.expires_at > now
    }
}

/// What an in-flight claim on a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// A warm is copying the key.
    Copy,
    /// An eviction is deleting the key.
    Evict,
}

/// Exclusive, time-limited right to change one key. A claim past its
/// deadline is void: anyone may take it over, so a crashed holder never
/// blocks others for longer than the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub owner: String,
    pub kind: ClaimKind,
    pub deadline: Millis,
}

impl Claim {
    pub fn is_live(&self, now: Millis) -> bool {
        self.deadline > now
    }

    /// Whether this claim keeps `claimant` from the key at `now`: it does
    /// while it is live, unless it is `claimant`'s own or an earlier
    /// attempt's of the same operation (see [`attempt_owner`]).
    pub fn blocks(&self, claimant: &str, now: Millis) -> bool {
        self.is_live(now) && self.owner != claimant && !supersedes(claimant, &self.owner)
    }
}

/// The claim owner of one attempt at running an operation:
/// `{operation}#{attempt}`, the attempt zero-padded so owners of one
/// operation sort by attempt.
pub fn attempt_owner(operation: &str, attempt: u32) -> String {
    format!("{operation}#{attempt:08}")
}

/// The part of an attempt owner that names its operation (`{operation}#`),
/// if `owner` is one.
pub fn lineage(owner: &str) -> Option<&str> {
    let hash = owner.rfind('#')?;
    let attempt = &owner[hash + 1..];
    (attempt.len() == 8 && attempt.bytes().all(|b| b.is_ascii_digit())).then(|| &owner[..=hash])
}

/// Whether `claimant` supersedes `holder`: both are attempts of one
/// operation and `holder` is the earlier. Only the attempt that holds the
/// operation's run claims keys, so an earlier attempt is dead or fenced,
/// and its claims are taken over at once instead of waited out; a later
/// attempt's claims are never an earlier one's to take.
pub fn supersedes(claimant: &str, holder: &str) -> bool {
    lineage(claimant).is_some_and(|l| holder.starts_with(l) && holder < claimant)
}

/// One key of a directory bucket as the index knows it: the cached version
/// (only once its copy succeeded) and any claim on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub entry: Option<Entry>,
    pub claim: Option<Claim>,
    /// An eviction of this key ended without knowing whether the object
    /// was deleted (or a copy took over its lapsed evict claim and has not
    /// recorded yet): the entry vouches for nothing until a copy records
    /// it again. Cleared only by a recorded copy.
    pub unconfirmed: bool,
}

impl Record {
    /// Whether the entry cannot be trusted as a hit: marked unconfirmed, or
    /// an eviction claim on it lapsed at `now` (its evictor died between
    /// the delete and recording it).
    pub fn is_unconfirmed(&self, now: Millis) -> bool {
        self.unconfirmed
            || self
                .claim
                .as_ref()
                .is_some_and(|c| c.kind == ClaimKind::Evict && !c.is_live(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_attempts_supersede_earlier_ones_of_their_operation_only() {
        let (first, second) = (attempt_owner("op", 1), attempt_owner("op", 2));
        assert_eq!(lineage(&second), Some("op#"));
        assert!(supersedes(&second, &first));
        assert!(!supersedes(&first, &second), "never the other way");
        assert!(!supersedes(&second, &second));
        assert!(
            !supersedes(&attempt_owner("op2", 9), &first),
            "another operation"
        );
        assert!(!supersedes(&attempt_owner("o", 9), &attempt_owner("op", 1)));
        assert_eq!(lineage("evict:abc"), None);
        assert_eq!(lineage("op#12"), None, "not an attempt owner");
        let claim = Claim {
            owner: first.clone(),
            kind: ClaimKind::Copy,
            deadline: 100,
        };
        assert!(!claim.blocks(&second, 0));
        assert!(claim.blocks(&attempt_owner("other", 1), 0));
        assert!(!claim.blocks(&attempt_owner("other", 1), 100), "lapsed");
    }
}
