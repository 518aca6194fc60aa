//! A certificate authority of the test's own (the runtime's development CA): it issues
//! certificates for `localhost` and 127.0.0.1 into a temporary directory, so TLS tests never
//! share keys or need files of the repo.

use std::path::{Path, PathBuf};

use zentra_runtime::pki::{Authority, Layout};

/// A CA whose certificate and issued keys live in a directory removed on drop.
pub struct TestCa {
    authority: Authority,
    layout: Layout,
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
        let authority = Authority::new(&format!("Zentra test CA {name}"))?;
        let layout = Layout::new(
            std::env::temp_dir().join(format!("zentra-ca-{name}-{}", crate::unique_suffix())),
        );
        authority.write(&layout, &[])?;
        Ok(Self { authority, layout })
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.authority.cert_pem()
    }

    /// Where the CA's certificate is.
    pub fn cert_path(&self) -> PathBuf {
        self.layout.ca_path()
    }

    /// A certificate named `name`, signed by this CA.
    pub fn issue(&self, name: &str) -> anyhow::Result<Issued> {
        self.authority.write_issued(&self.layout, &[name])?;
        Ok(Issued {
            cert_path: self.layout.cert_path(name),
            key_path: self.layout.key_path(name),
        })
    }

    /// The layout holding the files.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.layout.dir()
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.layout.dir());
    }
}
