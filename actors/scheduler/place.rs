//! The pure placement decision: each node's [`Verdict`] against a job's
//! requirements, the eligible nodes ranked by their load for the step, and
//! the per-node explanations a receipt shows. Nothing here keeps state; the
//! Scheduler actor supplies the loads.

use super::super::messages::{NodeHealth, NodeSnapshot, Slots};
use crate::receipt::{JobRequirements, NodeExplanation};
use crate::steps::StepName;
use std::cmp::Ordering;

/// Why one node was or was not eligible. Data needed for the message is read
/// from the snapshot and the requirements when explaining, so that deciding
/// allocates nothing per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Eligible,
    Disabled,
    Unprobed,
    Down,
    Misconfigured,
    Degraded,
    Draining,
    OsNotAllowed,
    RamTooLow,
    VramTooLow,
    NoGpu,
    StepMissing,
}

/// The outcome of [`place`]: a verdict per node (same order as the input)
/// and the eligible nodes' indices, best first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub verdicts: Vec<Verdict>,
    pub ranked: Vec<u32>,
}

/// Decides which nodes can run `step` under `req`, best first by each
/// node's `load` (see [`place_turn`]); ties keep the nodes.json order.
pub fn place(req: &JobRequirements, step: StepName, nodes: &[NodeSnapshot]) -> Placement {
    place_turn(req, step, nodes, 0)
}

/// Orders two nodes' loads: a free slot first, then the lower share of the
/// step's concurrency in use (compared exactly, as fractions).
fn by_load(a: Slots, b: Slots) -> Ordering {
    b.free().cmp(&a.free()).then_with(|| (a.busy as u64 * b.capacity() as u64).cmp(&(b.busy as u64 * a.capacity() as u64)))
}

/// [`place`], with ties between equally loaded nodes broken by starting
/// from the `turn`-th node (round robin over placements).
pub fn place_turn(req: &JobRequirements, step: StepName, nodes: &[NodeSnapshot], turn: u32) -> Placement {
    // Work that depends only on the job is done once, not per node.
    let wants_mac = req.os_in.as_ref().is_some_and(|l| l.iter().any(|o| is_mac(o)));
    let mut verdicts = Vec::with_capacity(nodes.len());
    let mut ranked = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let v = judge(req, wants_mac, step, node);
        if v == Verdict::Eligible {
            ranked.push(i as u32);
        }
        verdicts.push(v);
    }
    // Sorting on (load, rotated index) breaks ties without the buffer a
    // stable sort would allocate.
    let n = nodes.len().max(1) as u32;
    let rotated = |i: u32| (i + n - turn % n) % n;
    ranked.sort_unstable_by(|&a, &b| by_load(nodes[a as usize].load, nodes[b as usize].load).then_with(|| rotated(a).cmp(&rotated(b))));
    Placement { verdicts, ranked }
}

fn judge(req: &JobRequirements, wants_mac: bool, step: StepName, node: &NodeSnapshot) -> Verdict {
    match node.health {
        NodeHealth::Disabled => return Verdict::Disabled,
        NodeHealth::Unprobed => return Verdict::Unprobed,
        NodeHealth::Down(_) => return Verdict::Down,
        NodeHealth::Misconfigured(..) => return Verdict::Misconfigured,
        NodeHealth::Degraded(_) => return Verdict::Degraded,
        NodeHealth::Draining(_) => return Verdict::Draining,
        NodeHealth::Up => {}
    }
    let Some(caps) = &node.caps else { return Verdict::Unprobed };
    if let Some(os_in) = &req.os_in {
        let ok = os_in.iter().any(|os| os.eq_ignore_ascii_case(&caps.os)) || (wants_mac && is_mac(&caps.os));
        if !ok {
            return Verdict::OsNotAllowed;
        }
    }
    if req.min_ram_gb.is_some_and(|min| caps.ram_gb < min) {
        return Verdict::RamTooLow;
    }
    if req.min_vram_gb.is_some_and(|min| caps.vram_gb < min) {
        return Verdict::VramTooLow;
    }
    if req.gpu_required == Some(true) && !caps.has_gpu {
        return Verdict::NoGpu;
    }
    if !caps.steps.contains(step) {
        return Verdict::StepMissing;
    }
    Verdict::Eligible
}

