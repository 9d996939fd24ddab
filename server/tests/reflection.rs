//! gRPC reflection: served in both versions, so grpcurl and newer tools
//! (v1) and older clients and GUIs (v1alpha) can discover the API.

mod common;

use common::Fixture;

const WANTED: [&str; 2] = ["expresscache.v1.CacheService", "grpc.health.v1.Health"];

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    let fx = Fixture::new(&[]).await;
    let channel = tonic::transport::Channel::from_shared(fx.server.endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");

    use tonic_reflection::pb::v1 as r1;
    let mut v1 = r1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let ask = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let answer = answers.message().await.expect("v1 answer").expect("one");
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1: not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for w in WANTED {
        assert!(names.iter().any(|n| n == w), "v1 lists {w}: {names:?}");
    }

    use tonic_reflection::pb::v1alpha as ra;
    let mut alpha = ra::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = ra::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(ra::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("v1alpha answer")
        .expect("one");
    let Some(ra::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1alpha: not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for w in WANTED {
        assert!(names.iter().any(|n| n == w), "v1alpha lists {w}: {names:?}");
    }
}
