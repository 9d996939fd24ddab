//! Judging what an S3 Batch Operations job did, once it ended: each
//! planned key is recorded from what landed, copied again by the engine,
//! released, or failed with the job's reason. Pure logic over the job's
//! status, its report and a listing of the destination; offload.rs does
//! the I/O.

use std::time::{Duration, SystemTime};

use super::task::CopyTask;

/// What is known of a job once it ended, to judge each task by.
#[derive(Debug, Clone, Copy)]
pub(super) struct JobSeen {
    /// A destination object older than this was not written by the job.
    pub written_after: SystemTime,
    /// The job copies only sources not modified after this.
    pub guard: Option<SystemTime>,
    /// The warm was stopped: what did not land is released, not copied.
    pub stopped: bool,
}

/// What becomes of one task after the job.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Judged {
    /// The job copied the version this task planned: record it, with the
    /// destination's ETag.
    Record(String),
    /// Not the job's (or not known to be): the engine copies it.
    Engine,
    /// The warm stopped before it was copied: give the claim back.
    Release,
    /// It failed: code and message.
    Fail(String, String),
}

impl JobSeen {
    /// `task`'s fate, given the job's report of it and what landed at its
    /// key (size, ETag, modification time).
    ///
    /// The job copies the source's version of its own copy time, and
    /// only one not modified after its guard. So a landed object is the
    /// version this task planned only if that version was written before
    /// the guard (by a whole second: S3 stamps whole seconds): no later
    /// version then existed when the job copied, since this task's
    /// listing, made after the guard, still shows it. A task planned from
    /// a later version (the source was overwritten after the guard, as
    /// when a takeover re-lists while following an earlier attempt's job)
    /// is the engine's, whatever landed: recording it would vouch for
    /// the job's older bytes under the newer version's ETag.
    pub fn judge(
        &self,
        task: &CopyTask,
        reported: Option<&(String, String)>,
        landed: Option<&(u64, String, Option<SystemTime>)>,
    ) -> Judged {
        let before_guard = match (task.object.last_modified, self.guard) {
            (Some(m), Some(g)) => m + Duration::from_secs(1) <= g,
            _ => false,
        };
        if !before_guard {
            return if self.stopped {
                Judged::Release
            } else {
                Judged::Engine
            };
        }
        if let Some((code, message)) = reported {
            return if code == "PreconditionFailed" {
                Judged::Fail(
                    "SourceChanged".to_owned(),
                    "the source changed after it was listed (the job copies only what was not \
                     modified since the plan began); warm again"
                        .to_owned(),
                )
            } else {
                Judged::Fail(code.clone(), message.clone())
            };
        }
        match landed {
            Some((_, _, modified)) if modified.is_none_or(|m| m < self.written_after) => {
                Judged::Engine
            }
            Some((size, _, _)) if *size != task.object.size => Judged::Fail(
                "SourceChanged".to_owned(),
                format!(
                    "the job copied {size} bytes where the plan listed {}: the source changed \
                     after it was listed; warm again",
                    task.object.size
                ),
            ),
            Some((_, etag, _)) => Judged::Record(etag.clone()),
            None if self.stopped => Judged::Release,
            None => Judged::Engine,
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::ObjectMeta;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    pub(in crate::warm) fn task(modified: u64, size: u64) -> CopyTask {
        CopyTask {
            object: ObjectMeta {
                key: "d/1".into(),
                etag: format!("\"v{modified}\""),
                size,
                last_modified: Some(at(modified)),
            },
            dest_key: "d/1".into(),
            wait_for: None,
            claimed_at: None,
        }
    }

    /// A job guarded at 1,000 s, created at 1,001 s; what landed at 1,005 s.
    const SEEN: JobSeen = JobSeen {
        written_after: UNIX_EPOCH,
        guard: None,
        stopped: false,
    };

    fn seen() -> JobSeen {
        JobSeen {
            written_after: at(1000),
            guard: Some(at(1000)),
            ..SEEN
        }
    }

    fn landed(size: u64) -> (u64, String, Option<SystemTime>) {
        (size, "\"dest\"".into(), Some(at(1005)))
    }

    #[test]
    fn what_the_job_copied_of_a_version_older_than_its_guard_is_recorded() {
        assert_eq!(
            seen().judge(&task(900, 16), None, Some(&landed(16))),
            Judged::Record("\"dest\"".into())
        );
    }

    #[test]
    fn a_source_overwritten_after_the_guard_is_copied_again_not_recorded_from_the_job() {
        // The job copied the old version; the source was then overwritten
        // with as many bytes; a takeover listed the new version and
        // follows the job. Recording the job's bytes under the new ETag
        // would vouch for stale data.
        assert_eq!(
            seen().judge(&task(1003, 16), None, Some(&landed(16))),
            Judged::Engine
        );
        // Even when the job's report says it refused the key: the listing
        // is newer than the refusal.
        let refused = ("PreconditionFailed".to_owned(), "412".to_owned());
        assert_eq!(
            seen().judge(&task(1003, 16), Some(&refused), None),
            Judged::Engine
        );
        // Written in the guard's own second: not provably older.
        assert_eq!(
            seen().judge(&task(1000, 16), None, Some(&landed(16))),
            Judged::Engine
        );
    }

    #[test]
    fn without_a_known_guard_nothing_is_the_jobs() {
        let unknown = JobSeen {
            guard: None,
            ..seen()
        };
        assert_eq!(
            unknown.judge(&task(900, 16), None, Some(&landed(16))),
            Judged::Engine
        );
    }

    #[test]
    fn the_reports_failures_older_objects_and_other_sizes_are_judged_as_before() {
        let refused = ("PreconditionFailed".to_owned(), "412".to_owned());
        assert!(matches!(
            seen().judge(&task(900, 16), Some(&refused), None),
            Judged::Fail(code, _) if code == "SourceChanged"
        ));
        let older = (16, "\"old\"".to_owned(), Some(at(10)));
        assert_eq!(
            seen().judge(&task(900, 16), None, Some(&older)),
            Judged::Engine
        );
        assert!(matches!(
            seen().judge(&task(900, 16), None, Some(&landed(17))),
            Judged::Fail(code, _) if code == "SourceChanged"
        ));
        assert_eq!(seen().judge(&task(900, 16), None, None), Judged::Engine);
        let stopped = JobSeen {
            stopped: true,
            ..seen()
        };
        assert_eq!(stopped.judge(&task(900, 16), None, None), Judged::Release);
    }
}
