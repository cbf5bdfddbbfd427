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
        let name = format!("cis490_test_{tag}_{}", std::process::id());
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)
            .with_context(|| format!("connecting to {POSTGRES_URL_VAR}={admin}"))?;
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        client.batch_execute(&format!("CREATE DATABASE {name}"))?;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Ok(Some(ScratchPostgres { admin, name, url }))
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
