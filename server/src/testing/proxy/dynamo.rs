//! The DynamoDB side of the fault proxy: it reads DynamoDB's JSON calls
//! (operation, tables, the items a write touches), answers them with the
//! errors real DynamoDB sends, and enforces a per-item write rate the way
//! DynamoDB throttles a hot item, which moto never does.
//!
//! An item is named by its table and its key attributes, serialized as
//! canonical JSON (object keys sorted): `table {"pk":{"S":"a"},"sk":{"S":"b"}}`.

use std::collections::{HashMap, HashSet};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::INJECTED_MESSAGE;

/// The attribute names the proxy takes for an item's key when a PutItem
/// (or a put in a transaction or batch) sends the whole item and the
/// table's key schema is unknown: those the index's tables use
/// (`pk`/`key` for records, `directory_bucket`/`lease` for leases, `pk` for
/// operations) and `sk`, the usual sort key of a test table. A table
/// created through the proxy has its own key schema learned instead.
pub const DEFAULT_KEY_ATTRIBUTES: &[&str] = &["pk", "sk", "key", "directory_bucket", "lease"];

/// The DynamoDB operations that write items.
pub(super) const WRITE_OPS: &[&str] = &[
    "UpdateItem",
    "PutItem",
    "DeleteItem",
    "TransactWriteItems",
    "BatchWriteItem",
];

/// What `x-amz-target` starts with on a DynamoDB call
/// (`DynamoDB_20120810.GetItem`).
const TARGET_PREFIX: &str = "DynamoDB_";

/// Prefixed to an error type in the `__type` of an error body.
const ERROR_NAMESPACE: &str = "com.amazonaws.dynamodb.v20120810#";

const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// One DynamoDB call, as far as matching, faults and the per-item limit
/// need it.
#[derive(Debug)]
pub(super) struct Call {
    /// The operation: the `x-amz-target` after its last dot.
    pub(super) op: String,
    /// Every table the call names (top-level `TableName`, and the tables
    /// of transact and batch items), each once.
    pub(super) tables: Vec<String>,
    /// For CreateTable: the key attribute names of the new table.
    key_schema: Option<Vec<String>>,
    /// The items the call writes (or, for ConditionCheck, checks, which
    /// DynamoDB bills as a write), in request order; empty for reads.
    writes: Vec<Written>,
    /// The number of `TransactItems`, for TransactWriteItems and
    /// TransactGetItems.
    transact_items: usize,
}

/// One item a call writes.
#[derive(Debug)]
struct Written {
    table: String,
    /// The item's `Key` map, or for a put the whole item.
    attributes: Map<String, Value>,
    /// Whether `attributes` is a whole item (a put) rather than a key.
    whole_item: bool,
    /// Its index in `TransactItems` (0 outside transactions).
    slot: usize,
}

