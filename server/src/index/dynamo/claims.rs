//! Claims and entries on record items (doc/INDEX-DYNAMODB.md §2
//! "Records"): each key's change is one conditional write on its own item.
//! Where the new state depends on the old one in a way an update expression
//! cannot say, the common case is tried first and a refusal is answered
//! from the item it returns.

use aws_sdk_dynamodb::types::ReturnValue;

use super::layout::{
    gc_at, record_guard, record_key, record_of, Item, Vals, COPY, EVICT, SOURCE_ETAG,
};
use super::{Cond, DynamoIndex, ROUNDS};
use std::collections::BTreeSet;

use super::eviction::{first_live, Taken};
use crate::index::{
    ClaimKind, ClaimOutcome, ClaimTerms, Claims, Completion, Entry, EvictDecision, IndexError,
    Millis,
};

/// The claim attributes a copy claim sets.
const SET_COPY_CLAIM: &str =
    "SET #claim_owner = :me, #claim_kind = :copy, #claim_deadline = :deadline";

impl DynamoIndex {
    /// Claims `key` for a copy (one key of `claim_copies`).
    pub(super) async fn claim_copy_of(
        &self,
        dir: &str,
        key: &str,
        terms: &ClaimTerms<'_>,
    ) -> Result<ClaimOutcome, IndexError> {
        let table = self.tables.records.as_str();
        let vals = || {
            Vals::new()
                .s("me", terms.owner)
                .s("copy", COPY)
                .n("deadline", terms.deadline)
        };
        let mut seen: Option<Item> = None;
        for round in 0..ROUNDS {
            if round == 0 || seen.is_none() {
                // The cold copy (no item yet), or a claim-only item whose
                // copy claim is free, lapsed or ours: one write, and the item
                // is collectable should its copier die.
                let res = self
                    .update(
                        table,
                        record_key(dir, key),
                        &format!("{SET_COPY_CLAIM}, #gc_at = :gc"),
                        Some(
                            "attribute_not_exists(#source_etag) AND (attribute_not_exists(#claim_owner) \
                             OR (#claim_kind = :copy AND (#claim_owner = :me OR #claim_deadline <= :now)))",
                        ),
                        vals().n("gc", gc_at(terms.deadline)).n("now", terms.now),
                        ReturnValue::None,
                    )
                    .await?;
                match res {
                    Cond::Done(_) => return Ok(ClaimOutcome::Claimed),
                    Cond::Refused(item) => seen = item,
                }
                continue;
            }
            let item = seen.take().unwrap_or_default();
            let record = record_of(dir, &item)?;
            if let Some(c) = &record.claim {
                // Live and not ours (nor an earlier attempt's of our
                // operation, which we take over as seen).
                if c.blocks(terms.owner, terms.now) {
                    return Ok(ClaimOutcome::Held(c.clone()));
                }
            }
            let update = copy_claim_over(&record);
            let (guard, vals) =
                record_guard(Some(&item), vals().n("gc", gc_at(terms.deadline)).t("true"))?;
            match self
                .update(
                    table,
                    record_key(dir, key),
                    &update,
                    Some(&guard),
                    vals,
                    ReturnValue::None,
                )
                .await?
            {
                Cond::Done(_) => return Ok(ClaimOutcome::Claimed),
                Cond::Refused(item) => seen = item,
            }
        }
        Err(self.contention("claim_copies"))
    }

    pub(super) async fn complete(
        &self,
        entry: &Entry,
        owner: &str,
    ) -> Result<Completion, IndexError> {
        let mut set = vec![
            "#source_bucket = :sb",
            "#source_etag = :se",
            "#size = :size",
            "#dest_etag = :de",
            "#cached_at = :ca",
        ];
        let mut remove = vec![
            "#claim_owner",
            "#claim_kind",
            "#claim_deadline",
            "#unconfirmed",
            "#gc_at",
        ];
        let mut vals = Vals::new()
            .s("sb", &entry.source_bucket)
            .s("se", &entry.source_etag)
            .n("size", i64::try_from(entry.size).unwrap_or(i64::MAX))
            .s("de", &entry.dest_etag)
            .n("ca", entry.cached_at)
            .s("me", owner)
            .s("copy", COPY);
        // The source key is stored only when it differs from the key.
        if entry.source_key == entry.key {
            remove.push("#source_key");
        } else {
            set.push("#source_key = :sk");
            vals = vals.s("sk", &entry.source_key);
        }
        match entry.source_last_modified {
            Some(t) => {
                set.push("#source_last_modified = :lm");
                vals = vals.n("lm", t);
            }
            None => remove.push("#source_last_modified"),
        }
        let update = format!("SET {} REMOVE {}", set.join(", "), remove.join(", "));
        let res = self
            .update(
                &self.tables.records,
                record_key(&entry.directory_bucket, &entry.key),
                &update,
                Some("#claim_owner = :me AND #claim_kind = :copy"),
                vals,
                ReturnValue::None,
            )
            .await?;
        Ok(match res {
            Cond::Done(_) => Completion::Recorded,
            // A retried request whose first attempt landed finds exactly
            // this entry, claim dropped.
            Cond::Refused(Some(item)) => {
                let r = record_of(&entry.directory_bucket, &item)?;
                if r.claim.is_none() && !r.unconfirmed && r.entry.as_ref() == Some(entry) {
                    Completion::Recorded
                } else {
                    Completion::ClaimLost
                }
            }
            Cond::Refused(None) => Completion::ClaimLost,
        })
    }

