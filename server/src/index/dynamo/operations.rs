//! The operation log on `PREFIX-operations` (doc/INDEX-DYNAMODB.md §7): one
//! item per operation (`op#<id>`), one per request id in use (`rid#<id>`,
//! naming the operation that holds it). Every runner write is one
//! conditional `UpdateItem` fenced by the run's replica and attempt; only
//! registering an operation under a request id, and moving a request id to
//! a new operation, change two items, in one `TransactWriteItems`.
//! Conditional failures are answers (`None`, `false`, `Lost`, `Exists`),
//! never errors.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, KeysAndAttributes, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure as OnFailure, TransactWriteItem, Update,
};

use super::documents::{doc_attr, doc_of};
use super::errors::{self, Cancelled};
use super::grouped::Group;
use super::transact::Tx;
use super::layout::{
    get_n, get_s, n, names_in, prune, req_n, req_s, s, Item, Vals, BY_STATUS, CANCEL_REQUESTED,
    CRASHES, CRASH_PENDING, CREATED_AT, CREATED_KEY, DONE, EPOCH, FINISHED, FINISHED_AT, GC_AT, ID,
    LEASE_EPOCHS, OFFERED_ATTEMPT, OPERATION_ID, PK, PREFIX, REQUEST, REQUEST_ID, RESUMPTIONS, RID_GC_AT,
    RUNNING, RUN_ATTEMPT, RUN_DEADLINE, RUN_REPLICA, STATE, STATUS, UPDATED_AT, WITHDRAWN_ATTEMPT,
};
use super::layout::{status_key, status_keys};
use super::{Cond, DynamoIndex, QuerySpec, ROUNDS};
use crate::core::operation::OperationState;
use crate::index::encoding::{RequestDoc, StateDoc};
use crate::index::{
    CreateOutcome, IndexError, Millis, OpFilter, OperationRecord, Renewal, RunLease, RunTerms,
    RunTicket, Takeover,
};
use crate::index::lane::{self, Lane};
use crate::index::{OperationLog, RunLeases};

/// The largest operation item `create_operation` writes, by DynamoDB's
/// item-size rules. An item holds at most 400 KB; checkpoints grow the
/// state (up to 100 failed keys inline) and the lease epochs repeat the
/// request's prefixes, so a request has to leave them room.
const MAX_CREATED_ITEM_BYTES: usize = 128 * 1024;

/// How long after its creation an operation may finish before its
/// request id's TTL, written with the request id, has to be moved on: a
/// year. An operation still unfinished then (its warm not resumed for a
/// year) moves it on when it finishes; until then its request id could be
/// collected by DynamoDB's TTL first.
const RID_HORIZON: Duration = Duration::from_secs(365 * 24 * 3600);

/// "The run is `:r`'s attempt `:a`, and the operation is unfinished": the
/// condition of every runner write (fencing).
const FENCE: &str = "#run_replica = :r AND #run_attempt = :a AND #done = :false";

/// The partition key of operation `id`'s item.
pub(super) fn op_pk(id: &str) -> String {
    format!("op#{id}")
}

fn op_key(id: &str) -> Item {
    HashMap::from([(PK.to_owned(), s(op_pk(id)))])
}

/// The partition key of the item that says which operation holds
/// request id `rid`.
fn rid_pk(rid: &str) -> String {
    format!("rid#{rid}")
}

fn rid_key(rid: &str) -> Item {
    HashMap::from([(PK.to_owned(), s(rid_pk(rid)))])
}

/// The item naming `operation_id` the holder of `rid`, collected by TTL
/// at `gc_at` (epoch seconds; see [`DynamoIndex::rid_gc_at`]).
fn rid_item(rid: &str, operation_id: &str, gc_at: i64) -> Item {
    let mut item = rid_key(rid);
    item.insert(REQUEST_ID.to_owned(), s(rid));
    item.insert(OPERATION_ID.to_owned(), s(operation_id));
    item.insert(GC_AT.to_owned(), n(gc_at));
    item
}

/// The sort key of the `by_status` index: zero-padded creation time, `#`,
/// id, so byte order is (created_at, id) order. `None` before 1970 (the
/// padding orders non-negative times only).
fn created_key(created_at: Millis, id: &str) -> Option<String> {
    (created_at >= 0).then(|| format!("{created_at:020}#{id}"))
}

/// What a `by_status` Query starts before for the `(created_at, id)`
/// cursor `after` (`Some(None)`: from the newest); `None` when nothing can
/// come after it (nothing is stored before 1970) or nothing is asked for.
fn before_cursor(after: Option<&(Millis, String)>, limit: usize) -> Option<Option<String>> {
    if limit == 0 {
        return None;
    }
    match after {
        None => Some(None),
        Some((at, id)) => created_key(*at, id).map(Some),
    }
}

/// The `(created_at, id)` a [`created_key`] was made of.
fn of_created_key(key: &str) -> Option<(Millis, String)> {
    let (at, id) = key.split_once('#')?;
    Some((at.parse().ok()?, id.to_owned()))
}

/// The `ticket` values of [`FENCE`].
fn fence_vals(ticket: &RunTicket) -> Vals {
    Vals::new()
        .s("r", &ticket.replica)
        .n("a", i64::from(ticket.attempt))
        .b("false", false)
}

