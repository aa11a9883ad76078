//! Scheduler: matches a job's requirements against the nodes' probed caps.
//!
//! The decision itself is the pure function [`place`], cheap enough to call
//! for 1,000 nodes many thousand times a second: per node it does a few
//! comparisons and records a [`Verdict`] (a small `Copy` enum), and only
//! [`explain`] turns verdicts into the strings a receipt shows. The actor
//! adds what is not pure: the controller-only steps from the settings and
//! each node's load for the step ([`Slots`]): this controller's own
//! reservations there plus the jobs of other controllers, which is what the
//! worker reported at its last probe minus this controller's jobs there at
//! that moment.
//!
//! Ranking: a node with a free slot for the step comes before a node where
//! the job would queue; then the least loaded relative to the step's
//! concurrency; then round robin over placements.

use super::crash_guard::{guard, Panicked};
pub use super::messages::{NodeLoad, PlaceJob};
use super::messages::{NodeSnapshot, PlacementReport, Slots, Stop};
use crate::receipt::NodeExplanation;
use crate::steps::StepName;
use actix::prelude::*;
pub use place::{explain, place, place_turn, Placement, Verdict};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

mod place;
#[cfg(test)]
mod tests;

/// At most this many changes are kept per node to recover the count at the
/// last probe; older ones are dropped (the count is then approximate).
const MAX_CHANGES: usize = 4096;

/// This controller's jobs on one node.
#[derive(Debug, Default)]
struct NodeBook {
    /// Jobs in flight now, per step (indexed like [`StepName::ALL`]).
    held: [u32; StepName::ALL.len()],
    /// Recent changes to `held`, oldest first: when, which step, by how
    /// much. They give the count at the moment of the node's last probe.
    changes: VecDeque<(Instant, usize, i32)>,
}

impl NodeBook {
    fn change(&mut self, step: usize, delta: i32) {
        let before = self.held[step];
        self.held[step] = (before as i64 + delta as i64).clamp(0, u32::MAX as i64) as u32;
        let applied = self.held[step] as i64 - before as i64;
        if applied != 0 {
            if self.changes.len() == MAX_CHANGES {
                self.changes.pop_front();
            }
            self.changes.push_back((Instant::now(), step, applied as i32));
        }
    }

    /// The jobs of `step` this controller had here at `at`.
    fn held_at(&self, step: usize, at: Instant) -> u32 {
        let since: i64 = self.changes.iter().rev().take_while(|c| c.0 > at).filter(|c| c.1 == step).map(|c| c.2 as i64).sum();
        (self.held[step] as i64 - since).max(0) as u32
    }

    /// Drops the changes made before `at` (a probe that recent makes them useless).
    fn forget_before(&mut self, at: Instant) {
        while self.changes.front().is_some_and(|c| c.0 <= at) {
            self.changes.pop_front();
        }
        // A burst may have grown the queue to MAX_CHANGES entries; its
        // memory goes back once the burst is over.
        if self.changes.capacity() > 64 && self.changes.len() < self.changes.capacity() / 4 {
            self.changes.shrink_to(self.changes.len() * 2);
        }
    }
}

fn step_index(step: StepName) -> usize {
    StepName::ALL.iter().position(|s| *s == step).unwrap_or(0)
}

/// The Scheduler actor: [`place`] plus controller-only steps and load.
pub struct Scheduler {
    /// Steps that never leave the controller (`controller.controller_only_steps`).
    controller_only: Vec<String>,
    /// Jobs this controller has in flight per node, for ranking.
    load: HashMap<String, NodeBook>,
    /// Turns at each placement, so that equally loaded nodes take turns
    /// instead of the first one in nodes.json always winning.
    tie_turn: u32,
}

impl Scheduler {
    pub fn new(controller_only: Vec<String>) -> Self {
        Scheduler { controller_only, load: HashMap::new(), tie_turn: 0 }
    }

    /// The full decision: controller-only check, then [`place`] and [`explain`].
    pub fn decide(&self, msg: PlaceJob) -> PlacementReport {
        self.decide_turn(msg, 0)
    }

