//! The EBM machinery against analytic values and independent computations.

mod common;

use ebmlab::data::{Normalizer, Windows};
use ebmlab::policy::ebm::{
    dfo_minimize, gradient_penalty, info_nce, langevin, Bounds, DfoConfig, GradNorm,
    GradPenaltyConfig, LangevinConfig, SequenceEbm,
};
use ebmlab::policy::{parameter_count, NetConfig, PolicyNet, PolicySpec};
use ebmlab::task::particle::ParticleDemo;
use tch::{nn, Device, Kind, Tensor};

fn ebm_spec(net: NetConfig) -> PolicySpec {
    PolicySpec::Ebm {
        net,
        loss: Default::default(),
        inference: Default::default(),
    }
}

#[test]
fn parameter_counts_match_the_seed_and_ibc() {
    let count = |layer_norm| {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = ebm_spec(NetConfig {
            layer_norm,
            ..Default::default()
        });
        PolicyNet::build(&vs, &spec);
        parameter_count(&vs)
    };
    assert_eq!(count(true), 137_729, "the seed's table (LayerNorm)");
    assert_eq!(count(false), 136_705, "IBC's setting (no normalization)");

    let vs = nn::VarStore::new(Device::Cpu);
    let mut names: Vec<String> = vs.variables().into_keys().collect();
    assert!(names.is_empty());
    SequenceEbm::new(&vs.root(), NetConfig::default());
    names = vs.variables().into_keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "blocks.0.fc1.bias",
            "blocks.0.fc1.weight",
            "blocks.0.fc2.bias",
            "blocks.0.fc2.weight",
            "blocks.0.norm1.bias",
            "blocks.0.norm1.weight",
            "blocks.0.norm2.bias",
            "blocks.0.norm2.weight",
            "energy_projection.bias",
            "energy_projection.weight",
            "projection.bias",
            "projection.weight",
        ]
    );
}

#[test]
fn info_nce_equals_hand_computed_log_softmax() {
    let energies = Tensor::from_slice(&[1.0f32, 2.0, 0.5, 0.0, 0.0, 3.0]).view([2, 3]);
    // Row 1: -log(e^-0.5 / (e^-1 + e^-2 + e^-0.5)); row 2: -log(e^-3 / (1 + 1 + e^-3)).
    let row = |e: [f64; 3], t: f64| {
        let z: f64 = e.iter().map(|x| (-x / t).exp()).sum();
        -((-e[2] / t).exp() / z).ln()
    };
    for t in [1.0, 2.0, 0.5] {
        let expected = (row([1.0, 2.0, 0.5], t) + row([0.0, 0.0, 3.0], t)) / 2.0;
        let got = info_nce(&energies, t).double_value(&[]);
        assert!(
            (got - expected).abs() < 1e-6,
            "t = {t}: {got} vs {expected}"
        );
    }
    // A positive far below its negatives costs almost nothing.
    let easy = Tensor::from_slice(&[10.0f32, 10.0, -10.0]).view([1, 3]);
    assert!(info_nce(&easy, 1.0).double_value(&[]) < 1e-8);
}

/// A double-precision model, so finite differences are accurate.
fn double_model(layer_norm: bool) -> (nn::VarStore, SequenceEbm) {
    tch::manual_seed(3);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = SequenceEbm::new(
        &vs.root(),
        NetConfig {
            hidden: 32,
            blocks: 2,
            layer_norm,
            ..Default::default()
        },
    );
    vs.double();
    // Larger weights so some gradients exceed the margin.
    tch::no_grad(|| {
        for (_, mut t) in vs.variables() {
            let _ = t.g_mul_scalar_(3.0);
        }
    });
    (vs, model)
}

