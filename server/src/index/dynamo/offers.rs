//! The offer board (doc/INDEX-DYNAMODB.md §7): one item of the operations
//! table, `offers`, whose string set names every attempt that offered its
//! operation to other replicas' warms (`<id>#<attempt>`). The offer itself
//! is an attribute of the operation item, fenced by its run; the board is
//! how another replica finds the few offered warms among a job array's
//! thousand running ones without reading them all (the status index holds
//! every running operation, and a lookup of its newest 200 missed a
//! herd's first, offered, rounds). A hint only: written after the offer,
//! read, then every entry confirmed against its operation item. An entry
//! whose operation finished, moved to another attempt or withdrew is
//! removed by the reader that finds it so (a replica that died between
//! the two writes leaves one).

use std::collections::HashSet;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::layout::{s, Item, Vals, PK};
use super::operations::{batch_get_ops, op_pk};
use super::DynamoIndex;
use crate::index::{IndexError, OperationRecord, RunTicket};

/// The board's partition key: no operation (`op#`) or request id (`rid#`)
/// item has it.
const BOARD: &str = "offers";
/// The board's string set.
const OFFERS: &str = "offers";

fn board_key() -> Item {
    Item::from([(PK.to_owned(), s(BOARD))])
}

/// The board's entry of `ticket`'s offer of `id`.
fn entry(id: &str, attempt: u32) -> String {
    format!("{id}#{attempt}")
}

/// `(id, attempt)` of a board entry; `None` for one this release cannot
/// read.
fn parse(entry: &str) -> Option<(&str, u32)> {
    let (id, attempt) = entry.rsplit_once('#')?;
    Some((id, attempt.parse().ok()?))
}

impl DynamoIndex {
    /// Adds (`ADD`) or removes (`DELETE`) entries of the board: both are
    /// idempotent, so a retry after a lost reply does what the first try
    /// did. A failure is logged and left: the board is a hint.
    async fn board(&self, verb: &str, entries: Vec<String>) {
        if entries.is_empty() {
            return;
        }
        let update = format!("{verb} #{OFFERS} :e");
        let res = self
            .update(
                &self.tables.operations,
                board_key(),
                &update,
                None,
                Vals::new().v("e", AttributeValue::Ss(entries)),
                ReturnValue::None,
            )
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, verb,
                "could not update the board of offered warms; other replicas may not find an offer, or skip a stale one");
        }
    }

    /// After `ticket`'s offer of `id` was recorded: on the board.
    pub(super) async fn board_offer(&self, id: &str, ticket: &RunTicket) {
        self.board("ADD", vec![entry(id, ticket.attempt)]).await;
    }

    /// After `ticket`'s offer of `id` was withdrawn (or the attempt lost
    /// its run): off the board.
    pub(super) async fn board_withdraw(&self, id: &str, ticket: &RunTicket) {
        self.board("DELETE", vec![entry(id, ticket.attempt)]).await;
    }

    /// The operations on the board that are still offered by the attempt
    /// that put them there, oldest first, at most `limit`; removes the
    /// entries that are not.
    pub(super) async fn offered(&self, limit: usize) -> Result<Vec<OperationRecord>, IndexError> {
        let Some(item) = self.get(&self.tables.operations, board_key()).await? else {
            return Ok(Vec::new());
        };
        let entries: Vec<String> = match item.get(OFFERS) {
            Some(AttributeValue::Ss(v)) => v.clone(),
            _ => Vec::new(),
        };
        let ids: HashSet<&str> = entries.iter().filter_map(|e| parse(e)).map(|(id, _)| id).collect();
        let pks: Vec<String> = ids.iter().map(|id| op_pk(id)).collect();
        let ops = batch_get_ops(self, pks.iter().map(String::as_str)).await?;
        let mut stale = Vec::new();
        let mut offered = Vec::new();
        for e in &entries {
            let Some((id, attempt)) = parse(e) else {
                continue;
            };
            let current = ops.iter().find(|op| op.id == id).filter(|op| {
                op.run
                    .as_ref()
                    .is_some_and(|r| r.ticket.attempt == attempt && r.joinable)
            });
            match current {
                Some(op) => offered.push(op.clone()),
                None => stale.push(e.clone()),
            }
        }
        // Stale entries are few (a replica that died between its offer
        // and its withdrawal); removed at once by whoever finds them.
        self.board("DELETE", stale).await;
        offered.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        offered.truncate(limit);
        Ok(offered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_names_its_operation_and_attempt() {
        let e = entry("0b9f-x#y", 12);
        assert_eq!(parse(&e), Some(("0b9f-x#y", 12)));
        assert_eq!(parse("no-attempt"), None);
        assert_eq!(parse("id#x"), None);
    }
}
