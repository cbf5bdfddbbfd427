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
