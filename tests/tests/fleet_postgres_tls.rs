//! The queue on PostgreSQL over TLS, through the real binaries: a private cluster of the
//! test's own that takes TCP over TLS only and authenticates by client certificate (the lab
//! CA of `cis490-reconciler certs` signs both sides). A server with
//! `--database postgresql://...?sslmode=verify-full&sslrootcert=...&sslcert=...&sslkey=...`
//! runs a fleet's jobs, and PostgreSQL's own `pg_stat_ssl` shows every one of its
//! connections encrypted and authenticated. What is not safe is refused with a hint: a
//! certificate another CA signed, a host name the certificate does not hold, plain text.
//! Needs PostgreSQL's server binaries (CI installs them: `CIS490_REQUIRE_POSTGRES=1`).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use cis490_api::JobStatus;
use cis490_tests::fleet::Fleet;
use cis490_tests::scratch_postgres::{ScratchPostgres, TlsCluster};

const TRAINER: &str = "#!/bin/sh\necho \"$CIS490_JOB_ID\" > \"$CIS490_OUTPUT_DIR/o.txt\"\necho \"$CIS490_JOB_ID\" >> runs.log\n";

const MANIFEST: &str = "version = 1\n\n[defaults]\ncommand = [\"sh\", \"train.sh\"]\n\n[models.m]\n\n[[jobs]]\nmodel = \"m\"\nmode = \"quick\"\nmatrix = { seed = [1, 2, 3] }\n";

fn certs(fleet: &Fleet, args: &[&str]) {
    let out = fleet.reconciler_command(args).unwrap();
    assert!(
        out.status.success(),
        "certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `cis490-reconciler tokens list --database URL`: opens the queue and reads it, so it
/// fails the way `serve` would on the same URL. The exit status and stderr.
fn open_with(fleet: &Fleet, url: &str) -> (bool, String) {
    let out = fleet
        .reconciler_command(&["tokens", "list", "--database", url])
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("tokens list --database {url}: {stderr}");
    (out.status.success(), stderr)
}

#[test]
fn the_queue_reaches_postgres_over_verified_tls_and_refuses_what_is_not() {
    let mut fleet = Fleet::prepare(MANIFEST).unwrap();
    // This test chooses its own database; the fleet's optional one is not used.
    fleet.postgres = None;
    fleet.write_work_file("train.sh", TRAINER).unwrap();
    let lab = fleet.path("pg-tls");
    let other = fleet.path("other-ca");
    certs(
        &fleet,
        &["certs", "init", "--dir", path(&lab), "--san", "localhost"],
    );
    // The client certificate's CN is the PostgreSQL role (`cert` authentication).
    certs(
        &fleet,
        &["certs", "issue-agent", "cis490", "--dir", path(&lab)],
    );
    certs(
        &fleet,
        &["certs", "init", "--dir", path(&other), "--san", "localhost"],
    );
    let Some(cluster) = TlsCluster::start(
        &lab.join("server.pem"),
        &lab.join("server-key.pem"),
        Some(&lab.join("ca.pem")),
    )
    .unwrap() else {
        return;
    };
    let db = ScratchPostgres::create_on(&cluster.admin_url, "tls").unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_string();
    let client_cert = format!(
        "sslcert={}&sslkey={}",
        path(&lab.join("cis490.pem")),
        path(&lab.join("cis490-key.pem"))
    );
    let url =
        |host: &str, tls: &str| format!("postgresql://cis490@{host}:{}/{name}?{tls}", cluster.port);
    let verified = url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&{client_cert}",
            path(&lab.join("ca.pem"))
        ),
    );

    // Refused, each with what went wrong and what to do. Plain text to a remote host is
    // refused before any connection is tried.
    let (ok, err) = open_with(&fleet, "postgresql://cis490@db.invalid/q");
    assert!(
        !ok && err.contains("would be plain text") && err.contains("sslmode=disable"),
        "{err}"
    );
    let wrong_ca = url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}&{client_cert}",
            path(&other.join("ca.pem"))
        ),
    );
    let (ok, err) = open_with(&fleet, &wrong_ca);
    assert!(
        !ok && err.contains("not signed by a CA in sslrootcert"),
        "{err}"
    );
    let by_address = url(
        "127.0.0.1",
        &format!(
            "sslmode=verify-full&sslrootcert={}&{client_cert}",
            path(&lab.join("ca.pem"))
        ),
    );
    let (ok, err) = open_with(&fleet, &by_address);
    assert!(
        !ok && err.contains("does not name the host"),
        "the certificate names localhost, not 127.0.0.1: {err}"
    );
    let (ok, err) = open_with(&fleet, &url("localhost", "sslmode=disable"));
    assert!(
        !ok && err.contains("only over TLS"),
        "pg_hba rejects plain TCP: {err}"
    );
    let without_client_cert = url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            path(&lab.join("ca.pem"))
        ),
    );
    let (ok, err) = open_with(&fleet, &without_client_cert);
    assert!(!ok && err.contains("client certificate"), "{err}");
    // verify-ca checks the chain but not the name: the address works.
    let chain_only = url(
        "127.0.0.1",
        &format!(
            "sslmode=verify-ca&sslrootcert={}&{client_cert}",
            path(&lab.join("ca.pem"))
        ),
    );
    let (ok, err) = open_with(&fleet, &chain_only);
    assert!(ok, "verify-ca by address: {err}");
    // require without a CA encrypts without checking the certificate (a warning says so).
    let unchecked = url("127.0.0.1", &format!("sslmode=require&{client_cert}"));
    let (ok, err) = open_with(&fleet, &unchecked);
    assert!(ok, "require: {err}");

    // A fleet on the verified URL runs its jobs.
    fleet
        .start_server_with("127.0.0.1:0", &["--database", &verified])
        .unwrap();
    fleet.start_agent("a1", &[]).unwrap();
    let jobs = fleet
        .wait_jobs_until(cis490_tests::fleet::WAIT, "3 jobs completed", |jobs| {
            jobs.len() == 3 && jobs.iter().all(|j| j.status == JobStatus::Completed)
        })
        .unwrap();
    fleet.assert_each_job_ran_once(&jobs);

    // Every connection of the server to its database is TLS with the client certificate:
    // the pool, the event listener and the leader lock.
    let rows = cluster
        .query(&format!(
            "SELECT a.application_name, s.ssl, s.client_dn FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.datname = '{name}' \
             AND a.application_name LIKE 'cis490-reconciler%'"
        ))
        .unwrap();
    let names: Vec<&str> = rows.iter().filter_map(|r| r[0].as_deref()).collect();
    assert!(
        names.contains(&"cis490-reconciler") && names.contains(&"cis490-reconciler leader"),
        "{rows:?}"
    );
    for row in &rows {
        assert_eq!(row[1].as_deref(), Some("t"), "a plain connection: {row:?}");
        assert!(
            row[2].as_deref().is_some_and(|dn| dn.contains("CN=cis490")),
            "{row:?}"
        );
    }
    fleet.shutdown();
    drop(db);
}
