//! The access policy, end to end: the real server binary with bearer
//! tokens and a policy file, callers through the client crate. Each rule
//! refuses with PERMISSION_DENIED and its ErrorInfo reason; one
//! principal's request ids and operations are invisible to another.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{buckets, Server};
use expresscache_client::{pb, Client, ClientError, Credentials, Endpoints, Outcome, WarmRequest};
use expresscache_server::auth::token_line_hash;
use tonic::Code;
use tonic_types::StatusExt;

struct Fixture {
    server: Server,
    src: String,
    dir: String,
    _moto: expresscache_server::testing::Moto,
    _tmp: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let (moto, _s3, src, dir) = buckets(&["a/1", "a/2", "b/1", "c/1"]).await;
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "team-a {}\nteam-b {}\nadmin {}\nstranger {}\n",
            token_line_hash("tok-a"),
            token_line_hash("tok-b"),
            token_line_hash("tok-admin"),
            token_line_hash("tok-stranger"),
        ),
    )
    .unwrap();
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"
[principals.team-a]
warm_from = ["s3://{src}/a/"]
write_to = ["s3://{dir}"]
max_ttl = "2h"
may_evict = true

[principals.team-b]
warm_from = ["s3://{src}/b/"]
write_to = ["s3://{dir}/b/"]

[principals.admin]
warm_from = ["s3://{src}"]
write_to = ["s3://{dir}"]
may_evict = true
may_force = true
may_force_copy = true
see_all_operations = true
"#
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &moto,
        &[
            "--auth-tokens",
            tokens.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ],
        &[],
    );
    Fixture {
        server,
        src,
        dir,
        _moto: moto,
        _tmp: tmp,
    }
}

impl Fixture {
    async fn client(&self, token: &str) -> Client {
        let endpoints = Endpoints::parse(&self.server.endpoint)
            .unwrap()
            .with_credentials(Credentials::default().with_token(token).unwrap());
        Client::connect_to(Arc::new(endpoints)).await.unwrap()
    }

    fn request(&self, prefix: &str) -> WarmRequest {
        WarmRequest::new(&self.src, &self.dir)
            .prefix(prefix)
            .ttl(Duration::from_secs(3600))
    }
}

/// The status of a refused call, asserting PERMISSION_DENIED with
/// `reason`.
fn denied(result: Result<impl std::fmt::Debug, ClientError>, reason: &str) -> tonic::Status {
    let status = match result {
        Err(ClientError::Rpc(s)) => s,
        other => panic!("expected a denial ({reason}), got {other:?}"),
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "expresscache");
    status
}

#[tokio::test]
async fn every_rule_denies_with_its_reason_and_allows_its_counterpart() {
    let fx = fixture().await;
    let mut a = fx.client("tok-a").await;
    let mut b = fx.client("tok-b").await;

    // Sources.
    let ok = a.warm_and_wait(fx.request("a/"), |_| {}).await.unwrap();
    assert_eq!(ok.outcome, Outcome::Succeeded);
    let s = denied(a.warm(fx.request("b/")).await, "SOURCE_NOT_ALLOWED");
    assert!(s.message().contains("team-a"), "{s:?}");
    assert_eq!(
        s.get_details_error_info().unwrap().metadata["principal"],
        "team-a"
    );

    // Destinations: team-b writes under b/ only.
    let ok = b.warm_and_wait(fx.request("b/"), |_| {}).await.unwrap();
    assert_eq!(ok.outcome, Outcome::Succeeded);
    denied(
        b.warm(fx.request("b/").destination_prefix("elsewhere/"))
            .await,
        "DESTINATION_NOT_ALLOWED",
    );

    // TTL and force_copy.
    denied(
        a.warm(fx.request("a/").ttl(Duration::from_secs(3 * 3600)))
            .await,
        "TTL_ABOVE_PRINCIPAL_MAX",
    );
    denied(
        a.warm(fx.request("a/").force_copy(true)).await,
        "FORCE_COPY_NOT_ALLOWED",
    );

    // Evict, and force.
    denied(
        b.evict(fx.dir.clone(), vec!["b/".into()], false).await,
        "EVICT_NOT_ALLOWED",
    );
    denied(
        a.evict(fx.dir.clone(), vec!["a/".into()], true).await,
        "FORCE_NOT_ALLOWED",
    );
    let evicted = a
        .evict(fx.dir.clone(), vec!["a/".into()], false)
        .await
        .unwrap();
    assert_eq!(evicted.objects_deleted, 2);

    // Status of prefixes: where one may write, not elsewhere (leases name
    // the sources behind them).
    assert!(b
        .prefix_status(fx.dir.clone(), vec!["b/".into()])
        .await
        .is_ok());
    denied(
        b.prefix_status(fx.dir.clone(), vec!["a/".into()]).await,
        "DESTINATION_NOT_ALLOWED",
    );

    // A principal the policy does not list (and no [default]).
    let mut stranger = fx.client("tok-stranger").await;
    denied(stranger.warm(fx.request("c/")).await, "UNKNOWN_PRINCIPAL");

    // Every refusal left an audit line naming its principal.
    let log = fx.server.log();
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("stranger")
            && l.contains("PermissionDenied")),
        "{log}"
    );
}

