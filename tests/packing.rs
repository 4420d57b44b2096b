//! A pack of K trials as one batched model: each member computes what its solo model
//! computes, trains as its solo run does, and checkpoints as a solo trial.

mod common;

use ebmlab::data::Normalizer;
use ebmlab::policy::ebm::{
    EbmLossConfig, GradPenaltyConfig, LangevinConfig, NegativeKind, NegativesConfig, PackedEbm,
    SequenceEbm,
};
use ebmlab::policy::{NetConfig, PolicySpec, Precision};
use ebmlab::task::particle::{ParticleConfig, ParticleTask};
use ebmlab::task::{episode_seeds, record_demos, Task};
use ebmlab::train::{
    LrSchedule, OptimConfig, PackMember, PackedTrainer, StepMetrics, Trainer, TrainingSet,
};
use ebmlab::trial::training_set;
use tch::{nn, Device, Kind, Tensor};

fn net(blocks: usize) -> NetConfig {
    NetConfig {
        hidden: 32,
        blocks,
        layer_norm: false,
        dropout: 0.0,
        ..Default::default()
    }
}

/// A solo model of `seed`'s weights, and its tensors by name.
fn solo(cfg: &NetConfig, seed: i64) -> (nn::VarStore, SequenceEbm, Vec<(String, Tensor)>) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = SequenceEbm::new(&vs.root(), cfg.clone());
    let named = vs.variables().into_iter().collect();
    (vs, model, named)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn each_member_of_a_packed_model_computes_its_solo_energies_and_gradients() {
    let _torch = common::torch_lock();
    for blocks in [1, 2] {
        let cfg = net(blocks);
        let solos: Vec<_> = (0..3).map(|s| solo(&cfg, 10 + s)).collect();
        let states: Vec<Vec<(String, Tensor)>> = solos
            .iter()
            .map(|s| {
                s.2.iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone()))
                    .collect()
            })
            .collect();
        let packed = PackedEbm::stack(&cfg, Precision::Fp32, &states).unwrap();
        let obs = Tensor::randn([3, 5, 2, 8], (Kind::Float, Device::Cpu));
        let actions = Tensor::rand([3, 5, 7, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let ctx = tch::no_grad(|| packed.observation_context(&obs));
        let energies = tch::no_grad(|| packed.energies(&ctx, &actions));
        let grads = packed.action_gradient(&obs, &actions);
        for (k, (_, model, _)) in solos.iter().enumerate() {
            let k = k as i64;
            let solo_ctx = tch::no_grad(|| model.observation_context(&obs.get(k)));
            let solo_e =
                tch::no_grad(|| model.energies_with_context(&solo_ctx, &actions.get(k), false));
            assert!(
                max_diff(&energies.get(k), &solo_e) < 1e-5,
                "energies, blocks {blocks}"
            );
            let solo_g = model.action_gradient(&obs.get(k), &actions.get(k));
            assert!(
                max_diff(&grads.get(k), &solo_g) < 1e-5,
                "dE/da, blocks {blocks}"
            );
        }
        // The hand-written gradient is autograd's.
        let a = actions.set_requires_grad(true);
        let e = packed.energies(&ctx.detach(), &a);
        let auto = Tensor::run_backward(&[e.sum(None)], &[&a], false, false);
        assert!(max_diff(&auto[0], &grads) < 1e-5);
        // A member's slice is the solo model's tensor, under the same name.
        for (name, t) in packed.member_state(1) {
            let (_, solo_t) = solos[1].2.iter().find(|(n, _)| *n == name).unwrap();
            assert_eq!(max_diff(&t, solo_t), 0.0, "{name}");
        }
    }
}

