//! cis490-agent: capability detection and the claim/run/heartbeat/upload loop.
//!
//! `capability` finds out what the host is; `config` merges flags, env and the config file;
//! `slots` tracks what running jobs hold; `runner` starts and stops trainers; `progress` and
//! `metrics_file` read what trainers report; `pack` bundles their output; `worker` is the loop; `cli` is what `main` calls.

pub mod capability;
pub mod cli;
pub mod config;
pub mod exec_trainer;
pub mod lease_keeper;
pub mod leftover_trainers;
pub mod log_ship;
pub mod metrics_file;
pub mod pack;
pub mod progress;
pub mod runner;
pub mod slots;
pub mod trainer_guard;
pub mod worker;
