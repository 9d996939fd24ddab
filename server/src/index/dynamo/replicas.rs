//! The replica registry on DynamoDB (doc/INDEX-DYNAMODB.md, "Replicas"):
//! one item, `pk = replicas` in the operations table, whose map attribute
//! `replicas` holds each replica's heartbeat deadline. A heartbeat is one
//! conditional UpdateItem of one map entry (a late one never shortens it);
//! reading the live replicas is one consistent GetItem. One item suits a
//! fleet of up to hundreds of replicas heartbeating every few seconds
//! (each write costs 1 WCU per KB of the item).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use super::layout::{s, Item, PK};
use super::{errors, DynamoIndex};
use crate::index::{IndexError, Millis, ReplicaRegistry};

/// The registry item's partition key.
const REGISTRY_PK: &str = "replicas";
/// Its map attribute: replica name -> heartbeat deadline.
const REPLICAS: &str = "replicas";
/// A replica whose deadline passed this long ago is dropped from the map
/// (replica names from restarts with new names would pile up otherwise).
const FORGET_AFTER_MS: Millis = 3_600_000;

fn registry_key() -> Item {
    HashMap::from([(PK.to_owned(), s(REGISTRY_PK))])
}

impl DynamoIndex {
    /// The registry as stored: replica -> deadline.
    async fn replica_deadlines(&self) -> Result<Vec<(String, Millis)>, IndexError> {
        let item = self
            .get(&self.tables.operations, registry_key())
            .await?
            .unwrap_or_default();
        let Some(AttributeValue::M(map)) = item.get(REPLICAS) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<(String, Millis)> = map
            .iter()
            .filter_map(|(name, v)| {
                let n = v.as_n().ok()?.parse().ok()?;
                Some((name.clone(), n))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Creates the registry item with an empty map if there is none.
    async fn ensure_registry(&self) -> Result<(), IndexError> {
        let table = &self.tables.operations;
        let mut item = registry_key();
        item.insert(REPLICAS.to_owned(), AttributeValue::M(HashMap::new()));
        let req = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK);
        let res = self.persist("PutItem", || req.clone().send()).await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if errors::refused(&e).is_some() => Ok(()), // it exists
            Err(e) => Err(errors::classify("PutItem", table, &self.create_hint(), &e)),
        }
    }
}

/// What a conditional write to one replica's map entry did.
enum Entry {
    Written,
    /// Its condition failed: nothing to do.
    Refused,
    /// The registry item (and so the map) does not exist yet.
    NoMap,
}

impl DynamoIndex {
    /// One conditional UpdateItem of `replica`'s entry in the registry map.
    /// Replica names are free text: they go in as attribute names (`#r`),
    /// never into the expression itself.
    async fn replica_entry(
        &self,
        update: &str,
        condition: &str,
        replica: &str,
        value: Option<Millis>,
    ) -> Result<Entry, IndexError> {
        let table = &self.tables.operations;
        let req = self
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(registry_key()))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#m", REPLICAS)
            .expression_attribute_names("#r", replica)
            .set_expression_attribute_values(
                value.map(|v| HashMap::from([(":v".to_owned(), AttributeValue::N(v.to_string()))])),
            );
        let res = self.persist("UpdateItem", || req.clone().send()).await;
        match res {
            Ok(_) => Ok(Entry::Written),
            Err(e) if errors::refused(&e).is_some() => Ok(Entry::Refused),
            Err(e) if errors::code(&e) == Some("ValidationException") => Ok(Entry::NoMap),
            Err(e) => Err(errors::classify(
                "UpdateItem",
                table,
                &self.create_hint(),
                &e,
            )),
        }
    }

    /// One heartbeat: this replica's deadline in the registry, and the
    /// entries of replicas long gone forgotten.
    async fn beat(&self, replica: &str, deadline: Millis) -> Result<(), IndexError> {
        // A later deadline already there is no failure: a late heartbeat
        // never shortens one.
        let set = || {
            self.replica_entry(
                "SET #m.#r = :v",
                "attribute_not_exists(#m.#r) OR #m.#r < :v",
                replica,
                Some(deadline),
            )
        };
        if let Entry::NoMap = set().await? {
            self.ensure_registry().await?;
            if let Entry::NoMap = set().await? {
                return Err(IndexError::Storage(format!(
                    "the replica registry item in {} has no usable `{REPLICAS}` map",
                    self.tables.operations
                )));
            }
        }
        // Forget replicas long gone, a few at a time.
        let forget_before = deadline.saturating_sub(FORGET_AFTER_MS);
        let stale: Vec<String> = self
            .replica_deadlines()
            .await?
            .into_iter()
            .filter(|(_, d)| *d < forget_before)
            .map(|(name, _)| name)
            .take(20)
            .collect();
        for name in stale {
            // Only if it did not come back meanwhile.
            self.replica_entry("REMOVE #m.#r", "#m.#r < :v", &name, Some(forget_before))
                .await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ReplicaRegistry for DynamoIndex {
    async fn heartbeat(&self, replica: &str, deadline: Millis) -> Result<(), IndexError> {
        // Not behind a burst: a late heartbeat drops this replica from the
        // registry, and the others read all its runs.
        super::urgent(self.beat(replica, deadline)).await
    }

    async fn live_replicas(&self, now: Millis) -> Result<Vec<String>, IndexError> {
        // Part of the heartbeat: not behind a burst either.
        Ok(super::urgent(self.replica_deadlines())
            .await?
            .into_iter()
            .filter(|(_, d)| *d > now)
            .map(|(name, _)| name)
            .collect())
    }

    async fn leave(&self, replica: &str) -> Result<(), IndexError> {
        // No registry yet (NoMap, or the condition failed): nothing to leave.
        self.replica_entry("REMOVE #m.#r", "attribute_exists(#m)", replica, None)
            .await
            .map(|_| ())
    }
}