#[test]
fn gradient_penalty_matches_finite_differences_and_trains_the_weights() {
    let _torch = common::torch_lock();
    let (vs, model) = double_model(false);
    let obs = Tensor::randn([4, 2, 8], (Kind::Double, Device::Cpu));
    let actions = Tensor::rand([4, 3, 2], (Kind::Double, Device::Cpu)) * 2.0 - 1.0;
    for norm in [GradNorm::Inf, GradNorm::L2] {
        let cfg = GradPenaltyConfig {
            norm,
            margin: 0.5,
            ..Default::default()
        };
        // Autograd with create_graph, as in training.
        let a = actions.detach().set_requires_grad(true);
        let energies = model.energies(&obs, &a, false);
        let grad = Tensor::run_backward(&[energies.sum(None)], &[&a], true, true);
        let penalty = gradient_penalty(&grad[0], &cfg);

        // Central differences of the energy, per action component.
        let h = 1e-6;
        let mut expected = 0.0;
        let mut rows = 0.0;
        for b in 0..4 {
            for n in 0..3 {
                let mut g = [0.0f64; 2];
                for (d, g) in g.iter_mut().enumerate() {
                    let shifted = |delta: f64| {
                        let a = actions.copy();
                        let _ = a.get(b).get(n).get(d as i64).g_add_scalar_(delta);
                        model.energies(&obs, &a, false).double_value(&[b, n])
                    };
                    *g = (shifted(h) - shifted(-h)) / (2.0 * h);
                }
                let norm_value = match norm {
                    GradNorm::Inf => g[0].abs().max(g[1].abs()),
                    GradNorm::L2 => (g[0] * g[0] + g[1] * g[1]).sqrt(),
                };
                expected += (norm_value - 0.5).max(0.0).powi(2);
                rows += 1.0;
            }
        }
        expected /= rows;
        let got = penalty.double_value(&[]);
        assert!(expected > 1e-3, "the test needs gradients above the margin");
        assert!(
            (got - expected).abs() < 1e-6 * expected.max(1.0),
            "{norm:?}: {got} vs {expected}"
        );

        // Its gradient w.r.t. the weights exists and is non-zero: the second derivative flows.
        for (_, mut t) in vs.variables() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
            let _ = &mut t;
        }
        penalty.backward();
        let w = vs.variables()["blocks.0.fc1.weight"].grad();
        assert!(w.defined() && w.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    }
}

