//! Lists the source for the planner, page by page. Each prefix is listed
//! as a tree: a delimited page's objects go straight to the planner and its
//! sub-prefixes become listings of their own, up to `list_fanout` at once;
//! beyond that, runs of sub-prefixes are listed flat (doc/ENGINE.md,
//! "Listing"). A warm with a key selection drops the keys it does not
//! select before the planner sees them and skips sub-prefixes it can select
//! nothing under; a listing ends only without a continuation token, and
//! fails if the tokens cycle.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use tracing::Instrument;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Notify};

use expresscache::WarmSpec;

use super::WarmError;
use crate::progress::Progress;
use crate::stop::StopSignal;
use crate::store::{ListQuery, ObjectMeta, ObjectStore};

/// How deep a tree is split before its sub-prefixes are listed flat.
const MAX_TREE_DEPTH: u32 = 8;

/// Most common prefixes one span lists, one after the other.
const SPAN_MAX_PREFIXES: usize = 64;

/// Keys of the source to merge with the index: ascending, all under
/// `prefix`, and no key that this warm lists elsewhere sorts between the
/// first and the last (so the index is read over exactly that range).
#[derive(Debug)]
pub(super) struct Page {
    pub prefix: String,
    pub objects: Vec<ObjectMeta>,
}

/// One listing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Job {
    /// The direct children of `prefix` (a delimited listing), `depth`
    /// levels below one of the warm's prefixes.
    Tree { prefix: String, depth: u32 },
    /// Every key under `prefix`.
    Flat { prefix: String },
    /// Every key under the common prefixes `first..=last` of `parent`,
    /// which one delimited page of `parent` showed in a row.
    Span {
        parent: String,
        first: String,
        last: String,
        /// A key every key of the span sorts after (past the previous
        /// span's last common prefix), when there is one.
        after: Option<String>,
    },
}

impl Job {
    /// The prefix this listing reports its pages under, the listing
    /// request, and for a tree listing its depth.
    fn query(&self) -> (&String, ListQuery<'_>, Option<u32>) {
        match self {
            Job::Tree { prefix, depth } => {
                (prefix, ListQuery::prefix(prefix).delimited(), Some(*depth))
            }
            Job::Flat { prefix } => (prefix, ListQuery::prefix(prefix), None),
            // Keys after "a/b" include every key under "a/b/" (a shorter
            // string sorts first); keys before the span are skipped by
            // `segments`.
            Job::Span {
                parent,
                first,
                after,
                ..
            } => (
                parent,
                ListQuery::prefix(parent).start_after(
                    after
                        .as_deref()
                        .unwrap_or(first.strip_suffix('/').unwrap_or(first)),
                ),
                None,
            ),
        }
    }

    /// One page's keys as this listing hands them on, in runs that each
    /// go to the planner as a page; and whether the listing is past its
    /// end (a span's last common prefix).
    fn segments(
        &self,
        objects: Vec<ObjectMeta>,
        common: &[String],
    ) -> (Vec<Vec<ObjectMeta>>, bool) {
        match self {
            Job::Tree { .. } => (split_at_subtrees(objects, common), false),
            Job::Flat { .. } => (vec![objects], false),
            Job::Span {
                parent,
                first,
                last,
                ..
            } => {
                let (objects, past_end) = within_span(objects, parent, first, last);
                (vec![objects], past_end)
            }
        }
    }
}

