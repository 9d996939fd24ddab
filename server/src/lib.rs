//! expresscache-server: warms S3 Express One Zone directory buckets from
//! general-purpose buckets over gRPC.
//!
//! Layers, bottom up: [`core`] is the shared vocabulary and the policies
//! that need no I/O; [`store`] (S3) and [`index`] (cache state) are narrow
//! I/O traits; [`plan`], [`warm`] and [`evict`] hold the cache logic, which
//! calls them as trait objects; [`fleet`] runs warms detached from calls,
//! across replicas; [`api`] is the tonic service; [`server`] wires it all;
//! [`app`] is what the binary runs.

// The warm's future nests deep (coalescing, offload, the pipeline).
#![recursion_limit = "256"]

pub mod api;
pub mod app;
pub mod auth;
pub mod batch;
pub mod config;
pub mod core;
pub mod engine;
pub mod evict;
pub mod fleet;
pub mod gate;
pub mod index;
pub mod jitter;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod pressure;
pub mod pricing;
pub mod progress;
pub mod server;
pub mod skew;
pub mod status;
pub mod stop;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod warm;
