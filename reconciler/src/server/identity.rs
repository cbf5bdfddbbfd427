//! Who a worker request comes from, once its credentials are checked.
//!
//! Two proofs bind a request to one worker name: a TLS client certificate (mTLS: the TLS
//! layer puts a [`ClientCertName`] on every request of a connection that presented a valid
//! one) and a per-worker token. The shared worker token (and a server with no worker
//! credential configured at all) proves no name: such a request may act as any worker.
//! `auth::require_worker` resolves the [`WorkerIdentity`] and puts it on the request; every
//! worker handler then calls [`WorkerIdentity::authorize`] with each name the request's body,
//! path or headers give, so a worker can never act as another.

use cis490_api::WorkerName;

use super::error::ApiFailure;

/// The worker name a verified TLS client certificate carries (a request extension, set per
/// connection by the TLS acceptor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertName(pub WorkerName);

/// What proved a [`WorkerIdentity::Named`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// A TLS client certificate signed by the configured client CA.
    ClientCert,
    /// A per-worker token issued by `cis490-reconciler tokens issue NAME`.
    WorkerToken,
}

impl IdentitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::ClientCert => "client certificate",
            IdentitySource::WorkerToken => "worker token",
        }
    }
}

/// Who a worker request is (a request extension, set by `auth::require_worker`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerIdentity {
    /// Any worker name: the shared worker token, or no worker credential configured.
    AnyName,
    /// Exactly this worker.
    Named {
        name: WorkerName,
        via: IdentitySource,
    },
}

impl WorkerIdentity {
    /// Ok when this request may act as `claimed`; otherwise 403 `wrong_worker`, naming both.
    pub fn authorize(&self, claimed: &WorkerName) -> Result<(), ApiFailure> {
        match self {
            WorkerIdentity::AnyName => Ok(()),
            WorkerIdentity::Named { name, .. } if name == claimed => Ok(()),
            WorkerIdentity::Named { name, via } => Err(ApiFailure::new(
                axum::http::StatusCode::FORBIDDEN,
                "wrong_worker",
                format!(
                    "this request's {} belongs to worker {name}, but the request acts as worker {claimed}",
                    via.as_str()
                ),
            )),
        }
    }

    /// The proven name, when there is one.
    pub fn name(&self) -> Option<&WorkerName> {
        match self {
            WorkerIdentity::AnyName => None,
            WorkerIdentity::Named { name, .. } => Some(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> WorkerName {
        WorkerName::parse(s).unwrap()
    }

    #[test]
    fn a_named_identity_may_act_only_as_itself() {
        let me = WorkerIdentity::Named {
            name: name("gpu-1"),
            via: IdentitySource::ClientCert,
        };
        assert!(me.authorize(&name("gpu-1")).is_ok());
        let err = me.authorize(&name("gpu-2")).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::FORBIDDEN);
        assert_eq!(err.code, "wrong_worker");
        assert!(err.message.contains("gpu-1") && err.message.contains("gpu-2"));
        assert!(WorkerIdentity::AnyName.authorize(&name("anyone")).is_ok());
    }
}
