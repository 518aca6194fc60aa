//! Clients nobody here wrote (grpcurl, buf curl), a raw grpc-web call over HTTP/1.1, health,
//! the ops service and the metrics endpoint.

use std::{process::Command, time::Duration};

use prost::Message as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use zentra_proto::{
    inventory::v1 as pb,
    ops::v1::{self as ops, ops_service_client::OpsServiceClient},
};
use zentra_test_support::{run_tool, tool};

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_explores_the_service_through_reflection_v1alpha_calls_it_and_decodes_error_details()
 {
    let app = TestApp::spawn("grpcurl").await;
    app.create_product("SKU-CURL", 7).await;
    let grpcurl = tool("grpcurl");
    let addr = app.addr();

    let services = run_tool(Command::new(&grpcurl).args(["-plaintext", &addr, "list"]));
    for service in [
        "zentra.inventory.v1.InventoryService",
        "zentra.ops.v1.OpsService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|line| line == service),
            "{service} in {services}"
        );
    }
    let described = run_tool(Command::new(&grpcurl).args([
        "-plaintext",
        &addr,
        "describe",
        "zentra.inventory.v1.InventoryService.ReserveStock",
    ]));
    assert!(
        described.contains("rpc ReserveStock ( .zentra.inventory.v1.ReserveStockRequest )"),
        "{described}"
    );
    let message = run_tool(Command::new(&grpcurl).args([
        "-plaintext",
        &addr,
        "describe",
        "zentra.inventory.v1.ReservationLine",
    ]));
    assert!(message.contains("int64 quantity = 2;"), "{message}");

    let product = run_tool(Command::new(&grpcurl).args([
        "-plaintext",
        "-d",
        r#"{"sku":"SKU-CURL"}"#,
        &addr,
        "zentra.inventory.v1.InventoryService/GetProduct",
    ]));
    assert!(product.contains(r#""available": "7""#), "{product}");

    // A refusal's details are decoded: reflection serves google.rpc's error details.
    let refused = Command::new(&grpcurl)
        .args([
            "-plaintext",
            "-d",
            r#"{"sku":""}"#,
            &addr,
            "zentra.inventory.v1.InventoryService/GetProduct",
        ])
        .output()
        .expect("grpcurl runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "{printed}");
    assert!(printed.contains("Code: InvalidArgument"), "{printed}");
    assert!(
        printed.contains("type.googleapis.com/google.rpc.BadRequest")
            && printed.contains(r#""field":"sku""#),
        "{printed}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buf_curl_lists_and_calls_through_reflection_v1() {
    let app = TestApp::spawn("bufcurl").await;
    app.create_product("SKU-BUF", 3).await;
    let buf = tool("buf");
    let url = format!("http://{}", app.addr());

    let methods = run_tool(Command::new(&buf).args([
        "curl",
        "--http2-prior-knowledge",
        "--protocol",
        "grpc",
        "--reflect-protocol",
        "grpc-v1",
        "--list-methods",
        &url,
    ]));
    assert!(
        methods.contains("zentra.inventory.v1.InventoryService/ReserveStock"),
        "{methods}"
    );

    let reserved = run_tool(Command::new(&buf).args([
        "curl",
        "--http2-prior-knowledge",
        "--protocol",
        "grpc",
        "--reflect-protocol",
        "grpc-v1",
        "-d",
        r#"{"order_id":"0190f0c8-0000-7000-8000-000000000001","lines":[{"sku":"SKU-BUF","quantity":2}],"idempotency_key":"buf-1"}"#,
        &format!("{url}/zentra.inventory.v1.InventoryService/ReserveStock"),
    ]));
    assert!(
        reserved.contains("RESERVATION_STATUS_PENDING"),
        "{reserved}"
    );
    assert_eq!(app.product("SKU-BUF").await.available, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_serving() {
    let app = TestApp::spawn("health").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let status = zentra_test_support::eventually(Duration::from_secs(10), || {
        let mut health = health.clone();
        async move {
            let status = health
                .check(HealthCheckRequest {
                    service: "zentra.inventory.v1.InventoryService".to_owned(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (status == ServingStatus::Serving as i32).then_some(status)
        }
    })
    .await;
    assert_eq!(status, Some(ServingStatus::Serving as i32));
    let overall = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("overall");
    assert_eq!(overall.into_inner().status, ServingStatus::Serving as i32);
    app.stop().await;
}

/// One HTTP/1.1 exchange on a fresh connection; (head in lower case, body with chunking undone).
async fn http1(addr: &str, request: Vec<u8>) -> (String, Vec<u8>) {
    let (head, body) = zentra_test_support::http_exchange(addr, &request).await;
    (head.to_lowercase(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_web_call_over_http1_succeeds_on_the_same_port() {
    let app = TestApp::spawn("grpcweb").await;
    app.create_product("SKU-WEB", 9).await;
    let message = pb::GetProductRequest {
        sku: "SKU-WEB".to_owned(),
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let mut request = format!(
        "POST /zentra.inventory.v1.InventoryService/GetProduct HTTP/1.1\r\nhost: {}\r\n\
         content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\norigin: http://control.example\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        app.addr(),
        frame.len()
    )
    .into_bytes();
    request.extend_from_slice(&frame);

    let (head, body) = http1(&app.addr(), request).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains("content-type: application/grpc-web+proto"),
        "{head}"
    );
    // CORS is off by default: no page of another origin may read the answer.
    assert!(
        !head.contains("access-control-allow-origin")
            && !head.contains("access-control-expose-headers"),
        "no CORS headers by default: {head}"
    );
    // A data frame with the product, then a trailer frame with grpc-status 0.
    assert_eq!(body[0], 0, "data frame first");
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let response = pb::GetProductResponse::decode(&body[5..5 + length]).expect("decodes");
    assert_eq!(response.product.map(|p| p.available), Some(9));
    let trailer = &body[5 + length..];
    assert_eq!(trailer[0], 0x80, "trailer frame");
    assert!(String::from_utf8_lossy(&trailer[5..]).contains("grpc-status:0"));

    // Nor does a preflight allow one.
    let preflight = format!(
        "OPTIONS /zentra.inventory.v1.InventoryService/GetProduct HTTP/1.1\r\nhost: {}\r\n\
         origin: http://control.example\r\naccess-control-request-method: POST\r\n\
         access-control-request-headers: content-type,x-grpc-web\r\nconnection: close\r\n\r\n",
        app.addr()
    );
    let (head, _) = http1(&app.addr(), preflight.into_bytes()).await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_changes_log_level_injects_faults_and_metrics_count_rpcs() {
    let app = TestApp::spawn("ops").await;
    app.create_product("SKU-OPS", 1).await;
    let mut ops = OpsServiceClient::connect(format!("http://{}", app.addr()))
        .await
        .expect("connect");

    let changed = ops
        .set_log_level(ops::SetLogLevelRequest {
            filter: "warn,zentra_inventory=debug".to_owned(),
            idempotency_key: "log-1".to_owned(),
            reason: String::new(),
        })
        .await
        .expect("log level set")
        .into_inner();
    assert_eq!(changed.filter, "warn,zentra_inventory=debug");
    let current = ops
        .get_log_level(ops::GetLogLevelRequest {})
        .await
        .expect("read")
        .into_inner();
    assert_eq!(current.filter, "warn,zentra_inventory=debug");
    ops.set_log_level(ops::SetLogLevelRequest {
        filter: changed.previous_filter,
        idempotency_key: "log-2".to_owned(),
        reason: String::new(),
    })
    .await
    .expect("restored");
    let bad = ops
        .set_log_level(ops::SetLogLevelRequest {
            filter: "[[[".to_owned(),
            idempotency_key: "log-3".to_owned(),
            reason: String::new(),
        })
        .await
        .expect_err("bad filter");
    assert_eq!(bad.code(), Code::InvalidArgument);

    // A duration beyond any sane bound is refused, not an overflow.
    let forever = ops
        .inject_fault(ops::InjectFaultRequest {
            fault: Some(ops::Fault {
                kind: ops::FaultKind::ErrorRate as i32,
                error_rate: 0.5,
                duration: Some(prost_types::Duration {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            idempotency_key: "fault-forever".to_owned(),
            reason: String::new(),
        })
        .await
        .expect_err("too long");
    assert_eq!(forever.code(), Code::InvalidArgument);

    // A TPS limit of 2 really limits domain calls, and ops keeps answering.
    ops.inject_fault(ops::InjectFaultRequest {
        fault: Some(ops::Fault {
            kind: ops::FaultKind::TpsLimit as i32,
            tps_limit: 2,
            ..Default::default()
        }),
        idempotency_key: "fault-1".to_owned(),
        reason: String::new(),
    })
    .await
    .expect("fault injected");
    let calls = (0..6).map(|_| {
        let mut client = app.client.clone();
        async move {
            client
                .get_product(pb::GetProductRequest {
                    sku: "SKU-OPS".to_owned(),
                })
                .await
        }
    });
    let limited = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter(|result| matches!(result, Err(status) if status.code() == Code::ResourceExhausted))
        .count();
    assert!(limited >= 4, "{limited} of 6 limited");
    let faults = ops
        .list_faults(ops::ListFaultsRequest {})
        .await
        .expect("listed")
        .into_inner()
        .faults;
    assert_eq!(faults.len(), 1);
    ops.clear_faults(ops::ClearFaultsRequest {
        kind: 0,
        idempotency_key: "clear-1".to_owned(),
        reason: String::new(),
    })
    .await
    .expect("cleared");
    app.product("SKU-OPS").await;

    let config = ops
        .get_effective_config(ops::GetEffectiveConfigRequest {})
        .await
        .expect("config")
        .into_inner();
    assert!(
        config.config_toml.contains("[inventory]"),
        "{}",
        config.config_toml
    );
    let summary = ops
        .get_health_summary(ops::GetHealthSummaryRequest {})
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(
        summary.status,
        ops::HealthStatus::Serving as i32,
        "{summary:?}"
    );
    let names: Vec<_> = summary
        .dependencies
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    // The commands consumer is a dependency of its own, serving once it holds its partition.
    let consumer = format!("consumer {}inventory-commands", app.env.prefix);
    assert_eq!(names, ["postgres", "kafka", consumer.as_str()]);

    let (head, body) = http1(
        &app.addr(),
        format!(
            "GET /metrics HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            app.addr()
        )
        .into_bytes(),
    )
    .await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let metrics = String::from_utf8_lossy(&body);
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("zentra_grpc_server_requests_total")
                && line.contains("method=\"GetProduct\"")
                && line.contains("code=\"RESOURCE_EXHAUSTED\"")),
        "{metrics}"
    );
    assert!(metrics.contains("zentra_grpc_server_request_duration_seconds_bucket"));
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("zentra_grpc_server_errors_total")
                && line.contains("method=\"GetProduct\"")),
        "error count per RPC: {metrics}"
    );
    app.stop().await;
}

#[test]
fn invalid_config_is_one_line_on_stderr_and_exit_code_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_zentra-inventory"))
        .env("ZENTRA_OUTBOX__BATCH_SIZE", "lots")
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("invalid config:")
            && stderr.to_lowercase().contains("outbox.batch_size"),
        "{stderr}"
    );
}

#[test]
fn print_config_shows_the_effective_config_with_secrets_redacted() {
    let output = Command::new(env!("CARGO_BIN_EXE_zentra-inventory"))
        .arg("--print-config")
        .env(
            "ZENTRA_DATABASE__URL",
            "postgres://zentra:hunter2@db.internal:5432/inventory",
        )
        .env("ZENTRA_INVENTORY__DEFAULT_HOLD", "7m")
        .output()
        .expect("binary runs");
    assert!(output.status.success());
    let config = String::from_utf8_lossy(&output.stdout);
    assert!(
        config.contains("postgres://zentra:<redacted>@db.internal:5432/inventory"),
        "{config}"
    );
    assert!(!config.contains("hunter2"));
    assert!(config.contains("default_hold = \"7m\""), "{config}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_snapshot_shows_rates_latencies_errors_and_consumer_lag() {
    let app = TestApp::spawn("snapshot").await;
    app.create_product("SKU-SNAP", 1).await;
    let mut ops = OpsServiceClient::connect(format!("http://{}", app.addr()))
        .await
        .expect("connect");
    let mut client = app.client.clone();
    for _ in 0..5 {
        client
            .get_product(pb::GetProductRequest {
                sku: "SKU-SNAP".to_owned(),
            })
            .await
            .expect("found");
    }
    for _ in 0..2 {
        client
            .get_product(pb::GetProductRequest {
                sku: "SKU-NONE".to_owned(),
            })
            .await
            .expect_err("not found");
    }
    // A message the commands consumer cannot read: dead-lettered, and its offset processed.
    let producer =
        zentra_runtime::kafka::EventProducer::new(&app.env.common_config().kafka, "test-publisher")
            .expect("producer");
    producer
        .send(
            &format!("{}inventory.commands", app.env.prefix),
            "garbage",
            b"\xff\xfe not a command",
            &[],
        )
        .await
        .expect("published");

    let snapshot = ops
        .get_metrics_snapshot(ops::GetMetricsSnapshotRequest { window: None })
        .await
        .expect("snapshot")
        .into_inner();
    assert_eq!(snapshot.service, "inventory");
    let overall = snapshot.overall.expect("overall");
    // CreateProduct, five reads and two misses; the ops calls themselves are not counted.
    assert_eq!(overall.count, 8, "{overall:?}");
    assert!((overall.error_ratio - 0.25).abs() < 1e-9, "{overall:?}");
    assert!(overall.requests_per_second > 0.0);
    let p50 = overall.latency_p50.expect("p50");
    let p99 = overall.latency_p99.expect("p99");
    assert!(p50.seconds > 0 || p50.nanos > 0);
    assert!((p99.seconds, p99.nanos) >= (p50.seconds, p50.nanos));
    let busiest = &snapshot.rpcs[0];
    assert_eq!(
        (busiest.method.as_str(), busiest.count),
        ("zentra.inventory.v1.InventoryService/GetProduct", 7)
    );
    assert_eq!(snapshot.errors_total, 2);

    let group = format!("{}inventory-commands", app.env.prefix);
    let topic = format!("{}inventory.commands", app.env.prefix);
    let lag = zentra_test_support::eventually(Duration::from_secs(20), || {
        let mut ops = ops.clone();
        let (group, topic) = (group.clone(), topic.clone());
        async move {
            let snapshot = ops
                .get_metrics_snapshot(ops::GetMetricsSnapshotRequest { window: None })
                .await
                .ok()?
                .into_inner();
            // Lag is known once the client's statistics gave the high watermark.
            snapshot
                .consumer_lag
                .into_iter()
                .find(|lag| lag.group == group && lag.topic == topic && lag.high_watermark >= 0)
        }
    })
    .await
    .expect("the commands consumer reports its lag");
    assert_eq!(lag.lag, 0, "everything was processed: {lag:?}");
    assert!(
        !lag.owner.is_empty(),
        "the partition's owner is named: {lag:?}"
    );

    let bad = ops
        .get_metrics_snapshot(ops::GetMetricsSnapshotRequest {
            window: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .expect_err("window too long");
    assert_eq!(bad.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_topics_are_listed_with_partitions_and_offsets_under_the_platform_prefix() {
    let app = TestApp::spawn("topics").await;
    let mut ops = OpsServiceClient::connect(format!("http://{}", app.addr()))
        .await
        .expect("connect");
    let events = format!("{}inventory.events", app.env.prefix);
    let producer =
        zentra_runtime::kafka::EventProducer::new(&app.env.common_config().kafka, "test-publisher")
            .expect("producer");
    for n in 0..3 {
        producer
            .send(&events, &format!("key-{n}"), b"not read by anyone", &[])
            .await
            .expect("published");
    }

    let listed = ops
        .list_broker_topics(ops::ListBrokerTopicsRequest { name_prefix: None })
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(
        listed.name_prefix, app.env.prefix,
        "the service's own prefix by default"
    );
    let names: Vec<&str> = listed
        .topics
        .iter()
        .map(|topic| topic.name.as_str())
        .collect();
    for base in [
        "inventory.events",
        "inventory.commands",
        "saga.command-acks",
    ] {
        let name = format!("{}{base}", app.env.prefix);
        assert!(
            names.contains(&name.as_str()),
            "{name} missing from {names:?}"
        );
    }
    assert!(
        names.iter().all(|name| name.starts_with(&app.env.prefix)),
        "another test's topics leaked in: {names:?}"
    );
    assert!(listed.broker_topic_count >= i32::try_from(names.len()).expect("fits"));
    assert!(listed.broker_count >= 1);
    let topic = listed
        .topics
        .iter()
        .find(|topic| topic.name == events)
        .expect("events topic");
    assert_eq!(topic.partitions.len(), 1, "{topic:?}");
    let partition = &topic.partitions[0];
    assert_eq!(partition.error, "", "{partition:?}");
    assert_eq!(
        partition.high_watermark - partition.low_watermark,
        3,
        "three records were sent: {partition:?}"
    );
    assert_eq!(topic.records, 3);

    let narrowed = ops
        .list_broker_topics(ops::ListBrokerTopicsRequest {
            name_prefix: Some(events.clone()),
        })
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(
        narrowed
            .topics
            .iter()
            .map(|topic| topic.name.as_str())
            .collect::<Vec<_>>(),
        [events.as_str()]
    );

    for bad in ["x".repeat(250), "inventory\n".to_owned()] {
        let refused = ops
            .list_broker_topics(ops::ListBrokerTopicsRequest {
                name_prefix: Some(bad),
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(
            zentra_test_support::violated_fields(&refused),
            ["name_prefix"]
        );
    }
    app.stop().await;
}
