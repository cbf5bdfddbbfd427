//! Worker identity over real HTTP: per-worker tokens (issued and revoked through a second
//! connection to the database, as `cis490-reconciler tokens` does while the server runs),
//! wrong_worker refusals and their events, one agent per name, and the completion rule
//! (complete only with what this lease uploaded).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use cis490_reconciler::queue::JobQueue;
use std::time::Duration;

use cis490_api::{
    AgentInstance, ArtifactId, ClaimRequest, ClaimResponse, Client, CompleteRequest,
    HeartbeatRequest, IdPrefix, JobStatus, Lease,
};
use cis490_reconciler::queue::{Queue, QueueConfig};
use http_common::*;
use reqwest::StatusCode;

fn prefix(s: &str) -> IdPrefix {
    IdPrefix::parse(s).unwrap()
}

/// The queue database of `app`, opened the way the `tokens` CLI opens it: a second
/// connection beside the running server's.
fn cli_queue(app: &TestApp) -> Queue {
    Queue::open(
        &app.dir.path().join("state").join("queue.db"),
        QueueConfig::default(),
    )
    .unwrap()
}

fn as_worker(app: &TestApp, token: &str) -> Client {
    app.anon.clone().with_worker_token(Some(token.to_string()))
}

async fn job_status(app: &TestApp, id: &cis490_api::JobId) -> JobStatus {
    app.anon.job(&prefix(id.as_str())).await.unwrap().status
}

async fn claim_and_start(client: &Client, name: &str) -> ClaimResponse {
    let claimed = client
        .claim(&cpu_claim(name), None)
        .await
        .unwrap()
        .expect("a job to claim");
    let hb = HeartbeatRequest {
        worker: worker(name),
        lease: claimed.lease.clone(),
        log_tail: None,
        log: None,
        progress: None,
    };
    client.heartbeat(&claimed.job.id, &hb).await.unwrap();
    claimed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_worker_tokens_bind_their_name_and_a_revoked_one_is_refused_at_once() {
    let app = spawn_app(AppOptions {
        worker_token: None,
        ..AppOptions::default()
    })
    .await;
    let warnings = app.anon.health().await.unwrap().warnings;
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("worker routes are open: no worker token configured")),
        "{warnings:?}"
    );
    // Open while no worker credential exists (today's behaviour without a token).
    assert!(app.anon.whoami().await.unwrap().worker.is_none());

    let cli = cli_queue(&app);
    let w1_token = cli.issue_worker_token(&worker("w1")).unwrap().token;
    cli.issue_worker_token(&worker("w2")).unwrap();
    assert!(app.anon.health().await.unwrap().warnings.is_empty());

    // No token is now 401; a made-up one 403.
    let err = app.anon.claim(&cpu_claim("w1"), None).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED), "{err}");
    let err = as_worker(&app, "cis490w_made_up")
        .whoami()
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");

    let w1 = as_worker(&app, &w1_token);
    let me = w1.whoami().await.unwrap();
    assert_eq!(me.worker, Some(worker("w1")));
    assert_eq!(me.credential, "worker token");
    let claimed = claim_and_start(&w1, "w1").await;

    // w1's token acting as w2: refused, and recorded on the job for the operator.
    let err = w1.claim(&cpu_claim("w2"), None).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(err.code(), Some("wrong_worker"));
    let hb_as_w2 = HeartbeatRequest {
        worker: worker("w2"),
        lease: claimed.lease.clone(),
        log_tail: None,
        log: None,
        progress: None,
    };
    let err = w1.heartbeat(&claimed.job.id, &hb_as_w2).await.unwrap_err();
    assert_eq!(err.code(), Some("wrong_worker"), "{err}");
    let detail = app
        .anon
        .job(&prefix(claimed.job.id.as_str()))
        .await
        .unwrap();
    let refusal = detail
        .events
        .iter()
        .find(|e| e.kind == "WrongWorker")
        .expect("a WrongWorker event on the job");
    assert_eq!(refusal.worker, Some(worker("w1")));
    assert!(refusal.message.contains("w2"), "{}", refusal.message);

    // Revoked through the other connection: refused from the very next request.
    assert!(cli.revoke_worker_token(&worker("w1")).unwrap().is_some());
    let hb = HeartbeatRequest {
        worker: worker("w1"),
        lease: claimed.lease.clone(),
        log_tail: None,
        log: None,
        progress: None,
    };
    let err = w1.heartbeat(&claimed.job.id, &hb).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shared_token_is_reported_and_proves_no_name() {
    let app = spawn_app(AppOptions::default()).await;
    let warnings = app.anon.health().await.unwrap().warnings;
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "the shared worker token is configured: any holder can act as any worker"
        )),
        "{warnings:?}"
    );
    let me = app.client.whoami().await.unwrap();
    assert_eq!(
        (me.worker, me.credential.as_str()),
        (None, "shared worker token")
    );
    // A per-worker token works beside it.
    let token = cli_queue(&app)
        .issue_worker_token(&worker("w9"))
        .unwrap()
        .token;
    assert_eq!(
        as_worker(&app, &token).whoami().await.unwrap().worker,
        Some(worker("w9"))
    );
}

