//! A certificate authority of the test's own: it issues server certificates for `localhost` and
//! 127.0.0.1 into a temporary directory, so TLS tests never share keys or need files of the repo.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA whose certificate and issued keys live in a directory removed on drop.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

/// PEM files of one issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_path: PathBuf,
    /// Its private key.
    pub key_path: PathBuf,
}

impl TestCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Zentra test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let dir = std::env::temp_dir().join(format!("zentra-ca-{name}-{}", crate::unique_suffix()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("ca.pem"), issuer.pem())?;
        Ok(Self { issuer, dir })
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Where the CA's certificate is.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `localhost` and 127.0.0.1 named `name`, signed by this CA.
    pub fn issue(&self, name: &str) -> anyhow::Result<Issued> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = Issued {
            cert_path: self.dir.join(format!("{name}.pem")),
            key_path: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&issued.cert_path, cert.pem())?;
        std::fs::write(&issued.key_path, key.serialize_pem())?;
        Ok(issued)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
