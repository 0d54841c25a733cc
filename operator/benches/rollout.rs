//! Rollout simulator benchmark: N nodes in G groups rolled to a new revision by the pure
//! planner (`afs_operator::rollout::plan`) on the shared simulator. Prints the makespan
//! of each group against a lower bound no planner can beat, the peak number of
//! unavailable nodes against the budget, and the time of one planner decision.
//!
//! `cargo bench -p afs-operator --bench rollout [-- --nodes N --groups G --budget B
//! --fault-rate F --seed S]`, or the same as `ROLLOUT_NODES`, `ROLLOUT_GROUPS`,
//! `ROLLOUT_BUDGET`, `ROLLOUT_FAULT_RATE`, `ROLLOUT_SEED`.

// A harness = false benchmark reports its figures on stdout.
#![allow(clippy::print_stdout)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use afs_operator::rollout::sim::{Cluster, Faults, NodeSpec, SimNode, XorShift};
use afs_operator::rollout::{Policy, UpgradeState, plan};

#[derive(Debug, Clone)]
struct Args {
    nodes: usize,
    groups: usize,
    /// maxUnavailable and maxParallel of every group.
    budget: u32,
    /// Fault rate of the faulty run (see `Faults::scaled`).
    fault_rate: f64,
    seed: u64,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Self {
            nodes: 10_000,
            groups: 100,
            budget: 5,
            fault_rate: 0.02,
            seed: 1,
        };
        let mut set = |key: &str, value: &str| -> Result<(), String> {
            match key {
                "nodes" => args.nodes = parse(key, value)?,
                "groups" => args.groups = parse(key, value)?,
                "budget" => args.budget = parse(key, value)?,
                "fault-rate" => args.fault_rate = parse(key, value)?,
                "seed" => args.seed = parse(key, value)?,
                _ => return Err(format!("unknown option --{key}")),
            }
            Ok(())
        };
        for key in ["nodes", "groups", "budget", "fault-rate", "seed"] {
            let var = format!("ROLLOUT_{}", key.replace('-', "_").to_uppercase());
            if let Ok(value) = std::env::var(&var) {
                set(key, &value)?;
            }
        }
        let mut argv = std::env::args().skip(1);
        while let Some(arg) = argv.next() {
            // cargo bench passes --bench to harness = false targets.
            let Some(key) = arg.strip_prefix("--").filter(|k| *k != "bench") else {
                continue;
            };
            let value = argv
                .next()
                .ok_or_else(|| format!("--{key} needs a value"))?;
            set(key, &value)?;
        }
        if args.groups == 0 || args.nodes < args.groups || args.budget == 0 {
            return Err("need nodes >= groups >= 1 and budget >= 1".to_owned());
        }
        Ok(args)
    }
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("bad value {value:?} for --{key}"))
}

/// Random per-node durations: eviction 1-3 ticks, swap 1-2, validation 1-3; 1-4 pods.
fn group_specs(size: usize, rng: &mut XorShift) -> Vec<NodeSpec> {
    (0..size)
        .map(|_| {
            let pods = usize::try_from(rng.range(1, 4)).unwrap_or(1);
            NodeSpec::simple(pods, rng.range(1, 3), rng.range(1, 2), rng.range(1, 3))
        })
        .collect()
}

/// No schedule of these nodes under `budget` finishes sooner: the longest node, and the
/// total work spread perfectly over the budget.
fn lower_bound(specs: &[NodeSpec], budget: u32) -> u64 {
    let times = specs.iter().map(|s| u64::from(s.upgrade_ticks()));
    let longest = times.clone().max().unwrap_or(0);
    longest.max(times.sum::<u64>().div_ceil(u64::from(budget)))
}

