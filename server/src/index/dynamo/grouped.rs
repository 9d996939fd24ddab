//! Group commit of a job array's bookkeeping writes: its creations and
//! its joiners' final states. A thousand launchers arriving at once are a
//! thousand creations, each a `TransactWriteItems` of its operation and
//! its request id; the round they join ends with a thousand final states.
//! On an index paced to a few dozen requests in flight (`pacing`), one
//! request each queued them for seconds, and a cached warm of the array
//! waited for its own creation and final state longer than for its data.
//! Writes that wait together are sent together, as many as one
//! transaction takes (100 actions on DynamoDB, 10 on DynamoDB Local 1.11:
//! learnt from the refusal, never a flag), so a burst costs a few dozen
//! requests. (On DynamoDB a transactional write costs twice a plain one's
//! write units; it is the requests, not the units, that a burst queues
//! for.)
//!
//! No timer: a write that finds a sender free goes at once; one that
//! arrives while every sender is busy waits for the next send, and so do
//! the writes behind it. Senders are as many as bookkeeping may have in
//! flight ([`Lane::Bulk`]).
//!
//! A transaction is all or nothing, and its cancellation says why per
//! action: a group (one caller's actions) whose condition failed gets its
//! refusal, exactly as if sent alone; the groups it took down with it are
//! sent again at once, without it. A refusal that names no group (a write
//! in flight on an item, a throttle) is retried by the groups it names,
//! and the rest are sent again. No two groups in flight touch the same
//! item (DynamoDB refuses a transaction that does, and two transactions
//! that do conflict): a second creation under one request id waits until
//! the first is answered.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use aws_sdk_dynamodb::types::TransactWriteItem;
use tokio::sync::oneshot;

use super::errors::Cancelled;
use super::transact::{interpret, Refusal, Tx};
use super::DynamoIndex;
use crate::index::lane::{in_lane, Lane};
use crate::index::IndexError;

/// Actions in one transaction at most, until the index says fewer.
const MAX_ACTIONS: usize = 100;
/// Bytes of items in one transaction at most: DynamoDB takes 4 MB; the
/// sizes counted leave out the request's framing.
const MAX_BYTES: usize = 3 * 1024 * 1024;

/// One caller's actions, sent in one transaction with others'.
#[derive(Debug, Clone)]
pub(super) struct Group {
    pub actions: Vec<TransactWriteItem>,
    /// The items the actions touch (their keys, as text).
    pub items: Vec<String>,
    /// The size of the items written, by DynamoDB's rules.
    pub bytes: usize,
}

/// A group waiting to be sent, and where its answer goes.
struct Waiting {
    seq: u64,
    group: Group,
    /// To be sent in a transaction of its own (a batch it was in was
    /// refused as a whole).
    alone: bool,
    reply: oneshot::Sender<Result<Tx, IndexError>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    senders: usize,
    next_seq: u64,
    /// The items of the transactions being sent.
    in_flight: HashSet<String>,
}

/// The groups waiting, and how many senders work on them.
#[derive(Default)]
pub(super) struct Groups {
    queue: Mutex<Queue>,
    /// Actions one transaction may take ([`MAX_ACTIONS`], or fewer once
    /// the index refused that many).
    max_actions: AtomicUsize,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.lock();
        f.debug_struct("Groups")
            .field("waiting", &q.waiting.len())
            .field("senders", &q.senders)
            .finish()
    }
}

impl Groups {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn max_actions(&self) -> usize {
        match self.max_actions.load(Ordering::Relaxed) {
            0 => MAX_ACTIONS,
            n => n,
        }
    }

    /// The oldest waiting groups that fit in one transaction: in order,
    /// skipping those that touch an item in flight or already in it. A
    /// group to be sent alone goes alone; one whose caller gave up is
    /// dropped. The batch's items are then in flight.
    fn take_batch(&self, q: &mut Queue) -> Vec<Waiting> {
        let max_actions = self.max_actions();
        q.waiting.retain(|w| !w.reply.is_closed());
        let mut batch: Vec<Waiting> = Vec::new();
        let (mut actions, mut bytes) = (0, 0);
        let mut i = 0;
        while i < q.waiting.len() && actions < max_actions {
            let w = &q.waiting[i];
            let alone = w.alone || w.group.actions.len() > max_actions;
            let free = w.group.items.iter().all(|k| !q.in_flight.contains(k));
            let fits = free
                && (batch.is_empty()
                    || (!alone
                        && actions + w.group.actions.len() <= max_actions
                        && bytes + w.group.bytes <= MAX_BYTES));
            if !fits {
                i += 1;
                continue;
            }
            let Some(w) = q.waiting.remove(i) else { break };
            actions += w.group.actions.len();
            bytes += w.group.bytes;
            q.in_flight.extend(w.group.items.iter().cloned());
            batch.push(w);
            if alone {
                break;
            }
        }
        batch
    }