    pub(super) async fn abandon(
        &self,
        dir: &str,
        key: &str,
        owner: &str,
        deadline: Millis,
    ) -> Result<(), IndexError> {
        let table = self.tables.records.as_str();
        let mine = "#claim_owner = :me AND #claim_kind = :evict";
        let res = self
            .update(
                table,
                record_key(dir, key),
                "SET #unconfirmed = :true, #claim_deadline = :d",
                Some(&format!("{mine} AND #claim_deadline > :d")),
                Vals::new()
                    .t("true")
                    .n("d", deadline)
                    .s("me", owner)
                    .s("evict", EVICT),
                ReturnValue::None,
            )
            .await?;
        if let Cond::Refused(Some(item)) = res {
            let still_mine = record_of(dir, &item)?
                .claim
                .is_some_and(|c| c.owner == owner && c.kind == ClaimKind::Evict);
            if still_mine {
                // Its deadline is already that early: only mark the entry.
                self.update(
                    table,
                    record_key(dir, key),
                    "SET #unconfirmed = :true",
                    Some(mine),
                    Vals::new().t("true").s("me", owner).s("evict", EVICT),
                    ReturnValue::None,
                )
                .await?;
            }
        }
        Ok(())
    }

    pub(super) async fn finish(&self, dir: &str, key: &str, owner: &str) -> Result<(), IndexError> {
        self.delete(
            &self.tables.records,
            record_key(dir, key),
            "#claim_owner = :me AND #claim_kind = :evict",
            Vals::new().s("me", owner).s("evict", EVICT),
        )
        .await?;
        Ok(())
    }
}

/// The update that takes a copy claim on `record` exactly as seen: an
/// entry is there (a recopy), or the claim is an eviction's that lapsed.
/// An eviction may have deleted the object, so the entry is untrusted
/// until this copy records it; an item without an entry stays collectable
/// should the copier die.
fn copy_claim_over(record: &crate::index::Record) -> String {
    let mut update = SET_COPY_CLAIM.to_owned();
    if record.entry.is_none() {
        update.push_str(", #gc_at = :gc");
    }
    if record
        .claim
        .as_ref()
        .is_some_and(|c| c.kind == ClaimKind::Evict)
    {
        update.push_str(", #unconfirmed = :true");
    }
    update
}

