//! The DynamoDB [`CacheIndex`](super::CacheIndex) and [`OperationLog`]: records hashed over a
//! fixed number of partitions per directory bucket, leases per directory
//! bucket, operations by id, every change one conditional write on one item
//! (a transaction only where an operation and its request id change
//! together). The layout, each condition and what each method costs are in
//! doc/INDEX-DYNAMODB.md.
//!
//! - `layout`: table/attribute names, key encoding, item <-> type;
//! - `leases`: the lease methods;
//! - `records`: reading records (the partition merge) and usage;
//! - `claims`: copy claims and their completion, release, evict bookkeeping;
//! - `eviction`: `begin_evict` and its ancestor-lease check;
//! - `operations`, `documents`: the operation log, its documents as map
//!   attributes;
//! - `transact`, `grouped`: transactions, and creations sent together;
//! - `tables`: creating and checking the tables;
//! - `errors`, `requests`: SDK errors as `IndexError`, request counting.

mod claims;
mod documents;
mod errors;
mod eviction;
mod grouped;
pub mod layout;
mod leases;
mod offers;
mod operations;
mod pacing;
mod records;
mod replicas;
mod requests;
mod tables;
mod transact;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::types::ReturnValue;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure as OnFailure;
use futures::{StreamExt, TryStreamExt};

pub use requests::RequestCounts;

use self::layout::{names_in, prune, Item, Vals};
use super::IndexError;
use crate::core::clock::{Clock, SystemClock};
use crate::index::lane::{self, Lane};

/// The scheme of an index location naming DynamoDB tables.
pub const SCHEME: &str = "dynamodb://";

/// The prefix of the index's table names, validated: 1 to 244 characters
/// of `A-Z a-z 0-9 _ . -`, so that every table name built from it is a
/// valid DynamoDB table name (at most 255 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TablePrefix(String);

impl TablePrefix {
    /// Longest prefix: DynamoDB's 255 minus the longest suffix
    /// ("-operations").
    pub const MAX_LEN: usize = 255 - "-operations".len();

    /// Parses `dynamodb://TABLE_PREFIX`.
    pub fn parse(location: &str) -> Result<Self, String> {
        let Some(prefix) = location.strip_prefix(SCHEME) else {
            return Err(format!(
                "{location:?} is not a DynamoDB index location: expected \
                 dynamodb://TABLE_PREFIX, e.g. dynamodb://expresscache"
            ));
        };
        Self::new(prefix).map_err(|e| format!("{location:?}: {e}"))
    }

    /// Validates a bare table prefix.
    pub fn new(prefix: &str) -> Result<Self, String> {
        if prefix.is_empty() {
            return Err("the table prefix is empty: name one, e.g. dynamodb://expresscache".into());
        }
        if prefix.len() > Self::MAX_LEN {
            return Err(format!(
                "the table prefix is {} characters long; at most {} fit in a DynamoDB table name",
                prefix.len(),
                Self::MAX_LEN
            ));
        }
        if let Some(c) = prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(format!(
                "the table prefix {prefix:?} contains {c:?}; DynamoDB table names allow only \
                 A-Z, a-z, 0-9, '_', '.' and '-'"
            ));
        }
        Ok(Self(prefix.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The names of the tables under this prefix.
    pub fn tables(&self) -> Tables {
        Tables {
            records: format!("{}-records", self.0),
            leases: format!("{}-leases", self.0),
            operations: format!("{}-operations", self.0),
        }
    }
}

impl fmt::Display for TablePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.0)
    }
}

impl std::str::FromStr for TablePrefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

/// The index's table names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// One item per key of a directory bucket (entry, claim).
    pub records: String,
    /// One item per lease.
    pub leases: String,
    /// One item per operation, and one per request id in use.
    pub operations: String,
}