    /// The items of `batch` are no longer in flight.
    fn landed(&self, batch: &[Waiting]) {
        let mut q = self.lock();
        for w in batch {
            for k in &w.group.items {
                q.in_flight.remove(k);
            }
        }
    }
}

/// A caller's wait for its group's answer. Dropped first (its caller
/// gave up), it closes the answer's channel, so a group in flight that
/// comes back to the queue is never sent again, and takes a group still
/// waiting out of the queue: an abandoned write is never sent.
struct Answer<'a> {
    groups: &'a Groups,
    seq: u64,
    answer: oneshot::Receiver<Result<Tx, IndexError>>,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        self.answer.close();
        let mut q = self.groups.lock();
        if let Some(at) = q.waiting.iter().position(|w| w.seq == self.seq) {
            q.waiting.remove(at);
        }
    }
}

/// One sender's place in [`Queue::senders`], given back however the
/// sender ends (a panic, the runtime shutting down): a place never given
/// back would leave groups queued with no sender.
struct SenderPlace<'a>(&'a Groups);

impl Drop for SenderPlace<'_> {
    fn drop(&mut self) {
        self.0.lock().senders -= 1;
    }
}

/// What one group's part of a cancelled transaction says.
enum Verdict {
    /// Its own answer: refused, or an error of its own.
    Own(Result<Tx, IndexError>),
    /// A write in flight on one of its items, or a throttle of one: worth
    /// deciding again after a pause.
    Named,
    /// Nothing of its own ("None" for each action): cancelled for
    /// another group's reason.
    Innocent,
}

fn verdict(table: &str, reasons: &[Cancelled]) -> Verdict {
    match interpret(table, reasons.to_vec()) {
        Ok(Tx::Retry) if reasons.iter().all(|r| *r == Cancelled::No) => Verdict::Innocent,
        Ok(Tx::Retry) => Verdict::Named,
        own => Verdict::Own(own),
    }
}

fn innocent_actions(groups: &[Waiting]) -> usize {
    groups.iter().map(|w| w.group.actions.len()).sum()
}

/// The largest count of transaction items the index takes, when that is
/// what `message` refused ("... Member must have length less than or equal
/// to 25").
fn action_limit(message: &str) -> Option<usize> {
    let (_, tail) = message.split_once("length less than or equal to ")?;
    let digits: String = tail.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|n| (1..MAX_ACTIONS).contains(n))
}

impl DynamoIndex {
    /// Sends `group` in a transaction, with whatever other groups wait
    /// beside it; answers as [`transact`](Self::transact) would for
    /// `group` alone.
    pub(super) async fn transact_grouped(&self, group: Group) -> Result<Tx, IndexError> {
        let (reply, answer) = oneshot::channel();
        let (seq, spawn) = {
            let mut q = self.groups.lock();
            let seq = q.next_seq;
            q.next_seq += 1;
            q.waiting.push_back(Waiting {
                seq,
                group,
                alone: false,
                reply,
            });
            let spawn = q.senders < self.pacing.bulk_share();
            if spawn {
                q.senders += 1;
            }
            (seq, spawn)
        };
        if spawn {
            // Its own task: a send under way finishes (and answers every
            // group in it) even if the caller who started it gives up.
            let this = self.clone();
            tokio::spawn(in_lane(Lane::Bulk, async move { this.send_groups().await }));
        }
        let mut waiting = Answer {
            groups: &self.groups,
            seq,
            answer,
        };
        (&mut waiting.answer).await.unwrap_or_else(|_| {
            Err(IndexError::Unavailable(
                "the transaction this write was sent in ended without an answer".into(),
            ))
        })
    }

    /// One sender: sends the oldest waiting groups until none it may
    /// send waits (one held back by an item in flight is sent by the
    /// sender of that item, which looks again once it is answered).
    async fn send_groups(&self) {
        let place = SenderPlace(&self.groups);
        loop {
            let batch = {
                let mut q = self.groups.lock();
                let batch = self.groups.take_batch(&mut q);
                if batch.is_empty() {
                    // Under the lock: a group queued from now on sees
                    // this sender gone and starts another.
                    q.senders -= 1;
                    std::mem::forget(place);
                    return;
                }
                batch
            };
            self.send_batch(batch).await;
        }
    }

