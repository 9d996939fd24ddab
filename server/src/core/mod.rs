//! The vocabulary every layer shares and the policies that need no I/O:
//! the cache's values ([`cache`], [`keys`]), an operation's state
//! ([`operation`]), time ([`clock`]) and how it is judged across clocks
//! ([`judge`]), S3's limits ([`limits`]), and the adaptive concurrency
//! limit that paces requests to S3 and to the index ([`limiter`]). Nothing here talks to S3 or
//! the index; the index stores these values and the services decide with
//! them. The retry policy is the client crate's `expresscache::Backoff`,
//! shared with the CLI.

pub mod cache;
pub mod clock;
pub mod judge;
pub mod keys;
pub mod limiter;
pub mod limits;
pub mod operation;
