//! A forward-only cursor over the index records of one key range, fetched a
//! page at a time, so merging a listing page with the index holds at most
//! one page of records however many stale records lie between two listed
//! keys (a warm that loaded them all could exhaust memory, and a resumed
//! warm would then do so again on every start).

use std::collections::VecDeque;
use std::ops::Bound;

use super::{CacheIndex, IndexError, KeyRange, Record};

/// Records fetched per index request.
pub const CURSOR_PAGE: usize = 1000;

/// Records of `directory_bucket` under `prefix`, from `start` up to and
/// including `upto`, read in key order by [`RecordCursor::seek`].
#[derive(Debug)]
pub struct RecordCursor<'a, I: ?Sized> {
    index: &'a I,
    directory_bucket: &'a str,
    prefix: &'a str,
    upto: &'a str,
    /// Where the first page starts.
    start: Bound<String>,
    /// The last key fetched so far; the next page starts after it.
    after: Option<String>,
    buffer: VecDeque<Record>,
    exhausted: bool,
    page: usize,
    /// Most records held at once (for tests of the memory bound).
    pub max_buffered: usize,
    /// Index requests made.
    pub fetches: usize,
}

impl<'a, I: CacheIndex + ?Sized> RecordCursor<'a, I> {
    pub fn new(
        index: &'a I,
        directory_bucket: &'a str,
        prefix: &'a str,
        start: Bound<String>,
        upto: &'a str,
    ) -> Self {
        Self::with_page(index, directory_bucket, prefix, start, upto, CURSOR_PAGE)
    }

    pub fn with_page(
        index: &'a I,
        directory_bucket: &'a str,
        prefix: &'a str,
        start: Bound<String>,
        upto: &'a str,
        page: usize,
    ) -> Self {
        Self {
            index,
            directory_bucket,
            prefix,
            upto,
            start,
            after: None,
            buffer: VecDeque::new(),
            exhausted: false,
            page: page.max(1),
            max_buffered: 0,
            fetches: 0,
        }
    }

    /// The record of `key`, if any. Keys must be sought in ascending order;
    /// records before `key` are dropped.
    pub async fn seek(&mut self, key: &str) -> Result<Option<Record>, IndexError> {
        loop {
            while self.buffer.front().is_some_and(|r| r.key.as_str() < key) {
                self.buffer.pop_front();
            }
            if let Some(front) = self.buffer.front() {
                return Ok((front.key == key).then(|| front.clone()));
            }
            if self.exhausted {
                return Ok(None);
            }
            let mut range = KeyRange::prefix(self.prefix).upto(Some(self.upto));
            range.start = match &self.after {
                Some(after) => Bound::Excluded(after.as_str()),
                None => self.start.as_ref().map(String::as_str),
            };
            let page = self
                .index
                .records(self.directory_bucket, &range, self.page)
                .await?;
            self.fetches += 1;
            self.exhausted = page.len() < self.page;
            if let Some(last) = page.last() {
                self.after = Some(last.key.clone());
            }
            self.buffer.extend(page);
            self.max_buffered = self.max_buffered.max(self.buffer.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Claims;
    use crate::index::{ClaimTerms, SqliteIndex};

    const DIR: &str = "cache--use1-az4--x-s3";

    #[tokio::test]
    async fn stale_records_between_listed_keys_are_streamed_not_loaded() {
        let index = SqliteIndex::open_in_memory().unwrap();
        // 5,000 records of keys the source no longer has, between two that
        // it does.
        let mut keys: Vec<String> = (0..5000).map(|i| format!("d/m{i:05}")).collect();
        keys.push("d/a".into());
        keys.push("d/z".into());
        index
            .claim_copies(
                DIR,
                &keys,
                &ClaimTerms {
                    owner: "w",
                    deadline: i64::MAX,
                    now: 0,
                },
            )
            .await
            .unwrap();
        let mut cursor = RecordCursor::with_page(&index, DIR, "d/", Bound::Unbounded, "d/z", 100);
        assert_eq!(cursor.seek("d/a").await.unwrap().unwrap().key, "d/a");
        assert_eq!(cursor.seek("d/z").await.unwrap().unwrap().key, "d/z");
        assert!(
            cursor.max_buffered <= 100,
            "at most one page held: {}",
            cursor.max_buffered
        );
        assert_eq!(cursor.fetches, 51, "5,002 records in pages of 100");
        assert!(cursor.seek("d/zz").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn missing_keys_are_none_and_the_range_is_respected() {
        let index = SqliteIndex::open_in_memory().unwrap();
        let keys: Vec<String> = ["d/b", "d/d", "d/f"].map(String::from).to_vec();
        index
            .claim_copies(
                DIR,
                &keys,
                &ClaimTerms {
                    owner: "w",
                    deadline: i64::MAX,
                    now: 0,
                },
            )
            .await
            .unwrap();
        let mut cursor =
            RecordCursor::with_page(&index, DIR, "d/", Bound::Excluded("d/b".into()), "d/d", 1);
        assert!(
            cursor.seek("d/b").await.unwrap().is_none(),
            "after is exclusive"
        );
        assert!(cursor.seek("d/c").await.unwrap().is_none());
        assert!(
            cursor.seek("d/d").await.unwrap().is_some(),
            "upto is inclusive"
        );
        assert!(cursor.seek("d/f").await.unwrap().is_none(), "beyond upto");
    }
}
