//! Actors: the controller's Supervisor, NodeProbe, Scheduler, JobRunner,
//! ArtifactSync and LocalRunner, and the worker's per-step executors.
//!
//! This folder is a module tree of the `rayvault` library (included from
//! `src/lib.rs` with `#[path]`), not a separate crate: see ARCHITECTURE.md.
//! Messages that several actors share live in [`messages`]; each actor's own
//! messages sit at the top of its file.

pub mod artifact_sync;
pub mod crash_guard;
pub mod executor;
pub mod job_runner;
pub mod local_runner;
pub mod messages;
pub mod node_probe;
pub mod scheduler;
pub mod supervisor;
