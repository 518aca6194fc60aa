//! The whole Zentra platform on one machine: the tansu broker, an SMTP sink, every service and
//! the gateway, each a supervised child process with its output in one log, started in order,
//! waited on until healthy, and stopped in reverse order on Ctrl-C.

use std::{
    io::IsTerminal as _,
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

pub mod health;
pub mod keys;
pub mod mail;
pub mod prometheus;
pub mod settings;
pub mod supervisor;

use crate::{
    keys::DevKeys,
    settings::{BrokerStorage, Component, Kafka, Settings},
    supervisor::{CombinedLog, Launch, Supervised},
};

/// The line printed once everything is healthy (scripts wait for it).
pub const READY: &str = "Zentra is up";

/// How long start-up may take before the stack says what is not healthy.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the stack until `shutdown` completes.
pub async fn run(
    mut settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // A broker that already listens there (`just infra` starts one for the tests) is used as is.
    let mut notice = None;
    if let Kafka::Start(port) = settings.kafka
        && TcpListener::bind(("127.0.0.1", port)).is_err()
    {
        settings.kafka = Kafka::External(format!("127.0.0.1:{port}"));
        notice = Some(format!(
            "a broker already listens on 127.0.0.1:{port}: using it (`just infra-down` stops one started by `just infra`)"
        ));
    }
    let components = settings.components();
    check_ports(&settings, &components)?;
    std::fs::create_dir_all(&settings.state_dir)
        .with_context(|| format!("cannot create {}", settings.state_dir.display()))?;
    let keys = DevKeys::load_or_create(&settings.state_dir)?;
    keys.write_gateway_config(&settings.state_dir)?;
    let assertion_key = keys::assertion_key(&settings.state_dir)?;
    // Services admit only holders of a certificate of this CA (mutual TLS); made on the first run.
    let pki_made = zentra_runtime::pki::load_or_create(
        settings.pki().dir(),
        "Zentra development CA",
        &settings::certificate_names(),
    )?;
    if settings.prometheus_port.is_some() {
        prometheus::write(&settings, &components, &keys)?;
    }
    let launches = components
        .iter()
        .map(|component| launch(&settings, *component, &assertion_key))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let log_path = settings.state_dir.join("stack.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log = CombinedLog::new(log_file, std::io::stdout().is_terminal());
    if let Some(notice) = notice {
        log.line("stack", &notice);
    }
    if pki_made {
        log.line(
            "stack",
            &format!(
                "made a development CA and certificates in {}",
                settings.pki().dir().display()
            ),
        );
    }
    log.line("stack", &format!("starting {} processes", launches.len()));

    let mut running: Vec<Supervised> = Vec::new();
    let started = async {
        // Broker and mail first, then the services together, then the gateway in front of them.
        for stage in stages(&components) {
            for component in &stage {
                let index = components
                    .iter()
                    .position(|candidate| candidate == component)
                    .unwrap_or_default();
                running.push(Supervised::start(launches[index].clone(), log.clone()));
            }
            let unhealthy = health::wait_until_healthy(&settings, &stage, START_TIMEOUT).await;
            if !unhealthy.is_empty() {
                log.line(
                    "stack",
                    &format!(
                        "not healthy after {START_TIMEOUT:?}: {} (their lines above say why); still trying",
                        unhealthy.join(", ")
                    ),
                );
            }
        }
        print_banner(&settings, &keys, &log_path, &components);
        log.line("stack", READY);
    };
    tokio::pin!(shutdown);
    tokio::select! {
        () = started => (&mut shutdown).await,
        () = &mut shutdown => {}
    }

    log.line("stack", "stopping (gateway first, broker last)");
    while let Some(process) = running.pop() {
        let name = process.name;
        process.stop().await;
        log.line("stack", &format!("{name} stopped"));
    }
    log.line("stack", "stopped");
    Ok(())
}

/// Components grouped into start stages.
fn stages(components: &[Component]) -> Vec<Vec<Component>> {
    let infrastructure: Vec<Component> = components
        .iter()
        .copied()
        .filter(|component| matches!(component, Component::Broker | Component::Mail))
        .collect();
    let services: Vec<Component> = components
        .iter()
        .copied()
        .filter(|component| matches!(component, Component::Service(..)))
        .collect();
    let gateway: Vec<Component> = components
        .iter()
        .copied()
        .filter(|component| matches!(component, Component::Gateway | Component::Prometheus))
        .collect();
    [infrastructure, services, gateway]
        .into_iter()
        .filter(|stage| !stage.is_empty())
        .collect()
}

/// Every port the stack would listen on must be free; the error names each one taken.
fn check_ports(settings: &Settings, components: &[Component]) -> anyhow::Result<()> {
    let taken: Vec<String> = components
        .iter()
        .filter(|component| settings.port(**component) != 0)
        .filter(|component| TcpListener::bind(("127.0.0.1", settings.port(**component))).is_err())
        .map(|component| format!("{} ({})", settings.port(*component), component.name()))
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "port already in use: {}. Stop what listens there (`just infra-down` stops a broker started by `just infra`) or pick other ports with ZENTRA_STACK_BASE_PORT, ZENTRA_STACK_GATEWAY_PORT, ZENTRA_STACK_KAFKA_PORT, ZENTRA_STACK_SMTP_PORT",
        taken.join(", ")
    )
}

/// Finds a program in `dir`, else on PATH.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    let candidate = dir.join(name);
    if candidate.is_file() {
        return Some(candidate);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// How to start `component`.
fn launch(
    settings: &Settings,
    component: Component,
    assertion_key: &str,
) -> anyhow::Result<Launch> {
    let name = component.name();
    let port = settings.port(component);
    let listen = format!("127.0.0.1:{port}");
    match component {
        Component::Broker => {
            let program = find(&settings.tools_dir, "tansu").context(
                "tansu is not installed: run `deploy/local/install-tools.sh tansu` (or `just tools`)",
            )?;
            let url = format!("tcp://{listen}");
            // tansu opens a SQLite file relative to its working directory, which is the state
            // directory then. A fresh log, as in memory: an old one's events would reach the
            // consumers of fresh databases from offset 0.
            let (storage, cwd) = match settings.broker_storage {
                BrokerStorage::Memory => ("memory://tansu/".to_owned(), None),
                BrokerStorage::Sqlite => {
                    let file = format!("broker-{port}.db");
                    std::fs::create_dir_all(&settings.state_dir)
                        .with_context(|| format!("creating {}", settings.state_dir.display()))?;
                    for suffix in ["", "-wal", "-shm"] {
                        let path = settings.state_dir.join(format!("{file}{suffix}"));
                        match std::fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                            Err(error) => {
                                return Err(error)
                                    .with_context(|| format!("removing {}", path.display()));
                            }
                        }
                    }
                    (format!("sqlite://{file}"), Some(settings.state_dir.clone()))
                }
            };
            Ok(Launch {
                name,
                program,
                args: [
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                    "--storage-engine",
                    &storage,
                ]
                .map(str::to_owned)
                .to_vec(),
                env: Vec::new(),
                cwd,
            })
        }
        Component::Mail => {
            // The sink is this binary's `mail-sink` command (see `mail.rs`).
            let program = settings.bin_dir.join("zentra-stack");
            anyhow::ensure!(
                program.is_file(),
                "{} is not built: run `cargo build --workspace --bins` (or `just up`, which does)",
                program.display()
            );
            let mut args = vec!["mail-sink".to_owned(), listen];
            if settings.mail_log {
                args.push("--log".to_owned());
            }
            Ok(Launch {
                name,
                program,
                args,
                env: Vec::new(),
                cwd: None,
            })
        }
        Component::Service(..) => {
            let service = component.service();
            let program = settings.bin_dir.join(format!("zentra-{service}"));
            anyhow::ensure!(
                program.is_file(),
                "{} is not built: run `cargo build --workspace --bins` (or `just up`, which does)",
                program.display()
            );
            let mut env = common_env(settings, &listen, assertion_key, name);
            // Mutual TLS: only holders of a certificate of the stack's CA get an answer.
            let tls = settings.pki().server_tls(name);
            env.extend([
                (
                    "ZENTRA_GRPC__TLS__CERT_PATH".to_owned(),
                    tls.cert_path.display().to_string(),
                ),
                (
                    "ZENTRA_GRPC__TLS__KEY_PATH".to_owned(),
                    tls.key_path.display().to_string(),
                ),
                (
                    "ZENTRA_GRPC__TLS__CLIENT_CA_PATH".to_owned(),
                    settings.pki().ca_path().display().to_string(),
                ),
            ]);
            // A fixed member id, as a production deployment gives each replica: a restarted
            // process takes its partition leases back at once.
            env.push((
                "ZENTRA_KAFKA__MEMBER_ID".to_owned(),
                format!("stack-{name}"),
            ));
            env.push((
                "ZENTRA_DATABASE__URL".to_owned(),
                format!("{}/{}{service}", settings.pg_url, settings.db_prefix),
            ));
            match service {
                "order" => {
                    env.push((
                        "ZENTRA_ORDER__CATALOGUE_URL".to_owned(),
                        settings.url("inventory"),
                    ));
                }
                "notification" => {
                    env.push((
                        "ZENTRA_NOTIFICATION__SMTP_PORT".to_owned(),
                        settings.smtp_port.to_string(),
                    ));
                }
                "saga" => {
                    for upstream in ["inventory", "order", "payment", "fulfillment"] {
                        env.push((
                            format!("ZENTRA_SAGA__ENDPOINTS__{}", upstream.to_ascii_uppercase()),
                            settings.url(upstream),
                        ));
                    }
                    // A fixed name: after a restart it takes its sagas back at once.
                    let instance = if component == settings::SAGA_REPLICA {
                        "stack-2"
                    } else {
                        "stack-1"
                    };
                    env.push(("ZENTRA_SAGA__INSTANCE_ID".to_owned(), instance.to_owned()));
                }
                _ => {}
            }
            Ok(Launch {
                name,
                program,
                args: Vec::new(),
                env,
                cwd: None,
            })
        }
        Component::Prometheus => {
            let program = find(&settings.tools_dir, "prometheus").context(
                "prometheus is not installed: run `deploy/local/install-tools.sh prometheus` (or `just tools`)",
            )?;
            Ok(Launch {
                name,
                program,
                args: prometheus::args(&settings.state_dir, port),
                env: Vec::new(),
                cwd: None,
            })
        }
        Component::Gateway => {
            let program = settings.bin_dir.join("zentra-gateway");
            anyhow::ensure!(
                program.is_file(),
                "{} is not built: run `cargo build --workspace --bins` (or `just up`, which does)",
                program.display()
            );
            // Plaintext on loopback only (the gateway refuses it elsewhere); mutual TLS upstream.
            let mut env = common_env(settings, &listen, assertion_key, name);
            for (service, _) in settings::SERVICES
                .iter()
                .filter_map(|service| match service {
                    Component::Service(name, offset) => Some((*name, *offset)),
                    _ => None,
                })
            {
                env.push((
                    format!(
                        "ZENTRA_GATEWAY__UPSTREAMS__{}",
                        service.to_ascii_uppercase()
                    ),
                    settings.url(service),
                ));
            }
            env.push((
                "ZENTRA_GATEWAY__RATE_LIMIT__REDIS_URL".to_owned(),
                settings.redis_url.clone(),
            ));
            env.push((
                "ZENTRA_GATEWAY__RATE_LIMIT__KEY_PREFIX".to_owned(),
                format!("zentra:{}", settings.topic_prefix),
            ));
            if let Some(port) = settings.prometheus_port {
                // The control center's Infrastructure page links to it, and its charts read
                // their history from it through the gateway.
                for key in [
                    "ZENTRA_GATEWAY__LINKS__PROMETHEUS",
                    "ZENTRA_GATEWAY__PROMETHEUS_URL",
                ] {
                    env.push((key.to_owned(), format!("http://127.0.0.1:{port}")));
                }
            }
            if let Some(dir) = &settings.static_dir {
                env.push((
                    "ZENTRA_GATEWAY__STATIC_DIR".to_owned(),
                    dir.display().to_string(),
                ));
            }
            Ok(Launch {
                name,
                program,
                args: vec![
                    "--config".to_owned(),
                    settings
                        .state_dir
                        .join(keys::GATEWAY_CONFIG)
                        .display()
                        .to_string(),
                ],
                env,
                cwd: None,
            })
        }
    }
}

fn common_env(
    settings: &Settings,
    listen: &str,
    assertion_key: &str,
    name: &str,
) -> Vec<(String, String)> {
    let client_tls = settings.pki().client_tls(name);
    vec![
        // Calls to other services show this process's certificate and trust only the stack's CA.
        (
            "ZENTRA_CLIENT_TLS__CA_PATH".to_owned(),
            client_tls.ca_path.display().to_string(),
        ),
        (
            "ZENTRA_CLIENT_TLS__CERT_PATH".to_owned(),
            client_tls.cert_path.display().to_string(),
        ),
        (
            "ZENTRA_CLIENT_TLS__KEY_PATH".to_owned(),
            client_tls.key_path.display().to_string(),
        ),
        ("ZENTRA_GRPC__LISTEN_ADDR".to_owned(), listen.to_owned()),
        // The gateway signs its callers with it; the services act for no one unsigned.
        (
            "ZENTRA_CALLER_ASSERTION_KEY".to_owned(),
            assertion_key.to_owned(),
        ),
        (
            "ZENTRA_KAFKA__BOOTSTRAP_SERVERS".to_owned(),
            settings.bootstrap_servers(),
        ),
        (
            "ZENTRA_KAFKA__TOPIC_PREFIX".to_owned(),
            settings.topic_prefix.clone(),
        ),
        (
            "ZENTRA_KAFKA__GROUP_PREFIX".to_owned(),
            settings.topic_prefix.clone(),
        ),
        // Consumers that caught up stop fetching until a producer announces new records here.
        (
            "ZENTRA_KAFKA__WAKE_URL".to_owned(),
            if settings.wake_hints {
                settings.redis_url.clone()
            } else {
                String::new()
            },
        ),
    ]
}

fn print_banner(settings: &Settings, keys: &DevKeys, log_path: &Path, components: &[Component]) {
    let gateway = components.contains(&Component::Gateway);
    println!();
    println!("  {READY}.");
    if gateway {
        println!(
            "  Gateway (gRPC, grpc-web and the control center): http://127.0.0.1:{}",
            settings.gateway_port
        );
    }
    let pki = settings.pki();
    let mut first_service = None;
    for component in components {
        if let Component::Service(name, _) = component {
            println!("    {name:<13} {}", settings.url(name));
            first_service.get_or_insert(settings.port(*component));
        }
    }
    if let Some(port) = first_service {
        println!(
            "  Services answer only certificates of the development CA (mutual TLS), e.g.:\n    \
             grpcurl -cacert {ca} -cert {cert} -key {key} localhost:{port} list",
            ca = pki.ca_path().display(),
            cert = pki.cert_path(zentra_runtime::pki::TOOLS_CERT).display(),
            key = pki.key_path(zentra_runtime::pki::TOOLS_CERT).display(),
        );
    }
    if let Some(port) = settings.prometheus_port {
        println!(
            "  Prometheus (the platform's alert rules loaded; alerts at /alerts): http://127.0.0.1:{port}"
        );
    }
    println!("  Development keys (in {}):", keys.path.display());
    println!("    viewer    {}", keys.viewer);
    println!("    operator  {}", keys.operator);
    println!("    admin     {}", keys.admin);
    if gateway {
        println!(
            "  Try: grpcurl -plaintext -H 'x-api-key: {}' 127.0.0.1:{} list",
            keys.viewer, settings.gateway_port
        );
    }
    println!("  Logs: here, and in {}", log_path.display());
    println!("  Stop: Ctrl-C. The broker keeps messages in memory; PostgreSQL data survives.");
    println!();
}