/// The keys of `segments` that `selection` selects, and the sub-prefixes
/// of `common` it may select keys under; `missing` hears of every key and
/// sub-prefix listed.
fn selected(
    selection: &expresscache::request::KeySelection,
    missing: &MissingKeys,
    segments: Vec<Vec<ObjectMeta>>,
    common: Vec<String>,
) -> (Vec<Vec<ObjectMeta>>, Vec<String>) {
    let segments = segments
        .into_iter()
        .map(|objects| {
            missing.saw(&objects, &common);
            objects
                .into_iter()
                .filter(|o| selection.selects(&o.key))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    let common = common
        .into_iter()
        .filter(|cp| selection.may_select_under(cp))
        .collect();
    (segments, common)
}

/// Listings waiting to start, and how many run.
#[derive(Default)]
struct Jobs {
    queued: Mutex<VecDeque<Job>>,
    running: AtomicUsize,
    pushed: Notify,
}

impl Jobs {
    fn push(&self, jobs: impl IntoIterator<Item = Job>) {
        self.lock().extend(jobs);
        self.pushed.notify_one();
    }

    fn pop(&self) -> Option<Job> {
        let job = self.lock().pop_front()?;
        self.running.fetch_add(1, Ordering::Relaxed);
        Some(job)
    }

    /// Listings queued or running.
    fn outstanding(&self) -> usize {
        self.lock().len() + self.running.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a listing ran to its end or the warm stopped taking pages.
enum Listed {
    Done,
    Stop,
}

/// The named keys of a key list that the listing has not found yet (only
/// those under the prefixes this run lists: a warm split with another
/// lists part of them); nothing to track without a key list.
struct MissingKeys(Option<Mutex<Unseen>>);

#[derive(Default)]
struct Unseen {
    keys: BTreeSet<String>,
    /// Of those, the ones a delimited listing showed as a directory
    /// (`KEY/`): most likely a prefix given without its closing `/`.
    directories: BTreeSet<String>,
}

impl MissingKeys {
    fn new(keys: &BTreeSet<String>, listing: &[expresscache::Prefix]) -> Self {
        if keys.is_empty() {
            return Self(None);
        }
        let keys = keys
            .iter()
            .filter(|k| listing.iter().any(|p| p.covers_key(k)))
            .cloned()
            .collect();
        Self(Some(Mutex::new(Unseen {
            keys,
            directories: BTreeSet::new(),
        })))
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Unseen>> {
        self.0
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Notes the keys of one page as found (before the patterns filter
    /// them: a named key that an exclude pattern drops is not missing),
    /// and the named keys its common prefixes show as directories.
    fn saw(&self, objects: &[ObjectMeta], common: &[String]) {
        let Some(mut unseen) = self.lock() else {
            return;
        };
        for o in objects {
            unseen.keys.remove(o.key.as_str());
        }
        for cp in common {
            if let Some(k) = cp.strip_suffix('/') {
                if unseen.keys.contains(k) {
                    unseen.directories.insert(k.to_owned());
                }
            }
        }
    }

    /// The keys not found, taken out, each with whether it is a directory.
    fn take_remaining(&self) -> Vec<(String, bool)> {
        let Some(mut unseen) = self.lock() else {
            return Vec::new();
        };
        let Unseen { keys, directories } = std::mem::take(&mut *unseen);
        keys.into_iter()
            .map(|k| {
                let directory = directories.contains(&k);
                (k, directory)
            })
            .collect()
    }
}

/// The warm's lister: what it lists (the request's source, prefixes and
/// selection), where it reports (keys named but not found, progress) and
/// what stops it; it counts the listing requests the warm sends.
pub(super) struct Lister<'a> {
    pub store: &'a dyn ObjectStore,
    pub spec: &'a WarmSpec,
    pub progress: &'a Progress,
    pub stop: &'a StopSignal,
    /// Listings run at once (`list_fanout`).
    pub fanout: usize,
    /// Listing requests sent (pages, empty or not), the warm's own
    /// listings of its directory bucket included.
    requests: AtomicU64,
}

impl<'a> Lister<'a> {
    pub fn new(
        store: &'a dyn ObjectStore,
        spec: &'a WarmSpec,
        progress: &'a Progress,
        stop: &'a StopSignal,
        fanout: usize,
    ) -> Self {
        Self {
            store,
            spec,
            progress,
            stop,
            fanout: fanout.max(1),
            requests: AtomicU64::new(0),
        }
    }

    /// Listing requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a listing request the warm sent itself.
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Lists every listing prefix, sending each page with objects to
    /// `pages`; stops early when the warm is stopped or nobody takes pages.
    pub async fn list(&self, pages: mpsc::Sender<Page>) -> Result<(), WarmError> {
        let fanout = self.fanout;
        let jobs = Jobs::default();
        let selection = &self.spec.selection;
        let listing = self.spec.listing_prefixes();
        let missing = MissingKeys::new(&selection.keys, &listing);
        // One listing at a time gains nothing from splitting a tree: list
        // each prefix flat, one request per page. A prefix under which the
        // selection can take nothing is not listed.
        jobs.push(
            listing
                .into_iter()
                .filter(|p| selection.may_select_under(p.as_str()))
                .map(|p| {
                    let prefix = p.as_str().to_owned();
                    if fanout > 1 {
                        Job::Tree { prefix, depth: 0 }
                    } else {
                        Job::Flat { prefix }
                    }
                }),
        );
        let mut running: FuturesUnordered<BoxFuture<'_, Result<Listed, WarmError>>> =
            FuturesUnordered::new();
        loop {
            while running.len() < fanout {
                let Some(job) = jobs.pop() else { break };
                let (jobs, pages, missing) = (&jobs, &pages, &missing);
                running.push(Box::pin(async move {
                    let r = self.run_job(job, pages, jobs, fanout, missing).await;
                    jobs.running.fetch_sub(1, Ordering::Relaxed);
                    r
                }));
            }
            if running.is_empty() {
                self.report_missing(&missing);
                return Ok(());
            }
            tokio::select! {
                done = running.next() => match done {
                    Some(Ok(Listed::Done)) | None => {}
                    Some(Ok(Listed::Stop)) => return Ok(()),
                    Some(Err(e)) => return Err(e),
                },
                () = jobs.pushed.notified(), if running.len() < fanout => {}
            }
        }
    }

    /// Fails each named key the listing, run to its end, did not find
    /// (not after a stop: the listing may not have reached it).
    fn report_missing(&self, missing: &MissingKeys) {
        if self.stop.is_set() {
            return;
        }
        let bucket = &self.spec.source;
        for (key, directory) in missing.take_remaining() {
            let message = if directory {
                format!(
                    "s3://{bucket}/{key} does not exist, but s3://{bucket}/{key}/ is a prefix: \
                     warm it as a prefix (ending in '/') to warm the objects under it"
                )
            } else {
                format!("s3://{bucket}/{key} does not exist (a key list names exact keys)")
            };
            self.progress.fail(&key, "NoSuchKey", message);
        }
    }

    /// Runs one listing to its end, queueing the listings it discovers.
    async fn run_job(
        &self,
        job: Job,
        pages: &mpsc::Sender<Page>,
        jobs: &Jobs,
        fanout: usize,
        missing: &MissingKeys,
    ) -> Result<Listed, WarmError> {
        let bucket = self.spec.source.as_str();
        let selection = &self.spec.selection;
        let (listing_prefix, query, tree_depth) = job.query();
        let mut token: Option<String> = None;
        // The recent tokens: one answered again means a cycle that would
        // list forever (a window of them bounds the memory).
        let mut seen = RecentTokens::default();
        loop {
            // Stopped, or past the run's deadline (another attempt may
            // hold the warm): no more listing requests.
            if self.stop.is_set() || self.stop.lapsed() {
                return Ok(Listed::Stop);
            }
            metrics::counter!(crate::metrics::S3_LIST_REQUESTS).increment(1);
            self.count_request();
            let page = self
                .store
                .list_page(bucket, &query, token.clone())
                .instrument(tracing::debug_span!("list_page", otel.name = "list_page", bucket, prefix = %query.prefix, continued = token.is_some()))
                .await
                .map_err(|e| WarmError::List {
                    bucket: bucket.to_owned(),
                    prefix: listing_prefix.clone(),
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
                        prefix: listing_prefix.clone(),
                        token: t.clone(),
                    });
                }
            }
            let (segments, ended) = job.segments(page.objects, &page.common_prefixes);
            // Only the keys the warm selects go on; and only the
            // sub-prefixes it may select keys under are listed.
            let (segments, common) = if selection.is_everything() {
                (segments, page.common_prefixes)
            } else {
                selected(selection, missing, segments, page.common_prefixes)
            };
            if let Some(depth) = tree_depth {
                jobs.push(sub_jobs(
                    listing_prefix,
                    depth,
                    common,
                    fanout.saturating_sub(jobs.outstanding()),
                ));
            }
            for objects in segments.into_iter().filter(|o| !o.is_empty()) {
                let page = Page {
                    prefix: listing_prefix.clone(),
                    objects,
                };
                if pages.send(page).await.is_err() {
                    return Ok(Listed::Stop);
                }
            }
            token = next;
            if token.is_none() || ended {
                return Ok(Listed::Done);
            }
        }
    }
}

/// The listings for the common prefixes one delimited page of `parent`
/// showed, given room for `free` more listings under the fan-out: each its
/// own tree while there is room, else contiguous spans (one per free slot,
/// at least one).
pub(super) fn sub_jobs(parent: &str, depth: u32, common: Vec<String>, free: usize) -> Vec<Job> {
    if common.is_empty() {
        return Vec::new();
    }
    // Spans of at most SPAN_MAX_PREFIXES: a page seen while every slot is
    // busy still becomes several listings, run as slots free up.
    let groups = free
        .max(common.len().div_ceil(SPAN_MAX_PREFIXES))
        .clamp(1, common.len());
    let per_group = common.len().div_ceil(groups);
    let mut previous: Option<&String> = None;
    let mut jobs = Vec::new();
    for group in common.chunks(per_group) {
        jobs.push(match group {
            [one] if depth + 1 < MAX_TREE_DEPTH => Job::Tree {
                prefix: one.clone(),
                depth: depth + 1,
            },
            [one] => Job::Flat {
                prefix: one.clone(),
            },
            [first, .., last] => Job::Span {
                parent: parent.to_owned(),
                first: first.clone(),
                last: last.clone(),
                // Past every key under the previous common prefix: it ends
                // in "/", and "0" follows "/". (Starting just before `first`
                // instead would list again the siblings that sort between,
                // such as "2024-01/" before "2024/".)
                after: previous.map(|p| format!("{}0", &p[..p.len() - 1])),
            },
            [] => unreachable!("chunks are never empty"),
        });
        previous = group.last();
    }
    jobs
}

/// The direct objects of a delimited page, split wherever a common prefix
/// sorts between two of them: the keys under it are listed elsewhere, and
/// each part is then one contiguous range of the index.
pub(super) fn split_at_subtrees(
    objects: Vec<ObjectMeta>,
    common: &[String],
) -> Vec<Vec<ObjectMeta>> {
    let mut parts = vec![Vec::new()];
    let mut subtrees = common.iter().peekable();
    for o in objects {
        // Keys under a common prefix sort from it up to (not including) the
        // next key that does not start with it.
        let mut passed = false;
        while subtrees
            .next_if(|cp| cp.as_str() < o.key.as_str())
            .is_some()
        {
            passed = true;
        }
        if passed && parts.last().is_some_and(|p| !p.is_empty()) {
            parts.push(Vec::new());
        }
        if let Some(part) = parts.last_mut() {
            part.push(o);
        }
    }
    parts
}

/// The objects of a flat page of `parent` that are under one of the common
/// prefixes `first..=last`, and whether the listing has passed `last`.
pub(super) fn within_span(
    objects: Vec<ObjectMeta>,
    parent: &str,
    first: &str,
    last: &str,
) -> (Vec<ObjectMeta>, bool) {
    let mut kept = Vec::with_capacity(objects.len());
    for o in objects {
        // Every key under `last` starts with it; any other key after it
        // sorts after all of them.
        if o.key.as_str() > last && !o.key.starts_with(last) {
            return (kept, true);
        }
        let rest = o.key.get(parent.len()..).unwrap_or_default();
        // Direct objects of the parent are listed by its tree.
        let Some(slash) = rest.find('/') else {
            continue;
        };
        if &o.key[..parent.len() + slash + 1] >= first {
            kept.push(o);
        }
    }
    (kept, false)
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

    const LIST_FANOUT: usize = 32;

    fn objects(keys: &[&str]) -> Vec<ObjectMeta> {
        keys.iter()
            .map(|k| ObjectMeta {
                key: (*k).to_owned(),
                etag: "e".into(),
                size: 1,
                last_modified: None,
            })
            .collect()
    }

    fn keys(parts: &[Vec<ObjectMeta>]) -> Vec<Vec<&str>> {
        parts
            .iter()
            .map(|p| p.iter().map(|o| o.key.as_str()).collect())
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p/{i:04}/")).collect()
    }

    #[test]
    fn each_sub_prefix_is_its_own_tree_while_there_is_room() {
        let jobs = sub_jobs("p/", 0, names(20), LIST_FANOUT - 1);
        assert_eq!(jobs.len(), 20);
        assert_eq!(
            jobs[3],
            Job::Tree {
                prefix: "p/0003/".into(),
                depth: 1
            }
        );
    }

    #[test]
    fn beyond_the_fan_out_sub_prefixes_are_grouped_into_spans() {
        // A page of 1,000 directories with 10 listings already under way:
        // 22 free slots, so 22 spans of at most 46 directories each.
        let jobs = sub_jobs("p/", 0, names(1000), LIST_FANOUT - 10);
        assert_eq!(jobs.len(), 22);
        assert_eq!(
            jobs[0],
            Job::Span {
                parent: "p/".into(),
                first: "p/0000/".into(),
                last: "p/0045/".into(),
                after: None,
            }
        );
        assert_eq!(
            jobs[1],
            Job::Span {
                parent: "p/".into(),
                first: "p/0046/".into(),
                last: "p/0091/".into(),
                after: Some("p/00450".into()),
            }
        );
        // No free slot: spans of at most 64 directories, queued.
        let jobs = sub_jobs("p/", 0, names(1000), 0);
        assert_eq!(jobs.len(), 16);
        // Every directory is in exactly one job.
        let mut covered = 0;
        for job in sub_jobs("p/", 0, names(1000), LIST_FANOUT - 10) {
            match job {
                Job::Span { first, last, .. } => {
                    let a: usize = first[2..6].parse().unwrap();
                    let b: usize = last[2..6].parse().unwrap();
                    assert_eq!(a, covered, "contiguous");
                    covered = b + 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(covered, 1000);
    }

    #[test]
    fn deep_trees_stop_splitting() {
        let jobs = sub_jobs("p/", MAX_TREE_DEPTH - 1, names(2), LIST_FANOUT);
        assert_eq!(
            jobs[0],
            Job::Flat {
                prefix: "p/0000/".into()
            }
        );
    }

    #[test]
    fn direct_objects_are_split_where_a_subtree_sorts_between_them() {
        let page = objects(&["p/a", "p/b.txt", "p/c", "p/d", "p/z"]);
        // "p/b/" sorts after "p/b.txt" ('.' < '/'): between it and "p/c".
        let common = ["p/b/".to_owned(), "p/c0/".to_owned(), "p/c1/".to_owned()];
        assert_eq!(
            keys(&split_at_subtrees(page, &common)),
            [vec!["p/a", "p/b.txt"], vec!["p/c"], vec!["p/d", "p/z"]]
        );
        let only = objects(&["p/a", "p/b"]);
        assert_eq!(keys(&split_at_subtrees(only, &[])), [vec!["p/a", "p/b"]]);
    }

    #[test]
    fn a_span_keeps_the_keys_under_its_prefixes_and_ends_past_the_last() {
        let page = objects(&[
            "p/b.txt", // direct: listed by the tree
            "p/b-x/1", // a directory before the span
            "p/b/1",   // in
            "p/b/q/2", // in, deeper
            "p/bb",    // direct, between the span's directories
            "p/c/1",   // in
            "p/c0",    // past the last directory: the end
            "p/d/1",
        ]);
        let (kept, ended) = within_span(page, "p/", "p/b/", "p/c/");
        assert_eq!(keys(&[kept]), [vec!["p/b/1", "p/b/q/2", "p/c/1"]]);
        assert!(ended);
        let (kept, ended) = within_span(objects(&["p/b/1"]), "p/", "p/b/", "p/c/");
        assert_eq!(kept.len(), 1);
        assert!(!ended, "not past the span yet");
    }

    #[test]
    fn named_keys_not_listed_are_missing_and_a_key_seen_as_a_directory_is_told_apart() {
        let keys: BTreeSet<String> = ["a/1", "a/2", "a/dir", "b/3"]
            .iter()
            .map(|k| (*k).to_owned())
            .collect();
        // Only the keys under what this run lists are its to find.
        let listing = [expresscache::Prefix::parse("a/").unwrap()];
        let missing = MissingKeys::new(&keys, &listing);
        missing.saw(&objects(&["a/1", "a/9"]), &["a/dir/".to_owned()]);
        assert_eq!(
            missing.take_remaining(),
            [("a/2".to_owned(), false), ("a/dir".to_owned(), true)]
        );
        assert!(missing.take_remaining().is_empty(), "taken out");
        let none = MissingKeys::new(&BTreeSet::new(), &listing);
        none.saw(&objects(&["a/1"]), &[]);
        assert!(none.take_remaining().is_empty());
    }

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
