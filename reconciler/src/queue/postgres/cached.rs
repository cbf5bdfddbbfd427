//! A transaction that prepares each SQL text once per connection. The sync client's
//! `query(&str, ..)` prepares the statement on every call, one more round trip each time; a
//! claim runs about ten statements, so half its round trips were prepares.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Row, Statement, Transaction};

/// Prepared statements of one connection, by SQL text.
#[derive(Default)]
pub(crate) struct StatementCache {
    statements: HashMap<String, Statement>,
}

/// Most statements one connection keeps; past it the cache starts over (the SQL texts are
/// constants, so it never fills in practice).
const MAX_STATEMENTS: usize = 512;

/// An open transaction and its connection's statement cache, with the methods the queue
/// calls on a transaction.
pub(crate) struct CachedTx<'c> {
    tx: Transaction<'c>,
    cache: &'c mut StatementCache,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl<'c> CachedTx<'c> {
    pub(crate) fn new(tx: Transaction<'c>, cache: &'c mut StatementCache) -> Self {
        CachedTx { tx, cache }
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.cache.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.tx.prepare(sql)?;
        if self.cache.statements.len() >= MAX_STATEMENTS {
            self.cache.statements.clear();
        }
        self.cache
            .statements
            .insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query(&statement, params)
    }

    /// [`CachedTx::query`] without keeping the statement: for SQL texts that carry
    /// values (a LIMIT the planner must see to plan for it), run rarely.
    pub(crate) fn query_uncached(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<Row>, postgres::Error> {
        self.tx.query(sql, params)
    }

    pub(crate) fn query_one(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Row, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query_one(&statement, params)
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.query_opt(&statement, params)
    }

    pub(crate) fn execute(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64, postgres::Error> {
        let statement = self.statement(sql)?;
        self.tx.execute(&statement, params)
    }

    pub(crate) fn commit(self) -> Result<(), postgres::Error> {
        self.tx.commit()
    }
}
