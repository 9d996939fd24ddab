//! An index hook for tests: it counts reads and writes, so a test can
//! assert what a call costs (a re-warm must write O(prefixes), not
//! O(objects)), optionally passes every call through a [`Gate`], and fails
//! chosen calls, refuses them or loses their replies.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::decorate::{Access, Call, Decorated, Hook};
use super::IndexError;
use crate::gate::{Gate, Pass};

/// Counts, gates and injects faults into the calls of a [`CountingIndex`].
#[derive(Debug, Default)]
pub struct Counter {
    reads: AtomicU64,
    writes: AtomicU64,
    gate: Option<Arc<dyn Gate>>,
    /// Calls to fail, and how many more times.
    failing: Injections,
    /// Calls to refuse outright (a non-transient error), and how many
    /// more times.
    refusing: Injections,
    /// Calls whose reply to lose after they took effect, and how many more
    /// times.
    losing: Injections,
}

/// Call names, each with how many more times it is to be hit.
#[derive(Debug, Default)]
struct Injections(Mutex<Vec<(&'static str, u32)>>);

impl Injections {
    fn add(&self, call: &'static str, times: u32) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((call, times));
    }

    /// Whether `call` is to be hit this time (counting it down).
    fn hit(&self, call: &str) -> bool {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match all.iter_mut().find(|(c, n)| *c == call && *n > 0) {
            Some((_, left)) => {
                *left -= 1;
                true
            }
            None => false,
        }
    }
}

/// An index that counts its calls and fails the ones a test chooses.
pub type CountingIndex<I> = Decorated<I, Counter>;

impl<I> CountingIndex<I> {
    pub fn new(inner: I) -> Self {
        Self::with_hook(inner, Counter::default())
    }

    /// Passes every call through `gate` first.
    pub fn with_gate(mut self, gate: Arc<dyn Gate>) -> Self {
        self.hook.gate = Some(gate);
        self
    }

    /// Fails the next `times` calls named `call` with
    /// [`IndexError::Unavailable`], as an unreachable index would.
    pub fn fail(&self, call: &'static str, times: u32) {
        self.hook.failing.add(call, times);
    }

    /// Refuses the next `times` calls named `call` with
    /// [`IndexError::TooLarge`], as DynamoDB refuses an item over 400 KB:
    /// waiting does not fix it.
    pub fn refuse(&self, call: &'static str, times: u32) {
        self.hook.refusing.add(call, times);
    }

    /// Loses the reply of the next `times` calls named `call` that succeed:
    /// they take effect, and the caller gets [`IndexError::Unavailable`]
    /// (a reply lost on the way back).
    pub fn lose_reply(&self, call: &'static str, times: u32) {
        self.hook.losing.add(call, times);
    }

    /// Read calls so far.
    pub fn reads(&self) -> u64 {
        self.hook.reads.load(Ordering::Relaxed)
    }

    /// Items written so far: a conditional write counts one, a batch or
    /// transaction one per item it writes.
    pub fn writes(&self) -> u64 {
        self.hook.writes.load(Ordering::Relaxed)
    }
}

impl Counter {
    /// Injected failures first, then the gate.
    async fn pass(&self, call: &'static str, subject: &str) -> Result<Option<Pass>, IndexError> {
        if self.failing.hit(call) {
            return Err(IndexError::Unavailable(format!("{call} failed (injected)")));
        }
        if self.refusing.hit(call) {
            return Err(IndexError::TooLarge(format!(
                "{call} refused (injected): ValidationException: Item size has exceeded the maximum allowed size"
            )));
        }
        Ok(match &self.gate {
            Some(g) => Some(g.enter(call, subject).await),
            None => None,
        })
    }
}

impl Hook for Counter {
    async fn around<'a, T: Send + 'a>(
        &'a self,
        call: Call<'a>,
        inner: impl Future<Output = Result<T, IndexError>> + Send + 'a,
    ) -> Result<T, IndexError> {
        match call.access {
            Access::Read => self.reads.fetch_add(1, Ordering::Relaxed),
            Access::Write => self.writes.fetch_add(call.items as u64, Ordering::Relaxed),
        };
        let _pass = self.pass(call.name, call.subject).await?;
        let result = inner.await?;
        if self.losing.hit(call.name) {
            return Err(IndexError::Unavailable(format!(
                "{}: reply lost (injected)",
                call.name
            )));
        }
        Ok(result)
    }
}
