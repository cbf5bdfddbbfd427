//! Black-box runs of the real `cis490ctl` binary that need no reconciler: help, version,
//! completion, and the error lines for a missing token, a refused token and an unreachable
//! server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_cis490ctl");

/// Runs cis490ctl with a clean environment for the variables it reads.
fn ctl(args: &[&str], token: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("CIS490_SERVER")
        .env_remove("CIS490_OPERATOR_TOKEN")
        .env("NO_COLOR", "1");
    if let Some(t) = token {
        cmd.env("CIS490_OPERATOR_TOKEN", t);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A loopback URL where nothing listens.
fn dead_url() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

#[test]
fn help_on_every_verb_shows_an_example() {
    let top = ctl(&["--help"], None);
    assert!(top.status.success());
    let text = stdout(&top);
    assert!(text.contains("Examples:"), "{text}");
    for verb in [
        &["get", "jobs"][..],
        &["get", "workers"],
        &["get", "artifacts"],
        &["describe", "job"],
        &["describe", "worker"],
        &["wait"],
        &["logs"],
        &["cancel"],
        &["requeue"],
        &["reload"],
        &["apply"],
        &["diff"],
        &["cordon"],
        &["uncordon"],
        &["drain"],
        &["status"],
        &["pull"],
        &["completion"],
        &["version"],
    ] {
        let mut args = verb.to_vec();
        args.push("--help");
        let out = ctl(&args, None);
        assert!(out.status.success(), "{verb:?} --help failed");
        let text = stdout(&out);
        assert!(
            text.contains("Examples:\n  ") && text.contains("cis490ctl "),
            "{verb:?} --help has no example:\n{text}"
        );
    }
}

#[test]
fn version_client_and_flag() {
    let out = ctl(&["version", "--client"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("Client Version: {}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = ctl(&["version", "--client", "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["client_version"], env!("CARGO_PKG_VERSION"));
    let out = ctl(&["--version"], None);
    assert!(out.status.success());
    assert!(stdout(&out).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn completion_scripts_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ctl(&["completion", shell], None);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("cis490ctl"), "{shell}");
        assert!(text.contains("requeue"), "{shell} script lacks the verbs");
    }
}

#[test]
fn usage_errors_exit_1() {
    let out = ctl(&["get", "jobs", "--status", "done"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("done"), "{}", stderr(&out));
}

#[test]
fn missing_operator_token_fails_before_any_request() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let manifest = tempfile::NamedTempFile::new().unwrap();
    let path = manifest.path().to_str().unwrap().to_string();
    for args in [
        &["cancel", "abc123"][..],
        &["requeue", "abc123"],
        &["requeue", "--status", "failed"],
        &["reload"],
        &["diff", "-f", &path],
        &["cordon", "gpu-box"],
        &["uncordon", "gpu-box"],
        &["drain", "gpu-box"],
    ] {
        let mut all = vec!["--server", &url];
        all.extend_from_slice(args);
        let out = ctl(&all, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.contains("CIS490_OPERATOR_TOKEN"), "{args:?}: {err}");
        assert!(stdout(&out).is_empty());
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("cis490ctl connected ({peer}) without a token"),
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn unreachable_server_names_the_url_and_the_flag() {
    let url = dead_url();
    for args in [&["get", "jobs"][..], &["status"], &["version"]] {
        let mut all = vec!["--server", url.as_str()];
        all.extend_from_slice(args);
        let out = ctl(&all, None);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
        assert!(err.contains(&url), "{args:?}: {err}");
        assert!(
            err.contains("--server") && err.contains("CIS490_SERVER"),
            "{args:?}: {err}"
        );
    }
    // The same through the environment variable.
    let out = Command::new(BIN)
        .args(["get", "workers"])
        .env("CIS490_SERVER", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(&url), "{}", stderr(&out));
}

#[test]
fn bad_server_url_is_explained() {
    let out = ctl(&["--server", "pi.lab:8787", "get", "jobs"], None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("pi.lab:8787") && err.contains("--server"),
        "{err}"
    );
}

/// Answers one HTTP request with `status` and `body`; returns the request's head.
fn serve_once(
    status: &'static str,
    body: &'static str,
) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        answer(stream, status, body)
    });
    (url, handle)
}

fn answer(stream: TcpStream, status: &str, body: &str) -> String {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap();
        }
        head.push_str(&line);
    }
    let mut rest = vec![0; content_length];
    reader.read_exact(&mut rest).unwrap();
    let mut stream = reader.into_inner();
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    head
}

#[test]
fn refused_token_says_which_variable_to_set() {
    let (url, server) = serve_once(
        "403 Forbidden",
        r#"{"error":"forbidden","message":"wrong operator token"}"#,
    );
    let out = ctl(
        &["--server", &url, "cancel", "abc123"],
        Some("not-the-token"),
    );
    let head = server.join().unwrap();
    assert!(head.starts_with("POST /v1/job/abc123/cancel "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-operator-token: not-the-token"),
        "{head}"
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("CIS490_OPERATOR_TOKEN"), "{err}");
    assert!(err.contains("wrong operator token"), "{err}");
}

#[test]
fn ambiguous_prefix_from_the_server_lists_candidates_and_exits_1() {
    let (url, server) = serve_once(
        "409 Conflict",
        r#"{"error":"ambiguous_id","message":"ID prefix ab matches 2 jobs: ab12cd34ef56, ab98ff001122"}"#,
    );
    let out = ctl(&["--server", &url, "describe", "job", "ab"], None);
    let head = server.join().unwrap();
    assert!(head.starts_with("GET /v1/job/ab "), "{head}");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("ab12cd34ef56") && err.contains("ab98ff001122"),
        "{err}"
    );
}
