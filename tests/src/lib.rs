//! Helpers for black-box tests that start the real cis490 binaries.
