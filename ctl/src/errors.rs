//! Turns any failure into one clear stderr line that says what to do next.

use cis490_api::ClientError;
use reqwest::StatusCode;

use crate::cli::{OPERATOR_TOKEN_ENV, SERVER_ENV};

/// An operator verb was run without the operator token; raised before any request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`cis490ctl {verb}` is an operator command: set {OPERATOR_TOKEN_ENV} to the reconciler's operator token")]
pub struct MissingToken {
    /// The verb that needs the token.
    pub verb: &'static str,
}

/// One sentence for a client error: what happened and how to fix it.
pub fn describe_client_error(err: &ClientError) -> String {
    match err {
        ClientError::Unreachable { url, source } => {
            let why = root_cause(source);
            format!(
                "cannot reach the reconciler at {url} ({why}); is it running? \
                 Point cis490ctl at it with --server URL or {SERVER_ENV}"
            )
        }
        ClientError::Api { status, api, .. } => match *status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!(
                "the reconciler refused the request ({status}: {}): set {OPERATOR_TOKEN_ENV} \
                 to the reconciler's operator token",
                api.message
            ),
            _ => api.message.clone(),
        },
        ClientError::Protocol { url, message } => format!(
            "unexpected answer from {url}: {message} (is --server pointing at a cis490 \
             reconciler of a compatible version? this is cis490ctl {})",
            cis490_api::VERSION
        ),
        ClientError::BadUrl(url) => format!(
            "invalid server URL {url:?}: expected something like http://127.0.0.1:8787 \
             (set it with --server or {SERVER_ENV})"
        ),
        // Both already say which flag fixes them.
        ClientError::Tls { .. } | ClientError::TlsFile { .. } => err.to_string(),
    }
}

/// The innermost error's message (e.g. "Connection refused (os error 111)").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The whole error as one line: the context the commands added, then the explanation of
/// the underlying client error when there is one.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if let Some(client) = cause.downcast_ref::<ClientError>() {
            parts.push(describe_client_error(client));
            break;
        }
        parts.push(cause.to_string());
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use cis490_api::{ApiError, Client, ClientTls};

    fn api(status: StatusCode, code: &str, message: &str) -> ClientError {
        ClientError::Api {
            status,
            api: ApiError {
                error: code.into(),
                message: message.into(),
            },
            retry_after: None,
        }
    }

    #[test]
    fn forbidden_and_unauthorized_name_the_token_variable() {
        for status in [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN] {
            let text = describe_client_error(&api(status, "forbidden", "bad operator token"));
            assert!(text.contains("CIS490_OPERATOR_TOKEN"), "{text}");
            assert!(text.contains("bad operator token"), "{text}");
        }
    }

    #[test]
    fn other_api_errors_keep_the_server_message() {
        let err = api(
            StatusCode::CONFLICT,
            "invalid_state",
            "cannot requeue job abc123 in state running",
        );
        assert_eq!(
            describe_client_error(&err),
            "cannot requeue job abc123 in state running"
        );
        let chained = anyhow::Error::new(err).context("requeueing abc123");
        assert_eq!(
            one_line(&chained),
            "requeueing abc123: cannot requeue job abc123 in state running"
        );
    }

    #[test]
    fn bad_url_and_protocol_errors_point_at_the_server_flag() {
        let text = describe_client_error(&ClientError::BadUrl("pi:8787".into()));
        assert!(
            text.contains("--server") && text.contains("CIS490_SERVER"),
            "{text}"
        );
        let text = describe_client_error(&ClientError::Protocol {
            url: "http://x/v1/jobs".into(),
            message: "expected value".into(),
        });
        assert!(text.contains("http://x/v1/jobs"), "{text}");
    }

    #[tokio::test]
    async fn unreachable_names_the_url_and_suggests_the_flag() {
        // Bind then drop to get a loopback port that nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let err = Client::new(&url).unwrap().health().await.unwrap_err();
        let line = one_line(&anyhow::Error::new(err).context("asking for health"));
        assert!(
            line.starts_with("asking for health: cannot reach"),
            "{line}"
        );
        assert!(line.contains(&url), "{line}");
        assert!(
            line.contains("--server") && line.contains("CIS490_SERVER"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn tls_errors_keep_the_fix_they_name() {
        let tls = ClientTls {
            cert_file: Some("me.pem".into()),
            ..ClientTls::default()
        };
        let err = Client::builder("https://127.0.0.1:1")
            .tls(tls)
            .build()
            .unwrap_err();
        let text = describe_client_error(&err);
        assert!(text.contains("--key-file"), "{text}");
    }

    #[test]
    fn missing_token_says_which_variable() {
        let err: anyhow::Result<()> = Err(MissingToken { verb: "cancel" }.into());
        let line = one_line(&err.context("cancelling").unwrap_err());
        assert!(line.contains("CIS490_OPERATOR_TOKEN"), "{line}");
        assert!(line.contains("cis490ctl cancel"), "{line}");
    }
}
