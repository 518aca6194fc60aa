//! Every public RPC, where it goes and who may call it: one table, built from the contracts'
//! descriptor set so a new RPC cannot slip through unclassified (it is denied until listed).

use std::collections::HashMap;

use prost::Message as _;

use crate::auth::Role;

/// A service behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// Products, stock and reservations.
    Inventory,
    /// Orders.
    Order,
    /// Payments.
    Payment,
    /// Shipments.
    Fulfillment,
    /// Customer notifications.
    Notification,
    /// The saga orchestrator.
    Saga,
}

impl Upstream {
    /// Every upstream.
    pub const ALL: [Upstream; 6] = [
        Upstream::Inventory,
        Upstream::Order,
        Upstream::Payment,
        Upstream::Fulfillment,
        Upstream::Notification,
        Upstream::Saga,
    ];

    /// Its name, as in `x-zentra-service` and config.
    pub fn name(self) -> &'static str {
        match self {
            Upstream::Inventory => "inventory",
            Upstream::Order => "order",
            Upstream::Payment => "payment",
            Upstream::Fulfillment => "fulfillment",
            Upstream::Notification => "notification",
            Upstream::Saga => "saga",
        }
    }

    /// The upstream named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|upstream| upstream.name() == name)
    }
}

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Always this service.
    Service(Upstream),
    /// Served by every service: the caller names one in `x-zentra-service`. Without the header
    /// the gateway answers itself when it serves the RPC too (ops, health), else the call is
    /// INVALID_ARGUMENT.
    Chosen {
        /// The gateway serves this RPC itself.
        gateway_serves: bool,
    },
    /// Only the gateway serves it (reflection).
    Gateway,
}

/// Who may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials (health, reflection: load balancers and schema tools).
    Open,
    /// Callers with at least this role.
    Role(Role),
    /// Nobody through the gateway: the saga's own steps (reserve, authorize, ship, ...), so
    /// money and stock only move through the saga.
    Internal,
}

/// One RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Where it goes.
    pub target: Target,
    /// Who may call it.
    pub access: Access,
    /// A server stream (Watch): a longer default deadline.
    pub server_streaming: bool,
    /// An operator or admin action (it changes something): rate limits fail closed for it by
    /// default when Redis is away.
    pub action: bool,
}

/// Operator actions: they change orders, sagas, dead letters or the catalogue.
const OPERATOR: &[&str] = &[
    "zentra.order.v1.OrderService/PlaceOrder",
    "zentra.order.v1.OrderService/CancelOrder",
    "zentra.saga.v1.SagaService/StartSaga",
    "zentra.saga.v1.SagaService/RetrySaga",
    "zentra.saga.v1.SagaService/CancelSaga",
    "zentra.saga.v1.SagaService/ResumeSaga",
    "zentra.saga.v1.SagaService/CreateBulkOperation",
    "zentra.saga.v1.SagaService/CancelBulkOperation",
    "zentra.saga.v1.CircuitBreakerService/ResetCircuitBreaker",
    "zentra.saga.v1.DeadLetterService/ReplayDeadLetter",
    "zentra.saga.v1.DeadLetterService/DismissDeadLetter",
    "zentra.inventory.v1.InventoryService/CreateProduct",
    "zentra.inventory.v1.InventoryService/SetProductPrice",
    "zentra.inventory.v1.InventoryService/AdjustStock",
];

/// Reads for operators: who did what, and what costs the broker a round of requests.
const OPERATOR_READS: &[&str] = &[
    "zentra.ops.v1.OpsService/ListAuditRecords",
    // Who acted on which sagas, and why, as the audit records say.
    "zentra.saga.v1.SagaService/GetBulkOperation",
    "zentra.saga.v1.SagaService/ListBulkOperations",
    "zentra.saga.v1.SagaService/ListBulkOperationResults",
    "zentra.ops.v1.OpsService/ListBrokerTopics",
];

/// Admin actions: they change how a service behaves, or show its configuration.
const ADMIN: &[&str] = &[
    "zentra.ops.v1.OpsService/SetLogLevel",
    "zentra.ops.v1.OpsService/InjectFault",
    "zentra.ops.v1.OpsService/ClearFaults",
    "zentra.ops.v1.OpsService/GetEffectiveConfig",
];

/// The routing and access table.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: HashMap<String, Route>,
}