#[async_trait::async_trait]
impl Claims for DynamoIndex {
    async fn claim_copies(
        &self,
        directory_bucket: &str,
        keys: &[String],
        terms: &ClaimTerms<'_>,
    ) -> Result<Vec<ClaimOutcome>, IndexError> {
        self.each(keys, |k| self.claim_copy_of(directory_bucket, k, terms))
            .await
    }
    async fn renew_claim(
        &self,
        dir: &str,
        key: &str,
        owner: &str,
        deadline: Millis,
    ) -> Result<bool, IndexError> {
        let table = self.tables.records.as_str();
        let held = "#claim_owner = :me AND #claim_kind = :copy AND #claim_deadline < :d";
        // A first copy first (its item carries the TTL, which moves along).
        let mut with_entry = false;
        for _ in 0..ROUNDS {
            let (update, cond, vals) = if with_entry {
                (
                    "SET #claim_deadline = :d".to_owned(),
                    format!("{held} AND attribute_exists(#source_etag)"),
                    Vals::new(),
                )
            } else {
                (
                    "SET #claim_deadline = :d, #gc_at = :gc".to_owned(),
                    format!("{held} AND attribute_not_exists(#source_etag)"),
                    Vals::new().n("gc", gc_at(deadline)),
                )
            };
            let vals = vals.s("me", owner).s("copy", COPY).n("d", deadline);
            let res = self
                .update(
                    table,
                    record_key(dir, key),
                    &update,
                    Some(&cond),
                    vals,
                    ReturnValue::None,
                )
                .await?;
            let Cond::Refused(seen) = res else {
                return Ok(true);
            };
            let Some(item) = seen else {
                return Ok(false);
            };
            match record_of(dir, &item)?.claim {
                Some(c) if c.owner == owner && c.kind == ClaimKind::Copy => {
                    if c.deadline >= deadline {
                        // Held, already that long.
                        return Ok(true);
                    }
                    with_entry = item.contains_key(SOURCE_ETAG);
                }
                // Lost: never re-acquired by a heartbeat.
                _ => return Ok(false),
            }
        }
        Err(self.contention("renew_claim"))
    }
    async fn complete_copies(
        &self,
        entries: &[Entry],
        owner: &str,
    ) -> Result<Vec<Completion>, IndexError> {
        self.each(entries, |e| self.complete(e, owner)).await
    }
    async fn release_claim(&self, dir: &str, key: &str, owner: &str) -> Result<(), IndexError> {
        let table = self.tables.records.as_str();
        // A claim on an uncached key leaves nothing behind.
        let res = self
            .delete(
                table,
                record_key(dir, key),
                "#claim_owner = :me AND attribute_not_exists(#source_etag)",
                Vals::new().s("me", owner),
            )
            .await?;
        if let Cond::Refused(Some(item)) = res {
            let mine = record_of(dir, &item)?
                .claim
                .is_some_and(|c| c.owner == owner);
            if mine && item.contains_key(SOURCE_ETAG) {
                // The entry stays; only the claim goes.
                self.update(
                    table,
                    record_key(dir, key),
                    "REMOVE #claim_owner, #claim_kind, #claim_deadline",
                    Some("#claim_owner = :me"),
                    Vals::new().s("me", owner),
                    ReturnValue::None,
                )
                .await?;
            }
        }
        Ok(())
    }
    async fn begin_evict(
        &self,
        dir: &str,
        keys: &[String],
        terms: &ClaimTerms<'_>,
        force: bool,
    ) -> Result<Vec<EvictDecision>, IndexError> {
        let mut out: Vec<Option<EvictDecision>> = vec![None; keys.len()];
        // A hint only: a key under a lease live at `now` is kept without
        // the claim-and-undo writes (and without making warms wait on a
        // claim that is given back). Keeping is always safe; what is not
        // kept here is decided by the read after claiming.
        if !force && self.config.precheck_leases {
            let live = self.live_cover(dir, keys.iter(), terms.now).await?;
            for (slot, key) in out.iter_mut().zip(keys) {
                *slot = first_live(key, &live).map(EvictDecision::Live);
            }
        }
        let pending: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
        let taken = self
            .each(&pending, |&i| self.take_for_evict(dir, &keys[i], terms))
            .await?;
        // Only after every claim is acknowledged: the leases as they stand
        // now. A lease written after this read belongs to a warm that will
        // read the records after writing it, and so see the claim.
        let claimed = pending
            .iter()
            .zip(&taken)
            .filter(|(_, t)| matches!(t, Taken::Claimed { .. }))
            .map(|(&i, _)| &keys[i]);
        let live = if force {
            BTreeSet::new()
        } else {
            self.live_cover(dir, claimed, terms.now).await?
        };
        let mut give_back = Vec::new();
        for (i, t) in pending.into_iter().zip(taken) {
            out[i] = Some(match t {
                Taken::Decided(d) => d,
                Taken::Claimed { entry, previous } => match first_live(&keys[i], &live) {
                    Some(p) => {
                        give_back.push((i, previous));
                        EvictDecision::Live(p)
                    }
                    None => EvictDecision::Marked(entry),
                },
            });
        }
        self.each(give_back, |(i, previous)| {
            self.give_back(dir, &keys[i], terms, previous)
        })
        .await?;
        Ok(out.into_iter().flatten().collect())
    }
    async fn abandon_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
        deadline: Millis,
    ) -> Result<(), IndexError> {
        self.each(keys, |k| self.abandon(directory_bucket, k, owner, deadline))
            .await
            .map(drop)
    }
    async fn finish_evict(
        &self,
        directory_bucket: &str,
        keys: &[String],
        owner: &str,
    ) -> Result<(), IndexError> {
        self.each(keys, |k| self.finish(directory_bucket, k, owner))
            .await
            .map(drop)
    }
}