/// Makespan of the offline LPT schedule (longest node first onto the least loaded slot):
/// what a planner knowing every duration in advance would reach, for reference.
fn lpt_makespan(specs: &[NodeSpec], budget: u32) -> u64 {
    let mut times: Vec<u64> = specs.iter().map(|s| u64::from(s.upgrade_ticks())).collect();
    times.sort_unstable_by(|a, b| b.cmp(a));
    let mut slots: BinaryHeap<Reverse<u64>> = (0..budget).map(|_| Reverse(0)).collect();
    for t in times {
        let Reverse(load) = slots.pop().unwrap_or(Reverse(0));
        slots.push(Reverse(load + t));
    }
    slots
        .into_iter()
        .map(|Reverse(load)| load)
        .max()
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct GroupRun {
    makespan: u64,
    lower_bound: u64,
    lpt: u64,
    peak_unavailable: u32,
    peak_after_operator: u32,
    failed: usize,
    unfinished: usize,
    violation: Option<String>,
}

/// Rolls one group out; faults (if any) stop after `fault_ticks`.
fn run_group(
    specs: Vec<NodeSpec>,
    policy: &Policy,
    faults: Faults,
    fault_ticks: u64,
    seed: u64,
    decisions: &mut Vec<Duration>,
) -> GroupRun {
    let mut result = GroupRun {
        lower_bound: lower_bound(&specs, policy.max_unavailable),
        lpt: lpt_makespan(&specs, policy.max_unavailable),
        ..GroupRun::default()
    };
    let mut cluster = Cluster::new(specs, policy.clone(), faults, seed);
    let limit = 20 * result.lower_bound + 1000;
    for tick in 0..limit {
        // The pass of `tick` ends the rollout if the break below is taken.
        result.makespan = tick;
        if tick == fault_ticks {
            cluster.clear_faults();
        }
        let view = cluster.view();
        let policy = cluster.policy();
        let started = Instant::now();
        let plan = plan(&view, &policy);
        decisions.push(started.elapsed());
        drop(view);
        if let Err(v) = cluster.execute(&plan) {
            result.violation = Some(v.to_string());
            break;
        }
        if cluster.in_progress() == 0
            && cluster.nodes.iter().all(|n| finished(n, cluster.desired()))
        {
            break;
        }
        cluster.advance();
    }
    let desired = cluster.desired();
    result.failed = cluster.nodes.iter().filter(|n| failed(n)).count();
    result.unfinished = cluster
        .nodes
        .iter()
        .filter(|n| !finished(n, desired))
        .count();
    result.peak_unavailable = cluster.stats().peak_unavailable;
    result.peak_after_operator = cluster.stats().peak_after_operator;
    result
}

fn failed(node: &SimNode) -> bool {
    node.state == Some(UpgradeState::UpgradeFailed)
}

fn finished(node: &SimNode, desired: &str) -> bool {
    node.upgraded_to(desired) || failed(node)
}

#[derive(Debug)]
struct Report {
    runs: Vec<GroupRun>,
    decisions: Vec<Duration>,
    elapsed: Duration,
}

fn rollout(args: &Args, fault_rate: f64) -> Report {
    let mut rng = XorShift::new(args.seed);
    let policy = Policy {
        max_unavailable: args.budget,
        max_parallel: args.budget,
        paused: false,
        eviction_timeout: 60,
        unmount_timeout: 60,
        module_swap_timeout: 60,
        validation_timeout: 60,
    };
    let base = args.nodes / args.groups;
    let mut decisions = Vec::new();
    let started = Instant::now();
    let runs = (0..args.groups)
        .map(|g| {
            // The remainder of nodes / groups goes to the first groups.
            let size = base + usize::from(g < args.nodes % args.groups);
            let specs = group_specs(size, &mut rng);
            let faults = if fault_rate > 0.0 {
                Faults::scaled(fault_rate)
            } else {
                Faults::default()
            };
            let fault_ticks = if fault_rate > 0.0 {
                2 * lower_bound(&specs, args.budget)
            } else {
                0
            };
            run_group(
                specs,
                &policy,
                faults,
                fault_ticks,
                rng.next_u64(),
                &mut decisions,
            )
        })
        .collect();
    Report {
        runs,
        decisions,
        elapsed: started.elapsed(),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Prints one run; false when the budget was exceeded.
#[allow(clippy::cast_precision_loss)]
fn print_report(title: &str, report: &Report, budget: u32, with_faults: bool) -> bool {
    let runs = &report.runs;
    let mean = |xs: &mut dyn Iterator<Item = f64>| xs.sum::<f64>() / runs.len().max(1) as f64;
    let ratio = |r: &GroupRun| r.makespan as f64 / r.lower_bound.max(1) as f64;
    let worst = runs.iter().map(ratio).fold(0.0, f64::max);
    println!("{title}");
    println!(
        "  makespan: mean {:.1} ticks (min {}, max {}); lower bound mean {:.1}; makespan / bound: mean {:.3}, worst {:.3}",
        mean(&mut runs.iter().map(|r| r.makespan as f64)),
        runs.iter().map(|r| r.makespan).min().unwrap_or(0),
        runs.iter().map(|r| r.makespan).max().unwrap_or(0),
        mean(&mut runs.iter().map(|r| r.lower_bound as f64)),
        mean(&mut runs.iter().map(ratio)),
        worst,
    );
    if !with_faults {
        println!(
            "  reference: offline LPT schedule (every duration known in advance) / bound: mean {:.3}",
            mean(
                &mut runs
                    .iter()
                    .map(|r| r.lpt as f64 / r.lower_bound.max(1) as f64)
            ),
        );
    }
    let peak_op = runs
        .iter()
        .map(|r| r.peak_after_operator)
        .max()
        .unwrap_or(0);
    let peak = runs.iter().map(|r| r.peak_unavailable).max().unwrap_or(0);
    let violations: Vec<&String> = runs.iter().filter_map(|r| r.violation.as_ref()).collect();
    let kept = violations.is_empty() && peak_op <= budget;
    println!(
        "  unavailable per group: peak right after an operator action {peak_op} / budget {budget}, peak at any moment (NotReady and admin cordons included) {peak}; {}",
        match violations.first() {
            _ if kept => "budget never exceeded".to_owned(),
            Some(first) => format!("{} VIOLATIONS, first: {first}", violations.len()),
            None => "BUDGET EXCEEDED".to_owned(),
        }
    );
    if with_faults {
        let failed: usize = runs.iter().map(|r| r.failed).sum();
        let unfinished: usize = runs.iter().map(|r| r.unfinished).sum();
        println!("  nodes failed (phase timeout): {failed}; neither done nor failed: {unfinished}");
    }
    let mut d = report.decisions.clone();
    d.sort_unstable();
    let total: Duration = d.iter().sum();
    let p99 = d
        .get(d.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    println!(
        "  planner per decision (one group): mean {:.1} us, p99 {:.1} us, max {:.1} us over {} calls; run took {:.2} s",
        micros(total) / d.len().max(1) as f64,
        micros(p99),
        micros(d.last().copied().unwrap_or_default()),
        d.len(),
        report.elapsed.as_secs_f64(),
    );
    if !with_faults && worst > 1.1 {
        println!("  WARNING: makespan above 1.1x the lower bound");
    }
    kept
}

/// The planner on one group of all `nodes`, mid-rollout: the largest decision.
#[allow(clippy::cast_precision_loss)]
fn one_big_group(args: &Args) {
    let mut rng = XorShift::new(args.seed);
    let policy = Policy {
        max_unavailable: args.budget * 10,
        max_parallel: args.budget * 10,
        paused: false,
        eviction_timeout: 60,
        unmount_timeout: 60,
        module_swap_timeout: 60,
        validation_timeout: 60,
    };
    let mut cluster = Cluster::new(
        group_specs(args.nodes, &mut rng),
        policy,
        Faults::default(),
        args.seed,
    );
    let mut times = Vec::new();
    for _ in 0..20 {
        let view = cluster.view();
        let started = Instant::now();
        let plan = plan(&view, &cluster.policy());
        times.push(started.elapsed());
        drop(view);
        if cluster.execute(&plan).is_err() {
            break;
        }
        cluster.advance();
    }
    // The first pass marks every node upgrade-required: the largest plan.
    let first = times.first().copied().unwrap_or_default();
    times.sort_unstable();
    println!(
        "one group of {} nodes (budget {}): planner per decision: first pass {:.2} ms (marks every node), median {:.2} ms, max {:.2} ms over {} passes",
        args.nodes,
        args.budget * 10,
        micros(first) / 1e3,
        micros(times[times.len() / 2]) / 1e3,
        micros(times.last().copied().unwrap_or_default()) / 1e3,
        times.len(),
    );
}

fn main() {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("rollout bench: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "rollout bench: {} nodes in {} groups, maxUnavailable = maxParallel = {}, seed {}; per node: eviction 1-3 ticks, swap 1-2, validation 1-3",
        args.nodes, args.groups, args.budget, args.seed
    );
    let clean = rollout(&args, 0.0);
    let mut kept = print_report("without faults:", &clean, args.budget, false);
    if args.fault_rate > 0.0 {
        let faulty = rollout(&args, args.fault_rate);
        let title = format!(
            "with faults (rate {}: NotReady nodes, refused and stuck evictions, stray pods, lingering mounts, restarts mid-plan, pause toggles, admin cordons; cleared after 2x the bound):",
            args.fault_rate
        );
        kept &= print_report(&title, &faulty, args.budget, true);
    }
    one_big_group(&args);
    if !kept {
        std::process::exit(1);
    }
}
