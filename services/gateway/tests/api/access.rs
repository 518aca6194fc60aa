//! Who may do what through the gateway: credentials, roles, saga-internal steps, shared RPCs
//! that need a named service, size limits. A refused call leaves stored data untouched.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Code, Request, metadata::MetadataValue};
use zentra_proto::{
    inventory::v1::{self as inventory, inventory_service_client::InventoryServiceClient},
    ops::v1::{self as ops, ops_service_client::OpsServiceClient},
    order::v1::{self as order, order_service_client::OrderServiceClient},
    saga::v1::{
        self as saga, dead_letter_service_client::DeadLetterServiceClient,
        saga_service_client::SagaServiceClient,
    },
};
use zentra_test_support::count;

use crate::helpers::{
    GatewayOptions, JWT_SECRET, Platform, for_service, order_request, product_request, with_key,
};

async fn orders_stored(platform: &Platform) -> i64 {
    count(platform.order_db(), "SELECT count(*) FROM orders").await
}

#[tokio::test]
async fn callers_without_valid_credentials_are_unauthenticated() {
    let mut platform = Platform::start("gw-authn").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let mut orders = OrderServiceClient::new(channel);

    let anonymous = orders
        .place_order(order_request("cust-1", "anon-1"))
        .await
        .expect_err("no credentials");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert!(anonymous.message().contains("x-api-key"), "{anonymous:?}");

    let unknown = orders
        .list_orders(with_key(order::ListOrdersRequest::default(), "zk_nobody"))
        .await
        .expect_err("unknown key");
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert!(
        !unknown.message().contains("zk_nobody"),
        "a key is never echoed"
    );

    let forged = jwt("mallory", "admin", "not-the-gateways-secret-not-it", 3600);
    let mut request = Request::new(order::ListOrdersRequest::default());
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {forged}")).expect("ascii"),
    );
    let refused = orders.list_orders(request).await.expect_err("forged token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    assert_eq!(orders_stored(&platform).await, 0);
    platform.stop().await;
}

/// A bulk operation acts on many sagas at once: only an operator may start, cancel or follow one
/// (it names who acted on which sagas, as the audit records do).
#[tokio::test]
async fn a_viewer_is_refused_a_bulk_operation_before_it_reaches_the_saga_service() {
    let mut platform = Platform::start("gw-bulk").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let mut sagas = SagaServiceClient::new(channel);
    let keys = platform.keys.clone();
    let create = saga::CreateBulkOperationRequest {
        action: saga::BulkAction::Resume as i32,
        filter: Some(saga::SagaFilter {
            state: saga::SagaState::CompensationFailed as i32,
            ..Default::default()
        }),
        reason: "processor is back".to_owned(),
        idempotency_key: "bulk-1".to_owned(),
        ..Default::default()
    };
    for validate_only in [true, false] {
        let denied = sagas
            .create_bulk_operation(with_key(
                saga::CreateBulkOperationRequest {
                    validate_only,
                    ..create.clone()
                },
                &keys.viewer,
            ))
            .await
            .expect_err("a viewer starts a bulk operation");
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
        assert!(denied.message().contains("operator"), "{denied:?}");
    }
    let denied = sagas
        .cancel_bulk_operation(with_key(
            saga::CancelBulkOperationRequest {
                operation_id: uuid::Uuid::now_v7().to_string(),
                reason: "stop".to_owned(),
                idempotency_key: "bulk-2".to_owned(),
            },
            &keys.viewer,
        ))
        .await
        .expect_err("a viewer cancels a bulk operation");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = sagas
        .list_bulk_operations(with_key(
            saga::ListBulkOperationsRequest::default(),
            &keys.viewer,
        ))
        .await
        .expect_err("a viewer lists bulk operations");
    assert_eq!(denied.code(), Code::PermissionDenied);
    // An operator's calls are let through, to a saga service that is down here.
    let forwarded = sagas
        .create_bulk_operation(with_key(create, &keys.operator))
        .await
        .expect_err("the saga service is down");
    assert_eq!(forwarded.code(), Code::Unavailable, "{forwarded:?}");
    let read = sagas
        .list_bulk_operations(with_key(
            saga::ListBulkOperationsRequest::default(),
            &keys.operator,
        ))
        .await
        .expect_err("the saga service is down");
    assert_eq!(read.code(), Code::Unavailable, "{read:?}");
    platform.stop().await;
}

