//! A hook the test doubles call around every I/O call. A deterministic
//! interleaving test installs a gate that holds each call until its
//! scheduler releases it, so it can run every order of the calls of
//! concurrent warms, evictions and sweeps and check the guarantees after
//! each.

use futures::future::BoxFuture;

/// Held while the gated call runs; dropped when it has returned.
pub type Pass = Box<dyn Send>;

pub trait Gate: Send + Sync + std::fmt::Debug + 'static {
    /// Called before an I/O call named `call` about `subject` (a key or
    /// prefix); the call proceeds once the future resolves.
    fn enter(&self, call: &'static str, subject: &str) -> BoxFuture<'static, Pass>;
}
