//! The unit of work the planner hands the copiers: one key to settle, with
//! what the planner saw of it.

use crate::index::{Claim, Millis};
use crate::store::ObjectMeta;

/// One key to settle.
pub(super) struct CopyTask {
    pub object: ObjectMeta,
    pub dest_key: String,
    /// Set when the planner saw another operation's claim on the key.
    pub wait_for: Option<Claim>,
    /// When the planner took this warm's claim on the key, if it did.
    pub claimed_at: Option<Millis>,
}
