//! The replica registry: heartbeats, deadlines, leaving and rejoining.

use crate::index::ReplicaRegistry;

/// Runs every check of the replica registry against `registry`, which
/// must start empty.
pub async fn run_replica_registry<I: ReplicaRegistry>(registry: &I) {
    registry.heartbeat("b", 1_000).await.unwrap();
    registry.heartbeat("a", 500).await.unwrap();
    assert_eq!(registry.live_replicas(0).await.unwrap(), ["a", "b"]);
    assert_eq!(
        registry.live_replicas(500).await.unwrap(),
        ["b"],
        "a replica is gone once its deadline passed"
    );
    registry.heartbeat("b", 800).await.unwrap();
    assert_eq!(
        registry.live_replicas(900).await.unwrap(),
        ["b"],
        "a late heartbeat never shortens the deadline"
    );
    registry.leave("b").await.unwrap();
    assert_eq!(
        registry.live_replicas(0).await.unwrap(),
        ["a"],
        "a replica that left is gone at once"
    );
    registry.heartbeat("b", 2_000).await.unwrap();
    assert_eq!(
        registry.live_replicas(500).await.unwrap(),
        ["b"],
        "and can rejoin"
    );
    registry.leave("b").await.unwrap();
}
