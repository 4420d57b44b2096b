//! The particle environment against independent computations and constructed trajectories.

mod common;

use ebmlab::task::particle::{
    env_step, substep, GoalTracker, ParticleConfig, ParticleState, ParticleTask, SuccessRule,
};
use ebmlab::task::{episode_seeds, Episodes, Task, TaskConfig};

/// The particle task with `n_dim` dimensions, through the registry.
fn particle(n_dim: usize) -> anyhow::Result<Box<dyn Task>> {
    TaskConfig::Particle(ParticleConfig {
        n_dim,
        ..Default::default()
    })
    .build()
}

/// IBC's update, written independently in float32 numpy.
const NUMPY_STEP: &str = r#"
import json, sys
import numpy as np
cases = json.load(sys.stdin)
out = []
for c in cases:
    p = np.array(c["p"], dtype=np.float32)
    v = np.array(c["v"], dtype=np.float32)
    a = np.array(c["a"], dtype=np.float32)
    dt, kp, kv = np.float32(0.005), np.float32(10.0), np.float32(5.0)
    for _ in range(c["substeps"]):
        u = kp * (a - p) - kv * v
        p, v = p + v * dt, v + u * dt
    out.append({"p": p.tolist(), "v": v.tolist()})
print(json.dumps(out))
"#;

#[test]
fn env_step_matches_float32_numpy_bit_for_bit() {
    let cfg = ParticleConfig::default();
    let mut cases = Vec::new();
    let mut expected_rust = Vec::new();
    for (k, n_dim) in [1usize, 2, 5, 16].into_iter().enumerate() {
        for seed in episode_seeds(k as u64, 5) {
            let s = ParticleState::sample(seed, n_dim);
            // A moving start: one step towards the first goal, then a step towards the second.
            let (mut p, mut v) = (s.position.clone(), s.velocity.clone());
            env_step(&mut p, &mut v, &s.first_goal, &cfg);
            let (p0, v0) = (p.clone(), v.clone());
            for substeps in [1usize, 10] {
                let (mut p1, mut v1) = (p0.clone(), v0.clone());
                if substeps == 1 {
                    substep(&mut p1, &mut v1, &s.second_goal, &cfg);
                } else {
                    env_step(&mut p1, &mut v1, &s.second_goal, &cfg);
                }
                cases.push(serde_json::json!({
                    "p": p0, "v": v0, "a": s.second_goal, "substeps": substeps,
                }));
                expected_rust.push((p1, v1));
            }
        }
    }
    let numpy: Vec<serde_json::Value> = serde_json::from_str(&common::run_python(
        NUMPY_STEP,
        &serde_json::to_string(&cases).unwrap(),
    ))
    .unwrap();
    assert_eq!(numpy.len(), expected_rust.len());
    for (i, ((p, v), np)) in expected_rust.iter().zip(&numpy).enumerate() {
        let np_p: Vec<f32> = serde_json::from_value(np["p"].clone()).unwrap();
        let np_v: Vec<f32> = serde_json::from_value(np["v"].clone()).unwrap();
        assert_eq!(p, &np_p, "case {i}: positions differ from numpy");
        assert_eq!(v, &np_v, "case {i}: velocities differ from numpy");
    }
}

#[test]
fn one_env_step_is_ten_euler_substeps_of_dt() {
    let cfg = ParticleConfig::default();
    assert_eq!((cfg.repeat_actions, cfg.dt), (10, 0.005));
    let (p0, v0, a) = (vec![0.1f32, 0.9], vec![0.3f32, -0.2], vec![0.8f32, 0.4]);

    let (mut p, mut v) = (p0.clone(), v0.clone());
    env_step(&mut p, &mut v, &a, &cfg);

    let (mut p10, mut v10) = (p0.clone(), v0.clone());
    for _ in 0..10 {
        substep(&mut p10, &mut v10, &a, &cfg);
    }
    assert_eq!((p.clone(), v.clone()), (p10, v10));

    // Not one coarse step of 0.05 s: positions move by the old velocity each substep.
    let coarse = ParticleConfig {
        dt: 0.05,
        repeat_actions: 1,
        ..cfg.clone()
    };
    let (mut pc, mut vc) = (p0.clone(), v0.clone());
    env_step(&mut pc, &mut vc, &a, &coarse);
    assert!((pc[0] - p[0]).abs() > 1e-3, "{pc:?} vs {p:?}");

    // In f64 by hand (the recurrence unrolled): close to the f32 result.
    let (mut ph, mut vh) = (0.1f64, 0.3f64);
    for _ in 0..10 {
        let u = 10.0 * (0.8 - ph) - 5.0 * vh;
        (ph, vh) = (ph + vh * 0.005, vh + u * 0.005);
    }
    assert!((ph - p[0] as f64).abs() < 1e-6 && (vh - v[0] as f64).abs() < 1e-5);
}

fn tracker_after(path: &[[f32; 2]]) -> GoalTracker {
    let mut t = GoalTracker::new(vec![0.2, 0.2], vec![0.8, 0.8], 0.05);
    for p in path {
        t.observe(p);
    }
    t
}

