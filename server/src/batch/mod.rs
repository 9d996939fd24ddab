//! S3 Batch Operations: the jobs a very large warm may hand its copies to
//! (issue 15). This part is the job control: creating, describing and
//! cancelling jobs through S3 Control, behind a narrow trait the warm will
//! drive. The offload of a warm's plan to a job is not wired in yet.

pub mod control;

pub use control::{JobControl, JobSpec, JobState, JobStatus, S3ControlJobs};