/// How the index talks to DynamoDB.
#[derive(Debug, Clone)]
pub struct DynamoConfig {
    /// Attempts per request (the SDK's standard retry mode: exponential
    /// backoff with jitter on throttling, 5xx and timeouts).
    pub max_attempts: u32,
    /// Longest wait for one attempt's answer: a hung request is retried,
    /// never waited on forever.
    pub attempt_timeout: Duration,
    /// Longest wait for a request with all its attempts.
    pub operation_timeout: Duration,
    pub connect_timeout: Duration,
    /// Requests one call sends at once (per-key writes of a batch, the
    /// partition Queries of a page).
    pub concurrency: usize,
    /// Before claiming keys for eviction, read the covering leases once and
    /// answer keys under a live lease `Live` without writing. Only saves the
    /// claim-and-undo writes: the read after claiming decides either way.
    pub precheck_leases: bool,
    /// How long after it finished an operation's items carry a TTL that
    /// lets DynamoDB collect them (should no server purge them first):
    /// keep it longer than the servers' `operation_retention`, which is
    /// what decides when a finished operation goes.
    pub finished_operation_ttl: Duration,
    /// How long one call keeps sending its request again while DynamoDB
    /// throttles, answers 5xx or does not answer (beyond the SDK's own
    /// few attempts, whose shared retry quota runs dry in a throttle
    /// storm): throttles are backpressure, not a verdict. Only after this
    /// does the call fail with [`IndexError::Unavailable`].
    pub busy_budget: Duration,
    /// The pauses between those sends.
    pub busy_backoff: expresscache::Backoff,
    /// Most requests this index has in flight at once. Below it, an
    /// adaptive limit (the copy engine's, [`crate::core::limiter::AdaptiveLimit`]) finds how many
    /// the tables serve without a queue building up, and halves on a
    /// throttle: a job array's burst then waits in this replica, where a
    /// caller that gives up (a checkpoint cut off in time) costs nothing,
    /// instead of in the table, which serves every request it was sent,
    /// abandoned or not. Renewals of runs and the replica's heartbeat skip
    /// the wait ([`urgent`]): a late one loses a run; bookkeeping takes
    /// at most half of it, and 16 (`index::lane`, `pacing`).
    pub max_in_flight: usize,
}

impl Default for DynamoConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            concurrency: 32,
            precheck_leases: true,
            finished_operation_ttl: Duration::from_secs(30 * 24 * 3600),
            busy_budget: Duration::from_secs(300),
            busy_backoff: expresscache::Backoff::new(
                Duration::from_millis(50),
                Duration::from_secs(5),
            ),
            // At DynamoDB's single-digit milliseconds, a thousand in flight
            // is some hundred thousand requests a second: never the bound
            // of one replica's work, only of a queue.
            max_in_flight: 1024,
        }
    }
}

/// Runs `call`'s requests past the limit of requests in flight, without
/// waiting for a slot ([`Lane::Urgent`]): a run's renewal or the
/// replica's heartbeat is late when it waits behind a job array's burst,
/// and a late one hands a live run to another replica (or drops this
/// replica from the registry), which costs the index more than it saves.
/// Such calls are few (one per running warm per second at most), so they
/// cannot make a queue of their own.
pub(crate) async fn urgent<F: Future>(call: F) -> F::Output {
    lane::in_lane(Lane::Urgent, call).await
}

/// DynamoDB-backed [`CacheIndex`](super::CacheIndex) and [`OperationLog`].
#[derive(Debug, Clone)]
pub struct DynamoIndex {
    client: aws_sdk_dynamodb::Client,
    prefix: TablePrefix,
    tables: Tables,
    config: DynamoConfig,
    #[cfg(any(test, feature = "testing"))]
    requests: Arc<RequestCounts>,
    /// Requests in flight ([`DynamoConfig::max_in_flight`]).
    pacing: Arc<pacing::Pacing>,
    /// Creations waiting to be sent together (`grouped`).
    groups: Arc<grouped::Groups>,
    /// Stamps operation items' `updated_at` (which retention compares
    /// with the same clock).
    clock: Arc<dyn Clock>,
}

/// Rounds a decision may take when the item keeps changing under it
/// before the call gives up with [`IndexError::Unavailable`].
const ROUNDS: usize = 8;

/// The outcome of a conditional write: done (with the item's attributes as
/// asked for), or refused with the item as it was (`None`: no item).
#[derive(Debug)]
pub(crate) enum Cond<T> {
    Done(T),
    Refused(Option<Item>),
}

