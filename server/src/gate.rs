//! A hook the test doubles call around every I/O call. A deterministic
//! interleaving test installs a gate that holds each call until its
//! scheduler releases it, so it can run every order of the calls of
//! concurrent warms, evictions and sweeps and check the guarantees after
//! each.

#[cfg(any(test, feature = "testing"))]
use futures::future::BoxFuture;

#[cfg(any(test, feature = "testing"))]
/// Held while the gated call runs; dropped when it has returned.
pub type Pass = Box<dyn Send>;

#[cfg(any(test, feature = "testing"))]
pub trait Gate: Send + Sync + std::fmt::Debug + 'static {
    /// Called before an I/O call named `call` about `subject` (a key or
    /// prefix); the call proceeds once the future resolves.
    fn enter(&self, call: &'static str, subject: &str) -> BoxFuture<'static, Pass>;
}