#[test]
fn acting_energies_equal_the_energies_and_a_member_acts_in_its_pack_as_alone() {
    let _torch = common::torch_lock();
    for (blocks, members) in [(0, 1i64), (1, 1), (1, 3), (2, 1), (2, 3)] {
        let cfg = net(blocks);
        let states: Vec<Vec<(String, Tensor)>> =
            (0..members).map(|s| solo(&cfg, 20 + s).2).collect();
        let packed = PackedEbm::stack(&cfg, Precision::Fp32, &states).unwrap();
        let obs = Tensor::randn([members, 5, 2, 8], (Kind::Float, Device::Cpu));
        let actions = Tensor::rand([members, 5, 7, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let ctx = tch::no_grad(|| packed.observation_context(&obs));
        let energies = tch::no_grad(|| packed.energies(&ctx, &actions));
        let acting = packed.acting();
        // Acting's context is the observation part of the candidates' input rows: the
        // flattened window, then a one (which carries the first layer's bias).
        let acting_ctx = acting.context(&obs);
        let window = obs.reshape([members, 5, 16]);
        assert_eq!(max_diff(&acting_ctx.narrow(2, 0, 16), &window), 0.0);
        assert_eq!(acting_ctx.narrow(2, 16, 1).min().double_value(&[]), 1.0);
        let acting = acting.energies(&acting_ctx, &actions);
        assert_eq!(acting.size(), energies.size());
        let scale = energies.abs().max().double_value(&[]);
        assert!(
            max_diff(&acting, &energies) < 1e-5 * scale.max(1.0),
            "blocks {blocks}, members {members}"
        );
        // The last member acts in the pack exactly as alone.
        let last = members - 1;
        let alone = PackedEbm::stack(&cfg, Precision::Fp32, &states[last as usize..]).unwrap();
        let (obs, actions) = (obs.narrow(0, last, 1), actions.narrow(0, last, 1));
        let acting_alone = alone.acting();
        let acting_alone = acting_alone.energies(&acting_alone.context(&obs), &actions);
        assert_eq!(
            max_diff(&acting_alone, &acting.narrow(0, last, 1)),
            0.0,
            "blocks {blocks}, members {members}"
        );
    }
}

/// In bf16 only the blocks' products round: a pack's energies keep fp32's precision however
/// far InfoNCE has shifted them (trained particle models' sit at tens to hundreds, where
/// bf16's step is 0.125 to 2), and so does dE/da, a shift carried by the residual stream
/// included.
#[test]
fn bf16_energies_keep_fp32_precision_far_from_zero() {
    let _torch = common::torch_lock();
    for blocks in [1, 2] {
        let cfg = net(blocks);
        let states: Vec<Vec<(String, Tensor)>> = (0..2).map(|s| solo(&cfg, 30 + s).2).collect();
        // A drifted model: every energy 200 higher (bf16's step there is 1), and a residual
        // stream 10 higher than the blocks' outputs (whose roundings are what remains).
        for state in &states {
            for (name, shift) in [("energy_projection.bias", 200.0), ("projection.bias", 10.0)] {
                let (_, bias) = state.iter().find(|(n, _)| n == name).unwrap();
                tch::no_grad(|| {
                    let _ = bias.shallow_clone().f_add_scalar_(shift).unwrap();
                });
            }
        }
        let exact = PackedEbm::stack(&cfg, Precision::Fp32, &states).unwrap();
        let low = exact.with_precision(Precision::Bf16);
        let obs = Tensor::randn([2, 5, 2, 8], (Kind::Float, Device::Cpu));
        let actions = Tensor::rand([2, 5, 7, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let energies = |model: &PackedEbm| {
            let actions = actions.copy().set_requires_grad(true);
            let e = model.energies(&model.observation_context(&obs), &actions);
            let g = Tensor::run_backward(&[e.sum(None)], &[&actions], false, false);
            (e.detach(), g[0].shallow_clone())
        };
        let (e32, g32) = energies(&exact);
        let (e16, g16) = energies(&low);
        assert!(e32.mean(Kind::Float).double_value(&[]) > 190.0);
        // Rounded at 200 they would be off by up to 0.5; the blocks' roundings cost ~1e-2.
        let error = max_diff(&e16, &e32);
        assert!(
            error < 0.05,
            "blocks {blocks}: bf16 energies off by {error}"
        );
        assert!(error > 0.0, "blocks {blocks}: nothing computed in bf16");
        let relative = max_diff(&g16, &g32) / g32.abs().max().double_value(&[]);
        assert!(relative < 0.05, "blocks {blocks}: dE/da off by {relative}");
        // A sampler's frozen copy computes the same energies.
        let frozen = tch::no_grad(|| {
            let f = low.frozen();
            f.energies(&f.observation_context(&obs), &actions)
        });
        assert_eq!(max_diff(&frozen, &e16), 0.0, "blocks {blocks}");
    }
}

/// What a member trains on: 2-D particle demos of `data_seed`.
fn data(data_seed: u64) -> (TrainingSet, Normalizer) {
    let task = ParticleTask::new(ParticleConfig::default()).unwrap();
    let demos: Vec<_> = record_demos(&task, &episode_seeds(data_seed, 12))
        .unwrap()
        .into_iter()
        .map(|r| r.demo)
        .collect();
    let (normalizer, set) = training_set(&demos, 2, 0.05, task.info(), Device::Cpu).unwrap();
    (set, normalizer)
}

/// Four trials that differ in everything a pack lets them differ in, with counter-examples
/// of `kind`, `refined_fraction` of them refined.
fn member_specs_of(
    kind: NegativeKind,
    refined_fraction: f64,
) -> Vec<(PolicySpec, OptimConfig, u64)> {
    (0..4u64)
        .map(|i| {
            let loss = EbmLossConfig {
                temperature: 1.0 + 0.25 * i as f64,
                negatives: NegativesConfig {
                    kind,
                    count: 6,
                    refined_fraction,
                    langevin: LangevinConfig {
                        steps: 12,
                        step_size_init: 0.1 - 0.02 * i as f64,
                        noise_scale: 1.0 - 0.1 * i as f64,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                grad_penalty: GradPenaltyConfig {
                    margin: 1.0 - 0.2 * i as f64,
                    ..Default::default()
                },
            };
            let spec = PolicySpec::Ebm {
                net: net(1),
                loss,
                inference: Default::default(),
            };
            let optim = OptimConfig {
                batch_size: 24,
                schedule: LrSchedule {
                    lr: 1e-3 * (1.0 + i as f64),
                    decay_steps: 10,
                    decay_rate: 0.9 + 0.02 * i as f64,
                    staircase: i % 2 == 1,
                },
                seed: 100 + i,
            };
            (spec, optim, i % 2)
        })
        .collect()
}

fn pack(members: &[(PolicySpec, OptimConfig, u64)]) -> PackedTrainer {
    pack_in(members, Precision::Fp32)
}

fn pack_in(members: &[(PolicySpec, OptimConfig, u64)], precision: Precision) -> PackedTrainer {
    let members = members
        .iter()
        .map(|(spec, optim, data_seed)| {
            let (data, normalizer) = data(*data_seed);
            PackMember {
                spec: spec.clone(),
                optim: optim.clone(),
                data,
                normalizer,
            }
        })
        .collect();
    PackedTrainer::new(members, precision, Device::Cpu).unwrap()
}

fn weights_of(state: &[(String, Tensor)]) -> Tensor {
    let mut state: Vec<&(String, Tensor)> = state.iter().collect();
    state.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::cat(
        &state
            .iter()
            .map(|(_, t)| t.flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    )
}

const STEPS: usize = 60;

/// The largest relative difference of two losses.
fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-3)
}

/// A bf16 pack searches for its counter-examples in bf16 and computes its loss as an fp32
/// pack does: with uniform counter-examples (nothing searched) it trains as the fp32 pack,
/// to the bit; with Langevin chains (searched in bf16) its losses differ from the fp32
/// pack's by what the chains' rounding moves, not more.
#[test]
fn a_bf16_pack_searches_in_bf16_and_takes_its_loss_in_fp32() {
    let _torch = common::torch_lock();
    for kind in [NegativeKind::Uniform, NegativeKind::Langevin] {
        let specs = member_specs_of(kind, 1.0);
        let mut exact = pack_in(&specs, Precision::Fp32);
        let mut low = pack_in(&specs, Precision::Bf16);
        let mut differ = false;
        for step in 0..5 {
            let (a, b) = (exact.train_step(), low.train_step());
            if kind == NegativeKind::Uniform {
                assert_eq!(a, b, "step {step}");
                continue;
            }
            for (x, y) in a.iter().zip(&b) {
                differ |= x.loss != y.loss;
                assert!(rel(y.loss, x.loss) < 2e-2, "step {step}: {y:?} vs {x:?}");
            }
        }
        assert_eq!(differ, kind == NegativeKind::Langevin, "{kind:?}");
    }
}

/// The precision a trial trains in: bf16 only where it is asked for and the trial packs;
/// elsewhere TF32 on a GPU (fp32 on the CPU).
#[test]
fn bf16_is_for_packs_and_other_networks_take_tf32_on_a_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |name: &str, text: &str| {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, format!("name = \"{name}\"\n{text}")).unwrap();
        ebmlab::spec::load_spec_with_env(&file, &[], Vec::new())
            .unwrap()
            .spec
    };
    let bf16 = "[train]\nprecision = \"bf16\"\n";
    let ar = "[policy]\nkind = \"ar_ebm\"\n[train.negatives]\nkind = \"uniform\"\n\
              [train.grad_penalty]\nenabled = false\n[eval]\ninference = \"autoregressive_dfo\"\n";
    let cases = [
        (spec("ebm", bf16), Precision::Bf16, Precision::Bf16),
        (spec("ebm_auto", ""), Precision::Fp32, Precision::Tf32),
        (
            spec("ar", &format!("{ar}{bf16}")),
            Precision::Fp32,
            Precision::Tf32,
        ),
        (
            spec("mse", &format!("[policy]\nkind = \"mse\"\n{bf16}")),
            Precision::Fp32,
            Precision::Tf32,
        ),
        (
            spec("ln", &format!("[policy]\nlayer_norm = true\n{bf16}")),
            Precision::Fp32,
            Precision::Tf32,
        ),
    ];
    for (spec, cpu, gpu) in &cases {
        let on = |device| ebmlab::trial::training_precision(spec, device);
        assert_eq!(
            (on(Device::Cpu), on(Device::Cuda(0))),
            (*cpu, *gpu),
            "{}",
            spec.name
        );
    }
}

#[test]
fn a_pack_of_one_trains_bit_for_bit_like_the_solo_trainer() {
    let _torch = common::torch_lock();
    let kinds = [
        (NegativeKind::Langevin, 1.0),
        (NegativeKind::Dfo, 1.0),
        (NegativeKind::Dfo, 0.5),
    ];
    for (kind, fraction) in kinds {
        pack_of_one_is_the_solo_trainer(&member_specs_of(kind, fraction));
    }
}

fn pack_of_one_is_the_solo_trainer(specs: &[(PolicySpec, OptimConfig, u64)]) {
    for (k, (spec, optim, data_seed)) in specs.iter().enumerate().take(2) {
        let mut alone = pack(&specs[k..=k]);
        let (set, normalizer) = data(*data_seed);
        let mut trainer =
            Trainer::new(spec.clone(), optim.clone(), set, normalizer, Device::Cpu).unwrap();
        for step in 0..STEPS {
            let (one, solo) = (alone.train_step().remove(0), trainer.train_step());
            // The gradient norm is only reported, summed in another order.
            assert!(rel(one.grad_norm, solo.grad_norm) < 1e-6);
            let reported = StepMetrics {
                grad_norm: solo.grad_norm,
                ..one
            };
            assert_eq!(reported, solo, "member {k} step {step}");
        }
        let solo_state: Vec<(String, Tensor)> =
            trainer.var_store().variables().into_iter().collect();
        assert_eq!(
            max_diff(
                &weights_of(&alone.member_state(0)),
                &weights_of(&solo_state)
            ),
            0.0
        );
    }
}

/// Summation order is all that differs between a batch of K products and one: each
/// member's losses agree with its run alone to float precision at first (relative 1e-5
/// over 20 steps); over 60 steps the differences may grow (Adam turns rounding noise of
/// near-zero gradients into learning-rate-sized steps, Langevin's clipping turns small
/// moves into different counter-examples), within relative 1e-2 of each step's loss and
/// 1e-3 on average. DFO counter-examples are picked by comparing cumulative probabilities
/// with uniforms: where one lies within rounding of a boundary, the pack and the run alone
/// pick neighbouring rows, and that step's loss differs by a counter-example's share (seen:
/// 2e-4 in the first 20 steps, 1e-2 at worst over 60, 1.5e-3 on average).
#[test]
fn a_pack_trains_each_member_as_its_run_alone_within_float_tolerance() {
    let _torch = common::torch_lock();
    let cases = [
        (NegativeKind::Langevin, 1.0, [1e-5, 1e-2, 1e-3]),
        (NegativeKind::Dfo, 0.5, [2e-3, 5e-2, 5e-3]),
    ];
    for (kind, fraction, tolerance) in cases {
        println!("{kind:?} counter-examples, {fraction} refined:");
        pack_trains_each_member_as_alone(&member_specs_of(kind, fraction), tolerance);
    }
}

/// `tolerance`: relative loss difference at most in the first 20 steps, at most over all,
/// and on average.
fn pack_trains_each_member_as_alone(specs: &[(PolicySpec, OptimConfig, u64)], tolerance: [f64; 3]) {
    let mut packed = pack(specs);
    let mut alone: Vec<PackedTrainer> = (0..specs.len()).map(|k| pack(&specs[k..=k])).collect();
    let mut worst_early = 0.0f64;
    let mut worst = vec![0.0f64; specs.len()];
    let mut mean = vec![0.0f64; specs.len()];
    for step in 0..STEPS {
        let together = packed.train_step();
        for (k, m) in together.iter().enumerate() {
            let one = alone[k].train_step().remove(0);
            assert_eq!((m.step, m.lr), (one.step, one.lr));
            let r = rel(m.loss, one.loss);
            if step < 20 {
                worst_early = worst_early.max(r);
            }
            worst[k] = worst[k].max(r);
            mean[k] += r / STEPS as f64;
        }
    }
    let show = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.1e}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "relative loss differences, pack of {} vs alone: first 20 steps at most {worst_early:.1e}; \
         over {STEPS} steps per member at most {}, on average {}",
        specs.len(),
        show(&worst),
        show(&mean)
    );
    let [early, at_most, on_average] = tolerance;
    assert!(worst_early < early, "{worst_early}");
    assert!(worst.iter().all(|&w| w < at_most), "{worst:?}");
    assert!(mean.iter().all(|&m| m < on_average), "{mean:?}");
}

/// A sweep of `seeds` that packs by 4 (or runs alone with `pack = 1`).
fn sweep(dir: &std::path::Path, pack: usize, iterations: u64) -> std::path::PathBuf {
    sweep_evaluating(dir, pack, iterations, 0)
}

/// [`sweep`] with evaluations every `eval_every` steps (0: only at the end).
fn sweep_evaluating(
    dir: &std::path::Path,
    pack: usize,
    iterations: u64,
    eval_every: u64,
) -> std::path::PathBuf {
    let file = dir.join(format!("pack{pack}.toml"));
    std::fs::write(
        &file,
        format!(
            "name = \"packed\"\n[data]\ndemos = 20\n[policy]\nhidden = 32\n\
             [train]\niterations = {iterations}\nbatch_size = 32\ncheckpoint_every = 100\n\
             eval_every = {eval_every}\nlog_every = 10\n\
             [train.negatives]\nkind = \"langevin\"\ncount = 8\nsteps = 10\n\
             [eval]\nepisodes = 4\nsamples = 64\n\
             [resources]\ndevice = \"cpu\"\npack = {pack}\n\
             [sweep]\n\"train.seed\" = [0, 1, 2, 3]\n"
        ),
    )
    .unwrap();
    file
}

/// `ebmlab run SPEC` on one slot, to the end.
fn run_on_one_slot(spec: &std::path::Path, runs: &std::path::Path) {
    let out = common::ebmlab(&[
        "run",
        spec.to_str().unwrap(),
        "--quiet",
        "--slots",
        "1",
        "--runs",
        runs.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
}

fn checkpoints(runs: &std::path::Path, step: u64) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(runs.join("packed"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.join(format!("checkpoints/step_{step:07}.safetensors")))
        .collect();
    files.sort();
    files
}

#[test]
fn packed_trials_record_their_pack_and_their_checkpoints_load_in_pytorch_as_solo_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (packed, alone) = (dir.path().join("packed"), dir.path().join("alone"));
    for (pack, runs) in [(4, &packed), (1, &alone)] {
        run_on_one_slot(&sweep_evaluating(dir.path(), pack, 50, 25), runs);
    }
    let db = packed.join("ebmlab.sqlite");
    let packs = common::query_csv(&db, "SELECT COUNT(DISTINCT pack), COUNT(*) FROM trials");
    assert_eq!(
        packs, "COUNT(DISTINCT pack),COUNT(*)\n1,4\n",
        "one pack of four"
    );
    let lone = common::query_csv(
        &alone.join("ebmlab.sqlite"),
        "SELECT COUNT(pack) FROM trials",
    );
    assert_eq!(lone, "COUNT(pack)\n0\n");

    // The step-25 evaluations ran as one job of the four, and the final ones in the
    // training job: each as one rollout, giving each member the episodes that evaluating
    // its checkpoint alone (`ebmlab eval`) gives.
    let jobs = common::query_csv(
        &db,
        "SELECT COUNT(*) FROM evaluations WHERE step = 25 AND wall_seconds = \
         (SELECT MIN(wall_seconds) FROM evaluations WHERE step = 25)",
    );
    assert_eq!(jobs, "COUNT(*)\n4\n", "one shared rollout's wall time");
    let trial_dirs: Vec<_> = checkpoints(&packed, 50)
        .iter()
        .map(|c| c.parent().unwrap().parent().unwrap().to_path_buf())
        .collect();
    let logs: String = trial_dirs
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("worker.log")).ok())
        .collect();
    assert!(logs.contains("evaluated together"), "{logs}");
    for trial in &trial_dirs {
        // A folder per trial: `ebmlab eval` refuses to write over an evaluation.
        let id = trial.file_name().unwrap().to_str().unwrap();
        let out_dir = dir.path().join(format!("alone-eval-{id}"));
        let out = common::ebmlab(&[
            "eval",
            trial.to_str().unwrap(),
            "--episodes",
            "4",
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(
            read(trial.join("episodes.csv")),
            read(out_dir.join("episodes.csv")),
            "{}",
            trial.display()
        );
        let recorded = common::query_csv(
            &db,
            &format!(
                "SELECT successes, mean_min_distance_first_goal FROM evaluations \
                 WHERE trial = '{id}' AND step = 25"
            ),
        );
        let checkpoint = trial.join("checkpoints/step_0000025.safetensors");
        let out = common::ebmlab(&[
            "eval",
            checkpoint.to_str().unwrap(),
            "--episodes",
            "4",
            "--json",
            "--out",
            dir.path()
                .join(format!("alone-eval-25-{id}"))
                .to_str()
                .unwrap(),
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let alone: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let row: Vec<&str> = recorded.lines().nth(1).unwrap().split(',').collect();
        assert_eq!(row[0], alone["successes"].to_string(), "{id} step 25");
        let distance: f64 = row[1].parse().unwrap();
        let alone_distance = alone["mean_min_distance_first_goal"].as_f64().unwrap();
        assert!(
            (distance - alone_distance).abs() < 1e-6,
            "{id}: {distance} vs {alone_distance}"
        );
    }

    // PyTorch loads each packed trial's checkpoint strictly and gives the energies our
    // solo model of the same trial run alone gives, up to a constant: an energy model is
    // defined up to one (InfoNCE and Langevin see only differences), and the output bias's
    // gradient is rounding noise that Adam turns into steps in both runs alike.
    let _torch = common::torch_lock();
    let obs = Tensor::randn([5, 2, 8], (Kind::Float, Device::Cpu));
    let actions = Tensor::rand([5, 9, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    for (packed_file, solo_file) in checkpoints(&packed, 50).iter().zip(checkpoints(&alone, 50)) {
        let vs = {
            let mut vs = nn::VarStore::new(Device::Cpu);
            let model = SequenceEbm::new(&vs.root(), net(1));
            vs.load(&solo_file).unwrap();
            (vs, model)
        };
        let energies = tch::no_grad(|| vs.1.energies(&obs, &actions, false));
        let io = dir.path().join("io.safetensors");
        Tensor::write_safetensors(
            &[
                ("obs", &obs),
                ("actions", &actions),
                ("energies", &energies),
            ],
            &io,
        )
        .unwrap();
        let program = format!(
            "import sys; sys.argv = ['x', {:?}, {:?}, 'none', '1', '32', 'up-to-a-constant']\n{}",
            packed_file.to_str().unwrap(),
            io.to_str().unwrap(),
            common::SEED_MODULE
        );
        let diff: f64 = common::run_python(&program, "").trim().parse().unwrap();
        let scale = energies.abs().max().double_value(&[]);
        println!(
            "{}: packed vs alone energies differ by {diff:.2e} (scale {scale:.2})",
            packed_file.display()
        );
        assert!(diff < 1e-4 * scale.max(1.0), "{diff}");
    }
}

#[test]
fn a_packed_run_killed_and_resumed_equals_the_uninterrupted_one_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let file = sweep(dir.path(), 4, 1500);
    let killed = dir.path().join("killed");
    let db = killed.join("ebmlab.sqlite");
    let mut child = common::spawn_run(&file, &killed);
    common::wait_for(
        &db,
        "SELECT COUNT(*) FROM checkpoints WHERE step >= 300",
        |v| v == "4",
    );
    let worker = common::query_one(&db, "SELECT pid FROM trials LIMIT 1");
    common::kill("-KILL", &[worker, child.id().to_string()]);
    child.wait().unwrap();
    let out = common::resume("packed", &killed);
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
    let straight = dir.path().join("straight");
    assert!(common::spawn_run(&file, &straight)
        .wait()
        .unwrap()
        .success());
    let (a, b) = (checkpoints(&killed, 1500), checkpoints(&straight, 1500));
    assert_eq!(a.len(), 4);
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{}",
            a.display()
        );
    }
    let rows = common::query_csv(
        &db,
        "SELECT COUNT(*), COUNT(DISTINCT trial || '/' || step) FROM metrics WHERE name = 'loss'",
    );
    assert_eq!(
        rows,
        "COUNT(*),COUNT(DISTINCT trial || '/' || step)\n600,600\n"
    );
}

/// The members' episodes, acting alone (fresh solo policies from their weights) and
/// acting together (one batched rollout): per member, actions of every step.
#[test]
fn a_packs_members_evaluated_together_act_as_each_alone() {
    use ebmlab::eval::{rollout, rollout_pack};
    use ebmlab::policy::LoadedPolicy;
    use ebmlab::train::Learner;
    let _torch = common::torch_lock();
    let mut specs = member_specs_of(NegativeKind::Uniform, 1.0);
    for (spec, _, _) in &mut specs {
        let inference = spec.inference_mut().unwrap();
        inference.samples = 256;
        inference.chunk_rows = 1000; // pieces of (members x episodes x samples)
    }
    let mut trainer = pack(&specs[..3]);
    for _ in 0..30 {
        trainer.train_step();
    }
    let task = ParticleTask::new(ParticleConfig::default()).unwrap();
    let seeds: Vec<Vec<u64>> = (0..3).map(|k| episode_seeds(50 + k, 6)).collect();
    let sampling = [7u64, 8, 9];
    let alone: Vec<_> = (0..3)
        .map(|k| {
            let m = trainer.member(k);
            let policy = LoadedPolicy::from_state(
                &m.spec,
                &m.normalizer,
                &trainer.member_state(k),
                trainer.step(),
                Device::Cpu,
            )
            .unwrap();
            rollout(&task, &policy.view(), &seeds[k], sampling[k]).unwrap()
        })
        .collect();
    let learner = Learner::Pack(Box::new(trainer));
    let actions = |records: &[ebmlab::eval::EpisodeRecord]| {
        let flat: Vec<f32> = records
            .iter()
            .flat_map(|r| r.actions.iter().flatten().copied())
            .collect();
        Tensor::from_slice(&flat)
    };
    for positions in [vec![1usize], vec![0, 1, 2], vec![2, 0]] {
        let policies = learner.packed_policies(&positions).unwrap().unwrap();
        let tasks: Vec<&dyn Task> = positions.iter().map(|_| &task as &dyn Task).collect();
        let member_seeds: Vec<Vec<u64>> = positions.iter().map(|&k| seeds[k].clone()).collect();
        let member_sampling: Vec<u64> = positions.iter().map(|&k| sampling[k]).collect();
        let together = rollout_pack(&tasks, &policies, &member_seeds, &member_sampling).unwrap();
        for (records, &k) in together.iter().zip(&positions) {
            let diff = max_diff(&actions(records), &actions(&alone[k]));
            println!("members {positions:?}: member {k} actions differ by at most {diff:.1e}");
            assert!(diff < 1e-4, "member {k} in {positions:?}: {diff}");
            let outcomes = |r: &[ebmlab::eval::EpisodeRecord]| {
                r.iter().map(|e| e.outcome.success).collect::<Vec<_>>()
            };
            assert_eq!(outcomes(records), outcomes(&alone[k]));
        }
    }
}

/// An evaluation job of several trials where one checkpoint was altered: that trial fails
/// (exit 2, naming it), the others are evaluated and recorded.
#[test]
fn one_bad_checkpoint_fails_only_its_trial_in_an_evaluation_job_of_several() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    run_on_one_slot(&sweep_evaluating(dir.path(), 4, 50, 25), &runs);
    let db = runs.join("ebmlab.sqlite");
    let mut trials: Vec<String> = common::query_csv(&db, "SELECT id FROM trials ORDER BY id")
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect();
    trials.truncate(3);
    // Forget their step-25 evaluations, and alter the second one's checkpoint.
    let forget = format!(
        "import sqlite3; c = sqlite3.connect({:?}); \
         c.execute(\"DELETE FROM episodes WHERE evaluation IN \
         (SELECT id FROM evaluations WHERE step = 25)\"); \
         c.execute(\"DELETE FROM evaluations WHERE step = 25\"); c.commit()",
        db.to_str().unwrap()
    );
    common::run_python(&forget, "");
    let bad = runs.join(format!(
        "packed/{}/checkpoints/step_0000025.safetensors",
        trials[1]
    ));
    let mut bytes = std::fs::read(&bad).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&bad, bytes).unwrap();

    let mut args = vec![
        "worker",
        "--experiment",
        "packed",
        "--runs",
        runs.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--evaluate",
        "25",
    ];
    for t in &trials {
        args.extend(["--trial", t.as_str()]);
    }
    let out = common::ebmlab(&args);
    let (stdout, stderr) = (common::stdout(&out), common::stderr(&out));
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains(&trials[1]) && stderr.contains("sha256"),
        "{stderr}"
    );
    let evaluated = common::query_csv(
        &db,
        "SELECT trial FROM evaluations WHERE step = 25 ORDER BY trial",
    );
    let expected = format!("trial\n{}\n{}\n", trials[0], trials[2]);
    assert_eq!(evaluated, expected, "{stdout}{stderr}");
}