/// One Query page to read.
#[derive(Debug, Clone)]
pub(crate) struct QuerySpec<'a> {
    pub table: &'a str,
    pub index: Option<&'a str>,
    pub key_condition: String,
    pub filter: Option<&'a str>,
    pub projection: Option<&'a str>,
    pub vals: Vals,
    pub consistent: bool,
    pub limit: Option<usize>,
    /// Sort key order from the highest down.
    pub descending: bool,
}

impl DynamoIndex {
    /// An index on the tables under `prefix`, with the default
    /// [`DynamoConfig`]. Sends nothing: see [`check_tables`](Self::check_tables).
    #[cfg(any(test, feature = "testing"))]
    pub fn connect(sdk_config: &aws_config::SdkConfig, prefix: &TablePrefix) -> Self {
        Self::connect_with(sdk_config, prefix, DynamoConfig::default())
    }

    pub fn connect_with(
        sdk_config: &aws_config::SdkConfig,
        prefix: &TablePrefix,
        config: DynamoConfig,
    ) -> Self {
        let requests = Arc::new(RequestCounts::default());
        let conf = aws_sdk_dynamodb::config::Builder::from(sdk_config)
            // The SDK's own first pause is 1 s, made for S3-sized calls; a
            // table answers in milliseconds and its throttles pass as fast
            // (AWS's DynamoDB guidance starts at tens of milliseconds).
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.max_attempts.max(1))
                    .with_initial_backoff(config.busy_backoff.first),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_attempt_timeout(config.attempt_timeout)
                    .operation_timeout(config.operation_timeout)
                    .build(),
            )
            .interceptor(requests::CountRequests(Arc::clone(&requests)))
            .build();
        let pacing = Arc::new(pacing::Pacing::new(config.max_in_flight));
        Self {
            client: aws_sdk_dynamodb::Client::from_conf(conf),
            tables: prefix.tables(),
            prefix: prefix.clone(),
            pacing,
            groups: Arc::default(),
            config,
            #[cfg(any(test, feature = "testing"))]
            requests,
            clock: Arc::new(SystemClock),
        }
    }

    /// Sends a request (`send` builds and sends it afresh each time) again
    /// while DynamoDB is busy, with full-jitter backoff, for up to the
    /// configured budget; any other answer, or the last busy one, is
    /// returned. Requests whose earlier send may have landed must be safe to
    /// repeat: every conditional write recognises its own earlier write,
    /// and transactions carry one idempotency token across sends.
    ///
    /// Each send first waits for a slot of the limit of requests in flight
    /// (`pacing`: unless [`urgent`]; bookkeeping, [`Lane::Bulk`], takes at
    /// most half of it); its latency moves the limit, a busy answer
    /// halves it. Dropped while it waits (a caller's timeout),
    /// nothing was sent.
    pub(crate) async fn persist<T, E, F, Fut>(
        &self,
        call: &'static str,
        mut send: F,
    ) -> Result<T, aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>>
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
        F: FnMut() -> Fut,
        Fut: Future<
            Output = Result<
                T,
                aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
            >,
        >,
    {
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            let admitted = self.pacing.admit(lane::current()).await;
            let sent = tokio::time::Instant::now();
            let res = send().await;
            let busy = matches!(&res, Err(e) if errors::busy(e));
            // Freed before any pause: a busy table is not waited on
            // holding a slot.
            self.pacing.answered(admitted, sent.elapsed(), busy);
            if !busy {
                return res;
            }
            attempt = attempt.saturating_add(1);
            let pause = self.config.busy_backoff.delay_at(attempt, fastrand::f64());
            if started.elapsed() + pause > self.config.busy_budget {
                return res;
            }
            metrics::counter!(crate::metrics::INDEX_BUSY, "call" => call).increment(1);
            // The copy engine slows down as for S3's SlowDown.
            crate::pressure::note_index_busy();
            tracing::debug!(call, attempt, ?pause, "dynamodb busy; sending again");
            tokio::time::sleep(pause).await;
        }
    }

    /// Reads time from `clock` instead of the system clock.
    #[must_use]
    #[cfg(any(test, feature = "testing"))]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn prefix(&self) -> &TablePrefix {
        &self.prefix
    }

    #[cfg(any(test, feature = "testing"))]
    /// The requests sent to DynamoDB so far.
    pub fn requests(&self) -> &RequestCounts {
        &self.requests
    }

    /// What to tell an operator whose tables are missing or wrong.
    fn create_hint(&self) -> String {
        format!(
            "create the tables with `expresscache-server index create --index {}`",
            self.prefix
        )
    }

    fn contention(&self, what: &str) -> IndexError {
        IndexError::Unavailable(format!(
            "{what}: the item kept changing under {ROUNDS} conditional writes; try again"
        ))
    }

    /// Runs `f` over `items` with at most `concurrency` at once, answers in
    /// the order of `items`. Not an `async fn`: the futures are made before
    /// anything is awaited, so the returned future holds only them (not the
    /// closure, whose higher-ranked signature the compiler cannot prove
    /// `Send` inside `async_trait` methods).
    fn each<T, R, F, Fut>(
        &self,
        items: impl IntoIterator<Item = T>,
        f: F,
    ) -> impl Future<Output = Result<Vec<R>, IndexError>>
    where
        F: FnMut(T) -> Fut,
        Fut: Future<Output = Result<R, IndexError>>,
    {
        let futures: Vec<Fut> = items.into_iter().map(f).collect();
        futures::stream::iter(futures)
            .buffered(self.config.concurrency.max(1))
            .try_collect()
    }

    /// A conditional (or plain, without `condition`) UpdateItem returning
    /// `ret` on success and the old item on a failed condition.
    async fn update(
        &self,
        table: &str,
        key: Item,
        update: &str,
        condition: Option<&str>,
        vals: Vals,
        ret: ReturnValue,
    ) -> Result<Cond<Option<Item>>, IndexError> {
        let mut exprs = vec![update];
        exprs.extend(condition);
        let req = self
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(key.clone()))
            .update_expression(update)
            .set_condition_expression(condition.map(str::to_owned))
            .set_expression_attribute_names(names_in(&exprs))
            .set_expression_attribute_values(prune(vals, &exprs).into_map())
            .return_values(ret)
            .return_values_on_condition_check_failure(OnFailure::AllOld);
        let res = self.persist("UpdateItem", || req.clone().send()).await;
        match res {
            Ok(out) => Ok(Cond::Done(out.attributes)),
            Err(e) => match errors::refused(&e) {
                Some(item) => Ok(Cond::Refused(self.or_read(table, key, item).await?)),
                None => Err(errors::classify(
                    "UpdateItem",
                    table,
                    &self.create_hint(),
                    &e,
                )),
            },
        }
    }

    /// A conditional DeleteItem.
    async fn delete(
        &self,
        table: &str,
        key: Item,
        condition: &str,
        vals: Vals,
    ) -> Result<Cond<()>, IndexError> {
        let req = self
            .client
            .delete_item()
            .table_name(table)
            .set_key(Some(key.clone()))
            .condition_expression(condition)
            .set_expression_attribute_names(names_in(&[condition]))
            .set_expression_attribute_values(prune(vals, &[condition]).into_map())
            .return_values_on_condition_check_failure(OnFailure::AllOld);
        let res = self.persist("DeleteItem", || req.clone().send()).await;
        match res {
            Ok(_) => Ok(Cond::Done(())),
            Err(e) => match errors::refused(&e) {
                Some(item) => Ok(Cond::Refused(self.or_read(table, key, item).await?)),
                None => Err(errors::classify(
                    "DeleteItem",
                    table,
                    &self.create_hint(),
                    &e,
                )),
            },
        }
    }

    /// A conditional PutItem of `item`, whose key is `key`.
    async fn put(
        &self,
        table: &str,
        key: Item,
        item: Item,
        condition: &str,
    ) -> Result<Cond<()>, IndexError> {
        let req = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names(names_in(&[condition]))
            .return_values_on_condition_check_failure(OnFailure::AllOld);
        let res = self.persist("PutItem", || req.clone().send()).await;
        match res {
            Ok(_) => Ok(Cond::Done(())),
            Err(e) => match errors::refused(&e) {
                Some(item) => Ok(Cond::Refused(self.or_read(table, key, item).await?)),
                None => Err(errors::classify("PutItem", table, &self.create_hint(), &e)),
            },
        }
    }

    /// The item a refused condition saw: `seen` as the refusal carried it,
    /// else read. DynamoDB returns it with the refusal when asked
    /// (ReturnValuesOnConditionCheckFailure) and the item exists; an
    /// endpoint that does not (DynamoDB Local before 2.0) would otherwise
    /// make every refusal look like one of a missing item: a renewal of a
    /// run this replica holds taken for lost, a retried write's own item
    /// for another's. On DynamoDB the read costs one consistent read per
    /// refusal of a missing item.
    async fn or_read(
        &self,
        table: &str,
        key: Item,
        seen: Option<Item>,
    ) -> Result<Option<Item>, IndexError> {
        match seen {
            Some(item) => Ok(Some(item)),
            None => self.get(table, key).await,
        }
    }

    /// A strongly consistent GetItem.
    async fn get(&self, table: &str, key: Item) -> Result<Option<Item>, IndexError> {
        let req = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(key))
            .consistent_read(true);
        self.persist("GetItem", || req.clone().send())
            .await
            .map(|out| out.item)
            .map_err(|e| errors::classify("GetItem", table, &self.create_hint(), &e))
    }

    /// One Query page from `start`: its items and where the next page
    /// starts (`None`: this was the last).
    async fn query_page(
        &self,
        q: &QuerySpec<'_>,
        start: Option<Item>,
    ) -> Result<(Vec<Item>, Option<Item>), IndexError> {
        let mut exprs = vec![q.key_condition.as_str()];
        exprs.extend(q.filter);
        exprs.extend(q.projection);
        let req = self
            .client
            .query()
            .table_name(q.table)
            .set_index_name(q.index.map(str::to_owned))
            .key_condition_expression(&q.key_condition)
            .set_filter_expression(q.filter.map(str::to_owned))
            .set_projection_expression(q.projection.map(str::to_owned))
            .set_expression_attribute_names(names_in(&exprs))
            .set_expression_attribute_values(prune(q.vals.clone(), &exprs).into_map())
            .consistent_read(q.consistent)
            .scan_index_forward(!q.descending)
            .set_limit(q.limit.map(|l| i32::try_from(l).unwrap_or(i32::MAX)))
            .set_exclusive_start_key(start);
        let out = self
            .persist("Query", || req.clone().send())
            .await
            .map_err(|e| errors::classify("Query", q.table, &self.create_hint(), &e))?;
        Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
    }

    /// Every item a Query matches, page by page, stopping once `max`
    /// items are in (the answer may hold a few more).
    async fn query_all(&self, q: &QuerySpec<'_>, max: usize) -> Result<Vec<Item>, IndexError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let (page, next) = self.query_page(q, start).await?;
            items.extend(page);
            match next {
                Some(n) if items.len() < max => start = Some(n),
                _ => return Ok(items),
            }
        }
    }
}

