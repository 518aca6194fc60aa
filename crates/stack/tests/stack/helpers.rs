//! Running the stack binary as a user does, and reading what it prints.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};
use zentra_runtime::pki::{Layout, TOOLS_CERT};
use zentra_test_support::{eventually, kafka_bootstrap, postgres_admin_url};

/// The stack binary's directory, holding the service binaries it runs (built if missing).
pub fn binaries(services: &[&str]) -> PathBuf {
    let stack = PathBuf::from(env!("CARGO_BIN_EXE_zentra-stack"));
    let dir = stack.parent().expect("bin dir").to_path_buf();
    for service in services {
        let binary = format!("zentra-{service}");
        if !dir.join(&binary).is_file() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let status = std::process::Command::new(cargo)
                .args(["build", "-p", &binary, "--bin", &binary])
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building {binary}");
        }
    }
    dir
}

/// A base port whose next `count` ports are free right now.
pub fn free_base_port(count: u16) -> u16 {
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = listener.local_addr().expect("addr").port() - 1;
        drop(listener);
        if base.checked_add(count).is_some()
            && (1..=count)
                .all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok())
        {
            return base;
        }
    }
}

/// A free port outside `base + 1 ..= base + count` and not in `taken`.
pub fn free_port_besides(base: u16, count: u16, taken: &[u16]) -> u16 {
    loop {
        let port = free_base_port(1) + 1;
        if !(base + 1..=base + count).contains(&port) && !taken.contains(&port) {
            return port;
        }
    }
}

/// A connection to the stack's service on `port`, with the certificate the stack issued to tools.
pub async fn service_channel(state_dir: &Path, port: u16) -> tonic::transport::Channel {
    let tls = Layout::of_stack(state_dir).client_tls(TOOLS_CERT);
    zentra_runtime::client::endpoint(&format!("https://localhost:{port}"), Some(&tls))
        .expect("the stack's certificates")
        .connect()
        .await
        .expect("connect with the stack's tool certificate")
}

/// A running `zentra-stack` and the lines it printed. Dropped (a test failed), it is told to stop
/// as Ctrl-C would: killed outright, it would leave its children running.
pub struct RunningStack {
    pub child: Child,
    pub output: Output,
}

/// Where and how a test's stack runs.
pub struct StackOptions<'a> {
    /// `--only`.
    pub only: &'a str,
    pub state_dir: &'a Path,
    pub base_port: u16,
    pub gateway_port: u16,
    pub db_prefix: &'a str,
    pub topic_prefix: &'a str,
    /// More variables for the stack and its children.
    pub env: Vec<(&'a str, String)>,
    /// More arguments.
    pub args: &'a [&'a str],
}

impl RunningStack {
    /// Starts the stack on the tests' broker and PostgreSQL server and waits for its ready line.
    pub async fn start(options: StackOptions<'_>) -> Self {
        let services: Vec<&str> = options
            .only
            .split(',')
            .filter(|name| *name != "gateway")
            .collect();
        let bin_dir = binaries(&services);
        let admin = postgres_admin_url();
        let pg_server = admin
            .rsplit_once('/')
            .map(|(server, _)| server.to_owned())
            .expect("url");
        let mut child = Command::new(bin_dir.join("zentra-stack"))
            .args(["--only", options.only, "--state-dir"])
            .arg(options.state_dir)
            .args(options.args)
            .env("ZENTRA_STACK_BASE_PORT", options.base_port.to_string())
            .env(
                "ZENTRA_STACK_GATEWAY_PORT",
                options.gateway_port.to_string(),
            )
            .env("ZENTRA_STACK_KAFKA", kafka_bootstrap())
            .env("ZENTRA_STACK_DB_PREFIX", options.db_prefix)
            .env("ZENTRA_STACK_TOPIC_PREFIX", options.topic_prefix)
            .env("ZENTRA_STACK_PG_URL", pg_server)
            .envs(options.env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stack starts");
        let output = Output::default();
        for stream in [
            Box::new(child.stdout.take().expect("stdout"))
                as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut seen) = output.0.lock() {
                        seen.push(line);
                    }
                }
            });
        }
        output
            .wait_for("the ready line", Duration::from_secs(120), |line| {
                line.contains(zentra_stack::READY)
            })
            .await;
        Self { child, output }
    }

    /// Stops it as Ctrl-C would (SIGTERM), so it stops its children, and waits for its exit.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        self.terminate();
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the stack stops")
            .expect("exit status")
    }

    fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for RunningStack {
    fn drop(&mut self) {
        // Once it exited (stopped, or waited on) there is no id and nothing to do.
        self.terminate();
    }
}