#[test]
fn success_rule_on_constructed_trajectories() {
    let start = [0.5, 0.0];
    let at_g1 = [0.2, 0.23]; // 0.03 from g1
    let at_g2 = [0.8, 0.84]; // 0.04 from g2
    let near_g2 = [0.8, 0.85]; // exactly 0.05 from g2: not "within"
    let away = [0.5, 0.5];

    let only_g1 = tracker_after(&[start, at_g1, at_g1]);
    assert!(!only_g1.success(SuccessRule::Ordered));

    let both_then_leave = tracker_after(&[start, at_g1, at_g2, away]);
    assert!(!both_then_leave.success(SuccessRule::Ordered));
    assert_eq!(both_then_leave.steps(), 4);

    let both_and_stay = tracker_after(&[start, at_g1, at_g2, at_g2]);
    assert!(both_and_stay.success(SuccessRule::Ordered));
    assert!((both_and_stay.min_distances()[0] - 0.03).abs() < 1e-6);
    assert!((both_and_stay.last_distances()[1] - 0.04).abs() < 1e-6);

    let only_g2 = tracker_after(&[start, at_g2, at_g2]);
    assert!(!only_g2.success(SuccessRule::Ordered));

    let boundary = tracker_after(&[start, at_g1, near_g2]);
    assert!(
        !boundary.success(SuccessRule::Ordered),
        "0.05 is not < 0.05"
    );

    // The multimodal rule accepts ending at either goal, once both were reached.
    let reversed = tracker_after(&[start, at_g2, at_g1]);
    assert!(!reversed.success(SuccessRule::Ordered));
    assert!(reversed.success(SuccessRule::EitherOrder));
    assert!(!tracker_after(&[start, at_g2, away]).success(SuccessRule::EitherOrder));
}

#[test]
fn batched_env_judges_episodes_it_drives() {
    let task = ParticleTask::new(ParticleConfig::default()).unwrap();
    let state = |p: [f32; 2]| ParticleState {
        position: p.to_vec(),
        velocity: vec![0.0; 2],
        first_goal: vec![0.2, 0.2],
        second_goal: vec![0.8, 0.8],
    };
    let mut eps = task
        .episodes_from_states(&[1, 2], vec![state([0.2, 0.2]), state([0.2, 0.2])])
        .unwrap();
    // Episode 0 heads for the second goal; episode 1 stays at the first.
    while !eps.is_done() {
        eps.step(&[0.8, 0.8, 0.2, 0.2]).unwrap();
    }
    assert_eq!(eps.steps_taken(), 50);
    let outcomes = eps.outcomes();
    assert!(outcomes[0].success);
    assert!(!outcomes[1].success);
    assert_eq!(outcomes[1].min_goal_distances[0], 0.0);
    assert_eq!((outcomes[0].seed, outcomes[1].seed), (1, 2));
}

#[test]
fn n_dimensional_shapes() {
    for n_dim in [1usize, 3, 16, 32] {
        let task = particle(n_dim).unwrap();
        let info = task.info().clone();
        assert_eq!((info.obs_dim, info.action_dim), (4 * n_dim, n_dim));
        assert_eq!(info.action_low, vec![0.0; n_dim]);
        let seeds = episode_seeds(3, 7);
        let mut eps = task.reset(&seeds);
        let obs = eps.observations();
        assert_eq!(obs.len(), 7 * 4 * n_dim);
        // Velocity starts at zero; positions and goals lie in the unit cube.
        for row in obs.chunks(4 * n_dim) {
            assert!(row[n_dim..2 * n_dim].iter().all(|&v| v == 0.0));
            assert!(row.iter().all(|&x| (0.0..1.0).contains(&x)));
        }
        assert!(eps.step(&vec![0.5; 7 * n_dim + 1]).is_err());
        eps.step(&vec![0.5; 7 * n_dim]).unwrap();
        let outcomes = eps.outcomes();
        assert_eq!(outcomes.len(), 7);
        assert!(outcomes.iter().all(|o| o.min_goal_distances.len() == 2));
    }
    assert!(particle(0).is_err());
    assert!(TaskConfig::default_for("pendulum").is_err());
}

#[test]
fn episodes_depend_only_on_their_seed() {
    let task = particle(4).unwrap();
    let seeds = episode_seeds(11, 6);
    let batch = task.reset(&seeds).observations();
    let alone = task.reset(&seeds[3..4]).observations();
    assert_eq!(&batch[3 * 16..4 * 16], &alone[..]);
    assert_eq!(batch, task.reset(&seeds).observations());
    assert_ne!(batch, task.reset(&episode_seeds(12, 6)).observations());
}

/// Runs the task's expert through full episodes and returns the success rate.
fn expert_success_rate(task: &dyn Task, episodes: usize, base_seed: u64) -> f64 {
    let seeds = episode_seeds(base_seed, episodes);
    let mut eps = task.reset(&seeds);
    let mut expert = task.expert(&seeds);
    let mut actions = vec![0.0; episodes * task.info().action_dim];
    while !eps.is_done() {
        expert.act(&eps.observations(), &mut actions);
        eps.step(&actions).unwrap();
    }
    let outcomes = eps.outcomes();
    outcomes.iter().filter(|o| o.success).count() as f64 / episodes as f64
}

#[test]
fn oracle_succeeds_in_2d_and_16d() {
    for n_dim in [2, 16] {
        let task = particle(n_dim).unwrap();
        let rate = expert_success_rate(task.as_ref(), 500, 2024);
        println!("oracle success at N = {n_dim}: {:.1}%", 100.0 * rate);
        assert!(rate >= 0.99, "oracle success {rate} at N = {n_dim}");
    }
}

#[test]
fn multimodal_oracle_mixes_goal_orders_and_succeeds() {
    use ebmlab::task::particle::ParticleOracle;
    let cfg = ParticleConfig::default().multimodal();
    let seeds = episode_seeds(5, 500);
    let oracle = ParticleOracle::new(&cfg, &seeds);
    let reversed = (0..500).filter(|&i| oracle.goal_order(i) == [1, 0]).count();
    assert!((200..300).contains(&reversed), "{reversed} of 500 reversed");
    let task = ParticleTask::new(cfg).unwrap();
    let rate = expert_success_rate(&task, 500, 5);
    assert!(rate >= 0.95, "multimodal oracle success {rate}");
}