#[tokio::test]
async fn roles_decide_what_a_caller_may_do() {
    let mut platform = Platform::start("gw-roles").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let mut orders = OrderServiceClient::new(channel.clone());
    let mut ops = OpsServiceClient::new(channel.clone());
    let keys = &platform.keys;

    // A viewer reads, but placing an order is an operator's action.
    orders
        .list_orders(with_key(order::ListOrdersRequest::default(), &keys.viewer))
        .await
        .expect("a viewer lists orders");
    let denied = orders
        .place_order(with_key(order_request("cust-1", "viewer-1"), &keys.viewer))
        .await
        .expect_err("viewer places an order");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("operator"), "{denied:?}");
    assert_eq!(orders_stored(&platform).await, 0);

    // An operator places one, through the gateway to the order service.
    let placed = orders
        .place_order(with_key(order_request("cust-1", "op-1"), &keys.operator))
        .await
        .expect("operator places an order")
        .into_inner()
        .order
        .expect("order");
    let read = orders
        .get_order(with_key(
            order::GetOrderRequest {
                order_id: placed.order_id.clone(),
            },
            &keys.viewer,
        ))
        .await
        .expect("read back")
        .into_inner()
        .order
        .expect("order");
    assert_eq!(read.order_id, placed.order_id);

    // Fault injection is an admin's.
    let fault = || ops::InjectFaultRequest {
        fault: Some(ops::Fault {
            kind: ops::FaultKind::ErrorRate as i32,
            error_rate: 1.0,
            duration: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        }),
        idempotency_key: "fault-1".to_owned(),
        reason: String::new(),
    };
    let denied = ops
        .inject_fault(for_service(with_key(fault(), &keys.operator), "inventory"))
        .await
        .expect_err("operator injects a fault");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let mut inventory_direct =
        OpsServiceClient::connect(format!("http://{}", platform.inventory_addr()))
            .await
            .expect("connect");
    let faults = inventory_direct
        .list_faults(ops::ListFaultsRequest {})
        .await
        .expect("faults")
        .into_inner()
        .faults;
    assert!(
        faults.is_empty(),
        "the refused fault never reached the service"
    );

    // The admin's lands on the service named in x-zentra-service, and only there.
    ops.inject_fault(for_service(with_key(fault(), &keys.admin), "inventory"))
        .await
        .expect("admin injects a fault");
    let faults = inventory_direct
        .list_faults(ops::ListFaultsRequest {})
        .await
        .expect("faults")
        .into_inner()
        .faults;
    assert_eq!(faults.len(), 1);
    let gateway_faults = ops
        .list_faults(with_key(ops::ListFaultsRequest {}, &keys.viewer))
        .await
        .expect("the gateway's own faults")
        .into_inner()
        .faults;
    assert!(gateway_faults.is_empty());
    let mut products = InventoryServiceClient::new(channel);
    let failing = products
        .list_products(with_key(
            inventory::ListProductsRequest::default(),
            &keys.viewer,
        ))
        .await
        .expect_err("the fault answers");
    assert_eq!(failing.code(), Code::Unavailable);
    ops.clear_faults(for_service(
        with_key(
            ops::ClearFaultsRequest {
                kind: 0,
                idempotency_key: "clear-1".to_owned(),
                reason: String::new(),
            },
            &keys.admin,
        ),
        "inventory",
    ))
    .await
    .expect("cleared");
    platform.stop().await;
}