fn with_instance(name: &str, id: &str) -> ClaimRequest {
    let mut req = cpu_claim(name);
    req.capability.instance = Some(AgentInstance {
        id: id.to_string(),
        pid: Some(77),
        stopping: false,
        replaces: None,
    });
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_agent_under_a_live_name_is_refused_with_409() {
    let app = spawn_app(AppOptions::default()).await;
    let first = app
        .client
        .claim(&with_instance("gpu-1", "first01"), None)
        .await
        .unwrap()
        .unwrap();
    let err = app
        .client
        .claim(&with_instance("gpu-1", "second02"), None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::CONFLICT));
    assert_eq!(err.code(), Some("name_in_use"));
    assert!(
        err.to_string().contains("instance first01, pid 77"),
        "{err}"
    );
    let err = app
        .client
        .report_node(
            &worker("gpu-1"),
            &with_instance("gpu-1", "second02").capability,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("name_in_use"));
    assert_eq!(job_status(&app, &first.job.id).await, JobStatus::Claimed);
}

fn completion(name: &str, lease: &Lease, artifact: Option<ArtifactId>) -> CompleteRequest {
    CompleteRequest {
        worker: worker(name),
        lease: lease.clone(),
        artifact_id: artifact,
        upload: None,
        report: Default::default(),
    }
}

