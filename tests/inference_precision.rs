//! Inference in each precision (`eval.precision`): bf16 energies agree with fp32 ones,
//! DFO and Langevin inference in bf16 find a hand-set optimum as fp32 does, TF32 leaves
//! libtorch's setting as it found it, and the spec refuses bf16 where it has no path.

mod common;

use ebmlab::policy::ebm::{Bounds, SequenceEbm};
use ebmlab::policy::Precision;
use ebmlab::policy::{
    infer_actions, infer_actions_prepared, InferenceConfig, InferenceKind, NetConfig, PolicySpec,
    PreparedEbm,
};
use tch::{nn, Device, Kind, Tensor};

const TARGET: [f32; 2] = [0.3, -0.4];

/// `E(a) = |a_0 - 0.3| + |a_1 + 0.4|` for any observation: the projection gives
/// `h = (z_0, -z_0, z_1, -z_1)` with `z = a - target`, both block layers are the identity
/// (the block adds `relu(h)`), and the head sums `h + relu(h)`, which is `|z_0| + |z_1|`.
fn hand_set_model() -> (nn::VarStore, SequenceEbm) {
    let cfg = NetConfig {
        obs_seq_len: 1,
        obs_dim: 1,
        action_dim: 2,
        hidden: 4,
        blocks: 1,
        dropout: 0.0,
        layer_norm: false,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = SequenceEbm::new(&vs.root(), cfg);
    let f = |v: &[f32], shape: &[i64]| Tensor::from_slice(v).view(shape);
    let [t0, t1] = TARGET;
    let mut vars = vs.variables();
    tch::no_grad(|| {
        for (name, value) in [
            (
                // Columns: (obs, a_0, a_1); the observation does not matter.
                "projection.weight",
                f(&[0., 1., 0., 0., -1., 0., 0., 0., 1., 0., 0., -1.], &[4, 3]),
            ),
            ("projection.bias", f(&[-t0, t0, -t1, t1], &[4])),
            (
                "blocks.0.fc1.weight",
                Tensor::eye(4, (Kind::Float, Device::Cpu)),
            ),
            (
                "blocks.0.fc2.weight",
                Tensor::eye(4, (Kind::Float, Device::Cpu)),
            ),
            (
                "blocks.0.fc1.bias",
                Tensor::zeros([4], (Kind::Float, Device::Cpu)),
            ),
            (
                "blocks.0.fc2.bias",
                Tensor::zeros([4], (Kind::Float, Device::Cpu)),
            ),
            (
                "energy_projection.weight",
                Tensor::ones([1, 4], (Kind::Float, Device::Cpu)),
            ),
            (
                "energy_projection.bias",
                Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            ),
        ] {
            vars.get_mut(name).unwrap().copy_(&value);
        }
    });
    (vs, model)
}

fn inference(kind: InferenceKind, precision: Precision) -> InferenceConfig {
    InferenceConfig {
        kind,
        samples: 2048,
        langevin_samples: 256,
        langevin_steps: 50,
        precision,
        ..Default::default()
    }
}

#[test]
fn dfo_and_langevin_in_bf16_find_the_hand_set_optimum_as_fp32_does() {
    let _torch = common::torch_lock();
    let (_vs, model) = hand_set_model();
    let obs = Tensor::from_slice(&[0.7f32, -0.2, 0.1]).view([3, 1, 1]);
    let bounds = Bounds::new(&[-1.0; 2], &[1.0; 2], Device::Cpu);
    let expected = Tensor::from_slice(&TARGET).view([1, 2]);
    for kind in [InferenceKind::Dfo, InferenceKind::Langevin] {
        let mut chosen_by = Vec::new();
        for precision in [Precision::Fp32, Precision::Tf32, Precision::Bf16] {
            tch::manual_seed(5);
            let chosen = infer_actions(&model, &obs, &bounds, &inference(kind, precision));
            assert_eq!(chosen.size(), [3, 2]);
            assert_eq!(chosen.kind(), Kind::Float);
            let err = (&chosen - &expected).abs().max().double_value(&[]);
            // bf16 keeps 8 bits of mantissa: energies near 0.3 are exact to ~0.002.
            assert!(err < 0.02, "{kind:?} {precision:?}: {chosen}");
            chosen_by.push(chosen);
        }
        // The same draws: TF32 is fp32 on the CPU, while bf16's rounded energies steer the
        // search elsewhere (so bf16 did compute in bf16).
        assert!(chosen_by[0].equal(&chosen_by[1]), "{kind:?}: TF32 differs");
        assert!(
            !chosen_by[0].equal(&chosen_by[2]),
            "{kind:?}: bf16 equals fp32"
        );
    }
}

#[test]
fn bf16_energies_of_a_random_network_agree_with_fp32_ones() {
    let _torch = common::torch_lock();
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = NetConfig {
        hidden: 64,
        blocks: 2,
        layer_norm: false,
        ..Default::default()
    };
    let model = SequenceEbm::new(&vs.root(), cfg.clone());
    let pack =
        ebmlab::policy::ebm::PackedEbm::stack(&cfg, Precision::Bf16, &[model.named_tensors()])
            .unwrap();
    let obs = Tensor::randn([4, 2, 8], (Kind::Float, Device::Cpu));
    let actions = Tensor::rand([4, 30, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let fp32 = tch::no_grad(|| model.energies(&obs, &actions, false));
    let bf16 = tch::no_grad(|| {
        let ctx = pack.observation_context(&obs.unsqueeze(0));
        pack.energies(&ctx, &actions.unsqueeze(0)).squeeze_dim(0)
    });
    assert_eq!(bf16.kind(), Kind::Float);
    let scale = fp32.abs().max().double_value(&[]);
    let diff = (&bf16 - &fp32).abs().max().double_value(&[]);
    assert!(
        diff > 0.0,
        "bf16 products round: the two must differ somewhere"
    );
    assert!(diff < 0.03 * scale, "{diff} against energies up to {scale}");
}

#[test]
fn tf32_inference_leaves_the_matmul_setting_as_it_found_it() {
    let _torch = common::torch_lock();
    let (_vs, model) = hand_set_model();
    let obs = Tensor::zeros([1, 1, 1], (Kind::Float, Device::Cpu));
    let bounds = Bounds::new(&[-1.0; 2], &[1.0; 2], Device::Cpu);
    for before in [Precision::Fp32, Precision::Tf32] {
        before.apply().unwrap();
        let _ = infer_actions(
            &model,
            &obs,
            &bounds,
            &inference(InferenceKind::Dfo, Precision::Tf32),
        );
        assert_eq!(Precision::tf32_enabled(), before == Precision::Tf32);
    }
    Precision::Fp32.apply().unwrap();
}

#[test]
fn bf16_inference_of_a_layer_norm_network_is_refused_naming_the_key() {
    let spec = PolicySpec::Ebm {
        net: NetConfig::default(), // the seed's class default has LayerNorm
        loss: Default::default(),
        inference: inference(InferenceKind::Dfo, Precision::Bf16),
    };
    let message = format!("{:#}", spec.check().unwrap_err());
    assert!(message.contains("eval.precision"), "{message}");
    // `auto` falls back to fp32 for it on a GPU, and is fp32 on the CPU.
    let auto = inference(InferenceKind::Dfo, Precision::Auto);
    assert_eq!(
        auto.precision_on(Device::Cuda(0), &NetConfig::default()),
        Precision::Fp32
    );
    let plain = NetConfig {
        layer_norm: false,
        ..Default::default()
    };
    assert_eq!(auto.precision_on(Device::Cuda(0), &plain), Precision::Bf16);
    assert_eq!(auto.precision_on(Device::Cpu, &plain), Precision::Fp32);
}

#[test]
fn a_model_prepared_once_acts_as_one_prepared_at_each_call_and_another_precisions_is_not_used() {
    let _torch = common::torch_lock();
    let (_vs, model) = hand_set_model();
    let obs = Tensor::randn([3, 1, 1], (Kind::Float, Device::Cpu));
    let bounds = Bounds::new(&[-1.0; 2], &[1.0; 2], Device::Cpu);
    let bf16 = PreparedEbm::new(&model, Precision::Bf16).expect("no LayerNorm");
    for kind in [InferenceKind::Dfo, InferenceKind::Langevin] {
        let cfg = inference(kind, Precision::Fp32);
        let prepared = PreparedEbm::new(&model, Precision::Fp32).expect("no LayerNorm");
        let act = |prepared: Option<&PreparedEbm>| {
            tch::manual_seed(11);
            infer_actions_prepared(&model, prepared, &obs, &bounds, &cfg)
        };
        let fresh = act(None);
        // Twice: acting leaves the prepared model as it was.
        for _ in 0..2 {
            assert!(
                act(Some(&prepared)).equal(&fresh),
                "{kind:?}: prepared once"
            );
        }
        // A model prepared in bf16 is not what fp32 inference computes with.
        assert!(
            act(Some(&bf16)).equal(&fresh),
            "{kind:?}: another precision's"
        );
    }
}
