//! The dashboard in a real headless Chromium (driven through chromedriver) against a real
//! fleet: every page renders the fleet's jobs and workers, a job's page follows it live
//! from pending to completed without a reload, the results page charts the matrix, a
//! signed-in operator cancels a job from its page, and without the cookie neither the
//! button nor the POST works. Screenshots of the overview and of the results chart go to
//! `docs/screenshots/` with `CIS490_UPDATE_SCREENSHOTS=1`, else to the target directory.
//!
//! Without Chromium (`/usr/bin/chromium` and `/usr/bin/chromedriver`, or
//! `CIS490_CHROMIUM` and `CIS490_CHROMEDRIVER`) the test says so and passes, unless
//! `CIS490_REQUIRE_BROWSER=1` (CI sets it).
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cis490_api::{JobStatus, JobView};
use cis490_tests::fleet::{Fleet, OPERATOR_TOKEN, WAIT};
use fantoccini::{Client, ClientBuilder, Locator};

/// Each progress line waits for a file `go<step>` in slow mode (the test moves it on).
const TRAINER: &str = r#"import argparse, json, os, time
parser = argparse.ArgumentParser()
parser.add_argument("--learning_rate", type=float, default=0.1)
args = parser.parse_args()
mode = os.environ["CIS490_MODE"]
seed = int(os.environ["CIS490_SEED"])
for i in (1, 2, 3):
    print(f"step {i} <b>not bold</b>", flush=True)
    with open(os.environ["CIS490_PROGRESS_FILE"], "a") as f:
        f.write(json.dumps({"step": i, "of": 3, "loss": round(1.0 / i, 3)}) + "\n")
    for _ in range(1200):
        if mode != "slow" or i == 3 or os.path.exists(f"go{i}"):
            break
        time.sleep(0.05)
accuracy = round(0.5 + args.learning_rate + seed / 100, 4)
with open(os.path.join(os.environ["CIS490_OUTPUT_DIR"], "metrics.json"), "w") as f:
    json.dump({"accuracy": accuracy, "loss": round(1 - accuracy, 4)}, f)
"#;

const MANIFEST: &str = r#"version = 1

[defaults]
command = ["python3", "train.py"]

[models.gbt]

[[jobs]]
model = "gbt"
mode = "oracle"
matrix = { seed = [1, 2, 3], "hyper.learning_rate" = [0.3, 0.1, 0.01] }

[[jobs]]
model = "gbt"
mode = "slow"
seed = 1
priority = 10

[[jobs]]
model = "gbt"
mode = "needs-gpu"
seed = 1
require_cuda = true
"#;

const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
];

fn tool(env: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    path.is_file().then_some(path)
}

/// chromedriver in a process group of its own, killed with every browser it started.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

fn start_driver(chromedriver: &Path) -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver { child, port };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    driver
}

