//! How warm prefixes are: for each prefix of a directory bucket, the
//! objects and bytes the index holds under it (counted up to a budget per
//! call), the leases that keep it, and the sweeps of it that failed. The
//! API turns the report into GetStatus's answer.

use crate::core::cache::Lease;
use crate::core::clock::Millis;
use crate::index::{CacheIndex, IndexError, SweepFailure, Usage};

/// Leases (and sweep failures) reported per prefix at most.
pub const MAX_STATUS_LEASES: usize = 1000;

/// One prefix as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixReport {
    pub prefix: String,
    /// Objects and bytes under the prefix; `truncated` once the call's
    /// counting budget ran out (the counts are then lower bounds).
    pub usage: Usage,
    /// The leases live at `now` that cover the prefix or lie under it.
    pub leases: Vec<Lease>,
    /// Expired leases under the prefix whose sweep failed so far.
    pub sweep_failures: Vec<SweepFailure>,
}

/// The reports of `prefixes` of `dir` at `now`, counting at most
/// `count_limit` entries in all: bounded work per call however large the
/// prefixes; past the budget, counts are lower bounds.
pub async fn prefixes(
    index: &dyn CacheIndex,
    dir: &str,
    prefixes: &[&str],
    now: Millis,
    count_limit: u64,
) -> Result<Vec<PrefixReport>, IndexError> {
    let mut out = Vec::with_capacity(prefixes.len());
    let mut budget = count_limit;
    for &prefix in prefixes {
        let usage = if budget == 0 {
            Usage {
                truncated: true,
                ..Usage::default()
            }
        } else {
            index.usage_up_to(dir, prefix, budget).await?
        };
        budget = budget.saturating_sub(usage.objects);
        let mut leases = index.covering_leases(dir, prefix, now).await?;
        leases.extend(
            index
                .leases_under(dir, prefix, now, MAX_STATUS_LEASES)
                .await?,
        );
        let sweep_failures = index.sweep_failures(dir, prefix, MAX_STATUS_LEASES).await?;
        out.push(PrefixReport {
            prefix: prefix.to_owned(),
            usage,
            leases,
            sweep_failures,
        });
    }
    Ok(out)
}
