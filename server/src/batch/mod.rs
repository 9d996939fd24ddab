//! S3 Batch Operations: the jobs a very large warm may hand its copies to.
//! `control` creates, describes and cancels jobs through S3 Control behind
//! a narrow trait; `offload` holds the configuration, writes manifests and
//! reads reports; the warm drives a job in `warm/offload.rs`.

pub mod control;
pub mod offload;

pub use control::{JobState, JobStatus, S3ControlJobs};
#[cfg(any(test, feature = "testing"))]
pub use control::{JobControl, JobSpec};
pub use offload::Offload;
