//! Placeholder: capability probe being written.
