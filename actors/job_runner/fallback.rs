//! The fallback rule: what one job's failed attempts and placement say
//! about running it on the controller. Unavailability (down, refused,
//! lost, full, degraded) allows a local run under `fallback =
//! "unavailable"`; a misconfiguration fails the job (exit 2) unless
//! `fallback = "always"`; when nothing ran, the code says why. Pure
//! functions over typed failures, used by [`super::execute`].

use super::{Ending, Placed};
use crate::actors::messages::{NodeHealth, PlacementReport};
use crate::error::ErrorCode;
use crate::receipt::FallbackMode;

/// Why a node could not run this job, as this job saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeFailure {
    /// Not reachable, not answering in time, or full (429, 503) before the
    /// job was accepted: the node is unavailable, the case where `fallback
    /// = "unavailable"` runs the job locally.
    Unavailable(String),
    /// Accepted the job, then became unreachable or silent: also
    /// unavailability (`WORKER_LOST` when nothing else ran the job).
    Lost(String),
    /// The node cannot be used until someone fixes the configuration
    /// (credentials refused, another worker id): the job fails (exit 2)
    /// unless `fallback = "always"`.
    Misconfigured(ErrorCode, String),
    /// The step failed there for a reason of that machine (a tool or an
    /// input missing there, a full disk): the step's own code.
    Step(String, String),
}

impl NodeFailure {
    /// What happened, as the end of a sentence that starts with the node id.
    pub fn text(&self) -> &str {
        match self {
            NodeFailure::Unavailable(r) | NodeFailure::Lost(r) | NodeFailure::Misconfigured(_, r) | NodeFailure::Step(_, r) => r,
        }
    }
}

/// A configuration error among the nodes this job could have used fails the
/// job (nothing runs anywhere), unless `fallback = "always"`.
pub(super) fn misconfiguration(placed: &Placed, failures: &[(String, NodeFailure)], tried: &[String], mode: FallbackMode, reason: &str) -> Option<Ending> {
    if mode == FallbackMode::Always {
        return None;
    }
    let mut found: Vec<(ErrorCode, String)> = failures
        .iter()
        .filter_map(|(node, f)| match f {
            NodeFailure::Misconfigured(code, r) => Some((*code, format!("{node} {r}"))),
            _ => None,
        })
        .collect();
    for n in &placed.nodes {
        if let NodeHealth::Misconfigured(code, r) = &n.health {
            if !tried.iter().any(|t| t == n.node_id.as_ref()) {
                found.push((*code, format!("{} {r}", n.node_id)));
            }
        }
    }
    let (code, _) = found.first()?.clone();
    let problems: Vec<String> = found.into_iter().map(|(_, t)| t).collect();
    let others = if reason.split("; ").all(|r| problems.iter().any(|p| p == r)) { String::new() } else { format!(" (every node: {reason})") };
    Some(Ending::failed(
        code,
        format!(
            "configuration error, so nothing ran: {}. A misconfigured worker is not an unavailable one: fix it, or pass --fallback always to run such jobs on this controller{others}",
            problems.join("; ")
        ),
        None,
    ))
}

/// The code and a phrase for a job that no node ran: the step's own code
/// when every attempt failed for the same step reason, `WORKER_LOST` when a
/// node was lost mid-job, `NO_ELIGIBLE_NODE` otherwise.
pub(super) fn why_nothing_ran(report: &PlacementReport, failures: &[(String, NodeFailure)]) -> (ErrorCode, String) {
    let step_codes: Vec<&str> = failures
        .iter()
        .filter_map(|(_, f)| match f {
            NodeFailure::Step(code, _) => Some(code.as_str()),
            _ => None,
        })
        .collect();
    if !step_codes.is_empty() && step_codes.len() == failures.len() && step_codes.iter().all(|c| *c == step_codes[0]) {
        if let Some(code) = crate::error::ErrorCode::parse(step_codes[0]) {
            return (code, format!("every worker that tried failed with {}", step_codes[0]));
        }
    }
    if failures.iter().any(|(_, f)| matches!(f, NodeFailure::Lost(_))) {
        return (ErrorCode::WorkerLost, "the worker running it was lost".into());
    }
    if report.controller_only {
        return (ErrorCode::NoEligibleNode, "the step runs only on the controller".into());
    }
    (ErrorCode::NoEligibleNode, "no worker could run it".into())
}

/// Why the job runs locally, from this job's own placement and attempts:
/// e.g. `windows-worker-1 unreachable (connection refused)`.
pub(super) fn fallback_reason(report: &PlacementReport, failures: &[(String, NodeFailure)], tried: &[String]) -> String {
    if report.controller_only {
        return report.fallback_reason();
    }
    let mut parts: Vec<String> = failures.iter().map(|(node, f)| format!("{node} {}", f.text())).collect();
    let untried = report.explanations.iter().filter(|e| !e.eligible && !tried.contains(&e.node_id));
    parts.extend(untried.map(|e| {
        if e.reason.starts_with("unreachable") || e.reason.starts_with("is ") || e.reason.starts_with("refused") || e.reason.starts_with("cannot") {
            format!("{} {}", e.node_id, e.reason)
        } else {
            format!("{}: {}", e.node_id, e.reason)
        }
    }));
    if report.explanations.is_empty() {
        return report.fallback_reason();
    }
    if parts.is_empty() {
        "no worker could run the job".to_string()
    } else {
        parts.join("; ")
    }
}

/// The class of a local fallback for the metrics, from this job's typed
/// placement and failures (the receipt only keeps their text). A
/// misconfigured node reaches here only under `fallback = "always"`.
pub(super) fn fallback_class(placed: &Placed, failures: &[(String, NodeFailure)]) -> crate::metrics::FallbackClass {
    use crate::metrics::FallbackClass;
    if placed.report.controller_only {
        return FallbackClass::ControllerOnly;
    }
    let misconfigured = |h: &NodeHealth| matches!(h, NodeHealth::Misconfigured(..));
    if failures.iter().any(|(_, f)| matches!(f, NodeFailure::Misconfigured(..))) || placed.nodes.iter().any(|n| misconfigured(&n.health)) {
        return FallbackClass::Misconfigured;
    }
    let unavailable = |h: &NodeHealth| matches!(h, NodeHealth::Down(_) | NodeHealth::Degraded(_) | NodeHealth::Unprobed | NodeHealth::Draining(_));
    if !failures.is_empty() || placed.nodes.iter().any(|n| unavailable(&n.health)) {
        return FallbackClass::Unavailable;
    }
    FallbackClass::NoEligibleNode
}

