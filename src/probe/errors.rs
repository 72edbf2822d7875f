//! The reasons an operator reads for what went wrong below gRPC: h2's and rustls' errors
//! turned into short [`ProbeError`]s, and which failed calls the backend never processed
//! (safe to make again). Pure: no I/O.

use std::io;

use rustls::AlertDescription;

use super::ProbeError;
use super::config::{MAX_FRAME_SIZE, MAX_HEADER_LIST};

/// How a call ended without an outcome.
#[derive(Debug)]
pub enum End {
    /// The backend cannot have processed it (GOAWAY beyond it, REFUSED_STREAM, or it never
    /// left): safe to make again, on another connection.
    Unprocessed(ProbeError),
    Failed(ProbeError),
}

impl End {
    pub fn error(self) -> ProbeError {
        match self {
            End::Unprocessed(error) | End::Failed(error) => error,
        }
    }

    pub fn reason(&self) -> &ProbeError {
        match self {
            End::Unprocessed(error) | End::Failed(error) => error,
        }
    }
}

/// The name of an HTTP/2 error code, as RFC 9113 spells it.
fn code(reason: h2::Reason) -> String {
    format!("{reason:?}")
}

/// The debug text of a GOAWAY, as h2 shows it (` (b"...")` after the code), printable
/// and bounded.
fn debug_text(error: &h2::Error) -> String {
    let shown = error.to_string();
    let Some(start) = shown.find(" (b\"") else {
        return String::new();
    };
    let text = shown[start + 4..]
        .trim_end_matches(')')
        .trim_end_matches('"');
    text.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// A failed call's error: whether the backend processed it, and why it failed.
pub fn stream(error: &h2::Error) -> End {
    let Some(reason) = error.reason() else {
        return End::Failed(connection(error));
    };
    if error.is_reset() {
        let text = if error.is_remote() {
            format!("stream reset by backend ({})", code(reason))
        } else {
            format!(
                "http/2: the backend's answer broke the protocol ({})",
                code(reason)
            )
        };
        return if error.is_remote() && reason == h2::Reason::REFUSED_STREAM {
            End::Unprocessed(ProbeError::Transport(text))
        } else {
            End::Failed(ProbeError::Transport(text))
        };
    }
    if error.is_go_away() && error.is_remote() {
        // A stream is failed by a GOAWAY only when it is beyond the last stream the
        // backend processed, or when it was started after the GOAWAY.
        return End::Unprocessed(connection(error));
    }
    End::Failed(connection(error))
}

/// Why a whole connection ended, or could not be used.
pub fn connection(error: &h2::Error) -> ProbeError {
    if let Some(io) = error.get_io() {
        return self::io(io);
    }
    let Some(reason) = error.reason() else {
        return ProbeError::Transport(format!("http/2: {error}"));
    };
    let debug = debug_text(error);
    if error.is_go_away() && error.is_remote() {
        return ProbeError::Transport(if debug.is_empty() {
            format!("backend sent GOAWAY ({})", code(reason))
        } else {
            format!("backend sent GOAWAY ({}: {debug})", code(reason))
        });
    }
    ProbeError::Transport(match (reason, debug.as_str()) {
        (h2::Reason::FRAME_SIZE_ERROR, _) => {
            format!("http/2: the backend sent a frame over {MAX_FRAME_SIZE} bytes")
        }
        (_, "header_list_way_too_large") => {
            format!("http/2: the backend's headers decode to far more than {MAX_HEADER_LIST} bytes")
        }
        (_, "too_many_continuations") => {
            "http/2: the backend sent a header block in too many CONTINUATION frames".to_string()
        }
        (h2::Reason::COMPRESSION_ERROR, _) => {
            "http/2: the backend's header compression is invalid".to_string()
        }
        (h2::Reason::FLOW_CONTROL_ERROR, _) => "http/2: the backend broke flow control".to_string(),
        (_, "") => format!("http/2: the backend broke the protocol ({})", code(reason)),
        (_, debug) => format!(
            "http/2: the backend broke the protocol ({}: {debug})",
            code(reason)
        ),
    })
}

/// A transport error while the connection was up.
pub fn io(error: &io::Error) -> ProbeError {
    if let Some(tls) = rustls_error(error) {
        return ProbeError::Tls(library_text(tls.to_string()));
    }
    if let Some(alert) = received_alert(error) {
        return ProbeError::Tls(format!("the backend sent alert {alert:?}"));
    }
    ProbeError::transport(match error.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => "connection closed by backend",
        io::ErrorKind::ConnectionReset => "connection reset by backend",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::TimedOut => "connection timed out (TCP)",
        _ => return ProbeError::Transport(format!("connection: {}", lowercase(error))),
    })
}

/// A failed TLS handshake.
pub fn tls_handshake(error: &io::Error, client_auth: bool) -> ProbeError {
    match rustls_error(error) {
        Some(rustls::Error::AlertReceived(alert)) if refuses_certificate(*alert) => {
            refused_certificate(*alert, client_auth)
        }
        Some(tls) => ProbeError::Tls(library_text(tls.to_string())),
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            ProbeError::Tls("the backend closed the connection during the handshake".to_string())
        }
        None => ProbeError::Tls(lowercase(error)),
    }
}