    async fn send_batch(&self, batch: Vec<Waiting>) {
        let actions: Vec<TransactWriteItem> = batch
            .iter()
            .flat_map(|w| w.group.actions.iter().cloned())
            .collect();
        let total = actions.len();
        let outcome = self.transact_raw(actions).await;
        // Answered: its items may go in other transactions now (its own
        // groups' too, should they be sent again).
        self.groups.landed(&batch);
        let reasons = match outcome {
            Ok(None) => {
                for w in batch {
                    let _ = w.reply.send(Ok(Tx::Done));
                }
                return;
            }
            Ok(Some(reasons)) if reasons.len() == total => reasons,
            Ok(Some(reasons)) => {
                // Reasons that cannot be told apart by group: each is
                // sent again alone, where they can.
                if batch.len() > 1 {
                    return self.again_alone(batch);
                }
                let answer = interpret(&self.tables.operations, reasons);
                for w in batch {
                    let _ = w.reply.send(answer.clone());
                }
                return;
            }
            Err(refusal) => return self.after_error(batch, refusal),
        };
        let mut at = 0;
        let mut named = Vec::new();
        let mut innocent = Vec::new();
        for w in batch {
            let n = w.group.actions.len();
            match verdict(&self.tables.operations, &reasons[at..at + n]) {
                Verdict::Own(answer) => {
                    let _ = w.reply.send(answer);
                }
                Verdict::Named => named.push(w),
                Verdict::Innocent => innocent.push(w),
            }
            at += n;
        }
        if named.is_empty() && innocent_actions(&innocent) == total {
            // No reason given for any action: nothing to tell apart;
            // each caller decides again after its pause.
            for w in innocent {
                let _ = w.reply.send(Ok(Tx::Retry));
            }
            return;
        }
        // A write in flight on one of a group's items, or a throttle of
        // one: that group decides again after its pause. The groups
        // cancelled for others' reasons are sent again at once.
        for w in named {
            let _ = w.reply.send(Ok(Tx::Retry));
        }
        self.requeue(innocent);
    }

    /// A transaction refused as a whole, for no action of it: more
    /// actions than the index takes (the limit is learnt, the groups sent
    /// again), or a request the index found invalid, which one group's
    /// item may have made so (each group is sent again alone, so only the
    /// group at fault fails). Any other refusal (no table, no access, an
    /// index out of reach) is every group's answer.
    fn after_error(&self, batch: Vec<Waiting>, refusal: Refusal) {
        let actions: usize = batch.iter().map(|w| w.group.actions.len()).sum();
        let limit = refusal.message.as_deref().and_then(action_limit);
        // Only a limit under this transaction's size explains the refusal
        // (else sending it again would be refused again); a single group
        // larger than the limit can never be sent, and fails.
        if let Some(limit) = limit.filter(|l| *l < actions) {
            tracing::info!(
                limit,
                "the index takes fewer actions per transaction; bookkeeping writes are grouped by that many"
            );
            self.groups.max_actions.store(limit, Ordering::Relaxed);
            if batch.len() > 1 {
                return self.requeue(batch);
            }
        }
        let invalid = refusal.code.as_deref() == Some("ValidationException");
        if batch.len() > 1 && invalid {
            return self.again_alone(batch);
        }
        for w in batch {
            let _ = w.reply.send(Err(refusal.error.clone()));
        }
    }

    fn again_alone(&self, batch: Vec<Waiting>) {
        self.requeue(
            batch
                .into_iter()
                .map(|w| Waiting { alone: true, ..w })
                .collect(),
        );
    }

    /// Puts `batch` back at the head of the queue, in its order. A sender
    /// is at work (the one calling this): it takes them next.
    fn requeue(&self, batch: Vec<Waiting>) {
        let mut q = self.groups.lock();
        for w in batch.into_iter().rev() {
            if !w.reply.is_closed() {
                q.waiting.push_front(w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_limit_is_read_from_the_refusal() {
        let old = "1 validation error detected: Value '[...]' at 'transactItems' failed to \
                   satisfy constraint: Member must have length less than or equal to 25";
        assert_eq!(action_limit(old), Some(25));
        assert_eq!(
            action_limit("Member must have length less than or equal to 100"),
            None,
            "the limit already assumed teaches nothing"
        );
        assert_eq!(action_limit("Item size has exceeded the maximum"), None);
    }
}