/// The names macOS goes by in `os_in` and in caps.
fn is_mac(os: &str) -> bool {
    ["macos", "darwin", "mac", "osx"].iter().any(|m| os.eq_ignore_ascii_case(m))
}

/// Turns verdicts into per-node explanations for the receipt.
pub fn explain(req: &JobRequirements, step: StepName, nodes: &[NodeSnapshot], placement: &Placement) -> Vec<NodeExplanation> {
    let first = placement.ranked.first().copied();
    nodes
        .iter()
        .zip(&placement.verdicts)
        .enumerate()
        .map(|(i, (node, v))| NodeExplanation {
            node_id: node.node_id.to_string(),
            eligible: *v == Verdict::Eligible,
            reason: reason_text(req, step, node, *v, first == Some(i as u32)),
        })
        .collect()
}

fn reason_text(req: &JobRequirements, step: StepName, node: &NodeSnapshot, v: Verdict, chosen: bool) -> String {
    let caps = node.caps.as_ref();
    let num = |x: f64| if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.1}") };
    match v {
        Verdict::Eligible if chosen && node.load.free() => format!("chosen: fits, a free slot ({})", load_text(node.load)),
        Verdict::Eligible if chosen => format!("chosen: fits; no eligible node has a free slot, this one is least loaded ({}), the job queues there", load_text(node.load)),
        Verdict::Eligible => format!("fits ({}); another node ranked first", load_text(node.load)),
        Verdict::Disabled => "disabled in nodes.json".to_string(),
        Verdict::Unprobed => "not probed yet".to_string(),
        Verdict::Down | Verdict::Misconfigured | Verdict::Degraded => match &node.health {
            NodeHealth::Down(r) | NodeHealth::Misconfigured(_, r) | NodeHealth::Degraded(r) => r.to_string(),
            h => h.word().to_string(),
        },
        Verdict::Draining => match &node.health {
            NodeHealth::Draining(by) => by.reason().to_string(),
            h => h.word().to_string(),
        },
        Verdict::OsNotAllowed => format!(
            "os {} not in [{}]",
            caps.map_or("unknown", |c| c.os.as_str()),
            req.os_in.as_deref().unwrap_or_default().join(", ")
        ),
        Verdict::RamTooLow => format!(
            "ram_gb {} below min_ram_gb {}",
            num(caps.map_or(0.0, |c| c.ram_gb)),
            num(req.min_ram_gb.unwrap_or(0.0))
        ),
        Verdict::VramTooLow => format!(
            "vram_gb {} below min_vram_gb {}",
            num(caps.map_or(0.0, |c| c.vram_gb)),
            num(req.min_vram_gb.unwrap_or(0.0))
        ),
        Verdict::NoGpu => "no GPU but gpu_required is true".to_string(),
        Verdict::StepMissing => match caps.map(|c| c.compat.is_legacy()) {
            Some(true) => format!("legacy v0.5 worker does not list {} (for {step})", step.legacy_name()),
            _ => match caps.and_then(|c| c.unavailable.iter().find(|(s, _)| *s == step)) {
                Some((_, why)) => format!("step {step} not available: {why}"),
                None => format!("step {step} not available on this node"),
            },
        },
    }
}

/// A node's load for a step in words, e.g. `2/2 slots busy, 1 of another
/// controller` (`?` for a concurrency the worker did not report).
fn load_text(l: Slots) -> String {
    let of = if l.of == 0 { "?".to_string() } else { l.of.to_string() };
    match l.others {
        0 => format!("{}/{of} slots busy", l.busy),
        k => format!("{}/{of} slots busy, {k} of another controller", l.busy),
    }
}
