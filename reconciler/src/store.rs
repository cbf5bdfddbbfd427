//! The artifact store: sha256-addressed tar.zst bundles, streamed, verified, fsynced.
