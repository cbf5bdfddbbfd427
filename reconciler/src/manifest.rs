//! The manifest model: parse, validate and expand `etc/training_manifest.toml`.
