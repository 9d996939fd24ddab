//! Following one operation: its states from the live channel while this
//! replica runs it, from the operation log otherwise, until its Done state.

use std::sync::Arc;

use tokio::sync::watch;

use super::{FeedError, Operations, Subscription};
use crate::core::operation::OperationState;

/// The state of one [`Operations::feed`].
pub(super) struct Follow {
    pub ops: Arc<Operations>,
    pub sub: Subscription,
    pub draining: watch::Receiver<bool>,
    /// Whether `sub` may still bring news.
    pub live: bool,
    /// The state last handed out.
    pub last: Option<OperationState>,
    pub ended: bool,
}

impl Follow {
    pub async fn next(&mut self) -> Option<Result<OperationState, FeedError>> {
        if self.ended {
            return None;
        }
        let Some(last) = &self.last else {
            let first = self.sub.borrow_and_update().clone();
            return Some(Ok(self.hand_out(first)));
        };
        if last.is_done() {
            return None;
        }
        let id = last.operation_id.clone();
        loop {
            if *self.draining.borrow() {
                return self.end(FeedError::Draining);
            }
            if self.live {
                tokio::select! {
                    changed = self.sub.changed() => {
                        if changed.is_ok() {
                            let state = self.sub.borrow_and_update().clone();
                            return Some(Ok(self.hand_out(state)));
                        }
                        // Closed without a Done state seen here: the run
                        // moved on (interrupted, or elsewhere); the final
                        // state may still arrive in the log.
                        self.live = false;
                    }
                    _ = self.draining.changed() => {}
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(self.ops.settings.follow_poll) => {}
                _ = self.draining.changed() => continue,
            }
            match self.ops.status(&id).await {
                Ok(Some(rec)) if self.last.as_ref() != Some(&rec.state) => {
                    return Some(Ok(self.hand_out(rec.state)));
                }
                Ok(Some(_)) => {}
                Ok(None) => return self.end(FeedError::Vanished(id)),
                Err(e) => return self.end(e.into()),
            }
        }
    }

    fn hand_out(&mut self, state: OperationState) -> OperationState {
        self.last = Some(state.clone());
        state
    }

    fn end(&mut self, e: FeedError) -> Option<Result<OperationState, FeedError>> {
        self.ended = true;
        Some(Err(e))
    }
}
