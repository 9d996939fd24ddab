//! What a round of a job array is made of: one warm being worked on (an
//! [`Attempt`]), which warms do another's work ([`covers`]), and how
//! following another's round ended ([`Followed`]). Shared by the rounds on
//! one replica (`coalesce.rs`), the joins across replicas (`remote.rs`),
//! the merges of rounds across replicas (`merge.rs`) and the warms on
//! their way (`arrivals.rs`).

use expresscache::WarmSpec;

use crate::core::operation::RunTicket;
use crate::progress::Progress;
use crate::stop::StopSignal;
use crate::warm::{WarmError, WarmOutcome};

/// Whether a warm of `leader` and one of `spec` warm the same data (same
/// source, destination bucket and prefix) and neither forces copies: only
/// then can one do the other's work.
pub(super) fn same_data(leader: &WarmSpec, spec: &WarmSpec) -> bool {
    leader.source == spec.source
        && leader.directory_bucket == spec.directory_bucket
        && leader.destination_prefix == spec.destination_prefix
        // A filtered or key-list warm lists (and copies) only what it
        // selects: it does the work of the same selection only.
        && leader.selection == spec.selection
        && !leader.force_copy
        && !spec.force_copy
}

/// Whether a warm of `leader` does all the work a warm of `joiner` asks
/// for: the same data, every prefix covered. A joiner that must not end
/// SUCCEEDED on empty prefixes joins only a warm that lists exactly its
/// prefixes: the leader reports which of its own prefixes were empty, not
/// which of a narrower prefix under them.
pub(super) fn covers(leader: &WarmSpec, joiner: &WarmSpec) -> bool {
    same_data(leader, joiner) && joiner.prefixes.iter().all(|p| does_for(leader, joiner, p))
}

/// Whether a warm of `leader` does the work of `joiner`'s prefix `p` (and
/// can say whether it was empty, if `joiner` must know).
pub(super) fn does_for(leader: &WarmSpec, joiner: &WarmSpec, p: &expresscache::Prefix) -> bool {
    leader.prefixes.iter().any(|l| {
        if joiner.allow_empty {
            l.covers(p)
        } else {
            l == p
        }
    })
}

/// Whether warms of `a` and `b` do exactly the same work: the same data
/// and the same prefixes. A joiner of one is then answered by the other
/// exactly as it would have been.
pub(super) fn same_request(a: &WarmSpec, b: &WarmSpec) -> bool {
    // Exactly the same prefixes: two warms that allow empty prefixes can
    // cover each other with different ones (`x/`, `x/y/` and `x/`,
    // `x/z/`), and a joiner that must know whether `x/y/` was empty would
    // get the other's answer for `x/z/`.
    fn set(s: &WarmSpec) -> std::collections::BTreeSet<&expresscache::Prefix> {
        s.prefixes.iter().collect()
    }
    same_data(a, b) && set(a) == set(b)
}

/// One warm being worked on: who it is, what it asks, where it reports
/// and what stops it.
pub(super) struct Attempt<'a> {
    pub id: &'a str,
    pub spec: &'a WarmSpec,
    pub progress: &'a Progress,
    /// Its claim owner and lease writer in the index.
    pub owner: &'a str,
    pub stop: &'a StopSignal,
    /// Its run in the operation log (the joinable mark is written under it).
    pub ticket: &'a RunTicket,
    /// It is the operation's whole request, not a part of it that another
    /// warm covers the rest of: only then may other replicas join it.
    pub whole: bool,
}

/// How following a joined warm ended.
#[derive(Debug)]
pub(super) enum Followed {
    /// This warm's outcome.
    Done(Result<WarmOutcome, WarmError>),
    /// The joined warm ended without finishing its work: do it another way.
    LeaderGone,
}

