//! Checkpoints: PyTorch reads them as the seed's module, and a resumed run continues exactly.

mod common;

use std::collections::BTreeMap;

use ebmlab::data::{Normalizer, Windows};
use ebmlab::policy::ebm::{
    EbmLossConfig, LangevinConfig, NegativeKind, NegativesConfig, SequenceEbm,
};
use ebmlab::task::{record_demos, Demo};

use ebmlab::checkpoint;
use ebmlab::policy::{NetConfig, PolicySpec};
use ebmlab::task::episode_seeds;
use ebmlab::task::particle::{ParticleConfig, ParticleTask};
use ebmlab::train::{LrSchedule, OptimConfig, Trainer, TrainingSet};
use tch::{nn, Device, Kind, Tensor};

#[test]
fn pytorch_loads_the_checkpoint_and_computes_the_same_energies() {
    let _torch = common::torch_lock();
    for (layer_norm, blocks) in [(false, 1usize), (true, 1), (false, 2)] {
        tch::manual_seed(42);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = SequenceEbm::new(
            &vs.root(),
            NetConfig {
                layer_norm,
                blocks,
                ..Default::default()
            },
        );
        // Train-like weights: perturb the LayerNorm affine parameters away from 1 and 0.
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if name.contains("norm") {
                    let _ = t.g_add_(&(t.randn_like() * 0.1));
                }
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let model_path = dir.path().join("model.safetensors");
        vs.save(&model_path).unwrap();

        let obs = Tensor::randn([7, 2, 8], (Kind::Float, Device::Cpu));
        let actions = Tensor::rand([7, 33, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let energies = tch::no_grad(|| model.energies(&obs, &actions, false));
        let io_path = dir.path().join("io.safetensors");
        Tensor::write_safetensors(
            &[
                ("obs", &obs),
                ("actions", &actions),
                ("energies", &energies),
            ],
            &io_path,
        )
        .unwrap();

        let program = format!(
            "import sys; sys.argv = ['x', {:?}, {:?}, {:?}, '{blocks}']\n{}",
            model_path.to_str().unwrap(),
            io_path.to_str().unwrap(),
            if layer_norm { "layer" } else { "none" },
            common::SEED_MODULE
        );
        let max_diff: f64 = common::run_python(&program, "").trim().parse().unwrap();
        println!(
            "layer_norm={layer_norm} blocks={blocks}: max |E_torch - E_ebmlab| = {max_diff:e}"
        );
        assert!(max_diff <= 1e-5, "max abs difference {max_diff}");
    }
}

/// A 2-D residual MLP of the given width, without normalization layers.
fn small_net(hidden: i64, dropout: f64) -> NetConfig {
    NetConfig {
        hidden,
        dropout,
        layer_norm: false,
        ..Default::default()
    }
}

fn small_mse(hidden: i64, dropout: f64) -> PolicySpec {
    PolicySpec::Mse {
        net: small_net(hidden, dropout),
    }
}

fn small_ebm(negatives: NegativesConfig, inference: ebmlab::policy::InferenceConfig) -> PolicySpec {
    PolicySpec::Ebm {
        net: small_net(32, 0.0),
        loss: EbmLossConfig {
            negatives,
            ..Default::default()
        },
        inference,
    }
}

fn small_demos() -> Vec<Demo> {
    let task = ParticleTask::new(ParticleConfig::default()).unwrap();
    record_demos(&task, &episode_seeds(0, 12))
        .unwrap()
        .into_iter()
        .map(|r| r.demo)
        .collect()
}

fn trainer(spec: &PolicySpec, demos: &[Demo]) -> Trainer {
    let windows = Windows::from_demos(demos, 2);
    let obs_rows: Vec<f32> = windows.observations.clone();
    let norm = Normalizer::fit(
        &obs_rows,
        8,
        &windows.actions,
        2,
        0.05,
        (&[0.0, 0.0], &[1.0, 1.0]),
    )
    .unwrap();
    let data = TrainingSet::new(&windows, &norm, Device::Cpu).unwrap();
    let optim = OptimConfig {
        batch_size: 32,
        schedule: LrSchedule {
            lr: 1e-3,
            decay_steps: 100,
            decay_rate: 0.99,
            staircase: false,
        },
        seed: 5,
    };
    Trainer::new(spec.clone(), optim, data, norm, Device::Cpu).unwrap()
}

fn weights(t: &Trainer) -> BTreeMap<String, Vec<f32>> {
    t.var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| (k, Vec::<f32>::try_from(v.flatten(0, -1)).unwrap()))
        .collect()
}

#[test]
fn save_load_continue_equals_an_uninterrupted_run() {
    let _torch = common::torch_lock();
    let demos = small_demos();
    let ebm = small_ebm(
        NegativesConfig {
            kind: NegativeKind::Langevin,
            count: 4,
            langevin: LangevinConfig {
                steps: 10,
                ..Default::default()
            },
            ..Default::default()
        },
        Default::default(),
    );
    // Half of the counter-examples refined by DFO: its draws are part of the run's stream.
    let dfo = small_ebm(
        NegativesConfig {
            kind: NegativeKind::Dfo,
            count: 6,
            refined_fraction: 0.5,
            ..Default::default()
        },
        Default::default(),
    );
    let mse = small_mse(32, 0.1);
    let ar = PolicySpec::ArEbm {
        net: small_net(32, 0.0),
        loss: EbmLossConfig {
            negatives: NegativesConfig {
                kind: NegativeKind::Uniform,
                count: 4,
                ..Default::default()
            },
            grad_penalty: ebmlab::policy::ebm::GradPenaltyConfig {
                enabled: false,
                ..Default::default()
            },
            ..Default::default()
        },
        inference: ebmlab::policy::InferenceConfig {
            kind: ebmlab::policy::InferenceKind::AutoregressiveDfo,
            ..Default::default()
        },
    };
    for spec in [ebm, dfo, mse, ar] {
        let mut straight = trainer(&spec, &demos);
        for _ in 0..8 {
            straight.train_step();
        }

        let dir = tempfile::tempdir().unwrap();
        let mut first = trainer(&spec, &demos);
        for _ in 0..3 {
            first.train_step();
        }
        let files = first.save_checkpoint(dir.path()).unwrap().files;
        drop(first);

        let mut resumed = trainer(&spec, &demos);
        let fresh = weights(&resumed);
        resumed
            .restore(&checkpoint::verify(&checkpoint::latest(dir.path()).unwrap(), None).unwrap())
            .unwrap();
        assert_eq!(resumed.step(), 3);
        assert_ne!(weights(&resumed), fresh, "restore loaded nothing");
        for _ in 3..8 {
            resumed.train_step();
        }
        assert_eq!(resumed.step(), 8);
        assert_eq!(
            weights(&resumed),
            weights(&straight),
            "{} run diverged after resume",
            spec.kind()
        );

        // The folder holds what acting needs: policy and normalizer, beside the weights.
        let (saved_spec, _) = checkpoint::read_run_files(dir.path()).unwrap();
        assert_eq!(saved_spec, spec);
        assert!(files.model.ends_with("step_0000003.safetensors"));
        // The model file is exactly the state dict: no optimizer tensors in it.
        let names: Vec<String> = Tensor::read_safetensors(&files.model)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(
            names.iter().all(|n| !n.contains("exp_avg") && n != "step"),
            "{names:?}"
        );
    }
}

#[test]
fn restore_refuses_a_checkpoint_of_another_shape() {
    let _torch = common::torch_lock();
    let demos = small_demos();
    let spec = |hidden| small_mse(hidden, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let mut small = trainer(&spec(16), &demos);
    small.train_step();
    let saved = small.save_checkpoint(dir.path()).unwrap();
    let mut big = trainer(&spec(32), &demos);
    let checked = checkpoint::verify(&saved.files, Some(&saved.model_sha256)).unwrap();
    assert!(big.restore(&checked).is_err());
}

#[test]
fn a_loaded_checkpoint_acts_within_the_task_bounds() {
    let _torch = common::torch_lock();
    let demos = small_demos();
    let ebm = small_ebm(
        NegativesConfig {
            kind: NegativeKind::Uniform,
            count: 16,
            ..Default::default()
        },
        ebmlab::policy::InferenceConfig {
            samples: 256,
            chunk_rows: 100, // forces pieces of a batch of 5 x 256 samples
            ..Default::default()
        },
    );
    let mut langevin_inference = ebm.clone();
    if let PolicySpec::Ebm { inference, .. } = &mut langevin_inference {
        inference.kind = ebmlab::policy::InferenceKind::Langevin;
        inference.langevin_samples = 64;
        inference.langevin_steps = 20;
    }
    let mse = small_mse(32, 0.0);
    let windows = Windows::from_demos(&demos, 2);
    let batch = 5;
    let obs = &windows.observations[..batch * 16];
    for spec in [ebm, langevin_inference, mse] {
        let mut t = trainer(&spec, &demos);
        for _ in 0..20 {
            t.train_step();
        }
        let dir = tempfile::tempdir().unwrap();
        let saved = t.save_checkpoint(dir.path()).unwrap();
        let checked = checkpoint::verify(&saved.files, None).unwrap();
        let policy = ebmlab::policy::LoadedPolicy::load(&checked, Device::Cpu).unwrap();
        assert_eq!(policy.step, 20);
        let actions = policy.view().act(obs, batch);
        assert_eq!(actions.len(), batch * 2);
        assert!(
            actions.iter().all(|a| (0.0..=1.0).contains(a)),
            "{actions:?}"
        );
        tch::manual_seed(1);
        let first = policy.view().act(obs, batch);
        tch::manual_seed(1);
        assert_eq!(
            policy.view().act(obs, batch),
            first,
            "same seed, same actions"
        );
    }
}
