//! The notification service's own settings, under `[notification]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration of the notification service.
pub type Config = zentra_runtime::config::ServiceConfig<NotificationConfig>;

/// The `[notification]` section.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NotificationConfig {
    /// Notification settings.
    #[serde(default)]
    pub notification: NotificationSettings,
}

/// SMTP delivery and its retries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationSettings {
    /// SMTP server host.
    pub smtp_host: String,
    /// SMTP server port.
    pub smtp_port: u16,
    /// SMTP connection and command timeout.
    #[serde(with = "humantime_serde")]
    pub smtp_timeout: Duration,
    /// Sender address.
    pub from: String,
    /// Delivery attempts before a notification is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the second attempt; doubles each time.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay between attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Delivery workers, each holding a database connection and the row locks of up to 8 mails
    /// (`delivery::BATCH`) while the SMTP server answers them (at most 8: the pool has 16).
    pub concurrency: usize,
    /// How often the service looks for due notifications (retries, and other replicas' work;
    /// one worker looks, and shares what it finds); a notification created here wakes a worker
    /// at once.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for NotificationSettings {
    fn default() -> Self {
        Self {
            smtp_host: "127.0.0.1".to_owned(),
            smtp_port: 2525,
            smtp_timeout: Duration::from_secs(10),
            from: "Zentra <orders@zentra.test>".to_owned(),
            max_attempts: 5,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            concurrency: 4,
        }
    }
}
