//! The rustls client configuration for `ssl` backends, and the PEM files it reads.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::ServerName;

use super::config::{ProbeSetupError, TlsSettings};
use super::{ProbeError, insecure};

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificates,
    PrivateKey,
}

/// Reads a PEM file and checks that it holds what it should, so a wrong file is named at
/// start-up. Errors never quote the contents (a key file's bytes are a secret).
fn read_pem(path: &PathBuf, expected: Pem) -> Result<Vec<u8>, ProbeSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bytes = std::fs::read(path).map_err(|source| ProbeSetupError::File {
        path: path.clone(),
        source,
    })?;
    let (valid, what) = match expected {
        Pem::Certificates => {
            let mut certificates = CertificateDer::pem_slice_iter(&bytes);
            let valid = certificates
                .try_fold(0usize, |count, certificate| certificate.map(|_| count + 1))
                .is_ok_and(|count| count > 0);
            (valid, "certificate")
        }
        Pem::PrivateKey => (
            PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
            "private key (PKCS#8, PKCS#1 or SEC1)",
        ),
    };
    if !valid {
        return Err(ProbeSetupError::Pem {
            path: path.clone(),
            expected: what,
        });
    }
    Ok(bytes)
}

/// The TLS server name of an authority: its host, without port or brackets.
pub fn server_name(authority: &str) -> Result<ServerName<'static>, ProbeError> {
    let parsed: http::uri::Authority = authority
        .parse()
        .map_err(|error: http::uri::InvalidUri| ProbeError::InvalidTarget(error.to_string()))?;
    let host = parsed.host().trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|error| ProbeError::InvalidTarget(format!("tls name {host:?}: {error}")))
}

/// The rustls client configuration for `ssl` backends: the system roots plus the CA file
/// (or no verification at all, when asked), the client certificate for mTLS, and ALPN h2.
pub fn client_tls(settings: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, ProbeSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ProbeSetupError::Tls(error.to_string()))?;
    let builder = if settings.insecure_skip_verify {
        tracing::warn!("tls_insecure_skip_verify is on: backend certificates are NOT verified");
        let verifier: Arc<dyn ServerCertVerifier> = Arc::new(insecure::AcceptAnyCertificate::new());
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = &settings.ca_file {
            let pem = read_pem(path, Pem::Certificates)?;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate =
                    certificate.map_err(|error| ProbeSetupError::Tls(error.to_string()))?;
                roots.add(certificate).map_err(|error| {
                    ProbeSetupError::Tls(format!("{}: {error}", path.display()))
                })?;
            }
        } else if added == 0 {
            tracing::warn!(
                "no usable system tls roots and no tls_ca_file: ssl backends will fail verification"
            );
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&settings.cert_file, &settings.key_file) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_slice_iter(&read_pem(cert, Pem::Certificates)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| ProbeSetupError::Tls(error.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(&read_pem(key, Pem::PrivateKey)?)
                .map_err(|error| ProbeSetupError::Tls(error.to_string()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|error| ProbeSetupError::Tls(error.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
