//! TLS failures in an operator's words, for Postgres and RabbitMQ alike: which of the usual
//! causes it is (unknown issuer, host name mismatch, expired, not yet valid, a server without
//! TLS) and what to change. One classifier, used by the connection gate's descriptions
//! ([`crate::store::gate::describe`]) and the RabbitMQ publisher's connect errors.

use rustls::CertificateError;

/// The TLS cause of `error` (looked for along its `source()` chain, inside I/O errors too),
/// in words, with `target` (`host:port`) and the setting to look at; `None` if the failure
/// was not about TLS.
pub fn describe(error: &(dyn std::error::Error + 'static), target: &str) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = current {
        if let Some(rustls) = as_rustls(cause) {
            return Some(words(rustls, target));
        }
        let text = cause.to_string();
        if text.contains("server does not support TLS") {
            return Some(format!(
                "the server at {target} does not support TLS, and the URL requires it \
                 (sslmode=require/verify-ca/verify-full): enable TLS on the server, or connect \
                 without requiring it"
            ));
        }
        current = cause.source();
    }
    None
}

/// A rustls error, directly or wrapped in an I/O error (tokio-rustls reports them so).
fn as_rustls<'a>(cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(error) = cause.downcast_ref::<rustls::Error>() {
        return Some(error);
    }
    cause
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn words(error: &rustls::Error, target: &str) -> String {
    let certificate =
        |what: &str, fix: &str| format!("TLS: the certificate of {target} {what}; {fix}");
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => certificate(
                "is signed by a CA the relay does not trust (unknown issuer)",
                "give the CA that signed it (database: sslrootcert= or database.ca_file; \
                 RabbitMQ: broker.rabbitmq.ca_file)",
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                certificate(
                    "does not name the host the URL connects to (host name mismatch)",
                    "connect with a name the certificate lists, or reissue it with that name",
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                certificate("has expired", "renew the server's certificate")
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                certificate(
                    "is not valid yet",
                    "check the clocks of this host and the server",
                )
            }
            CertificateError::Revoked => {
                certificate("has been revoked", "the server needs a new certificate")
            }
            other => certificate(
                &format!("was rejected ({other:?})"),
                "check the server's certificate chain",
            ),
        },
        other => format!("TLS handshake with {target} failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(error: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn certificate_failures_are_named() {
        for (error, words) in [
            (CertificateError::UnknownIssuer, "unknown issuer"),
            (CertificateError::NotValidForName, "host name mismatch"),
            (CertificateError::Expired, "has expired"),
            (CertificateError::NotValidYet, "not valid yet"),
        ] {
            let io = wrapped(rustls::Error::InvalidCertificate(error));
            let text = describe(&io, "db:5432").unwrap();
            assert!(text.contains(words) && text.contains("db:5432"), "{text}");
        }
    }

    #[test]
    fn a_server_without_tls_is_named_and_other_errors_are_not_tls() {
        let plain = std::io::Error::other("server does not support TLS");
        assert!(
            describe(&plain, "db:5432")
                .unwrap()
                .contains("does not support TLS")
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe(&refused, "db:5432"), None);
    }
}