/// Lines the stack printed so far.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    pub fn contains(&self, predicate: impl Fn(&str) -> bool) -> bool {
        self.0
            .lock()
            .map(|lines| lines.iter().any(|line| predicate(line)))
            .unwrap_or(false)
    }

    pub fn count(&self, predicate: impl Fn(&str) -> bool) -> usize {
        self.0
            .lock()
            .map(|lines| lines.iter().filter(|line| predicate(line)).count())
            .unwrap_or(0)
    }

    pub fn dump(&self) -> String {
        self.0
            .lock()
            .map(|lines| lines.join("\n"))
            .unwrap_or_default()
    }

    pub async fn wait_for(&self, what: &str, within: Duration, predicate: impl Fn(&str) -> bool) {
        let seen = eventually(within, || {
            let found = self.contains(&predicate);
            async move { found.then_some(()) }
        })
        .await;
        assert!(seen.is_some(), "never saw {what}:\n{}", self.dump());
    }
}

/// What one test's stack owns: database and topic prefixes and a state directory of its own,
/// free ports (its services on `base_port + 1 ..= base_port + 6`, the gateway, one spare for
/// whatever else it runs), and a fresh database for each of its services.
pub struct Scratch {
    pub db_prefix: String,
    pub topic_prefix: String,
    pub state_dir: PathBuf,
    pub base_port: u16,
    pub gateway_port: u16,
    pub spare_port: u16,
    /// The mail sink's port.
    pub smtp_port: u16,
    databases: Vec<zentra_test_support::TestDatabase>,
}

impl Scratch {
    /// Names and ports for a test labelled `label`, and databases for `services`.
    pub async fn new(label: &str, services: &[&str]) -> Self {
        let suffix = zentra_test_support::unique_suffix();
        let db_prefix = format!("zt_{label}_{suffix}_");
        let mut databases = Vec::new();
        for service in services {
            databases.push(
                zentra_test_support::TestDatabase::create_named(&format!("{db_prefix}{service}"))
                    .await
                    .expect("database"),
            );
        }
        let base_port = free_base_port(6);
        let gateway_port = free_port_besides(base_port, 6, &[]);
        let spare_port = free_port_besides(base_port, 6, &[gateway_port]);
        Self {
            db_prefix,
            topic_prefix: format!("zt-{label}-{suffix}."),
            state_dir: std::env::temp_dir().join(format!("zentra-stack-{label}-{suffix}")),
            base_port,
            gateway_port,
            spare_port,
            smtp_port: free_port_besides(base_port, 6, &[gateway_port, spare_port]),
            databases,
        }
    }

    /// Names and ports for a test labelled `label`, and a database for every service.
    pub async fn for_platform(label: &str) -> Self {
        let services: Vec<&str> = zentra_stack::settings::SERVICES
            .iter()
            .map(|service| service.name())
            .collect();
        Self::new(label, &services).await
    }

    /// Starts every service and the gateway, with the mail sink on [`Scratch::smtp_port`] and
    /// shipments dispatched at once, plus `env` and `args`.
    pub async fn start_platform(
        &self,
        mut env: Vec<(&str, String)>,
        args: &[&str],
    ) -> RunningStack {
        env.extend([
            ("ZENTRA_STACK_SMTP_PORT", self.smtp_port.to_string()),
            ("ZENTRA_FULFILLMENT__STEP_DELAY", "0s".to_owned()),
        ]);
        self.start(
            "inventory,order,payment,fulfillment,notification,saga,gateway",
            env,
            args,
        )
        .await
    }

    /// Starts the stack with `--only only`, `env` and `args` on these names and ports.
    pub async fn start(&self, only: &str, env: Vec<(&str, String)>, args: &[&str]) -> RunningStack {
        RunningStack::start(StackOptions {
            only,
            state_dir: &self.state_dir,
            base_port: self.base_port,
            gateway_port: self.gateway_port,
            db_prefix: &self.db_prefix,
            topic_prefix: &self.topic_prefix,
            env,
            args,
        })
        .await
    }

    /// Removes what the test's stack left: its state directory, topics and databases.
    pub async fn clean_up(self) {
        let _ = std::fs::remove_dir_all(&self.state_dir);
        zentra_test_support::delete_topics_with_prefix(&self.topic_prefix).await;
        for database in self.databases {
            database.drop_database().await.expect("drop database");
        }
    }
}

/// The development key `name` (`ZENTRA_VIEWER_KEY`, ...) the stack wrote into `state_dir`.
pub fn dev_key(state_dir: &Path, name: &str) -> String {
    let text =
        std::fs::read_to_string(state_dir.join(zentra_stack::keys::KEYS_FILE)).expect("dev keys");
    zentra_stack::keys::key_in(&text, name)
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no {name} in the dev keys"))
}

