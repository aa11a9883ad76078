//! RayVault Cluster: the distributed execution layer of the RayVault video
//! pipeline.
//!
//! # Layout
//!
//! Core (this crate's `src/`, knows nothing of actors or HTTP servers):
//! - [`error`]: stable error codes and the step error type.
//! - [`config`]: layered settings (`config/default.toml`, local file, env).
//! - [`artifacts`]: atomic writes, SHA-256 manifests, safe artifact names.
//! - [`joblog`]: the per-job `worker.log`.
//! - [`process`]: running external tools safely (scrubbed env, timeouts,
//!   process-tree kill).
//! - [`steps`]: the five RayVault steps.
//! - [`caps`]: the host capability probe (`/caps`).
//! - [`service`]: service definitions (systemd, launchd, Task Scheduler,
//!   Windows service) and environment files for `service install`.
//! - [`logfile`]: size-rotated log files and the tracing set-up.
//! - [`ui_session`]: is an interactive desktop session active (for
//!   `OPENCLAW_TASK`).
//! - [`metrics`]: the Prometheus counters of both binaries and their text
//!   format.
//! - [`client`]: everything that talks to a worker (the current and v0.5
//!   clients, contract detection, `NodeClient`, `CallError`, the per-node
//!   keep-alive pool).
//! - [`nodes`]: `nodes.json`, and the plain data about a node
//!   (`NodeHandle`, `Compat`, `NodeCaps`).
//! - [`backoff`]: the one retry policy.
//!
//! Actors (the top-level `actors/` folder, included as [`actors`]): the
//! controller's Supervisor, NodeProbe, Scheduler, JobRunner, ArtifactSync and
//! LocalRunner, and the worker's per-step executor actors.
//!
//! Binaries (`src/bin/`): `rayvault-worker` and `rayvault-orchestrator`.

pub mod artifacts;
pub mod auth;
pub mod backoff;
pub mod caps;
pub mod client;
pub mod config;
pub mod controller_store;
pub mod error;
pub mod joblog;
pub mod lease;
pub mod logfile;
pub mod memory;
pub mod metrics;
pub mod nodes;
pub mod process;
pub mod protocol;
pub mod receipt;
pub mod service;
pub mod steps;
pub mod store;
pub mod ui_session;

#[path = "../actors/mod.rs"]
pub mod actors;
