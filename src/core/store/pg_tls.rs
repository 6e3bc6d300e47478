//! TLS to PostgreSQL (rustls with ring), chosen like libpq by `sslmode` in the connection
//! string:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | no |
//! | `require` | always | no (yes, as `verify-ca`, when `sslrootcert` is given, as libpq does) |
//! | `verify-ca` | always | chain to a trusted root |
//! | `verify-full` | always | chain, and the host name (or IP) in the URL is in the certificate |
//!
//! `sslrootcert=<file>` names the trusted roots (PEM); `sslrootcert=system`, or no
//! `sslrootcert` with `verify-*`, trusts the Mozilla roots built in (webpki-roots).
//! tokio-postgres itself knows only `disable|prefer|require` and no `sslrootcert`, so
//! [`split_params`] takes both out of the string before it is parsed.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            // `allow` (plain text first) is served as `prefer`: encrypted when offered.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ))
            }
        })
    }

    /// What tokio-postgres is told (it negotiates; the verifier decides about the
    /// certificate).
    fn negotiation(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            _ => "require",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    /// A PEM file, or `system`.
    pub root_cert: Option<String>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (URL form
/// `postgres://…?sslmode=…&sslrootcert=…`, or key=value form) and puts back an `sslmode`
/// tokio-postgres understands. Returns the string to parse and the TLS settings.
pub fn split_params(conn: &str) -> Result<(String, TlsParams), String> {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |k: &str, v: String| -> Result<bool, String> {
        match k {
            "sslmode" => mode = Some(SslMode::parse(&v)?),
            "sslrootcert" => root_cert = Some(v),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let (head, tail) = match conn.split_once('?') {
            Some((h, t)) => (h, Some(t)),
            None => (conn, None),
        };
        let (query, fragment) = match tail {
            Some(t) => match t.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (t, None),
            },
            None => ("", None),
        };
        let mut kept = vec![];
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            if !take(&percent_decode(k), percent_decode(v))? {
                kept.push(part);
            }
        }
        let mut out = head.to_owned();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(&kept.join("&"));
        }
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        out
    } else {
        // key=value form: whitespace-separated; a value may be single-quoted.
        let mut kept = String::new();
        let mut i = 0;
        let b = conn.as_bytes();
        while i < b.len() {
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            let start = i;
            while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
                i += 1;
            }
            let key = &conn[start..i];
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i >= b.len() || b[i] != b'=' {
                if !key.is_empty() {
                    kept.push_str(&conn[start..i]);
                    kept.push(' ');
                }
                continue;
            }
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            let mut value = String::new();
            if i < b.len() && b[i] == b'\'' {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    value.push(b[i] as char);
                    i += 1;
                }
                i += 1;
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value.push_str(&conn[vs..i]);
            }
            if !take(key, value)? {
                kept.push_str(conn[start..i.min(b.len())].trim());
                kept.push(' ');
            }
        }
        kept.trim_end().to_owned()
    };
    let mut mode = mode.unwrap_or(SslMode::Prefer);
    if mode == SslMode::Require && root_cert.is_some() {
        // libpq: with a root certificate at hand, `require` checks the chain.
        mode = SslMode::VerifyCa;
    }
    let neg = mode.negotiation();
    let out = if rest.starts_with("postgres://") || rest.starts_with("postgresql://") {
        let (body, fragment) = match rest.split_once('#') {
            Some((b, f)) => (b.to_owned(), Some(f.to_owned())),
            None => (rest, None),
        };
        let sep = if body.contains('?') { '&' } else { '?' };
        let mut s = format!("{body}{sep}sslmode={neg}");
        if let Some(f) = fragment {
            s.push('#');
            s.push_str(&f);
        }
        s
    } else {
        format!("{rest} sslmode={neg}").trim_start().to_owned()
    };
    Ok((out, TlsParams { mode, root_cert }))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn roots(p: &TlsParams) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match p.root_cert.as_deref() {
        None | Some("system") => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(file) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {file}: cannot read PEM certificates: {e}"))?;
            if certs.is_empty() {
                return Err(format!("sslrootcert {file}: no certificate in the file"));
            }
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert {file}: no usable certificate"));
            }
        }
    }
    Ok(store)
}

/// Encrypts without checking who answers (`prefer`, `require`): the handshake's
/// signatures are still verified, the certificate is not.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The connector for these settings (with `disable` it is never used: tokio-postgres does
/// not ask for TLS).
pub fn connector(p: &TlsParams) -> Result<MakeRustlsConnect, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let config = match p.mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(p)?), provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            if p.mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_params_are_taken_out_of_both_forms() {
        let (s, p) = split_params("postgres://u:pw@h:5/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x").unwrap();
        assert_eq!(
            s,
            "postgres://u:pw@h:5/db?application_name=x&sslmode=require"
        );
        assert_eq!(p.mode, SslMode::VerifyFull);
        assert_eq!(p.root_cert.as_deref(), Some("/tmp/ca.pem"));
        let (s, p) = split_params("postgres://u@h/db").unwrap();
        assert_eq!(s, "postgres://u@h/db?sslmode=prefer");
        assert_eq!(p.mode, SslMode::Prefer);
        let (s, p) =
            split_params("host=h user=u password='a b' sslmode=require sslrootcert=/c.pem")
                .unwrap();
        assert_eq!(s, "host=h user=u password='a b' sslmode=require");
        assert_eq!(
            p.mode,
            SslMode::VerifyCa,
            "require with a root: checks the chain"
        );
        let (s, _) = split_params("postgres://u@h/db?sslmode=disable").unwrap();
        assert_eq!(s, "postgres://u@h/db?sslmode=disable");
        let e = split_params("postgres://u:secret@h/db?sslmode=bogus").unwrap_err();
        assert!(e.contains("sslmode=bogus") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn a_missing_root_file_is_a_clear_error() {
        let p = TlsParams {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        let e = connector(&p).err().expect("refused");
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(connector(&TlsParams {
            mode: SslMode::VerifyFull,
            root_cert: None
        })
        .is_ok());
    }
}
