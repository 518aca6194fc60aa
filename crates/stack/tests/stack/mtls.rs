//! Mutual TLS as `just up` runs it: every RPC of the contracts, health and reflection, called on
//! every service port in plaintext, over TLS without a client certificate, or with a certificate
//! of another CA, gets no answer at all; with the certificate the stack issued, each one is
//! answered. Through the gateway, which holds its own certificate, an order is placed and its saga
//! (the orchestrator calling every service over mutual TLS) completes.

use std::{str::FromStr as _, time::Duration};

use futures::future::join_all;
use prost::Message as _;
use tonic::{
    Request,
    codegen::http::uri::PathAndQuery,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use zentra_proto::{
    common::v1::Money,
    ops::v1::{GetHealthSummaryRequest, HealthStatus, ops_service_client::OpsServiceClient},
};
use zentra_runtime::pki::{Layout, TOOLS_CERT};
use zentra_stack::settings::Component;
use zentra_test_support::tls::TestCa;

use crate::helpers::{Scratch, dev_key, gateway_channel, keyed, order_completes};

/// The stack's services by name, with their port offsets.
fn services() -> Vec<(&'static str, u16)> {
    zentra_stack::settings::SERVICES
        .iter()
        .filter_map(|component| match component {
            Component::Service(name, offset) => Some((*name, *offset)),
            _ => None,
        })
        .collect()
}

/// Every method of every service in the contracts and in the health and reflection protocols,
/// as `/package.Service/Method`.
fn every_method() -> Vec<String> {
    let mut paths = Vec::new();
    for encoded in [
        zentra_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let set = prost_types::FileDescriptorSet::decode(encoded).expect("descriptor set");
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// How a test client reaches a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// HTTP/2 without TLS.
    Plaintext,
    /// TLS, trusting the stack's CA, showing no certificate.
    NoCertificate,
    /// TLS, showing a certificate another CA signed.
    OtherCa,
    /// TLS, showing the certificate the stack issued to tools.
    Platform,
}

fn channel(caller: Caller, port: u16, pki: &Layout, stranger: &TestCa) -> Channel {
    let trust = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(pki.ca_path()).expect("CA"),
            ))
            .domain_name("localhost")
    };
    let identity = |cert: std::path::PathBuf, key: std::path::PathBuf| {
        Identity::from_pem(
            std::fs::read(cert).expect("certificate"),
            std::fs::read(key).expect("key"),
        )
    };
    let (url, tls) = match caller {
        Caller::Plaintext => (format!("http://127.0.0.1:{port}"), None),
        Caller::NoCertificate => (format!("https://localhost:{port}"), Some(trust())),
        Caller::OtherCa => {
            let forged = stranger
                .issue(&format!("client-{port}"))
                .expect("certificate");
            (
                format!("https://localhost:{port}"),
                Some(trust().identity(identity(forged.cert_path, forged.key_path))),
            )
        }
        Caller::Platform => (
            format!("https://localhost:{port}"),
            Some(trust().identity(identity(
                pki.cert_path(TOOLS_CERT),
                pki.key_path(TOOLS_CERT),
            ))),
        ),
    };
    let mut endpoint = Channel::from_shared(url)
        .expect("url")
        .connect_timeout(Duration::from_secs(2));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).expect("tls");
    }
    endpoint.connect_lazy()
}

/// Whether the server answered the call on `path` with a gRPC status of its own (any, errors
/// included: an empty request is rarely valid), rather than the connection failing. A status the
/// client made up for a failed connection carries no response headers.
async fn answered(channel: Channel, path: &str) -> Result<bool, String> {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return Ok(false);
    }
    let mut request = Request::new(());
    request.set_timeout(Duration::from_secs(5));
    let path = PathAndQuery::from_str(path).map_err(|error| error.to_string())?;
    // Server streaming covers every shape: a unary answer is a stream of one, and a streaming
    // request of one message is this one.
    Ok(
        match grpc
            .server_streaming(request, path, tonic_prost::ProstCodec::<(), ()>::default())
            .await
        {
            Ok(_) => true,
            Err(status) => !status.metadata().is_empty(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_every_service_port_refuses_callers_without_a_platform_certificate() {
    let scratch = Scratch::for_platform("mtls").await;
    let stack = scratch.start_platform(Vec::new(), &[]).await;
    let (state_dir, base_port) = (&scratch.state_dir, scratch.base_port);
    let pki = Layout::of_stack(state_dir);
    let stranger = TestCa::new("stranger").expect("CA");
    let methods = every_method();
    assert!(methods.len() > 60, "too few methods: {methods:?}");

    let ports: Vec<(&str, u16)> = services()
        .into_iter()
        .map(|(service, offset)| (service, base_port + offset))
        .collect();
    let outcomes = join_all(ports.iter().map(|(service, port)| {
        let (methods, pki, stranger) = (&methods, &pki, &stranger);
        async move {
            let mut wrong = Vec::new();
            for caller in [
                Caller::Plaintext,
                Caller::NoCertificate,
                Caller::OtherCa,
                Caller::Platform,
            ] {
                let channel = channel(caller, *port, pki, stranger);
                for method in methods {
                    let answered = answered(channel.clone(), method)
                        .await
                        .expect("a valid path");
                    if answered != (caller == Caller::Platform) {
                        wrong.push(format!(
                            "{service} {caller:?} {method}: answered {answered}"
                        ));
                    }
                }
            }
            wrong
        }
    }))
    .await;
    let wrong: Vec<String> = outcomes.into_iter().flatten().collect();
    assert!(
        wrong.is_empty(),
        "{} of {} calls went the wrong way:\n{}",
        wrong.len(),
        methods.len() * ports.len() * 4,
        wrong.join("\n")
    );

    // The gateway reaches every service with its own certificate.
    let gateway = gateway_channel(scratch.gateway_port).await;
    let viewer = dev_key(state_dir, "ZENTRA_VIEWER_KEY");
    let operator = dev_key(state_dir, "ZENTRA_OPERATOR_KEY");
    for (service, _) in services() {
        let summary = OpsServiceClient::new(gateway.clone())
            .get_health_summary(keyed(GetHealthSummaryRequest {}, &viewer, Some(service)))
            .await
            .unwrap_or_else(|status| panic!("{service} through the gateway: {status:?}"))
            .into_inner();
        assert_eq!(summary.status, HealthStatus::Serving as i32, "{service}");
    }

    // An order through the gateway: the orchestrator drives it through every service.
    let price = Money {
        currency_code: "USD".to_owned(),
        amount_minor: 1299,
    };
    order_completes(&stack, &gateway, (&operator, &viewer), "MTLS-MUG", price).await;

    stack.stop().await;
    scratch.clean_up().await;
}
