//! Reading records: a key range of one directory bucket is one Query per
//! hash partition, merged in key order (doc/INDEX-DYNAMODB.md §2
//! "Records"), so a listing page costs a fixed number of requests however
//! many keys it holds; and usage, which has to read every record under the
//! prefix.

use std::collections::VecDeque;
use std::ops::Bound;

use super::layout::{partition_key, record_key, record_of, Item, Vals, PARTITIONS, SIZE};
use super::{DynamoIndex, QuerySpec};
use crate::index::{prefix_successor, IndexError, KeyRange, Record, Records, Usage};

/// The key condition (and client-side trims) of one interval of keys.
#[derive(Debug, Clone)]
struct SortRange {
    /// After `#pk = :pk`: `""`, or ` AND #key ...`.
    condition: &'static str,
    vals: Vals,
    /// Keys the condition includes but the interval does not (an excluded
    /// end of a BETWEEN).
    drop_lo: Option<String>,
    drop_hi: Option<String>,
}

/// The interval as a sort-key condition, or `None` if it holds no key.
/// Keys are never empty, so an empty lower bound is no bound (DynamoDB
/// refuses empty key values).
fn sort_range(lower: Bound<String>, upper: Bound<String>) -> Option<SortRange> {
    let lower = match lower {
        Bound::Included(k) | Bound::Excluded(k) if k.is_empty() => Bound::Unbounded,
        b => b,
    };
    let (lo, lo_in) = match &lower {
        Bound::Included(k) => (Some(k.clone()), true),
        Bound::Excluded(k) => (Some(k.clone()), false),
        Bound::Unbounded => (None, true),
    };
    let (hi, hi_in) = match &upper {
        Bound::Included(k) => (Some(k.clone()), true),
        Bound::Excluded(k) => (Some(k.clone()), false),
        Bound::Unbounded => (None, true),
    };
    if let (Some(l), Some(h)) = (&lo, &hi) {
        if l > h || (l == h && !(lo_in && hi_in)) {
            return None;
        }
    }
    if hi.as_deref() == Some("") {
        return None;
    }
    let vals = Vals::new();
    Some(match (lo, hi) {
        (None, None) => SortRange {
            condition: "",
            vals,
            drop_lo: None,
            drop_hi: None,
        },
        (None, Some(h)) => SortRange {
            condition: if hi_in {
                " AND #key <= :hi"
            } else {
                " AND #key < :hi"
            },
            vals: vals.s("hi", h),
            drop_lo: None,
            drop_hi: None,
        },
        (Some(l), None) => SortRange {
            condition: if lo_in {
                " AND #key >= :lo"
            } else {
                " AND #key > :lo"
            },
            vals: vals.s("lo", l),
            drop_lo: None,
            drop_hi: None,
        },
        (Some(l), Some(h)) => SortRange {
            condition: " AND #key BETWEEN :lo AND :hi",
            vals: vals.s("lo", l.clone()).s("hi", h.clone()),
            drop_lo: (!lo_in).then_some(l),
            drop_hi: (!hi_in).then_some(h),
        },
    })
}

/// Items to ask each partition for when `wanted` records are still
/// missing: its even share with room for the unevenness of hashing (for
/// 1,000 records, 86 per partition where ~62 +- 8 are expected), so one
/// round nearly always suffices.
fn partition_page(wanted: usize) -> usize {
    let share = (wanted * 5).div_ceil(4 * usize::from(PARTITIONS));
    wanted.min(share + 8)
}

/// One partition's side of the merge.
#[derive(Debug)]
struct Stream {
    pk: String,
    buffer: VecDeque<Record>,
    /// Where the next page starts; `None` once `done`.
    next: Option<Item>,
    done: bool,
}

impl DynamoIndex {
    /// One page of one partition, strongly consistent (a warm must see an
    /// eviction claim written before its lease: doc §3).
    async fn partition_page(
        &self,
        dir: &str,
        pk: &str,
        sort: &SortRange,
        start: Option<Item>,
        limit: usize,
    ) -> Result<(Vec<Record>, Option<Item>), IndexError> {
        let q = QuerySpec {
            table: &self.tables.records,
            index: None,
            key_condition: format!("#pk = :pk{}", sort.condition),
            filter: None,
            projection: None,
            vals: sort.vals.clone().s("pk", pk),
            consistent: true,
            limit: Some(limit),
            descending: false,
        };
        let (items, next) = self.query_page(&q, start).await?;
        let mut records = Vec::with_capacity(items.len());
        for item in &items {
            let r = record_of(dir, item)?;
            if Some(&r.key) == sort.drop_lo.as_ref() || Some(&r.key) == sort.drop_hi.as_ref() {
                continue;
            }
            records.push(r);
        }
        Ok((records, next))
    }
}