#[tokio::test]
async fn one_principal_never_sees_or_attaches_to_anothers_operations() {
    let fx = fixture().await;
    let mut a = fx.client("tok-a").await;
    let mut b = fx.client("tok-b").await;
    let mut admin = fx.client("tok-admin").await;

    // The same request id from two principals: two operations.
    let a_report = a
        .warm_and_wait(fx.request("a/").request_id("job-1"), |_| {})
        .await
        .unwrap();
    let b_report = b
        .warm_and_wait(fx.request("b/").request_id("job-1"), |_| {})
        .await
        .unwrap();
    assert_ne!(a_report.operation_id, b_report.operation_id);
    // Even the very same request under the same id is another principal's
    // own operation.
    let admin_report = admin
        .warm_and_wait(fx.request("a/").request_id("job-1"), |_| {})
        .await
        .unwrap();
    assert_ne!(admin_report.operation_id, a_report.operation_id);
    assert_eq!(b_report.counters.objects_copied, 1, "b's warm ran, not a's");
    // Resubmitted by its owner, the id attaches.
    let again = a
        .warm_and_wait(fx.request("a/").request_id("job-1"), |_| {})
        .await
        .unwrap();
    assert_eq!(again.operation_id, a_report.operation_id);

    // b cannot watch, cancel, ask about or list a's operation.
    let not_found = |r: Result<_, ClientError>| match r {
        Err(ClientError::Rpc(s)) => assert_eq!(s.code(), Code::NotFound, "{s:?}"),
        other => panic!("expected NOT_FOUND, got {:?}", other.map(|_: ()| ())),
    };
    not_found(b.watch(a_report.operation_id.clone()).await.map(|_| ()));
    not_found(b.cancel(&a_report.operation_id).await.map(|_| ()));
    not_found(b.operation_status(&a_report.operation_id).await.map(|_| ()));
    let b_sees: Vec<String> = b
        .list_operations(pb::OperationFilter::Unspecified, 50, "")
        .await
        .unwrap()
        .operations
        .into_iter()
        .map(|o| o.operation_id)
        .collect();
    assert_eq!(b_sees, vec![b_report.operation_id.clone()]);

    // Its owner and an admin see it; seeing is not cancelling.
    assert!(a.operation_status(&a_report.operation_id).await.is_ok());
    let admin_sees = admin
        .list_operations(pb::OperationFilter::Unspecified, 50, "")
        .await
        .unwrap()
        .operations
        .len();
    assert_eq!(admin_sees, 3);
    denied(
        admin.cancel(&a_report.operation_id).await,
        "CANCEL_NOT_ALLOWED",
    );

    // A page of b's listing is never empty while b's own operation lies
    // behind a page of others'.
    let first_page = b
        .list_operations(pb::OperationFilter::Unspecified, 1, "")
        .await
        .unwrap();
    assert_eq!(first_page.operations.len(), 1, "{first_page:?}");
    assert_eq!(first_page.operations[0].operation_id, b_report.operation_id);
}
