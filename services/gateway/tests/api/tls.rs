//! TLS on the gateway: rustls with HTTP/2 by ALPN when configured; plaintext refused at start
//! unless the gateway listens on loopback only.

use std::net::SocketAddr;

use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use zentra_gateway::Gateway;
use zentra_proto::order::v1::{self as order, order_service_client::OrderServiceClient};
use zentra_runtime::config::TlsConfig;
use zentra_test_support::tls::TestCa;

use crate::helpers::{GatewayOptions, Platform, order_request, with_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_tls_with_http2_and_refuses_plaintext_beyond_loopback() {
    let platform = Platform::start("gw-tls").await;
    let ca = TestCa::new("gateway").expect("CA");
    let issued = ca.issue("gateway").expect("certificate");
    let mut config = platform.gateway_config(&GatewayOptions::default());
    config.common.grpc.tls = Some(TlsConfig {
        cert_path: issued.cert_path.clone(),
        key_path: issued.key_path.clone(),
        client_ca_path: None,
    });
    let gateway = Gateway::start(
        config.clone(),
        Default::default(),
        zentra_test_support::telemetry(),
    )
    .await
    .expect("a gateway with TLS starts")
    .spawn();
    let port = gateway.local_addr().port();

    // tonic's client insists that ALPN chose HTTP/2: this call proves it did.
    let channel = Channel::from_shared(format!("https://localhost:{port}"))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca.cert_pem()))
                .domain_name("localhost"),
        )
        .expect("tls config")
        .connect()
        .await
        .expect("a TLS connection");
    let mut orders = OrderServiceClient::new(channel);
    orders
        .place_order(with_key(
            order_request("cust-tls", "tls-1"),
            &platform.keys.operator,
        ))
        .await
        .expect("an order over TLS");

    // The same port does not answer plaintext HTTP/2...
    let plaintext = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect()
        .await;
    if let Ok(channel) = plaintext {
        OrderServiceClient::new(channel)
            .list_orders(with_key(
                order::ListOrdersRequest::default(),
                &platform.keys.viewer,
            ))
            .await
            .expect_err("plaintext is not served");
    }
    // ...and a client that does not trust the CA gets no connection.
    let stranger = TestCa::new("stranger").expect("CA");
    let untrusted = Channel::from_shared(format!("https://localhost:{port}"))
        .expect("url")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(stranger.cert_pem()))
                .domain_name("localhost"),
        )
        .expect("tls config")
        .connect()
        .await;
    assert!(untrusted.is_err(), "a certificate of another CA is refused");

    // Plaintext on every interface is a configuration error, not a quiet default.
    let mut open = config.clone();
    open.common.grpc.tls = None;
    open.common.grpc.listen_addr = SocketAddr::from(([0, 0, 0, 0], 0));
    let refused = Gateway::start(open, Default::default(), zentra_test_support::telemetry())
        .await
        .err()
        .expect("plaintext beyond loopback is refused");
    assert!(refused.to_string().contains("without TLS"), "{refused:#}");
    // A key file that holds no key stops the start, not the first handshake.
    let mut mismatched = config;
    mismatched.common.grpc.tls = Some(TlsConfig {
        cert_path: issued.cert_path,
        key_path: ca.issue("other").expect("certificate").cert_path,
        client_ca_path: None,
    });
    assert!(
        Gateway::start(
            mismatched,
            Default::default(),
            zentra_test_support::telemetry()
        )
        .await
        .is_err()
    );

    gateway.shutdown().await.expect("gateway stops");
    platform.stop().await;
}