/// A request carrying `key`, and naming the service it is for when it is one every service serves.
pub fn keyed<T>(message: T, key: &str, service: Option<&'static str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "x-api-key",
        tonic::metadata::MetadataValue::try_from(key).expect("ascii key"),
    );
    if let Some(service) = service {
        request.metadata_mut().insert(
            "x-zentra-service",
            tonic::metadata::MetadataValue::from_static(service),
        );
    }
    request
}

/// A connection to the gateway on `port` (plaintext on loopback).
pub async fn gateway_channel(port: u16) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("url")
        .connect()
        .await
        .expect("gateway")
}

/// Creates `sku` at `price` with 5 in stock, then places an order of `quantity` of it for a US
/// address, paid with the simulator's `token` (`tok_approve`, `tok_transient`, ...), through the
/// gateway as `operator`.
pub async fn order_through_gateway(
    gateway: &tonic::transport::Channel,
    operator: &str,
    sku: &str,
    price: zentra_proto::common::v1::Money,
    quantity: i64,
    token: &str,
) -> zentra_proto::order::v1::Order {
    use zentra_proto::{
        common::v1::Address,
        inventory::v1::{CreateProductRequest, inventory_service_client::InventoryServiceClient},
        order::v1::{OrderLine, PlaceOrderRequest, order_service_client::OrderServiceClient},
    };
    InventoryServiceClient::new(gateway.clone())
        .create_product(keyed(
            CreateProductRequest {
                sku: sku.to_owned(),
                name: format!("Product {sku}"),
                initial_stock: 5,
                unit_price: Some(price.clone()),
                idempotency_key: format!("product-{sku}"),
                ..Default::default()
            },
            operator,
            None,
        ))
        .await
        .expect("product");
    OrderServiceClient::new(gateway.clone())
        .place_order(keyed(
            PlaceOrderRequest {
                customer_id: "stack-customer".to_owned(),
                customer_email: "stack@customers.zentra.test".to_owned(),
                shipping_address: Some(Address {
                    recipient: "Ada".to_owned(),
                    lines: vec!["1 Main St".to_owned()],
                    city: "Springfield".to_owned(),
                    postal_code: "12345".to_owned(),
                    country_code: "US".to_owned(),
                    ..Default::default()
                }),
                lines: vec![OrderLine {
                    sku: sku.to_owned(),
                    quantity,
                    unit_price: Some(price),
                    ..Default::default()
                }],
                currency_code: "USD".to_owned(),
                payment_method_token: token.to_owned(),
                idempotency_key: format!("order-{sku}"),
            },
            operator,
            None,
        ))
        .await
        .expect("order placed")
        .into_inner()
        .order
        .expect("order")
}

/// The saga of `order_id` once `wanted` holds for it, asked through the gateway as `viewer`.
pub async fn saga_where(
    gateway: &tonic::transport::Channel,
    viewer: &str,
    order_id: &str,
    wanted: impl Fn(&zentra_proto::saga::v1::Saga) -> bool,
    within: Duration,
) -> Option<zentra_proto::saga::v1::Saga> {
    use zentra_proto::saga::v1::{GetSagaRequest, saga_service_client::SagaServiceClient};
    let sagas = SagaServiceClient::new(gateway.clone());
    let wanted = &wanted;
    eventually(within, move || {
        let mut sagas = sagas.clone();
        let request = keyed(
            GetSagaRequest {
                order_id: order_id.to_owned(),
                ..Default::default()
            },
            viewer,
            None,
        );
        async move {
            let saga = sagas.get_saga(request).await.ok()?.into_inner().saga?;
            wanted(&saga).then_some(saga)
        }
    })
    .await
}

/// Whether the saga of `order_id` reaches `state` within `within`.
pub async fn saga_reaches(
    gateway: &tonic::transport::Channel,
    viewer: &str,
    order_id: &str,
    state: zentra_proto::saga::v1::SagaState,
    within: Duration,
) -> bool {
    saga_where(
        gateway,
        viewer,
        order_id,
        |saga| saga.state == state as i32,
        within,
    )
    .await
    .is_some()
}

/// Places an order of one `sku` paid with `tok_approve` (see [`order_through_gateway`]) and
/// waits, up to a minute, for its saga to complete; the order.
pub async fn order_completes(
    stack: &RunningStack,
    gateway: &tonic::transport::Channel,
    (operator, viewer): (&str, &str),
    sku: &str,
    price: zentra_proto::common::v1::Money,
) -> zentra_proto::order::v1::Order {
    let order = order_through_gateway(gateway, operator, sku, price, 1, "tok_approve").await;
    let completed = saga_reaches(
        gateway,
        viewer,
        &order.order_id,
        zentra_proto::saga::v1::SagaState::Completed,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        completed,
        "the saga of order {} did not complete:\n{}",
        order.order_id,
        stack.output.dump()
    );
    order
}
