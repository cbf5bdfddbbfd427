//! The dashboard through a real server on 127.0.0.1:0: every page renders what the queue
//! holds, user-controlled text comes out escaped, sign-in sets a strict cookie, an
//! operator POST without the cookie or with a wrong CSRF token is 403 and changes nothing,
//! protected reads ask to sign in, and the live stream counts against the read
//! long-poll budget.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_common;

use std::time::Duration;

use cis490_api::{HeartbeatRequest, JobStatus, LogChunk};
use cis490_reconciler::server::RequestCaps;
use http_common::*;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

/// A manifest whose hyper value and labels hold markup.
fn hostile_manifest() -> String {
    "version = 1\n\n[defaults]\ncommand = [\"true\"]\n\n[models.gbt]\n\n\
     [[jobs]]\nmodel = \"gbt\"\nmode = \"oracle\"\nhyper = { note = \"<script>alert(1)</script>\" }\n\
     matrix = { seed = [1, 2] }\n"
        .to_string()
}

const LOG_LINE: &str = "step 1 <script>alert('log')</script>\n";

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn page(app: &TestApp, path: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut req = browser().get(format!("{}{path}", app.url));
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    let res = req.send().await.unwrap();
    (res.status(), res.text().await.unwrap())
}

/// Signs in with `token`; the `name=value` of the session cookie.
async fn sign_in(app: &TestApp, token: &str) -> String {
    let res = browser()
        .post(format!("{}/ui/signin", app.url))
        .form(&[("token", token), ("next", "/ui/jobs")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[LOCATION], "/ui/jobs");
    let set = res.headers()[SET_COOKIE].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    set.split(';').next().unwrap().to_string()
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    html[at..].split('"').next().unwrap().to_string()
}

async fn post(app: &TestApp, path: &str, cookie: Option<&str>, csrf: &str) -> StatusCode {
    let mut req = browser()
        .post(format!("{}{path}", app.url))
        .form(&[("csrf", csrf)]);
    if let Some(c) = cookie {
        req = req.header(COOKIE, c);
    }
    req.send().await.unwrap().status()
}

#[tokio::test]
async fn every_page_renders_the_queue_and_escapes_what_users_wrote() {
    let app = spawn_app(AppOptions {
        manifest: hostile_manifest(),
        ..AppOptions::default()
    })
    .await;
    let claimed = app
        .client
        .claim(&cpu_claim("w1"), None)
        .await
        .unwrap()
        .unwrap();
    let hb = HeartbeatRequest {
        log: Some(LogChunk {
            from: 0,
            to: LOG_LINE.len() as u64,
            text: LOG_LINE.into(),
        }),
        worker: worker("w1"),
        lease: claimed.lease.clone(),
        log_tail: None,
        progress: None,
    };
    app.client.heartbeat(&claimed.job.id, &hb).await.unwrap();
    let id = claimed.job.id.to_string();

    let (status, overview) = page(&app, "/ui/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(overview.contains("id=\"generation\""), "{overview}");
    assert!(overview.contains("data-status=\"running\""), "{overview}");
    let (_, jobs) = page(&app, "/ui/jobs?status=pending", None).await;
    assert_eq!(jobs.matches("<tr data-id=").count(), 1, "{jobs}");
    let (_, job) = page(&app, &format!("/ui/job/{}", &id[..8]), None).await;
    assert!(job.contains(&id), "{job}");
    for hostile in ["<script>alert(1)", "<script>alert('log')"] {
        assert!(!job.contains(hostile), "unescaped {hostile}: {job}");
    }
    assert!(
        job.contains("&lt;script&gt;alert('log')&lt;/script&gt;"),
        "{job}"
    );
    assert!(job.contains("note=&quot;&lt;script&gt;"), "{job}");
    // No operator buttons before signing in.
    assert!(!job.contains("action-cancel"), "{job}");
    let (_, workers) = page(&app, "/ui/workers", None).await;
    assert!(workers.contains("data-worker=\"w1\""), "{workers}");
    let (_, manifest) = page(&app, "/ui/manifest", None).await;
    assert!(manifest.contains("id=\"L7\""), "{manifest}");
    assert!(!manifest.contains("<script>"), "{manifest}");
    let (status, _) = page(&app, "/ui/results", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = page(&app, "/ui/job/ffffffff", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The ID search goes to the job.
    let res = browser()
        .get(format!("{}/ui/jobs?q={}", app.url, &id[..10]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()[LOCATION], format!("/ui/job/{id}").as_str());
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_invalid_manifest_shows_its_line_on_the_overview_and_the_manifest_page() {
    let app = spawn_app(AppOptions::default()).await;
    app.write_manifest_by_rename("version = 1\n\n[models.gbt]\n\n[[jobs]]\nmodel = gbt\n");
    let overview = wait_for(Duration::from_secs(10), "the reload error", || async {
        let (_, html) = page(&app, "/ui/", None).await;
        html.contains("id=\"manifest-error\"").then_some(html)
    })
    .await;
    assert!(overview.contains("training_manifest.toml:6"), "{overview}");
    let (_, manifest) = page(&app, "/ui/manifest", None).await;
    assert!(
        manifest.contains("<span id=\"L6\" class=\"bad\">"),
        "{manifest}"
    );
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn operator_posts_need_the_cookie_and_its_csrf_token() {
    let app = spawn_app(AppOptions::default()).await;
    let jobs = app.client.jobs(&Default::default()).await.unwrap();
    let id = jobs[0].id.to_string();
    let cancel = format!("/ui/job/{id}/cancel");

    // Without a cookie: 403, still pending.
    assert_eq!(post(&app, &cancel, None, "").await, StatusCode::FORBIDDEN);
    // A wrong token does not sign in.
    let res = browser()
        .post(format!("{}/ui/signin", app.url))
        .form(&[("token", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(res.headers().get(SET_COOKIE).is_none());
    // A reader's cookie (the worker token) is not an operator's.
    let reader = sign_in(&app, WORKER_TOKEN).await;
    let (_, html) = page(&app, &format!("/ui/job/{id}"), Some(&reader)).await;
    assert!(!html.contains("action-cancel"), "{html}");
    let reader_csrf = csrf_of(&html);
    assert_eq!(
        post(&app, &cancel, Some(&reader), &reader_csrf).await,
        StatusCode::FORBIDDEN
    );

    let cookie = sign_in(&app, OPERATOR_TOKEN).await;
    let (_, html) = page(&app, &format!("/ui/job/{id}"), Some(&cookie)).await;
    assert!(html.contains("action-cancel"), "{html}");
    let csrf = csrf_of(&html);
    // The cookie with a missing, a wrong or another session's CSRF token: 403.
    for bad in ["", "00", reader_csrf.as_str()] {
        assert_eq!(
            post(&app, &cancel, Some(&cookie), bad).await,
            StatusCode::FORBIDDEN
        );
    }
    // The CSRF token without the cookie: 403.
    assert_eq!(
        post(&app, &cancel, None, &csrf).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(app.count(JobStatus::Cancelled).await, 0);

    assert_eq!(
        post(&app, &cancel, Some(&cookie), &csrf).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(app.count(JobStatus::Cancelled).await, 1);
    // Requeue and a worker action through the same forms.
    assert_eq!(
        post(&app, &format!("/ui/job/{id}/requeue"), Some(&cookie), &csrf).await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(app.count(JobStatus::Cancelled).await, 0);
    app.client.claim(&cpu_claim("w1"), None).await.unwrap();
    assert_eq!(
        post(&app, "/ui/worker/w1/drain", Some(&cookie), &csrf).await,
        StatusCode::SEE_OTHER
    );
    assert!(app.queue.worker(&worker("w1")).unwrap().draining);
    // Sign out: needs the CSRF token too, then the cookie is cleared.
    assert_eq!(
        post(&app, "/ui/signout", Some(&cookie), "").await,
        StatusCode::FORBIDDEN
    );
    let res = browser()
        .post(format!("{}/ui/signout", app.url))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert!(res.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn protected_reads_ask_to_sign_in() {
    let app = spawn_app(AppOptions {
        protect_reads: true,
        ..AppOptions::default()
    })
    .await;
    for path in ["/ui/", "/ui/jobs", "/ui/workers", "/ui/live"] {
        let (status, html) = page(&app, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(html.contains("action=\"/ui/signin\""), "{path}: {html}");
    }
    let (status, _) = page(&app, "/ui/", Some("cis490_session=6e6f7065")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let cookie = sign_in(&app, WORKER_TOKEN).await;
    let (status, html) = page(&app, "/ui/", Some(&cookie)).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    // The static files and the sign-in page itself are open.
    let (status, _) = page(&app, "/ui/static/live.js", None).await;
    assert_eq!(status, StatusCode::OK);
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn live_streams_hold_a_read_long_poll_place_and_tell_changes() {
    let app = spawn_app(AppOptions {
        caps: RequestCaps {
            event_waits: 1,
            ..RequestCaps::default()
        },
        ..AppOptions::default()
    })
    .await;
    let mut first = browser()
        .get(format!("{}/ui/live", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        first.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let hello = String::from_utf8(first.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(hello.contains("event: hello"), "{hello}");
    // The one place is taken: a second stream (and a waiting event poll) is 429.
    let second = browser()
        .get(format!("{}/ui/live", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().contains_key("retry-after"));
    // A change of the queue is told.
    app.client.claim(&cpu_claim("w1"), None).await.unwrap();
    let change = tokio::time::timeout(Duration::from_secs(10), async {
        let mut seen = String::new();
        while !seen.contains("event: change") {
            seen.push_str(&String::from_utf8_lossy(
                &first.chunk().await.unwrap().unwrap(),
            ));
        }
        seen
    })
    .await
    .unwrap();
    assert!(change.contains("data: "), "{change}");
    // Closing the page frees the place.
    drop(first);
    wait_for(
        Duration::from_secs(10),
        "the place to come free",
        || async {
            let res = browser()
                .get(format!("{}/ui/live", app.url))
                .send()
                .await
                .unwrap();
            (res.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
    app.shutdown().await.unwrap();
}