async fn browser(driver: &Driver, chromium: &Path, profile: &Path) -> Client {
    let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": chromium, "args": args }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

/// Waits (without reloading) until the text of `css` satisfies `ok`; answers the text.
async fn wait_text(c: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(text) = e.text().await {
                if ok(&text) {
                    return text;
                }
                last = text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} in {css}; last text: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn save_screenshot(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    let dir = if std::env::var("CIS490_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
    eprintln!("screenshot: {}", dir.join(name).display());
}

fn by_mode<'a>(jobs: &'a [JobView], mode: &str) -> &'a JobView {
    jobs.iter().find(|j| j.mode == mode).unwrap()
}

#[test]
fn the_dashboard_in_a_real_browser() {
    let (Some(chromium), Some(chromedriver)) = (
        tool("CIS490_CHROMIUM", "/usr/bin/chromium"),
        tool("CIS490_CHROMEDRIVER", "/usr/bin/chromedriver"),
    ) else {
        let message = "SKIPPED the dashboard browser test: no Chromium here (apt-get install \
                       chromium chromium-driver, or set CIS490_CHROMIUM and CIS490_CHROMEDRIVER)";
        assert!(
            std::env::var("CIS490_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "{message}, and CIS490_REQUIRE_BROWSER=1"
        );
        eprintln!("{message}");
        return;
    };
    let mut fleet = Fleet::start(MANIFEST).unwrap();
    fleet.write_work_file("train.py", TRAINER).unwrap();
    let jobs = fleet.wait_jobs(11).unwrap();
    let slow = by_mode(&jobs, "slow").id.clone();
    let gpu_job = by_mode(&jobs, "needs-gpu").id.clone();
    let url = fleet.url().unwrap();
    let driver = start_driver(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let c = fleet
        .rt
        .block_on(browser(&driver, &chromium, profile.path()));
    // The slow job's page, open before any agent runs: it must follow the job live.
    fleet.rt.block_on(async {
        c.goto(&format!("{url}/ui/job/{slow}")).await.unwrap();
        assert_eq!(text_of(&c, "h1 .status").await, "pending");
        c.execute("window.notReloaded = true;", vec![])
            .await
            .unwrap();
    });
    fleet.start_agent("cpu-box", &[]).unwrap();
    fleet.rt.block_on(async {
        wait_text(&c, "h1 .status", "running", |t| t == "running").await;
        wait_text(&c, "#log", "the first log line", |t| {
            t.contains("step 1 <b>not bold</b>")
        })
        .await;
    });
    fleet.write_work_file("go1", "").unwrap();
    fleet.write_work_file("go2", "").unwrap();
    fleet.rt.block_on(async {
        wait_text(&c, "h1 .status", "completed", |t| t == "completed").await;
        wait_text(&c, "#metrics", "the metrics", |t| t.contains("accuracy")).await;
        let still = c
            .execute("return window.notReloaded === true;", vec![])
            .await
            .unwrap();
        assert_eq!(still, serde_json::json!(true), "the page was reloaded");
        assert!(c
            .find(Locator::Css("#progress-chart svg polyline"))
            .await
            .is_ok());
    });
    // The matrix completes; the GPU job stays pending, and says why.
    fleet
        .wait_jobs_until(WAIT, "the matrix completed", |jobs| {
            jobs.iter()
                .filter(|j| j.status == JobStatus::Completed)
                .count()
                == 10
        })
        .unwrap();
    fleet.rt.block_on(async {
        c.goto(&format!("{url}/ui/")).await.unwrap();
        wait_text(&c, "[data-status=completed] .n", "10 completed", |t| {
            t == "10"
        })
        .await;
        assert_eq!(text_of(&c, "[data-status=pending] .n").await, "1");
        assert_eq!(text_of(&c, "#workers-ready").await, "1");
        save_screenshot("overview.png", &c.screenshot().await.unwrap());

        c.goto(&format!("{url}/ui/jobs?status=completed"))
            .await
            .unwrap();
        assert_eq!(
            c.find_all(Locator::Css("#jobs tbody tr"))
                .await
                .unwrap()
                .len(),
            10
        );
        c.goto(&format!("{url}/ui/workers")).await.unwrap();
        assert!(text_of(&c, "#workers").await.contains("cpu-box"));
        c.goto(&format!("{url}/ui/manifest")).await.unwrap();
        assert!(text_of(&c, "#manifest-text").await.contains("needs-gpu"));

        c.goto(&format!(
            "{url}/ui/results?model=gbt&mode=oracle&x=learning_rate&metric=accuracy&sort=-accuracy"
        ))
        .await
        .unwrap();
        let points = c
            .find_all(Locator::Css("#results-chart svg circle.point"))
            .await
            .unwrap();
        assert_eq!(
            points.len(),
            3,
            "one point per learning rate, seeds aggregated"
        );
        let rows = c
            .find_all(Locator::Css("#leaderboard tbody tr"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 9);
        let first = rows[0].text().await.unwrap();
        assert!(first.contains("0.83"), "best first: {first}");
        let chart = c.find(Locator::Css("#results-chart")).await.unwrap();
        save_screenshot("results-chart.png", &chart.screenshot().await.unwrap());

        // Not signed in: no operator button, and the POST is refused.
        c.goto(&format!("{url}/ui/job/{gpu_job}")).await.unwrap();
        assert!(text_of(&c, "#explain").await.contains("cpu-box"));
        assert!(c.find(Locator::Css("#action-cancel")).await.is_err());
        let refused = reqwest::Client::new()
            .post(format!("{url}/ui/job/{gpu_job}/cancel"))
            .form(&[("csrf", "0")])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);

        // Sign in, cancel from the page.
        c.goto(&format!("{url}/ui/signin?next=/ui/job/{gpu_job}"))
            .await
            .unwrap();
        c.find(Locator::Css("#token"))
            .await
            .unwrap()
            .send_keys(OPERATOR_TOKEN)
            .await
            .unwrap();
        c.find(Locator::Css("#signin"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, ".who .badge", "signed in", |t| t == "operator").await;
        c.find(Locator::Css("#action-cancel"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "h1 .status", "cancelled", |t| t == "cancelled").await;

        // Sign out: the buttons are gone.
        c.find(Locator::Css(".who button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.goto(&format!("{url}/ui/job/{gpu_job}")).await.unwrap();
        assert!(c.find(Locator::Css("#action-requeue")).await.is_err());
    });
    let _ = fleet.rt.block_on(c.close());
    drop(driver);
    assert_eq!(fleet.job(&gpu_job).unwrap().status, JobStatus::Cancelled);
    fleet.shutdown();
}
