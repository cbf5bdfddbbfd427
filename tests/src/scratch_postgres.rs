//! A fresh PostgreSQL database for one test, on the server `CIS490_TEST_POSTGRES` names
//! (`eval "$(.ci/postgres.sh start)"` starts a private one), dropped when the test ends.

use anyhow::Context;

/// The admin URL of the test server (`postgres://USER@HOST:PORT/postgres`).
pub const POSTGRES_URL_VAR: &str = "CIS490_TEST_POSTGRES";
/// Set to `1` (CI) to fail, not skip, when no server is configured.
pub const REQUIRE_POSTGRES_VAR: &str = "CIS490_REQUIRE_POSTGRES";

/// A database made for one test, dropped (with its connections) on drop.
pub struct ScratchPostgres {
    admin: String,
    name: String,
    /// The database's URL, for `serve --database`.
    pub url: String,
}

impl ScratchPostgres {
    /// None when no server is configured (the test says so and passes), unless
    /// [`REQUIRE_POSTGRES_VAR`] is `1`. `tag` names the database (with this process's ID).
    pub fn create(tag: &str) -> anyhow::Result<Option<ScratchPostgres>> {
        let Ok(admin) = std::env::var(POSTGRES_URL_VAR) else {
            anyhow::ensure!(
                std::env::var(REQUIRE_POSTGRES_VAR).as_deref() != Ok("1"),
                "{REQUIRE_POSTGRES_VAR}=1 but {POSTGRES_URL_VAR} is not set"
            );
            eprintln!("skipped: no PostgreSQL server ({POSTGRES_URL_VAR} is not set)");
            return Ok(None);
        };
        Self::create_on(&admin, tag).map(Some)
    }

    /// A fresh database on the server whose admin URL is `admin`.
    pub fn create_on(admin: &str, tag: &str) -> anyhow::Result<ScratchPostgres> {
        let admin = admin.to_string();
        let name = format!("cis490_test_{tag}_{}", std::process::id());
        admin_sql(
            &admin,
            vec![
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("CREATE DATABASE {name}"),
            ],
        )?;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Ok(ScratchPostgres { admin, name, url })
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let _ = admin_sql(
            &self.admin,
            vec![format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )],
        );
    }
}

/// Runs each statement on the admin database (one at a time: `DROP DATABASE` refuses a
/// transaction, which several statements in one message would share). On a thread of its own: the synchronous client runs
/// a runtime of its own, which may not start on a thread that drives async code.
fn admin_sql(admin: &str, statements: Vec<String>) -> anyhow::Result<()> {
    let admin = admin.to_string();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)
            .with_context(|| format!("connecting to the PostgreSQL server {admin}"))?;
        for sql in &statements {
            client.batch_execute(sql)?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the PostgreSQL admin thread panicked"))?
}

/// A private PostgreSQL cluster of the test's own that takes TCP connections over TLS only
/// (`.ci/postgres.sh` with its TLS options: plain TCP is rejected by pg_hba, the Unix socket
/// stays open for the test's own admin work). Stopped and deleted on drop.
pub struct TlsCluster {
    dir: String,
    /// The cluster's admin URL over its Unix socket (plain, trusted).
    pub admin_url: String,
    /// The TCP port it listens on, on localhost.
    pub port: u16,
}

/// `.ci/postgres.sh`, which starts and stops the clusters of the tests.
fn postgres_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/postgres.sh")
}

/// Whether PostgreSQL's server binaries are installed (Debian's layout).
fn server_binaries_installed() -> bool {
    std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|versions| {
        versions
            .flatten()
            .any(|v| v.path().join("bin/initdb").is_file())
    })
}

impl TlsCluster {
    /// Starts a cluster serving `cert`/`key`; with `client_ca`, it wants a client
    /// certificate that CA signed, whose CN is the role (`cert` authentication). None when
    /// PostgreSQL is not installed (the test says so and passes), unless
    /// [`REQUIRE_POSTGRES_VAR`] is `1`: then the script installs it.
    pub fn start(
        cert: &std::path::Path,
        key: &std::path::Path,
        client_ca: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<TlsCluster>> {
        if !server_binaries_installed() && std::env::var(REQUIRE_POSTGRES_VAR).as_deref() != Ok("1")
        {
            eprintln!("skipped: PostgreSQL's server binaries are not installed");
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(postgres_script())
            .arg("start")
            .env("CIS490_PG_TLS_CERT", cert)
            .env("CIS490_PG_TLS_KEY", key)
            .env("CIS490_PG_PORT", port.to_string())
            .env_remove("CIS490_PG_TLS_CLIENT_CA")
            .stdin(std::process::Stdio::null());
        if let Some(ca) = client_ca {
            cmd.env("CIS490_PG_TLS_CLIENT_CA", ca);
        }
        let out = cmd.output().context("running .ci/postgres.sh start")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let exported = |name: &str| {
            stdout.lines().find_map(|line| {
                let value = line.strip_prefix(&format!("export {name}='"))?;
                Some(value.trim_end_matches('\'').to_string())
            })
        };
        let dir = exported("CIS490_PG_DIR");
        let admin_url = exported("CIS490_TEST_POSTGRES");
        match (out.status.success(), dir, admin_url) {
            (true, Some(dir), Some(admin_url)) => Ok(Some(TlsCluster {
                dir,
                admin_url,
                port,
            })),
            (_, dir, _) => {
                if let Some(dir) = dir {
                    stop_cluster(&dir);
                }
                anyhow::bail!(
                    "postgres.sh start with TLS failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            }
        }
    }

    /// Rows of `sql` on the admin connection, each column as text.
    pub fn query(&self, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let admin = self.admin_url.clone();
        let sql = sql.to_string();
        std::thread::spawn(move || -> anyhow::Result<Vec<Vec<Option<String>>>> {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)?;
            let rows = client.simple_query(&sql)?;
            Ok(rows
                .into_iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the PostgreSQL admin thread panicked"))?
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        stop_cluster(&self.dir);
    }
}

fn stop_cluster(dir: &str) {
    let _ = std::process::Command::new("bash")
        .arg(postgres_script())
        .arg("stop")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output();
}