#[tokio::test]
async fn saga_steps_and_unnamed_shared_calls_are_refused_precisely() {
    let mut platform = Platform::start("gw-internal").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let keys = &platform.keys;
    let mut products = InventoryServiceClient::new(channel.clone());
    products
        .create_product(with_key(
            product_request("MUG-1", "create-1"),
            &keys.operator,
        ))
        .await
        .expect("an operator creates a product");

    // Stock moves only through the saga, whatever the role.
    let reserve = products
        .reserve_stock(with_key(
            inventory::ReserveStockRequest {
                order_id: uuid::Uuid::now_v7().to_string(),
                lines: vec![inventory::ReservationLine {
                    sku: "MUG-1".to_owned(),
                    quantity: 1,
                }],
                idempotency_key: "reserve-1".to_owned(),
                ..Default::default()
            },
            &keys.admin,
        ))
        .await
        .expect_err("a saga step");
    assert_eq!(reserve.code(), Code::PermissionDenied);
    let product = products
        .get_product(with_key(
            inventory::GetProductRequest {
                sku: "MUG-1".to_owned(),
            },
            &keys.viewer,
        ))
        .await
        .expect("product")
        .into_inner()
        .product
        .expect("product");
    assert_eq!((product.available, product.reserved), (10, 0));

    // Dead letters live in every service: the caller says whose.
    let mut dead_letters = DeadLetterServiceClient::new(channel.clone());
    let unnamed = dead_letters
        .list_dead_letters(with_key(
            saga::ListDeadLettersRequest::default(),
            &keys.viewer,
        ))
        .await
        .expect_err("no service named");
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    assert!(unnamed.message().contains("x-zentra-service"));
    let wrong = dead_letters
        .list_dead_letters(for_service(
            with_key(saga::ListDeadLettersRequest::default(), &keys.viewer),
            "billing",
        ))
        .await
        .expect_err("no such service");
    assert_eq!(wrong.code(), Code::InvalidArgument);
    dead_letters
        .list_dead_letters(for_service(
            with_key(saga::ListDeadLettersRequest::default(), &keys.viewer),
            "inventory",
        ))
        .await
        .expect("inventory's dead letters");

    // A service that is down is UNAVAILABLE, named.
    let mut saga_ops = OpsServiceClient::new(channel);
    let down = saga_ops
        .get_health_summary(for_service(
            with_key(ops::GetHealthSummaryRequest {}, &keys.viewer),
            "saga",
        ))
        .await
        .expect_err("the saga is not running here");
    assert_eq!(down.code(), Code::Unavailable);
    assert!(down.message().contains("saga"), "{down:?}");
    platform.stop().await;
}

#[tokio::test]
async fn signed_tokens_carry_a_role_and_oversized_requests_are_refused() {
    let mut platform = Platform::start("gw-jwt").await;
    let options = GatewayOptions {
        max_request_bytes: 4096,
        ..GatewayOptions::default()
    };
    let (_, channel) = platform.gateway(&options).await;
    let mut orders = OrderServiceClient::new(channel);
    let bearer = |token: String, message: order::PlaceOrderRequest| {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}")).expect("ascii"),
        );
        request
    };

    let placed = orders
        .place_order(bearer(
            jwt("ana", "operator", JWT_SECRET, 3600),
            order_request("cust-jwt", "jwt-1"),
        ))
        .await
        .expect("an operator's token places an order");
    assert!(placed.into_inner().order.is_some());
    let expired = orders
        .place_order(bearer(
            jwt("ana", "operator", JWT_SECRET, -3600),
            order_request("cust-jwt", "jwt-2"),
        ))
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), Code::Unauthenticated);
    let viewer = orders
        .place_order(bearer(
            jwt("vic", "viewer", JWT_SECRET, 3600),
            order_request("cust-jwt", "jwt-3"),
        ))
        .await
        .expect_err("a viewer's token");
    assert_eq!(viewer.code(), Code::PermissionDenied);

    let mut huge = order_request("cust-jwt", "jwt-4");
    huge.customer_id = "x".repeat(8 * 1024);
    let too_large = orders
        .place_order(bearer(jwt("ana", "operator", JWT_SECRET, 3600), huge))
        .await
        .expect_err("too large");
    assert_eq!(too_large.code(), Code::ResourceExhausted);
    assert!(too_large.message().contains("4096"), "{too_large:?}");
    assert_eq!(orders_stored(&platform).await, 1);
    platform.stop().await;
}