/// Why a new connection failed before the backend's SETTINGS and the answer to the
/// agent's first PING: not HTTP/2, closed, or (with mTLS) our certificate refused.
pub fn before_settings(error: Option<&h2::Error>, first: &[u8], client_auth: bool) -> ProbeError {
    if first.starts_with(b"HTTP/") {
        return ProbeError::transport("backend answered HTTP/1.x, not HTTP/2");
    }
    // A TLS record (handshake or alert, version 3.x): a TLS port asked without TLS.
    if let [0x15 | 0x16, 0x03, ..] = first {
        return ProbeError::transport("backend answered TLS: ask with ssl on the request line");
    }
    let io = error.and_then(h2::Error::get_io);
    // TLS 1.3 servers judge the client's certificate after the handshake: their alert
    // arrives in place of the SETTINGS.
    if let Some(alert) = io.and_then(received_alert)
        && (client_auth || refuses_certificate(alert))
    {
        return refused_certificate(alert, client_auth);
    }
    let closed = match io {
        None => error.is_none(),
        Some(io) => matches!(
            io.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionReset
        ),
    };
    if closed && first.is_empty() {
        return if client_auth {
            ProbeError::Tls(
                "the backend closed the connection right after the handshake: it refused our client certificate or wants another".to_string(),
            )
        } else {
            ProbeError::transport("connection closed by backend before http/2 settings")
        };
    }
    match error {
        Some(error) if error.get_io().is_none() && !error.is_remote() => {
            ProbeError::transport("backend does not speak HTTP/2 (its first bytes are no SETTINGS)")
        }
        Some(error) => connection(error),
        None => ProbeError::transport("connection closed by backend before http/2 settings"),
    }
}

fn refuses_certificate(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::UnsupportedCertificate
    )
}

fn refused_certificate(alert: AlertDescription, client_auth: bool) -> ProbeError {
    ProbeError::Tls(if client_auth {
        format!(
            "the backend refused our client certificate (alert {alert:?}); check tls_cert_file and tls_key_file"
        )
    } else {
        format!(
            "the backend wants a client certificate (alert {alert:?}); set tls_cert_file and tls_key_file"
        )
    })
}

/// The TLS alert the backend sent, if that is what ended the connection. h2 keeps only
/// the text of an I/O error, so the alert is read back from rustls' wording.
fn received_alert(error: &io::Error) -> Option<AlertDescription> {
    if let Some(rustls::Error::AlertReceived(alert)) = rustls_error(error) {
        return Some(*alert);
    }
    let text = error.to_string();
    let name = text.strip_prefix("received fatal alert: ")?;
    [
        AlertDescription::BadCertificate,
        AlertDescription::CertificateRequired,
        AlertDescription::UnknownCA,
        AlertDescription::AccessDenied,
        AlertDescription::CertificateUnknown,
        AlertDescription::CertificateRevoked,
        AlertDescription::CertificateExpired,
        AlertDescription::UnsupportedCertificate,
        AlertDescription::DecryptError,
        AlertDescription::HandshakeFailure,
    ]
    .into_iter()
    .find(|alert| format!("{alert:?}") == name)
}

fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// An OS or library error's text, starting lowercase, without links.
fn lowercase(error: &io::Error) -> String {
    let text = library_text(error.to_string());
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// A library's own words without the documentation links some of them carry (a reason
/// is read in HAProxy's stats, the admin API and logs, where a link is noise).
fn library_text(text: String) -> String {
    let kept = crate::protocol::without_urls(&text);
    kept.trim_end_matches(|c: char| c == ':' || c.is_whitespace())
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_read_as_what_happened() {
        for (kind, expected) in [
            (
                io::ErrorKind::UnexpectedEof,
                "transport: connection closed by backend",
            ),
            (
                io::ErrorKind::ConnectionReset,
                "transport: connection reset by backend",
            ),
            (io::ErrorKind::Other, "transport: connection: boom"),
        ] {
            let error = io::Error::new(kind, "Boom");
            assert_eq!(io(&error).to_string(), expected, "{kind:?}");
        }
    }

    #[test]
    fn library_texts_lose_their_links() {
        let error = io::Error::other(
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        );
        assert_eq!(
            io(&error).to_string(),
            "transport: connection: peer closed connection without sending TLS close_notify"
        );
    }

    #[test]
    fn a_refused_client_certificate_is_said_so() {
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        assert_eq!(
            tls_handshake(&alert, true).to_string(),
            "tls: the backend refused our client certificate (alert CertificateRequired); check tls_cert_file and tls_key_file"
        );
        assert_eq!(
            tls_handshake(&alert, false).to_string(),
            "tls: the backend wants a client certificate (alert CertificateRequired); set tls_cert_file and tls_key_file"
        );
    }

    #[test]
    fn http1_answers_and_silent_closes_are_named() {
        let http1 = b"HTTP/1.1 400 Bad";
        assert_eq!(
            before_settings(None, http1, false).to_string(),
            "transport: backend answered HTTP/1.x, not HTTP/2"
        );
        let none: &[u8] = &[];
        assert_eq!(
            before_settings(None, none, false).to_string(),
            "transport: connection closed by backend before http/2 settings"
        );
        assert!(
            before_settings(None, none, true)
                .to_string()
                .starts_with("tls: the backend closed the connection right after the handshake")
        );
    }
}
