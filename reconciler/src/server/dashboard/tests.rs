//! Tests of the dashboard through its router.
