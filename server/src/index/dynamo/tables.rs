//! Creating and checking the index's tables (doc/INDEX-DYNAMODB.md §6).

use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_dynamodb::operation::update_continuous_backups::UpdateContinuousBackupsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    PointInTimeRecoverySpecification, PointInTimeRecoveryStatus, Projection, ProjectionType,
    ScalarAttributeType, TableDescription, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};

use super::errors::classify;
use super::layout::{
    BY_EXPIRY, BY_STATUS, CREATED_KEY, DIRECTORY_BUCKET, EXPIRES_AT, FINISHED_AT, GC_AT, KEY, KIND,
    LEASE, PK, STATUS,
};
use super::{DynamoIndex, IndexError};

/// A key attribute: name, type.
type KeyAttr = (&'static str, ScalarAttributeType);

/// What one table must look like.
#[derive(Debug, Clone)]
struct Spec {
    name: String,
    hash: KeyAttr,
    /// The sort key, if the table has one.
    range: Option<KeyAttr>,
    /// A global secondary index: name, hash, range (projection ALL).
    gsi: Option<Gsi>,
    /// The TTL attribute, if the table has one.
    ttl: Option<&'static str>,
}

/// A global secondary index: name, keys, and what it projects besides
/// the keys (`None`: every attribute).
#[derive(Debug, Clone)]
struct Gsi {
    name: &'static str,
    hash: KeyAttr,
    range: KeyAttr,
    include: Option<&'static [&'static str]>,
}

/// How long to wait for a new table (or its backups) to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
const POLL: Duration = Duration::from_secs(2);

fn build_err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Storage(format!("cannot build a DynamoDB request: {e}"))
}

fn key_element(name: &str, key_type: KeyType) -> Result<KeySchemaElement, IndexError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .map_err(build_err)
}

fn attribute(a: &KeyAttr) -> Result<AttributeDefinition, IndexError> {
    AttributeDefinition::builder()
        .attribute_name(a.0)
        .attribute_type(a.1.clone())
        .build()
        .map_err(build_err)
}

fn key_schema(
    hash: &KeyAttr,
    range: Option<&KeyAttr>,
) -> Result<Vec<KeySchemaElement>, IndexError> {
    let mut schema = vec![key_element(hash.0, KeyType::Hash)?];
    if let Some(range) = range {
        schema.push(key_element(range.0, KeyType::Range)?);
    }
    Ok(schema)
}

/// How a key reads in messages: `(a HASH S, b RANGE N)`.
fn describe_spec(hash: &KeyAttr, range: Option<&KeyAttr>) -> String {
    let mut out = format!("{} HASH {}", hash.0, hash.1.as_str());
    if let Some(r) = range {
        out.push_str(&format!(", {} RANGE {}", r.0, r.1.as_str()));
    }
    out
}

