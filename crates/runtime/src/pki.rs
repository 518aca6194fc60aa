//! The platform's certificates on disk: one directory holding a CA's certificate and, per
//! process, a certificate and key that CA signed (`<name>.pem`, `<name>.key`). Services serve
//! with theirs and admit only clients holding one ([`Layout::server_tls`]); callers present
//! theirs and trust only the CA ([`Layout::client_tls`]).
//!
//! With the `dev-pki` feature, [`Authority`] makes such a directory: `just up` keeps one in its
//! state directory, tests make their own. Production brings certificates from its own CA and
//! needs none of this: only the paths in the config.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::config::{ClientTlsConfig, TlsConfig};

/// The name of the CA's certificate file in a layout.
pub const CA_FILE: &str = "ca.pem";

/// Where a local stack (`just up`) keeps its layout, under its state directory.
pub const STACK_DIR: &str = "pki";

/// The certificate a local stack issues to the developer's tools (grpcurl, `just bench`,
/// `just chaos`) and to its own health checks.
pub const TOOLS_CERT: &str = "client";

/// A directory of the platform's certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The layout of the local stack whose state directory is `state_dir`.
    pub fn of_stack(state_dir: &Path) -> Self {
        Self::new(state_dir.join(STACK_DIR))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }

    /// `name`'s certificate.
    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// `name`'s private key.
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// How `name` serves: with its certificate, to clients holding one of the CA's (mutual TLS).
    pub fn server_tls(&self, name: &str) -> TlsConfig {
        TlsConfig {
            cert_path: self.cert_path(name),
            key_path: self.key_path(name),
            client_ca_path: Some(self.ca_path()),
        }
    }

    /// How `name` calls the platform's services: showing its certificate, trusting the CA.
    pub fn client_tls(&self, name: &str) -> ClientTlsConfig {
        ClientTlsConfig {
            ca_path: self.ca_path(),
            cert_path: self.cert_path(name),
            key_path: self.key_path(name),
        }
    }

    /// Whether the CA and every one of `names` has its files here.
    pub fn holds(&self, names: &[&str]) -> bool {
        self.ca_path().is_file()
            && names
                .iter()
                .all(|name| self.cert_path(name).is_file() && self.key_path(name).is_file())
    }
}

/// Writes `text` and a newline to `path`, readable by its owner only (an existing file is
/// tightened too).
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{}", text.trim_end())?;
    Ok(())
}

#[cfg(feature = "dev-pki")]
pub use authority::{Authority, DEV_VALIDITY_DAYS, load_or_create};

#[cfg(feature = "dev-pki")]
mod authority {
    use std::path::Path;