/// Bytes an attribute value counts towards DynamoDB's item size (numbers
/// rounded up to their longest form).
fn attr_size(a: &AttributeValue) -> usize {
    match a {
        AttributeValue::S(v) => v.len(),
        AttributeValue::N(v) => v.len() / 2 + 2,
        AttributeValue::L(items) => 3 + items.iter().map(|v| 1 + attr_size(v)).sum::<usize>(),
        AttributeValue::M(fields) => {
            3 + fields
                .iter()
                .map(|(k, v)| 1 + k.len() + attr_size(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// An item's size as DynamoDB counts it: attribute names plus values.
fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + attr_size(v)).sum()
}

/// Whether the item's run is `ticket`'s.
fn holds(item: &Item, ticket: &RunTicket) -> bool {
    get_s(item, RUN_REPLICA) == Some(ticket.replica.as_str())
        && req_n("operation", item, RUN_ATTEMPT).ok() == Some(i64::from(ticket.attempt))
}

fn bool_of(item: &Item, attr: &str) -> bool {
    matches!(item.get(attr), Some(AttributeValue::Bool(true)))
}

fn u32_of(item: &Item, attr: &str) -> Result<u32, IndexError> {
    let v = req_n("operation", item, attr)?;
    u32::try_from(v).map_err(|_| {
        IndexError::Corrupt(format!(
            "operation {:?}: attribute {attr} is {v}",
            get_s(item, ID).unwrap_or("?")
        ))
    })
}

/// An operation item as the log's [`OperationRecord`].
fn op_of(item: &Item) -> Result<OperationRecord, IndexError> {
    let id = req_s("operation", item, ID)?;
    let corrupt = |e: IndexError| IndexError::Corrupt(format!("operation {id}: {e}"));
    let doc = |attr: &str| {
        item.get(attr)
            .ok_or_else(|| IndexError::Corrupt(format!("operation {id}: attribute {attr} missing")))
    };
    let request_doc = doc_of::<RequestDoc>(doc(REQUEST)?, "request").map_err(corrupt)?;
    let owner = request_doc.owner.clone();
    let request = request_doc.decode().map_err(corrupt)?;
    let state = doc_of::<StateDoc>(doc(STATE)?, "state")
        .and_then(StateDoc::decode)
        .map_err(corrupt)?;
    // A finished operation has no run, whatever its item still says.
    let run = match get_s(item, RUN_REPLICA).filter(|_| !state.is_done()) {
        None => None,
        Some(replica) => {
            let attempt = u32_of(item, RUN_ATTEMPT)?;
            let num = |attr| get_n("operation", item, attr).map(|v| v.unwrap_or(0));
            let offered = num(OFFERED_ATTEMPT)?;
            Some(RunLease {
                ticket: RunTicket {
                    replica: replica.to_owned(),
                    attempt,
                },
                deadline: req_n("operation", item, RUN_DEADLINE)?,
                cancel_requested: bool_of(item, CANCEL_REQUESTED),
                joinable: offered > 0
                    && offered == i64::from(attempt)
                    && num(WITHDRAWN_ATTEMPT)? < offered,
            })
        }
    };
    Ok(OperationRecord {
        request_id: get_s(item, REQUEST_ID).map(str::to_owned),
        request,
        owner,
        state,
        created_at: req_n("operation", item, CREATED_AT)?,
        resumptions: u32_of(item, RESUMPTIONS)?,
        run,
        id,
    })
}

/// The operations of `pks` that exist and can be read (one that cannot is
/// logged and left out), strongly consistent.
pub(super) async fn batch_get_ops<'a>(
    index: &DynamoIndex,
    pks: impl Iterator<Item = &'a str>,
) -> Result<Vec<OperationRecord>, IndexError> {
    Ok(index
        .batch_get(pks)
        .await?
        .iter()
        .filter_map(|item| match op_of(item) {
            Ok(op) => Some(op),
            Err(e) => {
                tracing::error!(error = %e, "skipping an unreadable operation item");
                None
            }
        })
        .collect())
}

fn build_err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Storage(format!("cannot build a DynamoDB request: {e}"))
}

/// A short, growing, jittered pause before deciding again after a
/// transaction conflict: half the ceiling, plus up to as much again.
async fn backoff(round: usize) {
    const CONFLICT: expresscache::Backoff =
        expresscache::Backoff::new(Duration::from_millis(10), Duration::from_millis(640));
    let ceiling = CONFLICT.ceiling(u32::try_from(round).unwrap_or(u32::MAX).saturating_add(1));
    tokio::time::sleep(ceiling / 2 + (ceiling / 2).mul_f64(fastrand::f64())).await;
}

impl DynamoIndex {
    /// The TTL (epoch seconds) of an operation that finished at `at`.
    fn finished_gc_at(&self, at: Millis) -> i64 {
        let ttl = i64::try_from(self.config.finished_operation_ttl.as_secs()).unwrap_or(i64::MAX);
        (at / 1000).saturating_add(ttl)
    }

    /// The TTL (epoch seconds) a request id's item gets when it comes to
    /// name an operation created at `created_at`: as late as the TTL of
    /// that operation finished [`RID_HORIZON`] after its creation. A
    /// request id collected before its operation would let a resubmission
    /// start a second warm; written with the item, the TTL spares every
    /// final state a second write, and only an operation that finishes
    /// later than that moves it on (`rid_goes_with`). Past its
    /// operation's TTL it stays at most the horizon again, unless purged
    /// with it (as servers do after `operation_retention`).
    fn rid_gc_at(&self, created_at: Millis) -> i64 {
        let horizon = i64::try_from(RID_HORIZON.as_secs()).unwrap_or(i64::MAX);
        self.finished_gc_at(created_at).saturating_add(horizon)
    }

    /// `op` as the item `create_operation` writes: every counter the
    /// update expressions do arithmetic on is there from the start.
    fn op_item(&self, op: &OperationRecord) -> Result<Item, IndexError> {
        let created = created_key(op.created_at, &op.id).ok_or_else(|| {
            IndexError::Storage(format!(
                "operation {}: created_at {} is before 1970, which the DynamoDB operation log \
                 cannot order",
                op.id, op.created_at
            ))
        })?;
        let done = op.is_done();
        let run = op.run.as_ref();
        let mut item = op_key(&op.id);
        item.extend([
            (ID.to_owned(), s(&op.id)),
            (REQUEST.to_owned(), doc_attr(&RequestDoc::of_record(op))),
            (STATE.to_owned(), doc_attr(&StateDoc::from(&op.state))),
            (DONE.to_owned(), AttributeValue::Bool(done)),
            (
                STATUS.to_owned(),
                s(status_key(if done { FINISHED } else { RUNNING }, &op.id)),
            ),
            (CREATED_AT.to_owned(), n(op.created_at)),
            (CREATED_KEY.to_owned(), s(created)),
            (UPDATED_AT.to_owned(), n(op.created_at)),
            (RESUMPTIONS.to_owned(), n(i64::from(op.resumptions))),
            (
                RUN_ATTEMPT.to_owned(),
                n(run.map_or(0, |r| i64::from(r.ticket.attempt))),
            ),
            (RUN_DEADLINE.to_owned(), n(run.map_or(0, |r| r.deadline))),
            (
                CANCEL_REQUESTED.to_owned(),
                AttributeValue::Bool(run.is_some_and(|r| r.cancel_requested)),
            ),
            (CRASHES.to_owned(), n(0)),
            // Until a release says otherwise, the end of a run is a crash.
            (CRASH_PENDING.to_owned(), n(1)),
        ]);
        if let Some(rid) = &op.request_id {
            item.insert(REQUEST_ID.to_owned(), s(rid));
            item.insert(RID_GC_AT.to_owned(), n(self.rid_gc_at(op.created_at)));
        }
        if let Some(r) = run {
            item.insert(RUN_REPLICA.to_owned(), s(&r.ticket.replica));
        }
        if done {
            item.insert(FINISHED_AT.to_owned(), n(op.created_at));
            item.insert(GC_AT.to_owned(), n(self.finished_gc_at(op.created_at)));
        }
        let size = item_size(&item);
        if size > MAX_CREATED_ITEM_BYTES {
            return Err(IndexError::TooLarge(format!(
                "operation {} takes {size} bytes as a DynamoDB item; the DynamoDB operation log \
                 registers operations of at most {MAX_CREATED_ITEM_BYTES} bytes (an item holds \
                 400 KB, and progress and lease epochs grow it): warm fewer or shorter prefixes \
                 per request",
                op.id
            )));
        }
        Ok(item)
    }

    fn put_action(
        &self,
        item: Item,
        condition: &str,
        vals: Vals,
    ) -> Result<TransactWriteItem, IndexError> {
        let put = Put::builder()
            .table_name(&self.tables.operations)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names(names_in(&[condition]))
            .set_expression_attribute_values(prune(vals, &[condition]).into_map())
            .return_values_on_condition_check_failure(OnFailure::AllOld)
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    fn update_action(
        &self,
        key: Item,
        update: &str,
        condition: &str,
        vals: Vals,
    ) -> Result<TransactWriteItem, IndexError> {
        let exprs = [update, condition];
        let update = Update::builder()
            .table_name(&self.tables.operations)
            .set_key(Some(key))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(names_in(&exprs))
            .set_expression_attribute_values(prune(vals, &exprs).into_map())
            .return_values_on_condition_check_failure(OnFailure::AllOld)
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    fn check_action(&self, key: Item, condition: &str) -> Result<TransactWriteItem, IndexError> {
        let check = ConditionCheck::builder()
            .table_name(&self.tables.operations)
            .set_key(Some(key))
            .condition_expression(condition)
            .set_expression_attribute_names(names_in(&[condition]))
            .return_values_on_condition_check_failure(OnFailure::AllOld)
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// The transaction that creates `op` (whose item is `item`) under
    /// request id `rid`: the request id's item, if free (or still naming
    /// `stale`, whose operation is gone), and the operation's.
    fn creation(
        &self,
        op: &OperationRecord,
        rid: &str,
        item: &Item,
        stale: Option<&str>,
    ) -> Result<Group, IndexError> {
        let gc_at = self.rid_gc_at(op.created_at);
        let mut actions = vec![
            match stale {
                None => self.put_action(
                    rid_item(rid, &op.id, gc_at),
                    "attribute_not_exists(#pk)",
                    Vals::new(),
                )?,
                Some(holder) => self.put_action(
                    rid_item(rid, &op.id, gc_at),
                    "#operation_id = :holder",
                    Vals::new().s("holder", holder),
                )?,
            },
            self.put_action(item.clone(), "attribute_not_exists(#pk)", Vals::new())?,
        ];
        let mut items = vec![rid_pk(rid), op_pk(&op.id)];
        if let Some(holder) = stale {
            actions.push(self.check_action(op_key(holder), "attribute_not_exists(#pk)")?);
            items.push(op_pk(holder));
        }
        Ok(Group {
            actions,
            items,
            bytes: item_size(item) + rid.len() + op.id.len(),
        })
    }

    /// What a transaction's action whose condition failed (`reason`) saw
    /// of the item at `key`: the item the refusal carries, or, from an
    /// endpoint that does not return it (DynamoDB Local before 2.0), the
    /// item as read now (`None` inside: there is none). `None` when the
    /// action was not refused by its condition. The one place a refusal
    /// without its item is made good, for every transaction of the log.
    async fn refused_saw(
        &self,
        reason: Option<&Cancelled>,
        key: Item,
    ) -> Result<Option<Option<Item>>, IndexError> {
        Ok(match reason {
            Some(Cancelled::Condition(Some(seen))) => Some(Some(seen.clone())),
            Some(Cancelled::Condition(None)) => {
                Some(self.get(&self.tables.operations, key).await?)
            }
            _ => None,
        })
    }

    /// The answer to a write of `op` that found its id taken by `seen`:
    /// our own earlier write (the same record) is success; anything else
    /// is an error (operation ids are unique by construction).
    fn taken_id(op: &OperationRecord, seen: Option<&Item>) -> Result<bool, IndexError> {
        match seen.map(op_of) {
            Some(Ok(stored)) if stored == *op => Ok(true),
            _ => Err(IndexError::Storage(format!(
                "operation id {} is already taken by another operation",
                op.id
            ))),
        }
    }

    /// The operation a request-id item names, read a few times over about
    /// half a second before it is taken as gone. DynamoDB never shows the
    /// request-id item of a committed transaction without its operation,
    /// but an endpoint without transactional isolation (moto applies a
    /// transaction's items one by one) can, for a moment; a holder that is
    /// really gone (purged, collected by TTL) stays gone.
    async fn holder_op(&self, holder: &str) -> Result<Option<OperationRecord>, IndexError> {
        for wait_ms in [0, 50, 150, 300] {
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            if let Some(op) = self.get_operation(holder).await? {
                return Ok(Some(op));
            }
        }
        Ok(None)
    }

    /// Up to `limit` entries of the `by_status` partition `key` (one shard
    /// of a status: [`status_keys`]), keys and `finished_at`, newest
    /// first, before `before` (a `created_key`).
    async fn by_status(
        &self,
        key: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, IndexError> {
        let mut key_condition = "#status = :status".to_owned();
        let mut vals = Vals::new().s("status", key);
        if let Some(b) = before {
            key_condition.push_str(" AND #created_key < :before");
            vals = vals.s("before", b);
        }
        let q = QuerySpec {
            table: &self.tables.operations,
            index: Some(BY_STATUS),
            key_condition,
            filter: None,
            projection: None,
            vals,
            consistent: false,
            limit: Some(limit),
            descending: true,
        };
        let mut items = self.query_all(&q, limit).await?;
        items.truncate(limit);
        Ok(items)
    }

    /// The `(created_key, pk)` of the newest `limit` operations in
    /// `statuses` before `before` (a `created_key`), newest first, from
    /// the status index alone (no item read).
    async fn newest(
        &self,
        statuses: &[&str],
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, IndexError> {
        // Every shard of each status: the newest `limit` of the union are
        // among the newest `limit` of each shard.
        let keys: Vec<String> = statuses.iter().flat_map(|st| status_keys(st)).collect();
        let pages = futures::future::try_join_all(
            keys.iter()
                .map(|key| self.by_status(key, before.as_deref(), limit)),
        )
        .await?;
        let mut entries: Vec<(String, String)> = pages
            .into_iter()
            .flatten()
            .map(|entry| {
                let key = get_s(&entry, CREATED_KEY).unwrap_or_default().to_owned();
                let pk = get_s(&entry, PK).unwrap_or_default().to_owned();
                (key, pk)
            })
            .collect();
        entries.sort_by(|a, b| b.0.cmp(&a.0));
        // The index is updated after the table: an operation that just
        // finished may show in both partitions for a moment.
        entries.dedup_by(|a, b| a.0 == b.0);
        entries.truncate(limit);
        Ok(entries)
    }

    /// The items of `pks` that exist, strongly consistent: one
    /// BatchGetItem per 100 keys (plus a retry for any DynamoDB leaves
    /// unprocessed).
    pub(super) async fn batch_get<'a>(
        &self,
        pks: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<Item>, IndexError> {
        let table = self.tables.operations.as_str();
        let keys: Vec<Item> = pks
            .map(|pk| HashMap::from([(PK.to_owned(), s(pk))]))
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(100) {
            let mut pending = chunk.to_vec();
            let mut round = 0;
            while !pending.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .consistent_read(true)
                    .build()
                    .map_err(build_err)?;
                let req = self.client.batch_get_item().request_items(table, request);
                let res = self
                    .persist("BatchGetItem", || req.clone().send())
                    .await
                    .map_err(|e| {
                        errors::classify("BatchGetItem", table, &self.create_hint(), &e)
                    })?;
                out.extend(
                    res.responses
                        .and_then(|mut r| r.remove(table))
                        .unwrap_or_default(),
                );
                pending = res
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if !pending.is_empty() {
                    round += 1;
                    if round >= ROUNDS {
                        return Err(IndexError::Unavailable(format!(
                            "BatchGetItem on {table}: keys still unprocessed after {ROUNDS} rounds"
                        )));
                    }
                    backoff(round).await;
                }
            }
        }
        Ok(out)
    }

    /// Deletes one operation found by `purge` if it is still finished and
    /// last updated before `before` (the index may lag the table), then its
    /// request id's item if that still names it.
    async fn purge_one(&self, found: Item, before: Millis) -> Result<bool, IndexError> {
        let table = self.tables.operations.as_str();
        let key = HashMap::from([(PK.to_owned(), s(req_s("operation", &found, PK)?))]);
        let condition = "#done = :true AND #updated_at < :before";
        let req = self
            .client
            .delete_item()
            .table_name(table)
            .set_key(Some(key))
            .condition_expression(condition)
            .set_expression_attribute_names(names_in(&[condition]))
            .set_expression_attribute_values(
                Vals::new().b("true", true).n("before", before).into_map(),
            )
            .return_values(ReturnValue::AllOld);
        let res = self.persist("DeleteItem", || req.clone().send()).await;
        let deleted = match res {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) if errors::refused(&e).is_some() => return Ok(false),
            Err(e) => {
                return Err(errors::classify(
                    "DeleteItem",
                    table,
                    &self.create_hint(),
                    &e,
                ))
            }
        };
        if let Some(rid) = get_s(&deleted, REQUEST_ID) {
            let id = req_s("operation", &deleted, ID)?;
            self.delete(
                table,
                rid_key(rid),
                "#operation_id = :id",
                Vals::new().s("id", &id),
            )
            .await?;
        }
        Ok(true)
    }
}

/// Lease epochs (prefix, epoch) as the operation item's list attribute.
fn epochs_attr(epochs: &[(String, String)]) -> AttributeValue {
    AttributeValue::L(
        epochs
            .iter()
            .map(|(prefix, epoch)| {
                AttributeValue::M(HashMap::from([
                    (PREFIX.to_owned(), s(prefix)),
                    (EPOCH.to_owned(), s(epoch)),
                ]))
            })
            .collect(),
    )
}

impl DynamoIndex {
    /// The update that writes `state` (final) as operation `id`'s, with
    /// its lease epochs if given: its `SET` expression, its values (the
    /// fence's included), the state as written, and the TTL it gives the
    /// item.
    fn final_update(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
        epochs: Option<&[(String, String)]>,
    ) -> (String, Vals, AttributeValue, i64) {
        let now = self.clock.now();
        let gc = self.finished_gc_at(now);
        let state_attr = doc_attr(&StateDoc::from(state));
        let mut set = String::from(
            "SET #state = :state, #updated_at = :now, #finished_at = :now, #done = :true, \
             #status = :finished, #run_deadline = :zero, #gc_at = :gc",
        );
        let mut vals = fence_vals(ticket)
            .v("state", state_attr.clone())
            .n("now", now)
            .b("true", true)
            .s("finished", status_key(FINISHED, id))
            .n("zero", 0)
            .n("gc", gc);
        if let Some(epochs) = epochs {
            set.push_str(", #lease_epochs = :epochs");
            vals = vals.v("epochs", epochs_attr(epochs));
        }
        (set, vals, state_attr, gc)
    }

    /// A final state (with its lease epochs) as one action of a grouped
    /// transaction, sent with other joiners' (`grouped`): a job array's
    /// round ends with a thousand final states at once, and one request
    /// each queued them for seconds behind each other. The action cannot
    /// return the item, so it also asks that the request id's TTL need
    /// not move (the operation has none, or its item's TTL is at least the
    /// one the state gives): where it must, the action is refused and the
    /// single write ([`write_final`](Self::write_final)) does both.
    fn final_group(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
        epochs: &[(String, String)],
    ) -> Result<Group, IndexError> {
        let (set, vals, state_attr, _) = self.final_update(id, ticket, state, Some(epochs));
        let condition =
            format!("{FENCE} AND (attribute_not_exists(#request_id) OR #rid_gc_at >= :gc)");
        // DynamoDB counts the whole item towards a transaction's 4 MB,
        // and the item holds the request too: counted at the most a
        // creation lets it be, beside the new state and epochs (an
        // estimate that errs high only sends fewer per transaction).
        let bytes = MAX_CREATED_ITEM_BYTES + attr_size(&state_attr) + attr_size(&epochs_attr(epochs));
        Ok(Group {
            actions: vec![self.update_action(op_key(id), &set, &condition, vals)?],
            items: vec![op_pk(id)],
            bytes,
        })
    }

    /// Writes `state`, a final one, under `ticket` (and `epochs` with it,
    /// when given): the operation done, its status finished, its run
    /// released, its items collected by DynamoDB's TTL in time. False if
    /// another attempt holds the run.
    async fn write_final(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
        epochs: Option<&[(String, String)]>,
    ) -> Result<bool, IndexError> {
        let table = self.tables.operations.as_str();
        let (set, vals, state_attr, gc) = self.final_update(id, ticket, state, epochs);
        let res = self
            .update(
                table,
                op_key(id),
                &set,
                Some(FENCE),
                vals,
                ReturnValue::AllNew,
            )
            .await?;
        let item = match res {
            Cond::Done(item) => item,
            // A retried request whose first attempt landed finds its own
            // final state, written under its own ticket.
            Cond::Refused(Some(seen))
                if bool_of(&seen, DONE)
                    && holds(&seen, ticket)
                    && seen.get(STATE) == Some(&state_attr) =>
            {
                Some(seen)
            }
            Cond::Refused(_) => return Ok(false),
        };
        if let Some(item) = &item {
            self.rid_goes_with(id, item, gc).await;
        }
        Ok(true)
    }

    /// After operation `id` (its item now `item`) finished with TTL `gc`:
    /// moves its request id's TTL on to `gc` if that is later than the
    /// one the request id's item was given (or it has none).
    async fn rid_goes_with(&self, id: &str, item: &Item, gc: i64) {
        // The TTL its item was given when it came to name this operation
        // (none: an earlier release's item, which has no TTL yet).
        let given = get_n("operation", item, RID_GC_AT).ok().flatten();
        if given.is_some_and(|given| gc <= given) {
            return;
        }
        let Some(rid) = get_s(item, REQUEST_ID) else {
            return;
        };
        // Unless the request id moved on meanwhile.
        let res = self
            .update(
                self.tables.operations.as_str(),
                rid_key(rid),
                "SET #gc_at = :gc",
                Some("#operation_id = :id"),
                Vals::new().n("gc", gc).s("id", id),
                ReturnValue::None,
            )
            .await;
        if let Err(e) = res {
            tracing::warn!(operation_id = %id, error = %e,
                "could not move the request id's TTL on with its operation's; it keeps its \
                 earlier TTL (none if an earlier release wrote it) unless purged first");
        }
    }
}

#[async_trait::async_trait]
impl OperationLog for DynamoIndex {
    async fn create_operation(&self, op: &OperationRecord) -> Result<CreateOutcome, IndexError> {
        let table = self.tables.operations.as_str();
        let item = self.op_item(op)?;
        let Some(rid) = op.request_id.as_deref() else {
            return match self.put(table, op_key(&op.id), item, "attribute_not_exists(#pk)").await? {
                Cond::Done(()) => Ok(CreateOutcome::Created),
                Cond::Refused(seen) => {
                    Self::taken_id(op, seen.as_ref()).map(|_| CreateOutcome::Created)
                }
            };
        };
        // The holder named by the request id's item whose operation is
        // gone (purged, or collected by TTL): the id is free to take, as
        // long as that is still so.
        let mut stale: Option<String> = None;
        for round in 0..ROUNDS {
            // A job array's creations arrive together: sent together.
            let group = self.creation(op, rid, &item, stale.as_deref())?;
            let reasons = match self.transact_grouped(group).await? {
                Tx::Done => return Ok(CreateOutcome::Created),
                Tx::Retry => {
                    backoff(round).await;
                    continue;
                }
                Tx::Refused(reasons) => reasons,
            };
            if let Some(holder_item) = self.refused_saw(reasons.first(), rid_key(rid)).await? {
                let Some(holder_item) = holder_item else {
                    // Its item went meanwhile: the id is free.
                    stale = None;
                    continue;
                };
                let holder = req_s("request id", &holder_item, OPERATION_ID)?;
                if holder == op.id {
                    // Our own earlier write: both items are there.
                    return Ok(CreateOutcome::Created);
                }
                match self.holder_op(&holder).await? {
                    Some(existing) => return Ok(CreateOutcome::Exists(Box::new(existing))),
                    None => {
                        stale = Some(holder);
                        continue;
                    }
                }
            }
            if let Some(seen) = self.refused_saw(reasons.get(1), op_key(&op.id)).await? {
                return Self::taken_id(op, seen.as_ref()).map(|_| CreateOutcome::Created);
            }
            // The stale holder's item is back: decide again.
            stale = None;
        }
        Err(self.contention("create_operation"))
    }
    async fn supersede_operation(
        &self,
        old_id: &str,
        op: &OperationRecord,
    ) -> Result<bool, IndexError> {
        let Some(rid) = op.request_id.as_deref() else {
            return Ok(false);
        };
        let item = self.op_item(op)?;
        for round in 0..ROUNDS {
            let actions = vec![
                self.update_action(
                    op_key(old_id),
                    "REMOVE #request_id",
                    "#done = :true AND #request_id = :rid",
                    Vals::new().b("true", true).s("rid", rid),
                )?,
                self.put_action(
                    rid_item(rid, &op.id, self.rid_gc_at(op.created_at)),
                    "#operation_id = :old",
                    Vals::new().s("old", old_id),
                )?,
                self.put_action(item.clone(), "attribute_not_exists(#pk)", Vals::new())?,
            ];
            match self.transact(actions).await? {
                Tx::Done => return Ok(true),
                Tx::Retry => backoff(round).await,
                Tx::Refused(reasons) => {
                    let refused =
                        |i: usize| matches!(reasons.get(i), Some(Cancelled::Condition(_)));
                    let holder = self
                        .refused_saw(reasons.get(1), rid_key(rid))
                        .await?
                        .flatten();
                    if let Some(holder) = holder {
                        if get_s(&holder, OPERATION_ID) == Some(op.id.as_str()) {
                            // The request id is the new operation's already:
                            // our own earlier write (the id is fresh).
                            return Ok(true);
                        }
                    }
                    if refused(0) || refused(1) {
                        // Unfinished, or no longer the holder.
                        return Ok(false);
                    }
                    let seen = self
                        .refused_saw(reasons.get(2), op_key(&op.id))
                        .await?
                        .flatten();
                    return Self::taken_id(op, seen.as_ref());
                }
            }
        }
        Err(self.contention("supersede_operation"))
    }
    async fn update_operation(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
    ) -> Result<bool, IndexError> {
        let table = self.tables.operations.as_str();
        let now = self.clock.now();
        if !state.is_done() {
            let vals = fence_vals(ticket)
                .v("state", doc_attr(&StateDoc::from(state)))
                .n("now", now);
            let res = self
                .update(
                    table,
                    op_key(id),
                    "SET #state = :state, #updated_at = :now",
                    Some(FENCE),
                    vals,
                    ReturnValue::None,
                )
                .await?;
            return Ok(matches!(res, Cond::Done(_)));
        }
        self.write_final(id, ticket, state, None).await
    }
    /// The final state and the lease epochs in one fenced write: the
    /// trait's default (a renewal that asks whether the run is still held,
    /// the epochs, the state: three writes, and on an endpoint that does
    /// not return refused items a read too) cost a job array's burst of
    /// final states three times the index's time.
    async fn finish_operation(
        &self,
        id: &str,
        ticket: &RunTicket,
        state: &OperationState,
        epochs: &[(String, String)],
    ) -> Result<bool, IndexError> {
        if !state.is_done() {
            // Not a final state: recorded as the trait does it.
            let written = self.update_operation(id, ticket, state).await?;
            if written {
                self.set_lease_epochs(id, epochs).await?;
            }
            return Ok(written);
        }
        // A joiner's: sent with the others that end beside it, as a
        // creation is: contended (a conflict, a throttle) it is decided
        // again after a pause. Refused (the run taken over, our own write
        // landed already, a request id's TTL to move), still contended,
        // or refused as a request (an item too large), the single write
        // decides, exactly as it would alone, and says why precisely.
        if lane::current() == Lane::Bulk {
            for round in 0..ROUNDS {
                match self
                    .transact_grouped(self.final_group(id, ticket, state, epochs)?)
                    .await
                {
                    Ok(Tx::Done) => return Ok(true),
                    Ok(Tx::Retry) => backoff(round).await,
                    Err(e @ IndexError::Unavailable(_)) => return Err(e),
                    Ok(Tx::Refused(_)) | Err(_) => break,
                }
            }
        }
        self.write_final(id, ticket, state, Some(epochs)).await
    }
    async fn get_operation(&self, id: &str) -> Result<Option<OperationRecord>, IndexError> {
        self.get(&self.tables.operations, op_key(id))
            .await?
            .as_ref()
            .map(op_of)
            .transpose()
    }
    async fn list_operations(
        &self,
        filter: OpFilter,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, IndexError> {
        let Some(before) = before_cursor(after.as_ref(), limit) else {
            return Ok(Vec::new());
        };
        let statuses: &[&str] = match filter {
            OpFilter::All => &[RUNNING, FINISHED],
            OpFilter::Running => &[RUNNING],
            OpFilter::Finished => &[FINISHED],
        };
        let entries = self.newest(statuses, before, limit).await?;
        let mut items: HashMap<String, Item> = self
            .batch_get(entries.iter().map(|(_, pk)| pk.as_str()))
            .await?
            .into_iter()
            .map(|item| (get_s(&item, PK).unwrap_or_default().to_owned(), item))
            .collect();
        // In the index's order; one purged since the Query is left out, and
        // so is one that cannot be read (logged): one bad item must not
        // fail every listing, nor every replica's scan for orphans.
        Ok(entries
            .iter()
            .filter_map(|(_, pk)| items.remove(pk))
            .filter_map(|item| match op_of(&item) {
                Ok(op) => Some(op),
                Err(e) => {
                    tracing::error!(error = %e, "skipping an unreadable operation item");
                    None
                }
            })
            .collect())
    }
    async fn set_lease_epochs(
        &self,
        id: &str,
        epochs: &[(String, String)],
    ) -> Result<(), IndexError> {
        let list = epochs_attr(epochs);
        // An operation that is gone (purged) has nothing to record them on.
        self.update(
            &self.tables.operations,
            op_key(id),
            "SET #lease_epochs = :epochs",
            Some("attribute_exists(#pk)"),
            Vals::new().v("epochs", list),
            ReturnValue::None,
        )
        .await
        .map(drop)
    }
    async fn lease_epochs(&self, id: &str) -> Result<Vec<(String, String)>, IndexError> {
        let Some(item) = self.get(&self.tables.operations, op_key(id)).await? else {
            return Ok(Vec::new());
        };
        let corrupt = || IndexError::Corrupt(format!("operation {id}: attribute {LEASE_EPOCHS}"));
        let Some(list) = item.get(LEASE_EPOCHS) else {
            return Ok(Vec::new());
        };
        let mut out = list
            .as_l()
            .map_err(|_| corrupt())?
            .iter()
            .map(|e| {
                let m = e.as_m().map_err(|_| corrupt())?;
                let field = |name: &str| {
                    m.get(name)
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .ok_or_else(corrupt)
                };
                Ok((field(PREFIX)?, field(EPOCH)?))
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        out.sort();
        Ok(out)
    }
    async fn purge_operations(&self, before: Millis) -> Result<u64, IndexError> {
        let queries = status_keys(FINISHED).into_iter().map(|key| async move {
            let q = QuerySpec {
                table: &self.tables.operations,
                index: Some(BY_STATUS),
                key_condition: "#status = :finished".into(),
                filter: Some("#finished_at < :before"),
                projection: None,
                vals: Vals::new().s("finished", key).n("before", before),
                consistent: false,
                limit: None,
                descending: false,
            };
            self.query_all(&q, usize::MAX).await
        });
        let found: Vec<Item> = futures::future::try_join_all(queries)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let purged = self
            .each(found, |item| self.purge_one(item, before))
            .await?;
        Ok(purged.into_iter().filter(|p| *p).count() as u64)
    }
}

#[async_trait::async_trait]
impl RunLeases for DynamoIndex {
    async fn take_over(
        &self,
        id: &str,
        terms: &RunTerms<'_>,
    ) -> Result<Option<Takeover>, IndexError> {
        // One operator per SET action (DynamoDB's grammar): the crash count
        // grows by `crash_pending`, which a release zeroes; every right-hand
        // side reads the item as it was before this update.
        let res = self
            .update(
                &self.tables.operations,
                op_key(id),
                "SET #run_replica = :r, #run_attempt = #run_attempt + :one, \
                 #run_deadline = :deadline, #crashes = #crashes + #crash_pending, \
                 #crash_pending = :one",
                Some(
                    "#done = :false AND (attribute_not_exists(#run_replica) \
                     OR #run_deadline <= :now)",
                ),
                Vals::new()
                    .s("r", terms.replica)
                    .n("one", 1)
                    .n("deadline", terms.deadline)
                    .n("now", terms.now)
                    .b("false", false),
                ReturnValue::AllNew,
            )
            .await?;
        let item = match res {
            Cond::Done(Some(item)) => item,
            // A retried request whose first attempt landed: the run is this
            // replica's, until exactly this deadline.
            Cond::Refused(Some(seen))
                if !bool_of(&seen, DONE)
                    && get_s(&seen, RUN_REPLICA) == Some(terms.replica)
                    && req_n("operation", &seen, RUN_DEADLINE).ok() == Some(terms.deadline) =>
            {
                seen
            }
            _ => return Ok(None),
        };
        Ok(Some(Takeover {
            ticket: RunTicket {
                replica: terms.replica.to_owned(),
                attempt: u32_of(&item, RUN_ATTEMPT)?,
            },
            crashes: u32_of(&item, CRASHES)?,
            cancel_requested: bool_of(&item, CANCEL_REQUESTED),
        }))
    }
    async fn renew_run(
        &self,
        id: &str,
        ticket: &RunTicket,
        deadline: Millis,
    ) -> Result<Renewal, IndexError> {
        // Not behind a burst: a late renewal hands a live run on.
        let res = super::urgent(self.update(
                &self.tables.operations,
                op_key(id),
                "SET #run_deadline = :d",
                // `> :zero`: a released run (deadline 0) stays released, even
                // if a renewal sent before the release lands after it.
                Some(&format!(
                    "{FENCE} AND #run_deadline < :d AND #run_deadline > :zero"
                )),
                fence_vals(ticket).n("d", deadline).n("zero", 0),
                ReturnValue::AllNew,
            ))
            .await?;
        let item = match res {
            Cond::Done(item) => item,
            // Still ours, and already running that long: held as is.
            Cond::Refused(seen) => seen.filter(|i| {
                holds(i, ticket)
                    && !bool_of(i, DONE)
                    && i.get(RUN_DEADLINE).and_then(|v| v.as_n().ok()) != Some(&"0".to_owned())
            }),
        };
        Ok(item.map_or(Renewal::Lost, |i| Renewal::Held {
            cancel_requested: bool_of(&i, CANCEL_REQUESTED),
        }))
    }
    async fn release_run(&self, id: &str, ticket: &RunTicket) -> Result<(), IndexError> {
        self.update(
            &self.tables.operations,
            op_key(id),
            "SET #run_deadline = :zero, #crash_pending = :zero",
            Some(FENCE),
            fence_vals(ticket).n("zero", 0),
            ReturnValue::None,
        )
        .await
        .map(drop)
    }
    async fn request_cancel(&self, id: &str) -> Result<bool, IndexError> {
        let res = self
            .update(
                &self.tables.operations,
                op_key(id),
                "SET #cancel_requested = :true",
                Some("#done = :false"),
                Vals::new().b("true", true).b("false", false),
                ReturnValue::None,
            )
            .await?;
        Ok(matches!(res, Cond::Done(_)))
    }
    async fn mark_resumed(&self, id: &str) -> Result<u32, IndexError> {
        let res = self
            .update(
                &self.tables.operations,
                op_key(id),
                "SET #resumptions = #resumptions + :one",
                Some("attribute_exists(#pk)"),
                Vals::new().n("one", 1),
                ReturnValue::UpdatedNew,
            )
            .await?;
        match res {
            Cond::Done(Some(item)) => u32_of(&item, RESUMPTIONS),
            _ => Err(IndexError::Storage(format!(
                "operation {id} does not exist"
            ))),
        }
    }
    /// [`RunLeases::offer_join`](crate::index::RunLeases::offer_join):
    /// refused once the attempt withdrew, so a late retry cannot re-mark.
    async fn offer_join(&self, id: &str, ticket: &RunTicket) -> Result<bool, IndexError> {
        // Rare (a round's leader, once or twice) and every warm of the
        // round waits on it: past the replica's queue, like a renewal.
        super::urgent(async {
            let res = self
                .update(
                    &self.tables.operations,
                    op_key(id),
                    "SET #offered_attempt = :a",
                    Some(&format!(
                        "{FENCE} AND (attribute_not_exists(#withdrawn_attempt) OR #withdrawn_attempt < :a)"
                    )),
                    fence_vals(ticket),
                    ReturnValue::None,
                )
                .await?;
            let offered = matches!(res, Cond::Done(_));
            if offered {
                self.board_offer(id, ticket).await;
            }
            Ok(offered)
        })
        .await
    }
    /// [`RunLeases::withdraw_join`](crate::index::RunLeases::withdraw_join).
    async fn withdraw_join(&self, id: &str, ticket: &RunTicket) -> Result<bool, IndexError> {
        // Rare (a round's leader, once or twice) and every warm of the
        // round waits on it: past the replica's queue, like a renewal.
        super::urgent(async {
            let res = self
                .update(
                    &self.tables.operations,
                    op_key(id),
                    "SET #withdrawn_attempt = :a",
                    Some("#run_replica = :r AND #run_attempt = :a"),
                    Vals::new()
                        .s("r", &ticket.replica)
                        .n("a", i64::from(ticket.attempt)),
                    ReturnValue::None,
                )
                .await?;
            // Withdrawn, or the attempt no longer holds the run: either way its
            // entry goes.
            self.board_withdraw(id, ticket).await;
            Ok(matches!(res, Cond::Done(_)))
        })
        .await
    }

    async fn offered_operations(
        &self,
        limit: usize,
    ) -> Result<Vec<OperationRecord>, IndexError> {
        // A waiting leader's lookup, once a second per replica at most.
        super::urgent(async {
            self.offered(limit).await
        })
        .await
    }

    async fn unfinished_operations(
        &self,
        after: Option<(Millis, String)>,
        limit: usize,
    ) -> Result<Vec<(Millis, String)>, IndexError> {
        let Some(before) = before_cursor(after.as_ref(), limit) else {
            return Ok(Vec::new());
        };
        // The status index alone: keys and a few bytes per operation,
        // eventually consistent (half the read cost of a consistent read,
        // and a fraction of the items' size).
        let entries = self.newest(&[RUNNING], before, limit).await?;
        Ok(entries
            .iter()
            .filter_map(|(key, _)| of_created_key(key))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_keys_sort_like_creation_time_then_id() {
        let mut keys = [
            created_key(300, "b").unwrap(),
            created_key(1_700_000_000_000, "a").unwrap(),
            created_key(300, "a").unwrap(),
            created_key(0, "z").unwrap(),
            created_key(i64::MAX, "a").unwrap(),
            created_key(99, "a#b").unwrap(),
            created_key(99, "a").unwrap(),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                "00000000000000000000#z",
                "00000000000000000099#a",
                "00000000000000000099#a#b",
                "00000000000000000300#a",
                "00000000000000000300#b",
                "00000001700000000000#a",
                "09223372036854775807#a",
            ]
        );
        assert_eq!(created_key(-1, "a"), None);
    }

    #[test]
    fn item_sizes_count_names_and_values() {
        let item = HashMap::from([
            ("pk".to_owned(), s("op#1")),
            ("n".to_owned(), n(12_345)),
            (
                "m".to_owned(),
                AttributeValue::M(HashMap::from([("k".to_owned(), s("vv"))])),
            ),
        ]);
        assert_eq!(item_size(&item), (2 + 4) + (1 + 4) + (1 + 3 + 1 + 1 + 2));
    }
}
