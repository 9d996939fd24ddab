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
use crate::index::{ClaimKind, ClaimOutcome, ClaimTerms, Completion, Entry, IndexError, Millis};

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

    pub(super) async fn renew(
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

    pub(super) async fn release(
        &self,
        dir: &str,
        key: &str,
        owner: &str,
    ) -> Result<(), IndexError> {
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