#[async_trait::async_trait]
impl Records for DynamoIndex {
    async fn records(
        &self,
        dir: &str,
        range: &KeyRange<'_>,
        limit: usize,
    ) -> Result<Vec<Record>, IndexError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (lower, upper) = range.interval();
        // One key: read its item (its partition is known).
        if let (Bound::Included(lo), Bound::Included(hi)) = (&lower, &upper) {
            if lo == hi {
                return Ok(self.get_record(dir, lo).await?.into_iter().collect());
            }
        }
        let Some(sort) = sort_range(lower, upper) else {
            return Ok(Vec::new());
        };
        let mut streams: Vec<Stream> = (0..PARTITIONS)
            .map(|n| Stream {
                pk: partition_key(dir, n),
                buffer: VecDeque::new(),
                next: None,
                done: false,
            })
            .collect();
        let mut out = Vec::with_capacity(limit.min(4096));
        loop {
            // Every partition that still has records must show its next one
            // before the smallest can be chosen: refill the empty ones, all
            // at once.
            let dry: Vec<usize> = (0..streams.len())
                .filter(|&i| streams[i].buffer.is_empty() && !streams[i].done)
                .collect();
            if !dry.is_empty() {
                let page = partition_page(limit - out.len());
                let pages = self
                    .each(&dry, |&i| {
                        let (pk, start) = (streams[i].pk.clone(), streams[i].next.clone());
                        let sort = &sort;
                        async move { self.partition_page(dir, &pk, sort, start, page).await }
                    })
                    .await?;
                for (i, (records, next)) in dry.into_iter().zip(pages) {
                    let s = &mut streams[i];
                    s.buffer.extend(records);
                    s.done = next.is_none();
                    s.next = next;
                }
                continue;
            }
            let smallest = streams
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.buffer.front().map(|r| (i, r.key.as_str())))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i);
            let Some(i) = smallest else {
                return Ok(out);
            };
            if let Some(r) = streams[i].buffer.pop_front() {
                out.push(r);
            }
            if out.len() == limit {
                return Ok(out);
            }
        }
    }
    async fn get_record(&self, dir: &str, key: &str) -> Result<Option<Record>, IndexError> {
        self.get(&self.tables.records, record_key(dir, key))
            .await?
            .map(|item| record_of(dir, &item))
            .transpose()
    }
    /// Queries every partition over the prefix: there is no counter to read
    /// (one would cost a write per copied object on a hot item), so this
    /// reads every record under `prefix` (eventually consistent, half the
    /// read units; it only answers GetStatus).
    /// Counts each partition up to `limit` + 1 entries: past that the
    /// answer is truncated (bounded work: at most that per partition).
    async fn usage_up_to(&self, dir: &str, prefix: &str, limit: u64) -> Result<Usage, IndexError> {
        let cap = usize::try_from(limit.saturating_add(1)).unwrap_or(usize::MAX);
        let upper = prefix_successor(prefix).map_or(Bound::Unbounded, Bound::Excluded);
        let Some(sort) = sort_range(Bound::Included(prefix.to_owned()), upper) else {
            return Ok(Usage::default());
        };
        let sums = self
            .each(0..PARTITIONS, |n| {
                let sort = &sort;
                async move {
                    let q = QuerySpec {
                        table: &self.tables.records,
                        index: None,
                        key_condition: format!("#pk = :pk{}", sort.condition),
                        filter: Some("attribute_exists(#source_etag)"),
                        projection: Some("#size"),
                        vals: sort.vals.clone().s("pk", partition_key(dir, n)),
                        consistent: false,
                        limit: None,
                        descending: false,
                    };
                    let mut usage = Usage::default();
                    let items = self.query_all(&q, cap).await?;
                    usage.truncated = items.len() >= cap;
                    for item in items {
                        usage.objects += 1;
                        usage.bytes += item
                            .get(SIZE)
                            .and_then(|v| v.as_n().ok())
                            .and_then(|n| n.parse::<u64>().ok())
                            .unwrap_or(0);
                    }
                    Ok(usage)
                }
            })
            .await?;
        Ok(sums.into_iter().fold(Usage::default(), |a, u| Usage {
            objects: a.objects + u.objects,
            bytes: a.bytes + u.bytes,
            truncated: a.truncated || u.truncated,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(lower: Bound<&str>, upper: Bound<&str>) -> Option<&'static str> {
        sort_range(lower.map(str::to_owned), upper.map(str::to_owned)).map(|s| s.condition)
    }

    #[test]
    fn intervals_become_one_key_condition() {
        use Bound::*;
        assert_eq!(cond(Included(""), Unbounded), Some(""));
        assert_eq!(cond(Included(""), Excluded("b")), Some(" AND #key < :hi"));
        assert_eq!(cond(Excluded("a"), Unbounded), Some(" AND #key > :lo"));
        assert_eq!(
            cond(Excluded("a"), Included("b")),
            Some(" AND #key BETWEEN :lo AND :hi")
        );
        assert_eq!(cond(Included("b"), Included("a")), None, "empty");
        assert_eq!(cond(Excluded("a"), Included("a")), None, "empty");
        let s = sort_range(Excluded("a".into()), Excluded("b".into())).unwrap();
        assert_eq!(
            (s.drop_lo.as_deref(), s.drop_hi.as_deref()),
            (Some("a"), Some("b"))
        );
    }

    #[test]
    fn partition_pages_are_a_share_with_room() {
        assert_eq!(partition_page(1000), 87);
        assert_eq!(partition_page(1), 1);
        assert_eq!(partition_page(10), 9);
        assert_eq!(partition_page(10_000), 790);
    }
}