/// Lease writes of one warm in flight at once.
pub(super) const LEASE_WRITES_AT_ONCE: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_prefixes_are_validated() {
        let p = TablePrefix::parse("dynamodb://expresscache-prod_1.a").unwrap();
        assert_eq!(p.as_str(), "expresscache-prod_1.a");
        assert_eq!(p.to_string(), "dynamodb://expresscache-prod_1.a");
        assert_eq!(p.tables().records, "expresscache-prod_1.a-records");
        assert_eq!(p.tables().leases, "expresscache-prod_1.a-leases");
        assert_eq!(p.tables().operations, "expresscache-prod_1.a-operations");
        for (bad, says) in [
            ("sqlite://x", "expected dynamodb://TABLE_PREFIX"),
            ("expresscache", "expected dynamodb://TABLE_PREFIX"),
            ("dynamodb://", "empty"),
            ("dynamodb://a/b", "contains '/'"),
            ("dynamodb://a b", "contains ' '"),
            ("dynamodb://täble", "contains 'ä'"),
        ] {
            let err = TablePrefix::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let longest = "p".repeat(TablePrefix::MAX_LEN);
        assert!(TablePrefix::new(&longest).is_ok());
        assert!(TablePrefix::new(&format!("{longest}p"))
            .unwrap_err()
            .contains("at most 244"));
        assert_eq!(
            "dynamodb://x".parse::<TablePrefix>().unwrap(),
            TablePrefix::new("x").unwrap()
        );
    }
}
