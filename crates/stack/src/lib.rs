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
pub mod settings;
pub mod supervisor;

use crate::{
    keys::DevKeys,
    settings::{Component, Kafka, Settings},
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
        .filter(|component| matches!(component, Component::Gateway))
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
                    "memory://tansu/",
                ]
                .map(str::to_owned)
                .to_vec(),
                env: Vec::new(),
            })
        }
        Component::Mail => {
            let program = find(&settings.tools_dir, "aiosmtpd").context(
                "aiosmtpd is not installed: run `deploy/local/install-tools.sh aiosmtpd` (or `just tools`)",
            )?;
            Ok(Launch {
                name,
                program,
                args: if settings.mail_log {
                    vec!["-n".to_owned(), "-l".to_owned(), listen]
                } else {
                    ["-n", "-c", "aiosmtpd.handlers.Sink", "-l", &listen]
                        .map(str::to_owned)
                        .to_vec()
                },
                env: Vec::new(),
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
            let mut env = common_env(settings, &listen, assertion_key);
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
            })
        }
        Component::Gateway => {
            let program = settings.bin_dir.join("zentra-gateway");
            anyhow::ensure!(
                program.is_file(),
                "{} is not built: run `cargo build --workspace --bins` (or `just up`, which does)",
                program.display()
            );
            let mut env = common_env(settings, &listen, assertion_key);
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
            })
        }
    }
}

fn common_env(settings: &Settings, listen: &str, assertion_key: &str) -> Vec<(String, String)> {
    vec![
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
    for component in components {
        if let Component::Service(name, _) = component {
            println!("    {name:<13} {}", settings.url(name));
        }
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
