//! The SQLite job queue: every state change of a job is one transaction.
