//! Finding a job picked up after a restart without a remote job id on
//! record: asking the nodes whether one already holds it, and otherwise
//! waiting out any lease on it that nobody renews since the restart.

use super::super::staging::Staged;
use super::super::{JobDeps, Trace};
use super::{connect, current_fence};
use crate::client::NodeClient;
use crate::controller_store::RemoteRef;
use crate::protocol::JobState;
use crate::receipt::JobSpec;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where a job picked up after a restart, without a remote job id on
/// record, already is.
pub enum Found {
    /// On this node (the newest job there with this job's label and
    /// inputs, not abandoned or cancelled): re-attach to it.
    On(RemoteRef),
    /// No node has it: place it as a new job.
    Nowhere,
    /// These nodes could not be asked: one of them may hold it.
    Unknown(Vec<String>),
}

/// Asks every enabled node that speaks the current contract whether it
/// holds this job (`GET /jobs?run_id=R&job_id=J`): a daemon killed between
/// a worker's acceptance of a job and the commit of its remote id restarts
/// without the id, and placing the job again on another node would run it
/// twice. A v0.5 worker cannot be asked (and knows no lease): it is
/// skipped.
pub async fn find_submitted(deps: &JobDeps, spec: &JobSpec, staged: &Staged, trace: &Trace) -> Found {
    let Ok(nodes) = deps.nodes.send(super::super::super::messages::GetNodes).await else {
        return Found::Unknown(vec!["the node list".into()]);
    };
    let inputs_hash = crate::protocol::inputs_hash(&spec.step_name, &staged.payload);
    let mut unknown = Vec::new();
    let mut best: Option<(u64, RemoteRef)> = None;
    for node in nodes.iter().filter(|n| n.health != crate::actors::messages::NodeHealth::Disabled) {
        let node_id = node.node_id.to_string();
        let client = match connect(deps, &node_id).await {
            Ok((_, NodeClient::Current(c))) => c,
            Ok((_, NodeClient::Legacy(_))) => continue,
            Err(e) => {
                trace.say(format!("could not ask {node_id} for the job: {e}"));
                unknown.push(node_id);
                continue;
            }
        };
        match client.find(&spec.run_id, &spec.job_id).await {
            Ok(jobs) => {
                let held = jobs
                    .into_iter()
                    .filter(|j| j.inputs_hash == inputs_hash && !matches!(j.state, JobState::Abandoned | JobState::Cancelled))
                    .max_by_key(|j| j.created_at_ms);
                if let Some(j) = held {
                    if best.as_ref().map_or(true, |(at, _)| j.created_at_ms > *at) {
                        // The placement that chose the node was not
                        // recorded; the receipt says how the node was found.
                        let placement = vec![crate::receipt::NodeExplanation {
                            node_id: node_id.clone(),
                            eligible: true,
                            reason: "chosen before a restart of the controller: found holding the job".into(),
                        }];
                        best = Some((j.created_at_ms, RemoteRef { node_id: node_id.clone(), remote_job_id: j.job_id, placement }));
                    }
                }
            }
            Err(e) => {
                trace.say(format!("could not ask {node_id} for the job: {e}"));
                unknown.push(node_id);
            }
        }
    }
    match best {
        Some((_, r)) => Found::On(r),
        None if unknown.is_empty() => Found::Nowhere,
        None => Found::Unknown(unknown),
    }
}

/// Waits out a copy of the job that `nodes` (which could not be asked,
/// [`find_submitted`]) may hold under a lease nobody renews since the
/// restart: the job runs nowhere else until that lease has surely expired.
/// A cancellation ends the wait.
pub async fn wait_out(deps: &JobDeps, nodes: &[String], cancel: &CancellationToken, trace: &Trace) {
    let fence = current_fence(deps);
    let left = fence.expires_at().saturating_duration_since(Instant::now());
    trace.say(format!(
        "could not ask {} whether the job reached it before the restart; waiting {:.1} s for any lease on it to expire, so that it cannot run twice",
        nodes.join(", "),
        left.as_secs_f64()
    ));
    tokio::select! {
        _ = fence.wait() => {}
        _ = cancel.cancelled() => {}
    }
}
