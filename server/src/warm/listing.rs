//! Paging through the source: each listing prefix page by page, ended only
//! by the absence of a continuation token, and refused if the tokens cycle.

use std::collections::{HashSet, VecDeque};

use expresscache::Prefix;
use tokio::sync::mpsc;

use super::run::WarmRun;
use super::WarmError;
use crate::index::CacheIndex;
use crate::store::{ListPage, ObjectStore};

/// A page of the listing of one prefix.
pub(super) type Page = (Prefix, ListPage);

impl<S: ObjectStore, I: CacheIndex> WarmRun<'_, S, I> {
    /// Lists every listing prefix, sending each page with objects to
    /// `pages`; stops early when the warm is stopped or nobody takes pages.
    pub async fn list(&self, pages: mpsc::Sender<Page>) -> Result<(), WarmError> {
        for prefix in self.spec.listing_prefixes() {
            if !self.list_prefix(&prefix, &pages).await? {
                break;
            }
        }
        Ok(())
    }

    /// Lists one prefix; false if the listing should stop altogether.
    async fn list_prefix(
        &self,
        prefix: &Prefix,
        pages: &mpsc::Sender<Page>,
    ) -> Result<bool, WarmError> {
        let bucket = self.spec.source.as_str();
        let mut token: Option<String> = None;
        // The recent tokens: one answered again means a cycle that would
        // list forever (a window of them bounds the memory).
        let mut seen = RecentTokens::default();
        loop {
            if self.stop.is_set() {
                return Ok(false);
            }
            let page = self
                .w
                .store
                .list_page(bucket, prefix.as_str(), token.clone())
                .await
                .map_err(|e| WarmError::List {
                    bucket: bucket.to_owned(),
                    prefix: prefix.to_string(),
                    source: e,
                })?;
            self.progress.touch();
            // Only the token ends a listing: S3 may answer a page with no
            // keys that is still truncated (delete markers, S3-compatible
            // stores).
            let next = page.next.clone();
            if let Some(t) = &next {
                if !seen.insert(t) {
                    return Err(WarmError::ListingLoop {
                        bucket: bucket.to_owned(),
                        prefix: prefix.to_string(),
                        token: t.clone(),
                    });
                }
            }
            if !page.objects.is_empty() && pages.send((prefix.clone(), page)).await.is_err() {
                return Ok(false);
            }
            token = next;
            if token.is_none() {
                return Ok(true);
            }
        }
    }
}

/// The last few continuation tokens of one listing, to catch a listing
/// that cycles without holding every token of a billion-key listing.
#[derive(Default)]
pub(super) struct RecentTokens {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl RecentTokens {
    const WINDOW: usize = 1024;

    /// False if `token` was among the recent ones.
    pub fn insert(&mut self, token: &str) -> bool {
        if !self.set.insert(token.to_owned()) {
            return false;
        }
        self.order.push_back(token.to_owned());
        if self.order.len() > Self::WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_seen_recently_is_a_cycle_an_old_one_is_not() {
        let mut seen = RecentTokens::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"), "answered again: a cycle");
        for i in 0..RecentTokens::WINDOW {
            assert!(seen.insert(&i.to_string()));
        }
        assert!(seen.insert("a"), "out of the window: forgotten");
    }
}