async fn upload(client: &Client, claimed: &ClaimResponse, name: &str, bytes: &[u8]) -> ArtifactId {
    client
        .upload(
            &claimed.job.id,
            &worker(name),
            &claimed.lease,
            &sha256_hex(bytes),
            reqwest::Body::from(bytes.to_vec()),
        )
        .await
        .unwrap()
        .artifact_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completions_with_a_foreign_a_never_uploaded_or_a_missing_artifact_are_refused() {
    let app = spawn_app(AppOptions::default()).await;
    let c = &app.client;
    let one = claim_and_start(c, "w1").await;
    let two = claim_and_start(c, "w2").await;
    let theirs = upload(c, &two, "w2", b"job two's model").await;
    let never = ArtifactId::parse(&"ee".repeat(32)).unwrap();

    for (artifact, code) in [
        (Some(theirs.clone()), "artifact_not_uploaded"),
        (Some(never), "artifact_not_uploaded"),
    ] {
        let err = c
            .complete(&one.job.id, &completion("w1", &one.lease, artifact))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::CONFLICT), "{err}");
        assert_eq!(err.code(), Some(code), "{err}");
        assert_eq!(job_status(&app, &one.job.id).await, JobStatus::Running);
    }
    let mine = upload(c, &one, "w1", b"job one's model").await;
    let err = c
        .complete(&one.job.id, &completion("w1", &one.lease, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("artifact_required"), "{err}");
    assert!(err.to_string().contains(mine.as_str()), "{err}");
    assert_eq!(job_status(&app, &one.job.id).await, JobStatus::Running);

    // Another worker with this job's lease: not its lease (shared token: lease_lost).
    let err = c
        .complete(
            &one.job.id,
            &completion("w2", &one.lease, Some(mine.clone())),
        )
        .await
        .unwrap_err();
    assert!(err.is_lease_lost(), "{err}");
    assert_eq!(job_status(&app, &one.job.id).await, JobStatus::Running);

    let done = c
        .complete(
            &one.job.id,
            &completion("w1", &one.lease, Some(mine.clone())),
        )
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    let view = app.anon.job(&prefix(one.job.id.as_str())).await.unwrap();
    assert_eq!(view.artifact_id, Some(mine));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_using_another_workers_lease_with_its_own_token_is_refused() {
    let app = spawn_app(AppOptions {
        worker_token: None,
        ..AppOptions::default()
    })
    .await;
    let cli = cli_queue(&app);
    let w1 = as_worker(&app, &cli.issue_worker_token(&worker("w1")).unwrap().token);
    let w2 = as_worker(&app, &cli.issue_worker_token(&worker("w2")).unwrap().token);
    let one = claim_and_start(&w1, "w1").await;
    let mine = upload(&w1, &one, "w1", b"w1's model").await;
    // w2 names itself: the lease is not its own.
    let err = w2
        .complete(
            &one.job.id,
            &completion("w2", &one.lease, Some(mine.clone())),
        )
        .await
        .unwrap_err();
    assert!(err.is_lease_lost(), "{err}");
    // w2 names w1: its token does not prove w1.
    let err = w2
        .complete(
            &one.job.id,
            &completion("w1", &one.lease, Some(mine.clone())),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("wrong_worker"), "{err}");
    let err = w2
        .upload(
            &one.job.id,
            &worker("w1"),
            &one.lease,
            &sha256_hex(b"forged"),
            reqwest::Body::from(b"forged".to_vec()),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("wrong_worker"), "{err}");
    assert_eq!(job_status(&app, &one.job.id).await, JobStatus::Running);
    w1.complete(&one.job.id, &completion("w1", &one.lease, Some(mine)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_whose_lease_expires_while_it_streams_is_refused_and_cannot_complete() {
    let app = spawn_app(AppOptions {
        manifest: jobs_manifest([1]),
        ..AppOptions::default()
    })
    .await;
    let claimed = claim_and_start(&app.client, "w1").await;
    let id = claimed.job.id.clone();
    let chunk = vec![7u8; 64 * 1024];
    let whole: Vec<u8> = chunk.iter().chain(chunk.iter()).copied().collect();
    let (clock, anon, job) = (app.clock.clone(), app.anon.clone(), id.clone());
    // First chunk, then (while the server reads) the lease expires and is swept, then the
    // last chunk.
    let body = futures_util::stream::unfold(0u32, move |i| {
        let (clock, anon, job, chunk) = (clock.clone(), anon.clone(), job.clone(), chunk.clone());
        async move {
            match i {
                0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), 1)),
                1 => {
                    clock.advance(chrono::Duration::seconds(120));
                    wait_for(Duration::from_secs(20), "the sweep", || async {
                        let status = anon.job(&prefix(job.as_str())).await.ok()?.status;
                        (status == JobStatus::Pending).then_some(())
                    })
                    .await;
                    Some((Ok(bytes::Bytes::from(chunk)), 2))
                }
                _ => None,
            }
        }
    });
    let err = app
        .client
        .upload(
            &id,
            &worker("w1"),
            &claimed.lease,
            &sha256_hex(&whole),
            reqwest::Body::wrap_stream(body),
        )
        .await
        .unwrap_err();
    assert!(err.is_lease_lost(), "{err}");
    // The next lease cannot complete with those bytes.
    let next = claim_and_start(&app.client, "w2").await;
    assert_eq!(next.job.id, id);
    let stray = ArtifactId::parse(&sha256_hex(&whole)).unwrap();
    let err = app
        .client
        .complete(&id, &completion("w2", &next.lease, Some(stray)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("artifact_not_uploaded"), "{err}");
    assert_eq!(job_status(&app, &id).await, JobStatus::Running);
}