impl Call {
    /// The DynamoDB call in a request, if it is one (by its `x-amz-target`
    /// header). A body that is not JSON leaves the call with no tables or
    /// items.
    pub(super) fn parse(headers: &HeaderMap, body: &[u8]) -> Option<Self> {
        let target = headers.get("x-amz-target")?.to_str().ok()?;
        let (service, op) = target.rsplit_once('.')?;
        if !service.starts_with(TARGET_PREFIX) || op.is_empty() {
            return None;
        }
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mut call = Self {
            op: op.to_owned(),
            tables: Vec::new(),
            key_schema: None,
            writes: Vec::new(),
            transact_items: 0,
        };
        let table = body.get("TableName").and_then(Value::as_str);
        if let Some(t) = table {
            call.add_table(t);
        }
        let table = table.unwrap_or_default();
        match op {
            "PutItem" => call.add_write(table, body.get("Item"), true, 0),
            "UpdateItem" | "DeleteItem" => call.add_write(table, body.get("Key"), false, 0),
            "CreateTable" => {
                call.key_schema = body.get("KeySchema").and_then(Value::as_array).map(|ks| {
                    ks.iter()
                        .filter_map(|k| k.get("AttributeName").and_then(Value::as_str))
                        .map(str::to_owned)
                        .collect()
                });
            }
            "TransactWriteItems" | "TransactGetItems" => {
                let items = array(body.get("TransactItems"));
                call.transact_items = items.len();
                for (slot, entry) in items.iter().enumerate() {
                    let Some(entry) = entry.as_object() else {
                        continue;
                    };
                    for (kind, action) in entry {
                        let table = action
                            .get("TableName")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        call.add_table(table);
                        match kind.as_str() {
                            "Put" => call.add_write(table, action.get("Item"), true, slot),
                            "Update" | "Delete" | "ConditionCheck" => {
                                call.add_write(table, action.get("Key"), false, slot);
                            }
                            // "Get" reads.
                            _ => {}
                        }
                    }
                }
            }
            "BatchWriteItem" | "BatchGetItem" => {
                if let Some(requests) = body.get("RequestItems").and_then(Value::as_object) {
                    for (table, requests) in requests {
                        call.add_table(table);
                        // BatchGetItem's value is an object (`Keys`), not a
                        // list of writes.
                        for request in array(Some(requests)) {
                            if let Some(item) =
                                request.get("PutRequest").and_then(|p| p.get("Item"))
                            {
                                call.add_write(table, Some(item), true, 0);
                            } else if let Some(key) =
                                request.get("DeleteRequest").and_then(|d| d.get("Key"))
                            {
                                call.add_write(table, Some(key), false, 0);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        Some(call)
    }

    fn add_table(&mut self, table: &str) {
        if !table.is_empty() && !self.tables.iter().any(|t| t == table) {
            self.tables.push(table.to_owned());
        }
    }

    fn add_write(
        &mut self,
        table: &str,
        attributes: Option<&Value>,
        whole_item: bool,
        slot: usize,
    ) {
        if let Some(attributes) = attributes.and_then(Value::as_object) {
            self.writes.push(Written {
                table: table.to_owned(),
                attributes: attributes.clone(),
                whole_item,
                slot,
            });
        }
    }

    /// Whether the call is one of [`WRITE_OPS`].
    pub(super) fn is_write(&self) -> bool {
        WRITE_OPS.contains(&self.op.as_str())
    }

    /// Whether DynamoDB answers a throttle of this call with
    /// TransactionCanceledException.
    fn is_transaction(&self) -> bool {
        self.op == "TransactWriteItems" || self.op == "TransactGetItems"
    }

    /// The number of items of a TransactWriteItems (`None` for any other
    /// call).
    pub(super) fn write_transaction_items(&self) -> Option<usize> {
        (self.op == "TransactWriteItems").then_some(self.transact_items)
    }
}

/// The elements of a JSON array (none if `v` is not one).
fn array(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The proxy's DynamoDB bookkeeping, kept under the proxy's lock.
#[derive(Debug)]
pub(super) struct DynamoState {
    /// Key attribute names for tables whose schema is not known.
    key_attributes: Vec<String>,
    /// Key attribute names by table, learned from CreateTable calls.
    schemas: HashMap<String, Vec<String>>,
    limiter: Option<Limiter>,
    /// Writes forwarded upstream, by item.
    writes: HashMap<String, u64>,
    /// Writes the per-item limit refused.
    throttles: u64,
}

impl Default for DynamoState {
    fn default() -> Self {
        Self {
            key_attributes: DEFAULT_KEY_ATTRIBUTES
                .iter()
                .map(|&a| a.to_owned())
                .collect(),
            schemas: HashMap::new(),
            limiter: None,
            writes: HashMap::new(),
            throttles: 0,
        }
    }
}

impl DynamoState {
    /// Learns what `call` tells about the tables (a new table's key
    /// schema).
    pub(super) fn learn(&mut self, call: &Call) {
        if let (Some(schema), Some(table)) = (&call.key_schema, call.tables.first()) {
            if !schema.is_empty() {
                self.schemas.insert(table.clone(), schema.clone());
            }
        }
    }

    pub(super) fn set_key_attributes(&mut self, names: Vec<String>) {
        self.key_attributes = names;
    }

    pub(super) fn set_limit(&mut self, limit: Option<(f64, f64)>) {
        self.limiter = limit.map(|(per_second, burst)| Limiter {
            per_second: if per_second.is_nan() {
                0.0
            } else {
                per_second.max(0.0)
            },
            burst: if burst.is_nan() { 1.0 } else { burst.max(1.0) },
            buckets: HashMap::new(),
        });
    }

    /// Lets a write `call` through the per-item limit, counting a write on
    /// each of its items; or, if any item's bucket is short, takes nothing,
    /// counts a throttle and returns, per written item, whether it was
    /// short. Calls that write nothing always pass.
    pub(super) fn admit(&mut self, call: &Call, now: Instant) -> Result<(), Vec<bool>> {
        if !call.is_write() || call.writes.is_empty() {
            return Ok(());
        }
        let ids = self.item_ids(call);
        if let Some(limiter) = &mut self.limiter {
            if let Err(short) = limiter.take(&ids, now) {
                self.throttles += 1;
                return Err(short);
            }
        }
        for id in ids {
            *self.writes.entry(id).or_default() += 1;
        }
        Ok(())
    }

    pub(super) fn throttles(&self) -> u64 {
        self.throttles
    }

    /// The `n` items with the most writes forwarded, most first (ties by
    /// name).
    pub(super) fn hottest(&self, n: usize) -> Vec<(String, u64)> {
        let mut items: Vec<(String, u64)> =
            self.writes.iter().map(|(id, c)| (id.clone(), *c)).collect();
        items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        items.truncate(n);
        items
    }

    /// The name of each item `call` writes, in order.
    fn item_ids(&self, call: &Call) -> Vec<String> {
        call.writes
            .iter()
            .map(|w| {
                let mut id = format!("{} ", w.table);
                if w.whole_item {
                    let names = self.schemas.get(&w.table).unwrap_or(&self.key_attributes);
                    let key: Vec<(&String, &Value)> = w
                        .attributes
                        .iter()
                        .filter(|(name, _)| names.iter().any(|n| n == *name))
                        .collect();
                    if key.is_empty() {
                        // No known key attribute: the whole item names it.
                        write_object(w.attributes.iter().collect(), &mut id);
                    } else {
                        write_object(key, &mut id);
                    }
                } else {
                    write_object(w.attributes.iter().collect(), &mut id);
                }
                id
            })
            .collect()
    }
}

/// A token bucket per item.
#[derive(Debug)]
struct Limiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<String, Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    /// Takes a token per write from each item's bucket (an item a call
    /// names twice needs two) if every bucket has enough; otherwise takes
    /// none and returns, per id, whether its bucket was short. A new
    /// bucket starts full.
    fn take(&mut self, ids: &[String], now: Instant) -> Result<(), Vec<bool>> {
        let mut need: HashMap<&str, f64> = HashMap::new();
        for id in ids {
            *need.entry(id.as_str()).or_default() += 1.0;
        }
        let (per_second, burst) = (self.per_second, self.burst);
        let mut short: HashSet<&str> = HashSet::new();
        for (&id, &n) in &need {
            let bucket = self.buckets.entry(id.to_owned()).or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            let refill = per_second * now.saturating_duration_since(bucket.at).as_secs_f64();
            if refill > 0.0 {
                bucket.tokens = (bucket.tokens + refill).min(burst);
            }
            bucket.at = now;
            if bucket.tokens < n {
                short.insert(id);
            }
        }
        if short.is_empty() {
            for (id, n) in need {
                if let Some(bucket) = self.buckets.get_mut(id) {
                    bucket.tokens -= n;
                }
            }
            Ok(())
        } else {
            Err(ids.iter().map(|id| short.contains(id.as_str())).collect())
        }
    }
}

/// Writes `entries` as a JSON object with its keys sorted, and values in
/// canonical form.
fn write_object(mut entries: Vec<(&String, &Value)>, out: &mut String) {
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push('{');
    for (i, (name, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(name.clone()).to_string());
        out.push(':');
        write_canonical(value, out);
    }
    out.push('}');
}

/// Writes `value` as JSON with every object's keys sorted.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => write_object(map.iter().collect(), out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A DynamoDB error answer: `status` with body
/// `{"__type":"com.amazonaws.dynamodb.v20120810#{error_type}","message":..}`
/// (an `error_type` that has a `#` already is sent as is).
pub(super) fn error(
    status: u16,
    error_type: &str,
    message: &str,
    request_id: String,
) -> Response<Full<Bytes>> {
    let body = json!({
        "__type": qualified(error_type),
        "message": message,
    });
    respond(status, &body, request_id)
}

/// `resp` without the item a refused condition saw: see
/// [`Fault::DropRefusedItem`](super::Fault::DropRefusedItem). Any other
/// reply passes as it is.
/// Also says whether it took an item out.
pub(super) async fn drop_refused_item(
    resp: Response<Full<Bytes>>,
) -> (Response<Full<Bytes>>, bool) {
    use http_body_util::BodyExt;
    let (parts, body) = resp.into_parts();
    let Ok(collected) = body.collect().await;
    let bytes = collected.to_bytes();
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return (Response::from_parts(parts, Full::new(bytes)), false);
    };
    let kind = v.get("__type").and_then(Value::as_str).unwrap_or_default();
    let mut stripped = false;
    if kind.ends_with("ConditionalCheckFailedException") {
        if let Some(o) = v.as_object_mut() {
            stripped |= o.remove("Item").is_some();
        }
    } else if kind.ends_with("TransactionCanceledException") {
        for reason in v
            .get_mut("CancellationReasons")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(o) = reason.as_object_mut() {
                stripped |= o.remove("Item").is_some();
            }
        }
    }
    let body = Bytes::from(serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec()));
    let mut resp = Response::from_parts(parts, Full::new(body));
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    // DynamoDB signs its replies with a CRC32 of the body; the SDK checks it.
    resp.headers_mut().remove("x-amz-crc32");
    (resp, stripped)
}

/// The throttle DynamoDB answers `call` with. For a transaction, 400
/// TransactionCanceledException with one cancellation reason per
/// TransactItem: ThrottlingError for the items `short` flags (one flag per
/// written item, as [`DynamoState::admit`] returns them) or, without
/// `short`, for the first item; `None` for the others. For any other call
/// (or none), 400 ProvisionedThroughputExceededException.
pub(super) fn throttle(
    call: Option<&Call>,
    short: Option<&[bool]>,
    message: &str,
    request_id: String,
) -> Response<Full<Bytes>> {
    match call {
        Some(call) if call.is_transaction() => {
            let mut throttled = vec![false; call.transact_items];
            match short {
                Some(short) => {
                    for (w, &s) in call.writes.iter().zip(short) {
                        if let (true, Some(t)) = (s, throttled.get_mut(w.slot)) {
                            *t = true;
                        }
                    }
                }
                None => {
                    if let Some(t) = throttled.first_mut() {
                        *t = true;
                    }
                }
            }
            canceled(&throttled, message, request_id)
        }
        _ => error(
            400,
            "ProvisionedThroughputExceededException",
            message,
            request_id,
        ),
    }
}

/// 400 TransactionCanceledException, a ThrottlingError reason for each
/// `true` in `throttled` and `None` for each `false`.
fn canceled(throttled: &[bool], message: &str, request_id: String) -> Response<Full<Bytes>> {
    let code = |t: bool| if t { "ThrottlingError" } else { "None" };
    let reasons: Vec<Value> = throttled
        .iter()
        .map(|&t| {
            if t {
                json!({ "Code": code(t), "Message": message })
            } else {
                json!({ "Code": code(t) })
            }
        })
        .collect();
    let codes: Vec<&str> = throttled.iter().map(|&t| code(t)).collect();
    let body = json!({
        "__type": qualified("TransactionCanceledException"),
        "Message": format!(
            "Transaction cancelled, please refer cancellation reasons for specific reasons [{}] ({INJECTED_MESSAGE})",
            codes.join(", ")
        ),
        "CancellationReasons": reasons,
    });
    respond(400, &body, request_id)
}

fn qualified(error_type: &str) -> String {
    if error_type.contains('#') {
        error_type.to_owned()
    } else {
        format!("{ERROR_NAMESPACE}{error_type}")
    }
}

/// `status` (500 if outside 100..=999) with a DynamoDB JSON body.
fn respond(status: u16, body: &Value, request_id: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    if let Ok(id) = HeaderValue::try_from(request_id) {
        resp.headers_mut()
            .insert(HeaderName::from_static("x-amzn-requestid"), id);
    }
    resp
}
