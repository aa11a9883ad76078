//! Placeholder: the worker's per-step executor actor is being written.
