//! expresscache-server: warms S3 Express One Zone directory buckets from
//! general-purpose buckets over gRPC.
//!
//! Layers, bottom up: `core` is the shared vocabulary and the policies
//! that need no I/O; `store` (S3) and `index` (cache state) are narrow
//! I/O traits; `plan`, `warm` and `evict` hold the cache logic, which
//! calls them as trait objects; `fleet` runs warms detached from calls,
//! across replicas; `api` is the tonic service; `server` wires it all;
//! [`app`] is what the binary runs, and the crate's only interface: the
//! other modules are public only with the `testing` feature (tests,
//! examples, benchmarks).

// The warm's future nests deep (coalescing, offload, the pipeline).
#![recursion_limit = "256"]

pub mod app;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Declares the crate's inner modules: public with the `testing` feature,
/// which the integration tests, examples and benchmarks build with, and
/// crate-private in the release build, whose only interface is [`app`].
macro_rules! internal {
    ($($name:ident)*) => {$(
        #[cfg(feature = "testing")]
        pub mod $name;
        #[cfg(not(feature = "testing"))]
        pub(crate) mod $name;
    )*};
}

internal! {
    api
    auth
    batch
    config
    core
    engine
    evict
    fleet
    gate
    index
    jitter
    metrics
    plan
    policy
    pressure
    pricing
    progress
    server
    skew
    status
    stop
    store
    telemetry
    tls
    warm
}
