//! Benchmark driver for scenario 8 (see docs/benchmarks.md): placement
//! decisions per second with 1,000 probed nodes and mixed requirements.
//!
//! Two figures: the pure placement function `actors::scheduler::place` (what
//! the issue's target is about), and the Scheduler actor's whole decision
//! `Scheduler::decide` (controller-only check, load, ranking and the
//! per-node explanations a receipt carries), called directly, without a
//! mailbox. The nodes and requirements come from a fixed-seed generator so
//! that every run measures the same work. Prints JSON on stdout.
//!
//! ```text
//! bench_scheduler NODES DECISIONS -> {"place_per_s": x, "decide_per_s": y, "eligible_mean": z}
//! ```

use rayvault::actors::messages::{Compat, NodeCaps, NodeHealth, NodeSnapshot, Slots, StepSet};
use rayvault::actors::scheduler::{place, PlaceJob, Scheduler};
use rayvault::receipt::JobRequirements;
use rayvault::steps::StepName;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

/// A small xorshift generator: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A fleet like a studio's, scaled up: mostly healthy Windows and Linux
/// workers with varied memory and GPUs, a few Macs, some nodes down,
/// disabled or not probed yet, some legacy workers missing steps.
fn nodes(n: usize, rng: &mut Rng) -> Vec<NodeSnapshot> {
    (0..n)
        .map(|i| {
            let health = match rng.below(100) {
                0..=4 => NodeHealth::Down(Arc::from("unreachable (connection refused)")),
                5..=7 => NodeHealth::Disabled,
                8..=9 => NodeHealth::Unprobed,
                _ => NodeHealth::Up,
            };
            let os = ["windows", "windows", "linux", "macos"][rng.below(4) as usize].to_string();
            let mut steps = StepSet::default();
            for s in StepName::ALL {
                if rng.below(10) < 8 {
                    steps.insert(s);
                }
            }
            let has_gpu = rng.below(3) != 0;
            let caps = NodeCaps {
                os,
                ram_gb: [8.0, 16.0, 32.0, 64.0, 128.0][rng.below(5) as usize],
                vram_gb: if has_gpu { [4.0, 8.0, 12.0, 24.0][rng.below(4) as usize] } else { 0.0 },
                has_gpu,
                steps,
                compat: if rng.below(10) == 0 { Compat::LegacyHmacV05 } else { Compat::Current },
                unavailable: Default::default(),
                inline_blob_bytes: 0,
                submit_stream: false,
            };
            NodeSnapshot {
                node_id: Arc::from(format!("worker-{i:04}")),
                caps: (health != NodeHealth::Unprobed).then_some(caps),
                health,
                reported: None,
                load: Slots { busy: rng.below(8) as u32, others: 0, of: 2 },
                probed_at: None,
            }
        })
        .collect()
}

/// Requirement mixes seen in the README's examples and beyond.
fn requirements() -> Vec<(JobRequirements, StepName)> {
    let os = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    vec![
        (JobRequirements { os_in: os(&["windows"]), min_ram_gb: Some(8.0), ..Default::default() }, StepName::FfmpegProbe),
        (JobRequirements::default(), StepName::AudioPostcheck),
        (JobRequirements { os_in: os(&["windows", "linux"]), min_ram_gb: Some(32.0), ..Default::default() }, StepName::FrameSampling),
        (JobRequirements { min_vram_gb: Some(8.0), gpu_required: Some(true), ..Default::default() }, StepName::TtsRenderChunks),
        (JobRequirements { os_in: os(&["macos"]), ..Default::default() }, StepName::OpenclawTask),
        (JobRequirements { min_ram_gb: Some(64.0), ..Default::default() }, StepName::AudioPostcheck),
    ]
}

fn run(n_nodes: usize, decisions: usize) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let fleet = nodes(n_nodes, &mut rng);
    let reqs = requirements();

    // Warm-up, and the mean number of eligible nodes as a sanity figure.
    let mut eligible = 0usize;
    for (req, step) in &reqs {
        eligible += place(req, *step, &fleet).ranked.len();
    }
    let t0 = Instant::now();
    for i in 0..decisions {
        let (req, step) = &reqs[i % reqs.len()];
        black_box(place(black_box(req), *step, black_box(&fleet)));
    }
    let place_per_s = decisions as f64 / t0.elapsed().as_secs_f64();

    // The actor's decision owns its snapshot (it arrives in a message), so
    // the clone is part of what one decision costs.
    let scheduler = Scheduler::new(vec!["DAVINCI_RENDER".to_string()]);
    let decide_n = (decisions / 20).max(100);
    let t0 = Instant::now();
    for i in 0..decide_n {
        let (req, step) = &reqs[i % reqs.len()];
        let msg = PlaceJob { step_name: step.as_str().to_string(), requirements: req.clone(), nodes: fleet.clone() };
        black_box(scheduler.decide(msg));
    }
    let decide_per_s = decide_n as f64 / t0.elapsed().as_secs_f64();
    serde_json::json!({
        "place_per_s": place_per_s,
        "decide_per_s": decide_per_s,
        "eligible_mean": eligible as f64 / reqs.len() as f64,
        "nodes": n_nodes,
    })
    .to_string()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = (args.get(1).and_then(|s| s.parse().ok()), args.get(2).and_then(|s| s.parse().ok()));
    match parsed {
        (Some(n), Some(d)) if n > 0 && d > 0 => {
            println!("{}", run(n, d));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: bench_scheduler NODES DECISIONS");
            ExitCode::FAILURE
        }
    }
}
