//! `begin_evict`: claim, then read the leases (doc/INDEX-DYNAMODB.md §3).
//!
//! SQLite checks the ancestor leases and claims in one transaction. Here a
//! key can have more ancestors than a DynamoDB transaction holds items, so
//! the order does the work instead: the claim is written first, the
//! covering leases are read (strongly consistent) after every claim of the
//! batch is acknowledged, and a key found under a live lease gets its claim
//! back. A warm writes its lease before it reads the records and waits out
//! evict claims, so either this read sees the warm's lease or the warm's
//! read sees this claim.

use std::collections::BTreeSet;

use aws_sdk_dynamodb::types::ReturnValue;

use super::layout::{kind_name, record_guard, record_key, record_of, Item, Vals, EVICT};
use super::{Cond, DynamoIndex, ROUNDS};
use crate::index::{
    ancestors, Claim, ClaimKind, ClaimTerms, Entry, EvictDecision, IndexError, Millis,
};

/// What claiming one key for eviction found.
#[derive(Debug)]
pub(super) enum Taken {
    /// Not claimed: `Absent` or `Busy`.
    Decided(EvictDecision),
    /// Claimed; `previous` is the claim it replaced (lapsed, or the
    /// evictor's own), restored if the key turns out to be leased.
    Claimed {
        entry: Entry,
        previous: Option<Claim>,
    },
}

/// The first of `key`'s ancestors (shallowest first, as SQLite answers)
/// in `live`.
pub(super) fn first_live(key: &str, live: &BTreeSet<String>) -> Option<String> {
    ancestors(key).into_iter().find(|p| live.contains(p))
}

impl DynamoIndex {
    /// The ancestors of `keys` (each once) that hold a lease live at `now`.
    pub(super) async fn live_cover<'k>(
        &self,
        dir: &str,
        keys: impl Iterator<Item = &'k String>,
        now: Millis,
    ) -> Result<BTreeSet<String>, IndexError> {
        let prefixes: BTreeSet<String> = keys.flat_map(|k| ancestors(k)).collect();
        self.live_prefixes(dir, &prefixes, now).await
    }

    /// Claims `key` for eviction if it is cached and no other claim is
    /// live, in one conditional write.
    pub(super) async fn take_for_evict(
        &self,
        dir: &str,
        key: &str,
        terms: &ClaimTerms<'_>,
    ) -> Result<Taken, IndexError> {
        let table = self.tables.records.as_str();
        let set = "SET #claim_owner = :me, #claim_kind = :evict, #claim_deadline = :deadline";
        let vals = || {
            Vals::new()
                .s("me", terms.owner)
                .s("evict", EVICT)
                .n("deadline", terms.deadline)
        };
        let res = self
            .update(
                table,
                record_key(dir, key),
                set,
                Some(
                    "attribute_exists(#source_etag) AND (attribute_not_exists(#claim_owner) \
                     OR #claim_owner = :me OR (#claim_kind = :copy AND #claim_deadline <= :now))",
                ),
                vals().s("copy", "copy").n("now", terms.now),
                ReturnValue::AllOld,
            )
            .await?;
        let mut seen = match res {
            Cond::Done(old) => return self.taken(dir, old),
            Cond::Refused(seen) => seen,
        };
        for _ in 0..ROUNDS {
            let Some(item) = seen else {
                return Ok(Taken::Decided(EvictDecision::Absent));
            };
            let record = record_of(dir, &item)?;
            if record.entry.is_none() {
                return Ok(Taken::Decided(EvictDecision::Absent));
            }
            let claim = record.claim.clone();
            if let Some(c) = claim.as_ref().filter(|c| c.is_live(terms.now)) {
                if c.owner != terms.owner {
                    return Ok(Taken::Decided(EvictDecision::Busy(c.clone())));
                }
            }
            // A lapsed eviction of someone else (or a state that changed
            // since the first try): taken exactly as seen. The dead
            // evictor's delete may have landed, so the entry is untrusted
            // from now on, whatever this eviction decides.
            let update = if claim.is_some_and(|c| c.kind == ClaimKind::Evict) {
                format!("{set}, #unconfirmed = :true")
            } else {
                set.to_owned()
            };
            let (guard, vals) = record_guard(Some(&item), vals().t("true"))?;
            seen = match self
                .update(
                    table,
                    record_key(dir, key),
                    &update,
                    Some(&guard),
                    vals,
                    ReturnValue::AllOld,
                )
                .await?
            {
                Cond::Done(old) => return self.taken(dir, old),
                Cond::Refused(seen) => seen,
            };
        }
        Err(self.contention("begin_evict"))
    }

    /// The entry and the replaced claim from a successful claim's old item.
    fn taken(&self, dir: &str, old: Option<Item>) -> Result<Taken, IndexError> {
        let record = record_of(
            dir,
            &old.ok_or_else(|| IndexError::Corrupt("UpdateItem returned no old record".into()))?,
        )?;
        let entry = record.entry.ok_or_else(|| {
            IndexError::Corrupt(format!("{} claimed without an entry", record.key))
        })?;
        Ok(Taken::Claimed {
            entry,
            previous: record.claim,
        })
    }

    /// Undoes this eviction's claim on a key that a live lease covers: the
    /// item gets back the claim it had (a lapsed one stays lapsed), or none.
    pub(super) async fn give_back(
        &self,
        dir: &str,
        key: &str,
        terms: &ClaimTerms<'_>,
        previous: Option<Claim>,
    ) -> Result<(), IndexError> {
        // The evictor's own earlier claim (or what a retried request of this
        // one returned) is not worth keeping: release it.
        let previous = previous.filter(|c| c.owner != terms.owner);
        let (update, vals) = match previous {
            Some(c) => (
                "SET #claim_owner = :owner, #claim_kind = :kind, #claim_deadline = :was",
                Vals::new()
                    .s("owner", c.owner)
                    .s("kind", kind_name(c.kind))
                    .n("was", c.deadline),
            ),
            None => (
                "REMOVE #claim_owner, #claim_kind, #claim_deadline",
                Vals::new(),
            ),
        };
        let res = self
            .update(
                &self.tables.records,
                record_key(dir, key),
                update,
                Some("#claim_owner = :me AND #claim_kind = :evict AND #claim_deadline = :deadline"),
                vals.s("me", terms.owner)
                    .s("evict", EVICT)
                    .n("deadline", terms.deadline),
                ReturnValue::None,
            )
            .await?;
        if let Cond::Refused(_) = res {
            // Nobody else can take a live claim; should it happen anyway,
            // the claim lapses at its deadline.
            tracing::warn!(
                key,
                "could not give back an eviction claim; it lapses at its deadline"
            );
        }
        Ok(())
    }
}