    use anyhow::Context as _;
    use chrono::{Datelike as _, Utc};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };

    use super::{Layout, write_private};

    /// How long a development CA and its certificates are valid.
    pub const DEV_VALIDITY_DAYS: i64 = 397;
    /// A layout whose certificates expire sooner than this is made again.
    const RENEW_BEFORE_DAYS: i64 = 30;
    /// The file recording until when a made layout is valid (RFC 3339).
    const VALID_UNTIL_FILE: &str = "valid-until";

    /// A certificate authority held in memory: it signs certificates for processes on this
    /// machine (`localhost`, 127.0.0.1, ::1), each good for serving and for calling.
    pub struct Authority {
        issuer: CertifiedIssuer<'static, KeyPair>,
        not_after: chrono::DateTime<Utc>,
    }

    /// `at`'s day, as rcgen takes it.
    fn ymd(at: chrono::DateTime<Utc>) -> anyhow::Result<(i32, u8, u8)> {
        Ok((
            at.year(),
            u8::try_from(at.month()).context("month")?,
            u8::try_from(at.day()).context("day")?,
        ))
    }

    impl Authority {
        /// A fresh CA called `common_name`, valid from yesterday for [`DEV_VALIDITY_DAYS`].
        pub fn new(common_name: &str) -> anyhow::Result<Self> {
            let now = Utc::now();
            let not_after = now + chrono::Duration::days(DEV_VALIDITY_DAYS);
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let (year, month, day) = ymd(now - chrono::Duration::days(1))?;
            params.not_before = rcgen::date_time_ymd(year, month, day);
            let (year, month, day) = ymd(not_after)?;
            params.not_after = rcgen::date_time_ymd(year, month, day);
            let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
            Ok(Self { issuer, not_after })
        }

        /// The CA's certificate, PEM.
        pub fn cert_pem(&self) -> String {
            self.issuer.pem()
        }

        /// A certificate and its key (PEM) for the process `name`.
        pub fn issue(&self, name: &str) -> anyhow::Result<(String, String)> {
            let mut params = CertificateParams::new(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ])?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let (year, month, day) = ymd(Utc::now() - chrono::Duration::days(1))?;
            params.not_before = rcgen::date_time_ymd(year, month, day);
            let (year, month, day) = ymd(self.not_after)?;
            params.not_after = rcgen::date_time_ymd(year, month, day);
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &self.issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        }

        /// Writes one certificate and key per name into `layout` (keys owner-only), and not
        /// the CA's files.
        pub fn write_issued(&self, layout: &Layout, names: &[&str]) -> anyhow::Result<()> {
            std::fs::create_dir_all(layout.dir())
                .with_context(|| format!("cannot create {}", layout.dir().display()))?;
            for name in names {
                let (cert, key) = self.issue(name)?;
                write_private(&layout.key_path(name), &key)?;
                std::fs::write(layout.cert_path(name), cert).with_context(|| {
                    format!("cannot write {}", layout.cert_path(name).display())
                })?;
            }
            Ok(())
        }

        /// Writes the CA's certificate and one certificate per name into `layout` (keys
        /// owner-only). The CA's own key is never written: nothing can be signed later.
        pub fn write(&self, layout: &Layout, names: &[&str]) -> anyhow::Result<()> {
            self.write_issued(layout, names)?;
            // The CA last: a layout with it is complete.
            std::fs::write(layout.ca_path(), self.cert_pem())
                .with_context(|| format!("cannot write {}", layout.ca_path().display()))?;
            std::fs::write(
                layout.dir().join(VALID_UNTIL_FILE),
                self.not_after.to_rfc3339(),
            )?;
            Ok(())
        }
    }

    /// The development certificates in `dir`: kept while every one of `names` is there and they
    /// are valid for a month more, else all made again by a new CA (whose key is dropped).
    /// Whether they were made.
    pub fn load_or_create(dir: &Path, ca_name: &str, names: &[&str]) -> anyhow::Result<bool> {
        let layout = Layout::new(dir);
        let valid_until = std::fs::read_to_string(dir.join(VALID_UNTIL_FILE))
            .ok()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text.trim()).ok());
        let fresh = valid_until.is_some_and(|until| {
            until.with_timezone(&Utc) > Utc::now() + chrono::Duration::days(RENEW_BEFORE_DAYS)
        });
        if fresh && layout.holds(names) {
            return Ok(false);
        }
        // A half-written layout must not pass as complete while it is made again.
        let _ = std::fs::remove_file(layout.ca_path());
        Authority::new(ca_name)?.write(&layout, names)?;
        Ok(true)
    }
}

#[cfg(all(test, feature = "dev-pki"))]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zentra-pki-{name}-{}", uuid::Uuid::now_v7()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_complete_layout_is_kept_and_one_missing_a_file_is_made_again_by_a_new_ca() {
        let dir = scratch("keep");
        assert!(load_or_create(&dir, "test CA", &["order", "client"]).expect("made"));
        let layout = Layout::new(&dir);
        assert!(layout.holds(&["order", "client"]));
        let ca = std::fs::read_to_string(layout.ca_path()).expect("ca");
        let mode = std::fs::metadata(layout.key_path("order"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "keys are owner-only");

        assert!(!load_or_create(&dir, "test CA", &["order", "client"]).expect("kept"));
        assert_eq!(std::fs::read_to_string(layout.ca_path()).expect("ca"), ca);

        // A process the layout has no certificate for: everything is made again.
        assert!(load_or_create(&dir, "test CA", &["order", "client", "saga"]).expect("remade"));
        assert_ne!(std::fs::read_to_string(layout.ca_path()).expect("ca"), ca);
        assert!(layout.holds(&["order", "client", "saga"]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_layout_near_its_expiry_is_made_again() {
        let dir = scratch("expiry");
        load_or_create(&dir, "test CA", &["order"]).expect("made");
        let soon = chrono::Utc::now() + chrono::Duration::days(3);
        std::fs::write(dir.join("valid-until"), soon.to_rfc3339()).expect("write");
        assert!(load_or_create(&dir, "test CA", &["order"]).expect("remade"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_layout_names_what_servers_and_callers_use() {
        let layout = Layout::of_stack(Path::new("/state"));
        let server = layout.server_tls("saga");
        assert_eq!(server.cert_path, Path::new("/state/pki/saga.pem"));
        assert_eq!(server.key_path, Path::new("/state/pki/saga.key"));
        assert_eq!(
            server.client_ca_path.as_deref(),
            Some(Path::new("/state/pki/ca.pem"))
        );
        let client = layout.client_tls(TOOLS_CERT);
        assert_eq!(client.cert_path, Path::new("/state/pki/client.pem"));
        assert_eq!(client.ca_path, Path::new("/state/pki/ca.pem"));
    }
}
