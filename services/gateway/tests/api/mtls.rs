//! Mutual TLS between the gateway and a service: a service configured with a client CA answers
//! nothing to a caller without a certificate of that CA (plaintext, no certificate, or one from
//! another CA), health and ops included; the gateway, holding the platform's certificate, still
//! reaches it.

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use zentra_gateway::Gateway;
use zentra_proto::{
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    ops::v1::{self as ops, ops_service_client::OpsServiceClient},
};
use zentra_runtime::config::{self as runtime_config, TlsConfig};
use zentra_test_support::{TestEnv, tls::TestCa};

use crate::helpers::{GatewayOptions, Platform, product_request, with_key};

/// A client of `port` trusting `ca`, showing `identity` if any.
async fn connect(
    port: u16,
    ca: &TestCa,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).expect("cert"),
            std::fs::read(key).expect("key"),
        ));
    }
    Channel::from_shared(format!("https://localhost:{port}"))
        .expect("url")
        .tls_config(tls)
        .expect("tls config")
        .connect()
        .await
}

/// Whether an ops call over `channel` (if it connected at all) is answered.
async fn answered(channel: Result<Channel, tonic::transport::Error>) -> bool {
    match channel {
        Err(_) => false,
        Ok(channel) => OpsServiceClient::new(channel)
            .get_build_info(ops::GetBuildInfoRequest {})
            .await
            .is_ok(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_mutual_tls_answers_only_platform_certificates_and_the_gateway_gets_through()
{
    let platform = Platform::start("gw-mtls").await;
    let ca = TestCa::new("platform").expect("CA");
    let service_cert = ca.issue("inventory").expect("service certificate");
    let gateway_cert = ca.issue("gateway").expect("gateway certificate");

    let env = TestEnv::new("gw-mtls-inv").await.expect("test environment");
    let mut common = env.common_config();
    common.grpc.tls = Some(TlsConfig {
        cert_path: service_cert.cert_path.clone(),
        key_path: service_cert.key_path.clone(),
        client_ca_path: Some(ca.cert_path()),
    });
    let service = zentra_inventory::Inventory::start(
        zentra_inventory::Config {
            common,
            domain: Default::default(),
        },
        Default::default(),
        zentra_test_support::telemetry(),
    )
    .await
    .expect("inventory with mutual TLS starts")
    .spawn();
    let port = service.local_addr().port();

    // Plaintext, no certificate, a certificate of another CA: nothing is answered.
    let plaintext = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect()
        .await;
    assert!(!answered(plaintext).await, "plaintext is answered");
    assert!(
        !answered(connect(port, &ca, None).await).await,
        "a client without a certificate is answered"
    );
    let stranger = TestCa::new("stranger").expect("CA");
    let forged = stranger.issue("gateway").expect("certificate");
    assert!(
        !answered(connect(port, &ca, Some((&forged.cert_path, &forged.key_path))).await).await,
        "a certificate of another CA is answered"
    );
    // A certificate of the platform's CA is.
    assert!(
        answered(
            connect(
                port,
                &ca,
                Some((&gateway_cert.cert_path, &gateway_cert.key_path))
            )
            .await
        )
        .await
    );

    // The gateway, holding the platform's certificate, forwards to it over mutual TLS.
    let mut config = platform.gateway_config(&GatewayOptions::default());
    config.domain.gateway.upstreams.inventory = format!("https://localhost:{port}");
    config.common.client_tls = Some(runtime_config::ClientTlsConfig {
        ca_path: ca.cert_path(),
        cert_path: gateway_cert.cert_path.clone(),
        key_path: gateway_cert.key_path.clone(),
    });
    let gateway = Gateway::start(config, Default::default(), zentra_test_support::telemetry())
        .await
        .expect("gateway starts")
        .spawn();
    let channel = Channel::from_shared(format!("http://{}", gateway.local_addr()))
        .expect("url")
        .connect()
        .await
        .expect("gateway");
    let mut products = InventoryServiceClient::new(channel);
    products
        .create_product(with_key(
            product_request("MTLS-1", "mtls-product"),
            &platform.keys.operator,
        ))
        .await
        .expect("created through the gateway over mutual TLS");
    let product = products
        .get_product(with_key(
            inventory::GetProductRequest {
                sku: "MTLS-1".to_owned(),
            },
            &platform.keys.viewer,
        ))
        .await
        .expect("read through the gateway")
        .into_inner()
        .product
        .expect("product");
    assert_eq!(product.sku, "MTLS-1");

    gateway.shutdown().await.expect("gateway stops");
    service.shutdown().await.expect("inventory stops");
    let topics: Vec<String> = zentra_inventory::INFO
        .topics
        .iter()
        .map(|base| format!("{}{base}", env.prefix))
        .collect();
    env.cleanup(&topics).await.expect("cleanup");
    platform.stop().await;
}
