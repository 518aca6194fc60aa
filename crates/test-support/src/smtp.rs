//! An SMTP server for tests: aiosmtpd (installed by the project's tool script) writing every
//! message it receives into a Maildir.

use std::{path::PathBuf, process::Child, time::Duration};

use crate::tool;

/// aiosmtpd writing every received message into a Maildir.
pub struct SmtpServer {
    pub port: u16,
    pub maildir: PathBuf,
    child: Child,
}

impl SmtpServer {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let maildir = std::env::temp_dir().join(format!("zentra-smtp-{}", crate::unique_suffix()));
        let child = std::process::Command::new(tool("aiosmtpd"))
            .args([
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "aiosmtpd.handlers.Mailbox",
            ])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("aiosmtpd starts");
        crate::eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await
        .expect("aiosmtpd listens");
        Self {
            port,
            maildir,
            child,
        }
    }

    /// Every message received so far, as text.
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.maildir);
    }
}