/// An HS256 token for `sub` with `role`, expiring `expires_in` seconds from now (negative: past).
fn jwt(sub: &str, role: &str, secret: &str, expires_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "role": role, "iss": "zentra", "exp": now + expires_in}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token")
}

#[tokio::test]
async fn a_call_without_a_deadline_gets_the_gateways_default() {
    let mut platform = Platform::start("gw-deadline").await;
    let options = GatewayOptions {
        default_deadline: Duration::from_millis(300),
        ..GatewayOptions::default()
    };
    let (_, channel) = platform.gateway(&options).await;
    let mut ops = OpsServiceClient::new(channel.clone());
    ops.inject_fault(for_service(
        with_key(
            ops::InjectFaultRequest {
                fault: Some(ops::Fault {
                    kind: ops::FaultKind::Latency as i32,
                    latency_min: Some(prost_types::Duration {
                        seconds: 2,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                idempotency_key: "slow-1".to_owned(),
                reason: String::new(),
            },
            &platform.keys.admin,
        ),
        "inventory",
    ))
    .await
    .expect("latency injected");
    let mut products = InventoryServiceClient::new(channel);
    let late = products
        .list_products(with_key(
            inventory::ListProductsRequest::default(),
            &platform.keys.viewer,
        ))
        .await
        .expect_err("no answer within the default deadline");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    platform.stop().await;
}

#[tokio::test]
async fn the_session_names_the_caller_and_its_role_and_cannot_be_forged() {
    use zentra_proto::gateway::v1::{
        self as gateway, gateway_service_client::GatewayServiceClient,
    };
    let mut platform = Platform::start("gw-session").await;
    let (_, channel) = platform.gateway(&GatewayOptions::default()).await;
    let mut sessions = GatewayServiceClient::new(channel);
    let session = sessions
        .get_session(with_key(
            gateway::GetSessionRequest {},
            &platform.keys.operator,
        ))
        .await
        .expect("session")
        .into_inner();
    assert_eq!(session.caller_id, "key:operator");
    assert_eq!(session.role, gateway::Role::Operator as i32);
    assert!(!session.service_history, "no Prometheus is configured");

    let mut forged = with_key(gateway::GetSessionRequest {}, &platform.keys.viewer);
    forged
        .metadata_mut()
        .insert("x-zentra-role", MetadataValue::from_static("admin"));
    forged
        .metadata_mut()
        .insert("x-zentra-caller", MetadataValue::from_static("key:admin"));
    let session = sessions
        .get_session(forged)
        .await
        .expect("session")
        .into_inner();
    assert_eq!(session.role, gateway::Role::Viewer as i32);
    assert_eq!(session.caller_id, "key:viewer");

    let anonymous = sessions
        .get_session(gateway::GetSessionRequest {})
        .await
        .expect_err("no key");
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // History needs a Prometheus, and this gateway has none configured.
    let history = sessions
        .get_service_history(with_key(
            gateway::GetServiceHistoryRequest {
                service: "order".to_owned(),
                window: None,
            },
            &platform.keys.viewer,
        ))
        .await
        .expect_err("no Prometheus");
    assert_eq!(history.code(), Code::FailedPrecondition, "{history:?}");
    assert!(history.message().contains("prometheus_url"), "{history:?}");
    platform.stop().await;
}
