//! Traces, end to end: the real server binary exports over OTLP/gRPC to a
//! receiver in this test; a warm started with a W3C `traceparent` shows up
//! in the caller's trace, with its operation id, under the RPC, with its
//! listing pages and index calls beneath.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{buckets, Server};
use expresscache::proto::v1::cache_service_client::CacheServiceClient;
use expresscache_client::pb;
use expresscache_server::testing::free_port;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

/// An OTLP trace receiver keeping every span it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_warm_is_traced_under_the_callers_trace_with_its_operation_id() {
    let receiver = Receiver::default();
    let port = free_port();
    {
        let receiver = receiver.clone();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(receiver))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }
    let (moto, _s3, src, dir) = buckets(&["d/1", "d/2", "d/3"]).await;
    let otlp = format!("http://127.0.0.1:{port}");
    let server = Server::start_with(
        &moto,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut client = CacheServiceClient::connect(server.endpoint.clone())
        .await
        .unwrap();
    let mut req = tonic::Request::new(pb::WarmCacheRequest {
        bucket: src.clone(),
        prefixes: vec!["d/".into()],
        directory_bucket: dir.clone(),
        ttl: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let mut stream = client.warm_cache(req).await.unwrap().into_inner();
    let mut operation_id = String::new();
    while let Some(p) = stream.message().await.unwrap() {
        operation_id = p.operation_id;
    }
    assert!(!operation_id.is_empty());

    // The batch exporter sends within its schedule delay.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (warm, trace) = loop {
        let spans = receiver.0.lock().unwrap().clone();
        let warm = spans
            .iter()
            .find(|s| s.name == "warm" && attr(s, "operation_id") == Some(operation_id.as_str()))
            .cloned();
        let has_index = spans
            .iter()
            .any(|s| hex(&s.trace_id) == trace_id && attr(s, "index.backend") == Some("sqlite"));
        if let (Some(w), true) = (warm, has_index) {
            break (w, spans);
        }
        assert!(
            Instant::now() < deadline,
            "no warm span for {operation_id} yet; got {:?}\n{}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    assert_eq!(
        hex(&warm.trace_id),
        trace_id,
        "the warm is in the caller's trace"
    );
    assert_eq!(attr(&warm, "source_bucket"), Some(src.as_str()));
    assert_eq!(attr(&warm, "directory_bucket"), Some(dir.as_str()));
    assert_eq!(attr(&warm, "outcome"), Some("succeeded"));
    let rpc = trace
        .iter()
        .find(|s| s.span_id == warm.parent_span_id)
        .expect("the warm's parent span was exported");
    assert_eq!(rpc.name, "/expresscache.v1.CacheService/WarmCache");
    assert_eq!(
        hex(&rpc.parent_span_id),
        caller_span,
        "the RPC is the caller's child"
    );
    let in_trace = |name: &str| {
        trace
            .iter()
            .any(|s| hex(&s.trace_id) == trace_id && s.name == name)
    };
    assert!(
        in_trace("list_page"),
        "listing pages are spans of the trace"
    );
    assert!(
        in_trace("complete_copies"),
        "index calls are spans of the trace"
    );
    assert!(
        in_trace("copy_batch"),
        "batches of copies are spans of the trace"
    );
}
