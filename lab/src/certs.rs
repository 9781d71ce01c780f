//! A throwaway certificate authority for TLS tests.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// PEM files of a server certificate and its key.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
    /// The CA certificate (PEM), the file a client trusts.
    pub ca_file: PathBuf,
    dir: PathBuf,
}

impl TestCa {
    /// Creates a CA and writes its certificate to `dir/ca.pem`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ringlet test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join("ca.pem");
        fs::write(&ca_file, cert.pem())?;
        Ok(Self {
            cert,
            key,
            ca_file,
            dir: dir.into(),
        })
    }

    /// Issues a certificate for `domain`, written to `dir/<domain>.crt` and `.key`.
    pub fn server_cert(&self, domain: &str) -> anyhow::Result<ServerCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![domain.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, domain);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let out = ServerCert {
            cert: self.dir.join(format!("{domain}.crt")),
            key: self.dir.join(format!("{domain}.key")),
        };
        fs::write(&out.cert, cert.pem())?;
        fs::write(&out.key, key.serialize_pem())?;
        Ok(out)
    }
}