fn describe_keys(schema: &[KeySchemaElement]) -> String {
    schema
        .iter()
        .map(|k| format!("{} {}", k.attribute_name(), k.key_type().as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `table` does not have the layout `spec` asks for, if it does not.
fn mismatch(spec: &Spec, table: &TableDescription) -> Option<String> {
    let type_of = |name: &str| {
        table
            .attribute_definitions()
            .iter()
            .find(|a| a.attribute_name() == name)
            .map(|a| a.attribute_type().clone())
    };
    let keys_match = |schema: &[KeySchemaElement], hash: &KeyAttr, range: Option<&KeyAttr>| {
        schema.len() == 1 + usize::from(range.is_some())
            && schema.iter().all(|k| {
                let want = if k.key_type() == &KeyType::Hash {
                    Some(hash)
                } else {
                    range
                };
                want.is_some_and(|w| {
                    k.attribute_name() == w.0 && type_of(w.0).as_ref() == Some(&w.1)
                })
            })
    };
    if !keys_match(table.key_schema(), &spec.hash, spec.range.as_ref()) {
        return Some(format!(
            "its key is ({}), not ({})",
            describe_keys(table.key_schema()),
            describe_spec(&spec.hash, spec.range.as_ref())
        ));
    }
    if let Some(gsi) = &spec.gsi {
        let name = gsi.name;
        let found = table
            .global_secondary_indexes()
            .iter()
            .find(|g| g.index_name() == Some(name));
        match found {
            None => return Some(format!("it has no global secondary index {name}")),
            Some(g) if !keys_match(g.key_schema(), &gsi.hash, Some(&gsi.range)) => {
                return Some(format!(
                    "its index {name} has key ({}), not ({} HASH, {} RANGE)",
                    describe_keys(g.key_schema()),
                    gsi.hash.0,
                    gsi.range.0
                ))
            }
            Some(g) => {
                let projection = g.projection();
                let all =
                    projection.and_then(|p| p.projection_type()) == Some(&ProjectionType::All);
                let projects = |attr: &str| {
                    all || projection
                        .is_some_and(|p| p.non_key_attributes().iter().any(|a| a == attr))
                };
                let missing = match gsi.include {
                    None => (!all).then(|| "every attribute".to_owned()),
                    Some(attrs) => attrs
                        .iter()
                        .find(|a| !projects(a))
                        .map(|a| format!("attribute {a}")),
                };
                if let Some(what) = missing {
                    return Some(format!("its index {name} does not project {what}"));
                }
            }
        }
    }
    None
}

impl DynamoIndex {
    fn specs(&self) -> [Spec; 3] {
        [
            Spec {
                name: self.tables.records.clone(),
                hash: (PK, ScalarAttributeType::S),
                range: Some((KEY, ScalarAttributeType::S)),
                gsi: None,
                ttl: Some(GC_AT),
            },
            Spec {
                name: self.tables.leases.clone(),
                hash: (DIRECTORY_BUCKET, ScalarAttributeType::S),
                range: Some((LEASE, ScalarAttributeType::S)),
                gsi: Some(Gsi {
                    name: BY_EXPIRY,
                    hash: (KIND, ScalarAttributeType::S),
                    range: (EXPIRES_AT, ScalarAttributeType::N),
                    include: None,
                }),
                ttl: None,
            },
            Spec {
                name: self.tables.operations.clone(),
                hash: (PK, ScalarAttributeType::S),
                range: None,
                // Keys and `finished_at` only: a renewal or a checkpoint
                // changes no projected attribute, so it writes no index entry.
                gsi: Some(Gsi {
                    name: BY_STATUS,
                    hash: (STATUS, ScalarAttributeType::S),
                    range: (CREATED_KEY, ScalarAttributeType::S),
                    include: Some(&[FINISHED_AT]),
                }),
                ttl: Some(GC_AT),
            },
        ]
    }

    /// The table's description, or `None` if it does not exist.
    async fn describe(&self, name: &str) -> Result<Option<TableDescription>, IndexError> {
        match self.client.describe_table().table_name(name).send().await {
            Ok(out) => Ok(out.table),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(DescribeTableError::ResourceNotFoundException(_))
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(classify("DescribeTable", name, &self.create_hint(), &e)),
        }
    }

    /// Fails with one line naming the command that creates the tables if
    /// any table is missing or does not have the index's layout.
    pub async fn check_tables(&self) -> Result<(), IndexError> {
        for spec in self.specs() {
            match self.describe(&spec.name).await? {
                None => {
                    return Err(IndexError::Storage(format!(
                        "DynamoDB table {} does not exist; {}",
                        spec.name,
                        self.create_hint()
                    )))
                }
                Some(t) => {
                    if let Some(why) = mismatch(&spec, &t) {
                        return Err(IndexError::Storage(format!(
                            "DynamoDB table {} is not an expresscache index table ({why}); \
                             use another prefix, or {}",
                            spec.name,
                            self.create_hint()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates what is missing: the three tables (on-demand billing), TTL
    /// on the records' and operations' `gc_at`, point-in-time recovery on
    /// all. Idempotent: returns
    /// what it did, nothing when all was in place. A table that exists with
    /// another layout is an error, never changed.
    pub async fn create_tables(&self) -> Result<Vec<String>, IndexError> {
        let mut done = Vec::new();
        for spec in self.specs() {
            match self.describe(&spec.name).await? {
                Some(t) => {
                    if let Some(why) = mismatch(&spec, &t) {
                        return Err(IndexError::Storage(format!(
                            "DynamoDB table {} exists but is not an expresscache index table \
                             ({why}); choose another table prefix",
                            spec.name
                        )));
                    }
                }
                None => {
                    self.create(&spec).await?;
                    done.push(format!("created table {} (on-demand billing)", spec.name));
                }
            }
            self.wait_active(&spec.name).await?;
            if let Some(attr) = spec.ttl {
                if self.enable_ttl(&spec.name, attr).await? {
                    done.push(format!("enabled TTL on {} (attribute {attr})", spec.name));
                }
            }
            match self.enable_pitr(&spec.name).await? {
                Some(true) => {
                    done.push(format!("enabled point-in-time recovery on {}", spec.name))
                }
                Some(false) => {}
                None => done.push(format!(
                    "point-in-time recovery is not offered by this endpoint (DynamoDB Local?); \
                     left off on {}",
                    spec.name
                )),
            }
        }
        Ok(done)
    }

    async fn create(&self, spec: &Spec) -> Result<(), IndexError> {
        let mut attrs = vec![attribute(&spec.hash)?];
        if let Some(range) = &spec.range {
            attrs.push(attribute(range)?);
        }
        let mut req = self
            .client
            .create_table()
            .table_name(&spec.name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_key_schema(Some(key_schema(&spec.hash, spec.range.as_ref())?));
        if let Some(gsi) = &spec.gsi {
            attrs.push(attribute(&gsi.hash)?);
            attrs.push(attribute(&gsi.range)?);
            let projection = match gsi.include {
                None => Projection::builder().projection_type(ProjectionType::All),
                Some(include) => Projection::builder()
                    .projection_type(ProjectionType::Include)
                    .set_non_key_attributes(Some(
                        include.iter().map(|a| (*a).to_owned()).collect(),
                    )),
            };
            req = req.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(gsi.name)
                    .set_key_schema(Some(key_schema(&gsi.hash, Some(&gsi.range))?))
                    .projection(projection.build())
                    .build()
                    .map_err(build_err)?,
            );
        }
        match req.set_attribute_definitions(Some(attrs)).send().await {
            Ok(_) => Ok(()),
            // Another `index create` got there first.
            Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
            Err(e) => Err(classify("CreateTable", &spec.name, &self.create_hint(), &e)),
        }
    }

    async fn wait_active(&self, name: &str) -> Result<(), IndexError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let status = self
                .describe(name)
                .await?
                .and_then(|t| t.table_status().cloned());
            if status == Some(TableStatus::Active) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(IndexError::Unavailable(format!(
                    "DynamoDB table {name} is not ACTIVE after {READY_TIMEOUT:?} (status {status:?})"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Turns TTL on `attr` on; whether it had to. DynamoDB refuses to
    /// enable TTL that is already on, so the state is read first.
    async fn enable_ttl(&self, name: &str, attr: &str) -> Result<bool, IndexError> {
        let out = self
            .client
            .describe_time_to_live()
            .table_name(name)
            .send()
            .await
            .map_err(|e| classify("DescribeTimeToLive", name, &self.create_hint(), &e))?;
        let ttl = out.time_to_live_description();
        let status = ttl.and_then(|t| t.time_to_live_status());
        let on = matches!(
            status,
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        );
        if on {
            let current = ttl.and_then(|t| t.attribute_name()).unwrap_or_default();
            if current != attr {
                return Err(IndexError::Storage(format!(
                    "DynamoDB table {name} has TTL on attribute {current:?}, not {attr:?}; \
                     choose another table prefix"
                )));
            }
            return Ok(false);
        }
        self.client
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(attr)
                    .build()
                    .map_err(build_err)?,
            )
            .send()
            .await
            .map_err(|e| classify("UpdateTimeToLive", name, &self.create_hint(), &e))?;
        Ok(true)
    }

    /// Turns point-in-time recovery on; whether it had to, or `None` where
    /// the endpoint has no backups at all (DynamoDB Local answers
    /// UnknownOperationException; DynamoDB itself always has them). A new
    /// table's backups take a while to become available: retried until
    /// they are.
    async fn enable_pitr(&self, name: &str) -> Result<Option<bool>, IndexError> {
        let out = match self
            .client
            .describe_continuous_backups()
            .table_name(name)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 400)
                && aws_sdk_dynamodb::error::ProvideErrorMetadata::code(&e)
                    == Some("UnknownOperationException") =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(classify(
                    "DescribeContinuousBackups",
                    name,
                    &self.create_hint(),
                    &e,
                ))
            }
        };
        let on = out
            .continuous_backups_description()
            .and_then(|d| d.point_in_time_recovery_description())
            .and_then(|p| p.point_in_time_recovery_status())
            == Some(&PointInTimeRecoveryStatus::Enabled);
        if on {
            return Ok(Some(false));
        }
        let spec = PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(build_err)?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let res = self
                .client
                .update_continuous_backups()
                .table_name(name)
                .point_in_time_recovery_specification(spec.clone())
                .send()
                .await;
            match res {
                Ok(_) => return Ok(Some(true)),
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(
                            UpdateContinuousBackupsError::ContinuousBackupsUnavailableException(_)
                        )
                    ) && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => {
                    return Err(classify(
                        "UpdateContinuousBackups",
                        name,
                        &self.create_hint(),
                        &e,
                    ))
                }
            }
        }
    }
}
