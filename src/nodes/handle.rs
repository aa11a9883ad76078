//! Plain data about one node that both the client layer and the actors use:
//! how to reach it ([`NodeHandle`]), which contract it speaks ([`Compat`]),
//! and the scheduling-relevant part of its `/caps` ([`NodeCaps`]).

use super::NodeConfig;
use crate::steps::StepName;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Which worker contract a node speaks, detected by the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Compat {
    /// The current contract (docs/protocol.md).
    Current,
    /// The current contract, but the worker rejected our HMAC and accepted
    /// the plain token (allowed by `RAYVAULT_ALLOW_PLAIN_FALLBACK=1`).
    CurrentPlainToken,
    /// A v0.5 worker that accepted our v0.5 HMAC token.
    LegacyHmacV05,
    /// A v0.5 worker that only accepted the plain shared secret (allowed by
    /// `RAYVAULT_ALLOW_PLAIN_FALLBACK=1`).
    LegacyPlainToken,
}

impl Compat {
    /// The `_compat_mode` / receipt `compat_mode` value; None for current.
    pub fn mode_name(self) -> Option<&'static str> {
        match self {
            Compat::Current => None,
            Compat::CurrentPlainToken => Some("plain_token"),
            Compat::LegacyHmacV05 => Some("legacy_hmac_v05"),
            Compat::LegacyPlainToken => Some("legacy_plain_token"),
        }
    }

    pub fn is_legacy(self) -> bool {
        matches!(self, Compat::LegacyHmacV05 | Compat::LegacyPlainToken)
    }
}

/// Everything needed to talk to a node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub config: NodeConfig,
    pub compat: Compat,
    /// False until a probe succeeded: `compat` is only a guess before.
    pub probed: bool,
    /// The most input bytes the node takes inline in `POST /jobs` (its
    /// `/caps` `inline_blob_bytes`); 0: every input is uploaded first.
    pub inline_blob_bytes: u64,
    /// The node answers a submission in two lines (its `/caps`
    /// `submit_stream`): the acceptance, then the job's end.
    pub submit_stream: bool,
}

/// A set of steps. Any number of steps fits: the set is ordered by
/// [`StepName`], so two sets with the same steps compare equal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepSet(BTreeSet<StepName>);

impl StepSet {
    pub fn insert(&mut self, step: StepName) {
        self.0.insert(step);
    }

    pub fn contains(&self, step: StepName) -> bool {
        self.0.contains(&step)
    }
}

/// The scheduling-relevant part of a node's `/caps`, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCaps {
    /// Lower case: `windows`, `macos`, `linux`.
    pub os: String,
    pub ram_gb: f64,
    pub vram_gb: f64,
    pub has_gpu: bool,
    pub steps: StepSet,
    pub compat: Compat,
    /// Why the node cannot run some steps (the worker's `unavailable_steps`),
    /// only read when explaining a placement.
    pub unavailable: Arc<[(StepName, String)]>,
    /// `/caps` `inline_blob_bytes` (0 when absent or for a v0.5 worker).
    pub inline_blob_bytes: u64,
    /// `/caps` `submit_stream` (false when absent or for a v0.5 worker).
    pub submit_stream: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_set_holds_every_step() {
        let mut set = StepSet::default();
        for s in StepName::ALL {
            assert!(!set.contains(s));
            set.insert(s);
        }
        assert!(StepName::ALL.iter().all(|s| set.contains(*s)));
    }
}