#[test]
fn hand_written_action_gradient_equals_autograd() {
    let _torch = common::torch_lock();
    for blocks in [0usize, 1, 3] {
        tch::manual_seed(blocks as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = SequenceEbm::new(
            &vs.root(),
            NetConfig {
                hidden: 64,
                blocks,
                layer_norm: false,
                ..Default::default()
            },
        );
        let obs = Tensor::randn([5, 2, 8], (Kind::Float, Device::Cpu));
        let actions = Tensor::rand([5, 7, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let ctx = model.observation_context(&obs);
        let fast = model.action_gradient(&obs, &actions);
        let reference = model.action_gradient_autograd(&ctx, &actions);
        assert_eq!(fast.size(), vec![5, 7, 2]);
        let diff = (&fast - &reference).abs().max().double_value(&[]);
        let scale = reference.abs().max().double_value(&[]);
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "{blocks} blocks: {diff} (scale {scale})"
        );
    }
}

#[test]
fn observation_context_split_equals_concatenated_projection() {
    let _torch = common::torch_lock();
    tch::manual_seed(9);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = SequenceEbm::new(&vs.root(), NetConfig::default());
    let obs = Tensor::randn([3, 2, 8], (Kind::Float, Device::Cpu));
    let actions = Tensor::randn([3, 4, 2], (Kind::Float, Device::Cpu));
    // The seed's formulation: concatenate, then one Linear.
    let vars = vs.variables();
    let x = Tensor::cat(
        &[
            obs.reshape([3, 1, 16]).expand([3, 4, 16], false),
            actions.shallow_clone(),
        ],
        2,
    );
    let h = x.linear(&vars["projection.weight"], Some(&vars["projection.bias"]));
    let ours = model.observation_context(&obs).unsqueeze(1)
        + actions.linear::<Tensor>(&vars["projection.weight"].narrow(1, 16, 2), None);
    assert!((h - ours).abs().max().double_value(&[]) < 1e-5);
}

#[test]
fn langevin_descends_a_quadratic_bowl() {
    let _torch = common::torch_lock();
    tch::manual_seed(0);
    let bounds = Bounds::new(&[-1.0, -1.0], &[1.0, 1.0], Device::Cpu);
    let center = Tensor::from_slice(&[0.3f32, -0.6]);
    let grad = |a: &Tensor| (a - &center) * 10.0; // E = 5 |a - c|^2
    let init = bounds.uniform(&[64, 32, 2]);

    // Without noise every sample ends at the minimum.
    let quiet = LangevinConfig {
        noise_scale: 0.0,
        ..Default::default()
    };
    let out = langevin(init.copy(), &bounds, &quiet, grad);
    let err = (&out - &center).abs().max().double_value(&[]);
    assert!(err < 1e-3, "max error {err}");

    // With IBC's noise the samples gather around it.
    let out = langevin(init, &bounds, &LangevinConfig::default(), grad);
    let mean_err = (out.mean_dim(vec![0i64, 1], false, Kind::Float) - &center)
        .abs()
        .max()
        .double_value(&[]);
    assert!(mean_err < 0.05, "mean error {mean_err}");
    assert!(out.max().double_value(&[]) <= 1.0 && out.min().double_value(&[]) >= -1.0);

    // The schedule: 0.1 at the start, 1e-5 at the end, polynomial of power 2 between.
    let cfg = LangevinConfig::default();
    assert!((cfg.step_size(0) - 0.1).abs() < 1e-12);
    assert!((cfg.step_size(99) - 1e-5).abs() < 1e-12);
    let expected = (0.1 - 1e-5) * (1.0 - 49.0 / 99.0f64).powi(2) + 1e-5;
    assert!((cfg.step_size(49) - expected).abs() < 1e-12);
}

#[test]
fn dfo_finds_the_deeper_of_two_wells() {
    let _torch = common::torch_lock();
    tch::manual_seed(1);
    let bounds = Bounds::new(&[-1.0, -1.0], &[1.0, 1.0], Device::Cpu);
    let deep = Tensor::from_slice(&[-0.5f32, 0.5]);
    let shallow = Tensor::from_slice(&[0.6f32, -0.4]);
    // Wells of depth 0 (deep) and 0.5 (shallow), width 0.1.
    let energy = |a: &Tensor| {
        let d1 = (a - &deep).square().sum_dim_intlist(-1, false, Kind::Float) / 0.01;
        let d2 = (a - &shallow)
            .square()
            .sum_dim_intlist(-1, false, Kind::Float)
            / 0.01
            + 0.5;
        d1.minimum(&d2)
    };
    let best = dfo_minimize(8, 2, &bounds, &DfoConfig::default(), energy);
    assert_eq!(best.size(), vec![8, 2]);
    let err = (&best - &deep).abs().max().double_value(&[]);
    assert!(err < 0.02, "DFO landed {err} from the deeper well: {best}");
}

fn demo(t: usize) -> ParticleDemo {
    ParticleDemo {
        seed: None,
        positions: (0..=t).map(|i| vec![i as f32, 10.0 + i as f32]).collect(),
        velocities: (0..=t).map(|i| vec![-(i as f32), 0.5]).collect(),
        actions: (0..t).map(|i| vec![0.1 * i as f32, 0.9]).collect(),
        first_goal: vec![0.2, 0.3],
        second_goal: vec![0.7, 0.8],
        multimodal: false,
    }
}

#[test]
fn windows_look_back_and_tile_the_first_observation() {
    let w = Windows::from_demos(&[demo(3).to_demo(), demo(2).to_demo()], 2);
    assert_eq!((w.len(), w.seq_len, w.obs_dim, w.action_dim), (5, 2, 8, 2));
    let window = |i: usize| &w.observations[i * 16..(i + 1) * 16];
    let obs = |t: usize| {
        let t = t as f32;
        vec![t, 10.0 + t, -t, 0.5, 0.2, 0.3, 0.7, 0.8]
    };
    // t = 0: [obs_0, obs_0]; t = 2: [obs_1, obs_2] with a_2.
    assert_eq!(window(0), [obs(0), obs(0)].concat());
    assert_eq!(window(2), [obs(1), obs(2)].concat());
    assert_eq!(&w.actions[4..6], &[0.2f32, 0.9]);
    // The second demo starts over.
    assert_eq!(window(3), [obs(0), obs(0)].concat());
    let w3 = Windows::from_demos(&[demo(3).to_demo()], 3);
    assert_eq!(&w3.observations[24..48], [obs(0), obs(0), obs(1)].concat());
}

#[test]
fn normalizer_round_trips_and_widens_bounds() {
    let obs = [0.0f32, 5.0, 2.0, 5.0, 4.0, 5.0];
    let actions = [0.2f32, 0.5, 0.6, 0.7, 0.4, 0.9];
    let norm = Normalizer::fit(&obs, 2, &actions, 2, 0.05, (&[0.0, 0.0], &[1.0, 1.0])).unwrap();
    assert_eq!(norm.obs_mean, vec![2.0, 5.0]);
    assert!((norm.obs_std[0] - (8.0f32 / 3.0).sqrt()).abs() < 1e-6);
    assert!(
        norm.obs_std[1] > 0.0,
        "constant features get a non-zero scale"
    );
    let mut a = actions;
    norm.normalize_actions(&mut a);
    assert!(
        (a[0] + 1.0).abs() < 1e-6 && (a[2] - 1.0).abs() < 1e-6,
        "{a:?}"
    );
    norm.denormalize_actions(&mut a);
    for (x, y) in a.iter().zip(&actions) {
        assert!((x - y).abs() < 1e-6);
    }
    // Range 0.4 widened by 0.02 each side: [0.18, 0.62] -> [-1.1, 1.1].
    assert!((norm.sample_low[0] + 1.1).abs() < 1e-5 && (norm.sample_high[0] - 1.1).abs() < 1e-5);
    // Dimension 1 spans [0.5, 0.9]: widened to 0.92, clipped by nothing; 0.48 likewise.
    assert!((norm.sample_high[1] - 1.1).abs() < 1e-5);
    let tight = Normalizer::fit(
        &obs,
        2,
        &[0.0, 0.0, 1.0, 1.0],
        2,
        0.05,
        (&[0.0, 0.0], &[1.0, 1.0]),
    )
    .unwrap();
    assert_eq!(
        (tight.sample_low[0], tight.sample_high[0]),
        (-1.0, 1.0),
        "clipped to the task"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("norm_params.json");
    std::fs::write(&path, norm.to_json().unwrap()).unwrap();
    assert_eq!(Normalizer::load(&path).unwrap(), norm);
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for key in ["obs_mean", "obs_std", "action_min", "action_range"] {
        assert!(keys.get(key).is_some(), "seed key {key}");
    }
}

#[test]
fn mse_net_shapes_and_names() {
    let vs = nn::VarStore::new(Device::Cpu);
    let spec = PolicySpec::Mse {
        net: NetConfig {
            obs_seq_len: 2,
            obs_dim: 8,
            action_dim: 2,
            hidden: 256,
            blocks: 1,
            dropout: 0.1,
            layer_norm: false,
        },
    };
    let PolicyNet::Mse(net) = PolicyNet::build(&vs, &spec) else {
        panic!("built the wrong kind")
    };
    let out = net.forward(&Tensor::zeros([5, 2, 8], (Kind::Float, Device::Cpu)), false);
    assert_eq!(out.size(), vec![5, 2]);
    // 16*256+256 + 2*(256*256+256) + 256*2+2
    assert_eq!(parameter_count(&vs), 4352 + 131_584 + 514);
    assert!(vs.variables().contains_key("action_projection.weight"));
}

#[test]
fn row_chunks_give_the_same_energies_as_one_pass() {
    let _torch = common::torch_lock();
    tch::manual_seed(4);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = SequenceEbm::new(
        &vs.root(),
        NetConfig {
            hidden: 16,
            ..Default::default()
        },
    );
    let obs = Tensor::randn([6, 2, 8], (Kind::Float, Device::Cpu));
    let actions = Tensor::rand([6, 50, 2], (Kind::Float, Device::Cpu));
    let ctx = model.observation_context(&obs);
    let whole = model.energies_with_context(&ctx, &actions, false);
    for max_rows in [1, 7, 49, 50, 120, 299, 300, 10_000] {
        let pieces = ebmlab::policy::in_row_chunks(&ctx, &actions, max_rows, |c, a| {
            model.energies_with_context(c, a, false)
        });
        assert_eq!(pieces.size(), vec![6, 50]);
        let diff = (&pieces - &whole).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max_rows {max_rows}: {diff}");
    }
}
