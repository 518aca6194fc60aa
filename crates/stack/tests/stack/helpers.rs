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
