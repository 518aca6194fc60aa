//! Runs one process of the stack and keeps it running: its output goes to the combined log with
//! its name in front, and when it dies (a crash, `kill -9`, the ops API's kill fault) it is
//! started again after a short, growing pause. Stopping asks it to end (SIGTERM), then insists.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    process::{Child, Command},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// How to start a process.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Its name in the log.
    pub name: &'static str,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to the environment.
    pub env: Vec<(String, String)>,
    /// Its working directory, when not the stack's.
    pub cwd: Option<PathBuf>,
}

/// Where every process's lines go: the terminal and one file, each line prefixed by its source.
#[derive(Clone)]
pub struct CombinedLog {
    color: bool,
    file: Arc<Mutex<std::fs::File>>,
}

const COLORS: [&str; 6] = ["36", "32", "33", "35", "34", "31"];

impl CombinedLog {
    /// Appends to `file`; colors on a terminal.
    pub fn new(file: std::fs::File, color: bool) -> Self {
        Self {
            color,
            file: Arc::new(Mutex::new(file)),
        }
    }

    /// Writes one line from `source`.
    pub fn line(&self, source: &str, text: &str) {
        let prefix = format!("{source:>12} |");
        if self.color {
            let color = COLORS[source.bytes().map(usize::from).sum::<usize>() % COLORS.len()];
            println!("\x1b[{color}m{prefix}\x1b[0m {text}");
        } else {
            println!("{prefix} {text}");
        }
        if let Ok(mut file) = self.file.lock() {
            let _ = writeln!(file, "{prefix} {text}");
        }
    }
}

/// A supervised process.
pub struct Supervised {
    /// Its name.
    pub name: &'static str,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Supervised {
    /// Starts `launch` and restarts it whenever it exits until [`Supervised::stop`].
    pub fn start(launch: Launch, log: CombinedLog) -> Self {
        let stop = CancellationToken::new();
        let name = launch.name;
        let task = tokio::spawn(supervise(launch, log, stop.clone()));
        Self { name, stop, task }
    }

    /// Stops it (SIGTERM, then SIGKILL after `grace`) and waits until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Pause before the first restart; it doubles up to [`MAX_BACKOFF`] while the process keeps
/// dying young.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A process that ran this long was healthy: its next restart is quick again.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long a process may take to stop after SIGTERM.
const GRACE: Duration = Duration::from_secs(15);

async fn supervise(launch: Launch, log: CombinedLog, stop: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    let mut starts = 0_u32;
    loop {
        let started = Instant::now();
        starts += 1;
        let child = spawn(&launch, &log);
        let mut child = match child {
            Ok(child) => child,
            Err(error) => {
                log.line(
                    launch.name,
                    &format!("cannot start {}: {error}", launch.program.display()),
                );
                if pause(&stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if starts > 1 {
            log.line(launch.name, &format!("restarted (start {starts})"));
        }
        tokio::select! {
            status = child.wait() => {
                let status = status.map(describe).unwrap_or_else(|error| error.to_string());
                if stop.is_cancelled() {
                    return;
                }
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
                log.line(
                    launch.name,
                    &format!("exited ({status}); restarting in {} ms", backoff.as_millis()),
                );
                if pause(&stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            () = stop.cancelled() => {
                terminate(&mut child, launch.name, &log).await;
                return;
            }
        }
    }
}

/// Sleeps `duration` unless stopped first; true when stopped.
async fn pause(stop: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        () = stop.cancelled() => true,
    }
}

fn spawn(launch: &Launch, log: &CombinedLog) -> std::io::Result<Child> {
    let mut command = Command::new(&launch.program);
    command
        .args(&launch.args)
        .envs(launch.env.iter().map(|(key, value)| (key, value)))
        .current_dir(launch.cwd.as_deref().unwrap_or(Path::new(".")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: Ctrl-C reaches the stack only, which stops everything in order.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, launch.name, log.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, launch.name, log.clone()));
    }
    Ok(child)
}

async fn pump(stream: impl AsyncRead + Unpin, name: &'static str, log: CombinedLog) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.line(name, &line);
    }
}

async fn terminate(child: &mut Child, name: &'static str, log: &CombinedLog) {
    if let Some(pid) = child.id() {
        // SIGTERM lets a service drain its calls and commit its consumers' offsets.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    match tokio::time::timeout(GRACE, child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            log.line(name, &format!("did not stop within {GRACE:?}; killing it"));
            let _ = child.kill().await;
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}
