//! Upload receipts: how an upload proves itself to the completion that follows, so that
//! the upload costs no write transaction of its own.
//!
//! A completion may name only an artifact its own lease uploaded. An upload that asks for a
//! receipt (`X-Upload-Receipt: requested`) is fenced by a read of its lease and answered
//! with a MAC over (job, lease token, artifact, size) under a key the database keeps
//! (`secrets`, made once by whichever server opens the database first), instead of writing
//! its `uploads` row. The completion carries the receipt back; the queue checks the MAC
//! before the transaction and writes the upload's row inside it, beside the completion. So
//! any server of one database, restarted or not, accepts the receipt of any other, and one
//! forged or made for another job, lease or artifact is refused like an artifact that was
//! never uploaded. An upload without the header writes its row as before.

use cis490_api::{ArtifactId, CompleteRequest, JobId, Lease, UploadReceipt};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::QueueError;

/// The name of the receipt key in the `secrets` table.
pub(crate) const KEY_NAME: &str = "upload_receipt";
/// Bytes of a new key.
pub(crate) const KEY_LEN: usize = 32;

/// The key receipts are made and checked with: HMAC-SHA256 keyed once, cloned per receipt.
#[derive(Clone)]
pub struct ReceiptKey(Hmac<Sha256>);

impl std::fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptKey(..)")
    }
}

impl ReceiptKey {
    /// A key as the database holds it; refused when too short to be one of ours.
    pub(crate) fn from_stored(bytes: Vec<u8>) -> Result<ReceiptKey, QueueError> {
        if bytes.len() < KEY_LEN {
            return Err(QueueError::corrupt(format!(
                "the upload receipt key in `secrets` has {} bytes, not {KEY_LEN}",
                bytes.len()
            )));
        }
        let keyed = <Hmac<Sha256> as Mac>::new_from_slice(&bytes)
            .map_err(|e| QueueError::corrupt(format!("the upload receipt key: {e}")))?;
        Ok(ReceiptKey(keyed))
    }

    /// A fresh random key, for a database that has none yet.
    pub(crate) fn generate() -> Vec<u8> {
        use rand::RngCore;
        let mut bytes = vec![0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        bytes
    }

    fn mac(
        &self,
        id: &JobId,
        lease: &Lease,
        artifact: &ArtifactId,
        size_bytes: u64,
    ) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        // Fields of fixed or self-delimiting form, then the one of free form last, so no
        // two tuples make the same message.
        mac.update(id.as_str().as_bytes());
        mac.update(artifact.as_str().as_bytes());
        mac.update(&size_bytes.to_be_bytes());
        mac.update(&lease.attempt.to_be_bytes());
        mac.update(lease.token.as_bytes());
        mac
    }

    /// The receipt of an upload of `artifact` (`size_bytes` long) for job `id` under `lease`.
    pub fn issue(
        &self,
        id: &JobId,
        lease: &Lease,
        artifact: &ArtifactId,
        size_bytes: u64,
    ) -> UploadReceipt {
        UploadReceipt {
            size_bytes,
            mac: hex::encode(
                self.mac(id, lease, artifact, size_bytes)
                    .finalize()
                    .into_bytes(),
            ),
        }
    }

    /// Checks the receipt a completion carries: made by this database's key for this job,
    /// this lease and the artifact the completion names. Ok(None) when it carries none.
    pub(crate) fn check<'r>(
        &self,
        id: &JobId,
        req: &'r CompleteRequest,
    ) -> Result<Option<(&'r ArtifactId, &'r UploadReceipt)>, QueueError> {
        let Some(receipt) = &req.upload else {
            return Ok(None);
        };
        let refused = |why: &str| QueueError::ArtifactNotUploaded {
            message: format!(
                "the upload receipt of job {} (attempt {}) {why}; upload the job's own \
                 bundle again (PUT /v1/model/{id}) and complete with the receipt that \
                 answer gives",
                id.short(),
                req.lease.attempt,
            ),
        };
        let Some(artifact) = &req.artifact_id else {
            return Err(refused("names no artifact: give artifact_id with it"));
        };
        let given = hex::decode(&receipt.mac).map_err(|_| refused("is not hex"))?;
        self.mac(id, &req.lease, artifact, receipt.size_bytes)
            .verify_slice(&given)
            .map_err(|_| {
                refused(&format!(
                    "was not issued for artifact {} under this lease",
                    artifact.short()
                ))
            })?;
        Ok(Some((artifact, receipt)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::queue::test_support::{id_of, worker};

    fn key() -> ReceiptKey {
        ReceiptKey::from_stored(ReceiptKey::generate()).unwrap()
    }

    fn complete(lease: &Lease, artifact: &ArtifactId, receipt: UploadReceipt) -> CompleteRequest {
        CompleteRequest {
            worker: worker("w1"),
            lease: lease.clone(),
            artifact_id: Some(artifact.clone()),
            upload: Some(receipt),
            report: Default::default(),
        }
    }

    #[test]
    fn a_receipt_holds_only_for_its_job_lease_artifact_size_and_key() {
        let key = key();
        let id = id_of("j1");
        let lease = Lease {
            attempt: 2,
            token: "t0k3n".into(),
        };
        let artifact = ArtifactId::parse(&"a".repeat(64)).unwrap();
        let receipt = key.issue(&id, &lease, &artifact, 10);
        let req = complete(&lease, &artifact, receipt.clone());
        let (named, checked) = key.check(&id, &req).unwrap().unwrap();
        assert_eq!((named, checked), (&artifact, &receipt));

        let other_artifact = ArtifactId::parse(&"b".repeat(64)).unwrap();
        let other_lease = Lease {
            attempt: 3,
            token: "t0k3n".into(),
        };
        let mut bigger = receipt.clone();
        bigger.size_bytes = 11;
        let mut garbled = receipt.clone();
        garbled.mac = "zz".into();
        for (what, check_id, req) in [
            ("another job", id_of("j2"), req.clone()),
            (
                "another artifact",
                id.clone(),
                complete(&lease, &other_artifact, receipt.clone()),
            ),
            (
                "another attempt",
                id.clone(),
                complete(&other_lease, &artifact, receipt.clone()),
            ),
            (
                "another size",
                id.clone(),
                complete(&lease, &artifact, bigger),
            ),
            ("not hex", id.clone(), complete(&lease, &artifact, garbled)),
        ] {
            let err = key.check(&check_id, &req).unwrap_err();
            assert_eq!(err.code(), "artifact_not_uploaded", "{what}: {err}");
        }
        let err = self::key().check(&id, &req).unwrap_err();
        assert_eq!(
            err.code(),
            "artifact_not_uploaded",
            "another database's key: {err}"
        );
        let mut without_artifact = req.clone();
        without_artifact.artifact_id = None;
        assert!(key.check(&id, &without_artifact).is_err());
        let mut without_receipt = req;
        without_receipt.upload = None;
        assert_eq!(key.check(&id, &without_receipt).unwrap(), None);
        assert!(ReceiptKey::from_stored(vec![1, 2, 3]).is_err());
    }
}
