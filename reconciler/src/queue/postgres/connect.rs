//! How every connection of this backend is opened from the `--database` URL: the client's
//! settings (durable commits whatever the server's default, our application name) and the
//! TLS plan of [`super::tls`], in one value the pool, the listener and the leader lock share.

use postgres::config::{Host, SslMode};
use postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::{self, Endpoint, Plan};
use crate::queue::QueueError;

/// Opens connections to one database. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Connector {
    config: Config,
    tls: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// The connector for `url`; refuses a URL that does not parse, names files that cannot
    /// be read, or would send plain text to a remote host (see [`super::tls`]).
    pub(crate) fn from_url(url: &str) -> Result<Connector, QueueError> {
        let (url, params) = tls::split_url(url)?;
        let mut config: Config = url.parse().map_err(|e| QueueError::BadRequest {
            message: format!("--database: not a PostgreSQL URL: {e}"),
        })?;
        config.options("-c synchronous_commit=on");
        config.application_name("cis490-reconciler");
        let hosts: Vec<Endpoint> = config
            .get_hosts()
            .iter()
            .map(|host| match host {
                Host::Tcp(name) => Endpoint::Tcp(name.clone()),
                Host::Unix(_) => Endpoint::UnixSocket,
            })
            .collect();
        let tls = match tls::decide(&params, &hosts)? {
            Plan::Plain => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            Plan::Tls {
                config: tls,
                warning,
            } => {
                if let Some(warning) = warning.filter(|w| first_time(w)) {
                    tracing::warn!("{warning}");
                }
                config.ssl_mode(SslMode::Require);
                Some(MakeRustlsConnect::new(*tls))
            }
        };
        Ok(Connector { config, tls })
    }

    /// The client settings, to adjust before connecting (keepalives, a name of its own).
    pub(crate) fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// One new connection.
    pub(crate) fn connect(&self) -> Result<Client, postgres::Error> {
        match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        }
    }
}

/// Whether `warning` is said for the first time in this process: the pool, the listener
/// and the leader lock each build a connector from one URL, and its warning is one.
fn first_time(warning: &str) -> bool {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if said.iter().any(|w| w == warning) {
        return false;
    }
    said.push(warning.to_string());
    true
}

/// What an operator reads when a connection fails: the client's error (with its cause, which
/// holds the TLS detail) and a hint where one applies.
pub(crate) fn connect_error(e: &postgres::Error) -> String {
    let mut message = format!("cannot connect to PostgreSQL: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    if let Some(hint) = tls::explain(&message) {
        message.push_str(" (");
        message.push_str(hint);
        message.push(')');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::first_time;

    #[test]
    fn a_warning_is_said_once_per_process_and_another_one_still_is() {
        let warning = "sslmode=require without a CA: a test's own warning";
        assert!(first_time(warning));
        assert!(!first_time(warning));
        assert!(first_time("sslmode=require without a CA: another one"));
    }
}
