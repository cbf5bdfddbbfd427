//! cis490-agent: capability detection and the claim/run/heartbeat/upload loop.
