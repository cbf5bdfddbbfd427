//! The HTTP API (axum) and the background loops of `serve`.