    /// [`Scheduler::decide`], breaking ties between equally loaded nodes by
    /// starting from the `turn`-th one (round robin over placements).
    pub fn decide_turn(&self, msg: PlaceJob, turn: u32) -> PlacementReport {
        let PlaceJob { step_name, requirements, mut nodes } = msg;
        let controller_only = self.controller_only.iter().any(|s| s.eq_ignore_ascii_case(&step_name));
        let step = match StepName::parse(&step_name) {
            Ok(s) if !controller_only => s,
            // An unknown step or a controller-only step is never placed
            // remotely; the local runner reports an unknown step properly.
            _ => {
                return PlacementReport {
                    ranked: Vec::new(),
                    explanations: nodes
                        .iter()
                        .map(|n| NodeExplanation {
                            node_id: n.node_id.to_string(),
                            eligible: false,
                            reason: if controller_only {
                                "step runs only on the controller".to_string()
                            } else {
                                format!("unknown step {step_name}")
                            },
                        })
                        .collect(),
                    controller_only,
                    reserved: None,
                }
            }
        };
        for n in &mut nodes {
            n.load = self.slots(n, step);
        }
        let placement = place_turn(&requirements, step, &nodes, turn);
        let explanations = explain(&requirements, step, &nodes, &placement);
        let ranked: Vec<Arc<str>> = placement.ranked.iter().map(|&i| nodes[i as usize].node_id.clone()).collect();
        PlacementReport { ranked, explanations, controller_only: false, reserved: None }
    }
}

impl Scheduler {
    /// A node's load for `step`: this controller's jobs there now, plus the
    /// jobs of other controllers (what the worker reported at its last
    /// probe minus this controller's jobs there at that moment, never below
    /// 0), and the step's concurrency there.
    fn slots(&self, node: &NodeSnapshot, step: StepName) -> Slots {
        let i = step_index(step);
        let book = self.load.get(node.node_id.as_ref());
        let own_now = book.map_or(0, |b| b.held[i]);
        let report = node.reported.as_ref().map(|r| r.get(step)).unwrap_or_default();
        let own_then = match (book, node.probed_at) {
            (Some(b), Some(at)) => b.held_at(i, at),
            _ => own_now,
        };
        let others = report.in_flight.map_or(0, |n| n.saturating_sub(own_then));
        Slots { busy: own_now.saturating_add(others), others, of: report.concurrency.unwrap_or(0) }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;
}

/// A restarted Scheduler keeps its load counts: [`Scheduler::decide`] only
/// reads them, so a bug there cannot have left them half-changed, and the
/// jobs in flight still report their end against them.
impl actix::Supervised for Scheduler {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!("Scheduler restarted");
    }
}

/// Answers with the placement for one job; a panic in the decision becomes
/// an error for the caller and a restart.
impl Handler<PlaceJob> for Scheduler {
    type Result = Result<PlacementReport, Panicked>;
    fn handle(&mut self, msg: PlaceJob, ctx: &mut Context<Self>) -> Self::Result {
        let turn = self.tie_turn;
        self.tie_turn = self.tie_turn.wrapping_add(1);
        // Changes older than a node's last probe are not needed any more.
        for n in &msg.nodes {
            if let (Some(book), Some(at)) = (self.load.get_mut(n.node_id.as_ref()), n.probed_at) {
                book.forget_before(at);
            }
        }
        let step = StepName::parse(&msg.step_name).ok();
        let me = &*self;
        let mut report = guard("Scheduler", "placing a job", ctx, || me.decide_turn(msg, turn))?;
        // Reserve the chosen node's slot here, in the same step as the
        // decision, so that the next placement already sees it.
        if let (Some(first), Some(step)) = (report.ranked.first(), step) {
            self.load.entry(first.to_string()).or_default().change(step_index(step), 1);
            report.reserved = Some(first.clone());
        }
        Ok(report)
    }
}

/// Stops the Scheduler, which is then restarted (see [`Stop`]).
impl Handler<Stop> for Scheduler {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Tracks how many jobs of each step run on each node.
impl Handler<NodeLoad> for Scheduler {
    type Result = ();
    fn handle(&mut self, msg: NodeLoad, _: &mut Context<Self>) {
        // Only steps that can be placed are counted; an unknown one never
        // had a slot reserved.
        if let Ok(step) = StepName::parse(&msg.step_name) {
            self.load.entry(msg.node_id).or_default().change(step_index(step), msg.delta);
        }
    }
}