impl RouteTable {
    /// Classifies every RPC of the contracts.
    pub fn from_contracts() -> Self {
        let mut routes = HashMap::new();
        let descriptors = prost_types::FileDescriptorSet::decode(zentra_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        for file in &descriptors.file {
            for service in &file.service {
                let service_name = format!("{}.{}", file.package(), service.name());
                let Some(target) = target_of(&service_name) else {
                    continue;
                };
                for method in &service.method {
                    let path = format!("{service_name}/{}", method.name());
                    let route = Route {
                        target,
                        access: access_of(&path, method.name()),
                        server_streaming: method.server_streaming(),
                        action: (OPERATOR.contains(&path.as_str())
                            || ADMIN.contains(&path.as_str()))
                            && !is_read(method.name()),
                    };
                    routes.insert(path, route);
                }
            }
        }
        for path in ["grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch"] {
            routes.insert(
                path.to_owned(),
                Route {
                    target: Target::Chosen {
                        gateway_serves: true,
                    },
                    access: Access::Open,
                    server_streaming: path.ends_with("Watch"),
                    action: false,
                },
            );
        }
        for path in [
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            routes.insert(
                path.to_owned(),
                Route {
                    target: Target::Gateway,
                    access: Access::Open,
                    server_streaming: true,
                    action: false,
                },
            );
        }
        Self { routes }
    }

    /// The route of `service/method`, if the gateway knows it.
    pub fn get(&self, path: &str) -> Option<&Route> {
        self.routes.get(path)
    }

    /// The services the gateway forwards (for reflection and metrics).
    pub fn routed_services(&self) -> Vec<String> {
        let mut services: Vec<String> = self
            .routes
            .iter()
            .filter(|(path, route)| {
                route.target != Target::Gateway
                    && path.starts_with("zentra.")
                    && !path.starts_with("zentra.ops.")
            })
            .filter_map(|(path, _)| path.split_once('/').map(|(service, _)| service.to_owned()))
            .collect();
        services.sort();
        services.dedup();
        services
    }
}

fn target_of(service: &str) -> Option<Target> {
    let upstream = match service {
        "zentra.saga.v1.DeadLetterService" => {
            return Some(Target::Chosen {
                gateway_serves: false,
            });
        }
        "zentra.ops.v1.OpsService" => {
            return Some(Target::Chosen {
                gateway_serves: true,
            });
        }
        "zentra.gateway.v1.GatewayService" => return Some(Target::Gateway),
        "zentra.saga.v1.SagaService" | "zentra.saga.v1.CircuitBreakerService" => Upstream::Saga,
        "zentra.order.v1.OrderService" => Upstream::Order,
        "zentra.inventory.v1.InventoryService" => Upstream::Inventory,
        "zentra.payment.v1.PaymentService" => Upstream::Payment,
        "zentra.fulfillment.v1.FulfillmentService" => Upstream::Fulfillment,
        "zentra.notification.v1.NotificationService" => Upstream::Notification,
        _ => return None,
    };
    Some(Target::Service(upstream))
}

/// A method that only reads, by its name.
fn is_read(method: &str) -> bool {
    ["Get", "BatchGet", "List", "Watch"]
        .iter()
        .any(|read| method.starts_with(read))
}

fn access_of(path: &str, method: &str) -> Access {
    if ADMIN.contains(&path) {
        Access::Role(Role::Admin)
    } else if OPERATOR.contains(&path) || OPERATOR_READS.contains(&path) {
        Access::Role(Role::Operator)
    } else if is_read(method) {
        Access::Role(Role::Viewer)
    } else {
        Access::Internal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths_with(table: &RouteTable, access: Access) -> Vec<String> {
        let mut paths: Vec<String> = table
            .routes
            .iter()
            .filter(|(_, route)| route.access == access)
            .map(|(path, _)| path.clone())
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn every_listed_action_exists_in_the_contracts() {
        let table = RouteTable::from_contracts();
        for path in OPERATOR.iter().chain(ADMIN) {
            assert!(table.get(path).is_some(), "{path} is not in the contracts");
        }
    }

    #[test]
    fn the_saga_steps_are_internal_and_nothing_else_is() {
        let table = RouteTable::from_contracts();
        assert_eq!(
            paths_with(&table, Access::Internal),
            [
                "zentra.fulfillment.v1.FulfillmentService/CancelShipment",
                "zentra.fulfillment.v1.FulfillmentService/CreateShipment",
                "zentra.inventory.v1.InventoryService/ConfirmReservation",
                "zentra.inventory.v1.InventoryService/PinReservation",
                "zentra.inventory.v1.InventoryService/ReleaseReservation",
                "zentra.inventory.v1.InventoryService/ReserveStock",
                "zentra.order.v1.OrderService/CompleteCancellation",
                "zentra.order.v1.OrderService/ConfirmOrder",
                "zentra.order.v1.OrderService/RejectOrder",
                "zentra.payment.v1.PaymentService/Authorize",
                "zentra.payment.v1.PaymentService/Capture",
                "zentra.payment.v1.PaymentService/Refund",
                "zentra.payment.v1.PaymentService/Void",
            ]
        );
    }

    #[test]
    fn reads_are_for_viewers_and_watches_stream() {
        let table = RouteTable::from_contracts();
        let watch = table
            .get("zentra.saga.v1.SagaService/WatchSaga")
            .expect("watch");
        assert_eq!(watch.access, Access::Role(Role::Viewer));
        assert!(watch.server_streaming);
        assert_eq!(watch.target, Target::Service(Upstream::Saga));
        let list = table
            .get("zentra.saga.v1.DeadLetterService/ListDeadLetters")
            .expect("list");
        assert_eq!(
            list.target,
            Target::Chosen {
                gateway_serves: false
            }
        );
        assert!(!table.routed_services().is_empty());
        assert!(
            !table
                .routed_services()
                .contains(&"zentra.ops.v1.OpsService".to_owned())
        );
    }
}
