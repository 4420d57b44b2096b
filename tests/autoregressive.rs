//! Autoregressive energy models (IBC appendix B.2): hand-computed energies, losses and
//! optima, the prefix each model sees, PyTorch reading the checkpoint as m separate
//! models, and the spec rules that keep the variant as IBC defines it.

mod common;

use ebmlab::policy::ebm::{AutoregressiveEbm, Bounds, DfoConfig};
use ebmlab::policy::{NetConfig, Precision};
use tch::{nn, Device, Kind, Tensor};

/// m = 3 models of width 2 over one observation value, each set by hand so that
/// `E_j = |y_j - t_j|` with `t_0 = x` and `t_j = -y_{j-1} / 2`: the projection gives
/// `h = (z, -z)` with `z = y_j - t_j`, both block layers are the identity (so the block
/// adds `relu(h)`), and the energy head sums `h + relu(h)`, which is `|z|`.
fn hand_set_model() -> (nn::VarStore, AutoregressiveEbm) {
    let cfg = NetConfig {
        obs_seq_len: 1,
        obs_dim: 1,
        action_dim: 3,
        hidden: 2,
        blocks: 1,
        dropout: 0.0,
        layer_norm: false,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = AutoregressiveEbm::new(&vs.root(), cfg);
    // Rows: the coefficients of z on (x, y_0, y_1, y_2) per model.
    let z = [
        [-1.0f32, 1.0, 0.0, 0.0],
        [0.0, 0.5, 1.0, 0.0],
        [0.0, 0.0, 0.5, 1.0],
    ];
    let projection: Vec<f32> = z
        .iter()
        .flat_map(|row| row.iter().copied().chain(row.iter().map(|c| -c)))
        .collect();
    let identity = Tensor::eye(2, (Kind::Float, Device::Cpu)).expand([3, 2, 2], false);
    let mut vars = vs.variables();
    tch::no_grad(|| {
        for (name, value) in [
            (
                "projection.weight",
                Tensor::from_slice(&projection).view([3, 2, 4]),
            ),
            ("blocks.0.fc1.weight", identity.copy()),
            ("blocks.0.fc2.weight", identity.copy()),
            (
                "energy_projection.weight",
                Tensor::ones([3, 1, 2], (Kind::Float, Device::Cpu)),
            ),
        ] {
            vars.get_mut(name).unwrap().copy_(&value);
        }
        for (name, t) in vars.iter_mut() {
            if name.ends_with("bias") {
                let _ = t.zero_();
            }
        }
    });
    (vs, model)
}

/// `|y_j - t_j|` for full action vectors `(.., 3)` and observation values.
fn hand_energy(j: usize, x: f32, y: &[f32]) -> f32 {
    let target = if j == 0 { x } else { -0.5 * y[j - 1] };
    (y[j] - target).abs()
}

#[test]
fn hand_set_models_give_their_energies_and_each_sees_only_its_prefix() {
    let _torch = common::torch_lock();
    let (_vs, model) = hand_set_model();
    tch::manual_seed(3);
    let obs = Tensor::from_slice(&[0.3f32, -0.4]).view([2, 1, 1]);
    let candidates = Tensor::rand([3, 2, 5, 3], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let energies = tch::no_grad(|| model.energies(&obs, &candidates));
    assert_eq!(energies.size(), [3, 2, 5]);
    for j in 0..3 {
        for b in 0..2 {
            let x = [0.3f32, -0.4][b];
            for n in 0..5 {
                let y = Vec::<f32>::try_from(candidates.get(j).get(b as i64).get(n)).unwrap();
                let ours = energies.double_value(&[j, b as i64, n]) as f32;
                let expected = hand_energy(j as usize, x, &y);
                assert!(
                    (ours - expected).abs() < 1e-6,
                    "E_{j}: {ours} vs {expected}"
                );
            }
        }
    }

    // With random weights, model j's energy does not move when a later dimension does,
    // and does when its own does.
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = NetConfig {
        obs_seq_len: 1,
        obs_dim: 1,
        action_dim: 3,
        hidden: 16,
        ..Default::default()
    };
    let random = AutoregressiveEbm::new(&vs.root(), cfg);
    let base = tch::no_grad(|| random.energies(&obs, &candidates));
    for changed in 0..3i64 {
        let moved = candidates.copy();
        let _ = moved.narrow(3, changed, 1).g_add_scalar_(0.5);
        let after = tch::no_grad(|| random.energies(&obs, &moved));
        for j in 0..3i64 {
            let diff = (after.get(j) - base.get(j)).abs().max().double_value(&[]);
            if changed > j {
                assert_eq!(diff, 0.0, "model {j} saw dimension {changed}");
            } else {
                assert!(diff > 1e-4, "model {j} ignored dimension {changed}");
            }
        }
    }
}

#[test]
fn per_model_infonce_is_the_hand_computed_cross_entropy_with_the_true_prefix() {
    let _torch = common::torch_lock();
    let (_vs, model) = hand_set_model();
    let obs = Tensor::from_slice(&[0.3f32, -0.4]).view([2, 1, 1]);
    let actions_rows = [[0.2f32, -0.1, 0.4], [-0.5, 0.25, 0.0]];
    let actions = Tensor::from_slice(actions_rows.as_flattened()).view([2, 3]);
    // Counter-examples of dimension j, per model and batch row.
    let negatives_rows: Vec<f32> = (0..3 * 2 * 4)
        .map(|i| ((i * 37 % 23) as f32 / 11.5) - 1.0)
        .collect();
    let negatives = Tensor::from_slice(&negatives_rows).view([3, 2, 4]);
    let temperature = 0.7;
    let (losses, _) = tch::no_grad(|| model.losses(&obs, &actions, &negatives, temperature));
    for j in 0..3usize {
        let mut expected = 0.0f64;
        for b in 0..2usize {
            let x = [0.3f32, -0.4][b];
            let truth = actions_rows[b];
            let positive = hand_energy(j, x, &truth) as f64;
            let mut logits: Vec<f64> = (0..4)
                .map(|n| {
                    let mut y = truth;
                    y[j] = negatives_rows[(j * 2 + b) * 4 + n];
                    -(hand_energy(j, x, &y) as f64) / temperature
                })
                .collect();
            logits.push(-positive / temperature);
            let top = logits.iter().cloned().fold(f64::MIN, f64::max);
            let log_sum = top + logits.iter().map(|l| (l - top).exp()).sum::<f64>().ln();
            expected += (log_sum + positive / temperature) / 2.0;
        }
        let ours = losses.double_value(&[j as i64]);
        assert!(
            (ours - expected).abs() < 1e-5,
            "model {j}: {ours} vs {expected}"
        );
    }
}

#[test]
fn autoregressive_dfo_finds_the_optimum_that_depends_on_the_chosen_prefix() {
    let _torch = common::torch_lock();
    let (_vs, model) = hand_set_model();
    tch::manual_seed(0);
    let obs = Tensor::from_slice(&[0.3f32, -0.4]).view([2, 1, 1]);
    let bounds = Bounds::new(&[-1.0; 3], &[1.0; 3], Device::Cpu);
    let cfg = DfoConfig {
        samples: 2048,
        ..Default::default()
    };
    let expected = Tensor::from_slice(&[0.3f32, -0.15, 0.075, -0.4, 0.2, -0.1]).view([2, 3]);
    // Small chunks exercise the row pieces too; bf16 energies keep 8 bits of mantissa.
    let mut chosen_by = Vec::new();
    for (precision, tolerance) in [(Precision::Fp32, 0.01), (Precision::Bf16, 0.02)] {
        tch::manual_seed(0);
        let chosen = model.infer(&obs, &bounds, &cfg, 1000, precision);
        let err = (&chosen - &expected).abs().max().double_value(&[]);
        assert!(err < tolerance, "{precision:?}: {chosen}");
        chosen_by.push(chosen);
    }
    // The same draws, steered elsewhere by bf16's rounded energies.
    assert!(!chosen_by[0].equal(&chosen_by[1]), "bf16 equals fp32");
}

#[test]
fn pytorch_reads_the_checkpoint_as_m_models_each_taking_its_prefix() {
    let _torch = common::torch_lock();
    tch::manual_seed(11);
    let (m, seq, obs_dim, hidden) = (3i64, 2i64, 4i64, 32i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = AutoregressiveEbm::new(
        &vs.root(),
        NetConfig {
            obs_seq_len: seq,
            obs_dim,
            action_dim: m,
            hidden,
            blocks: 2,
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("model.safetensors");
    vs.save(&model_path).unwrap();
    let obs = Tensor::randn([5, seq, obs_dim], (Kind::Float, Device::Cpu));
    let candidates = Tensor::rand([m, 5, 7, m], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let energies = tch::no_grad(|| model.energies(&obs, &candidates));
    let io_path = dir.path().join("io.safetensors");
    Tensor::write_safetensors(
        &[
            ("obs", &obs),
            ("candidates", &candidates),
            ("energies", &energies),
        ],
        &io_path,
    )
    .unwrap();
    // Model j is the seed's SequenceEBM with action_dim j + 1: slice j of every tensor,
    // the projection's columns for the observations and y_0..y_j.
    let classes = common::SEED_MODULE
        .split("model_path, io_path")
        .next()
        .unwrap();
    let program = format!(
        "{classes}
state = load_file({model:?})
io = load_file({io:?})
worst = 0.0
for j in range({m}):
    net = SequenceEBM(obs_dim={obs_dim}, action_dim=j + 1, obs_seq_len={seq}, hidden_dim={hidden},
                      num_residual_blocks=2, norm_type=None)
    mine = {{k: v[j] for k, v in state.items()}}
    mine['projection.weight'] = mine['projection.weight'][:, :{seq} * {obs_dim} + j + 1]
    net.load_state_dict(mine, strict=True)
    net.eval()
    with torch.no_grad():
        e = net(io['obs'], io['candidates'][j][..., :j + 1])
    worst = max(worst, float((e - io['energies'][j]).abs().max()))
print(worst)
",
        model = model_path.to_str().unwrap(),
        io = io_path.to_str().unwrap(),
    );
    let max_diff: f64 = common::run_python(&program, "").trim().parse().unwrap();
    println!("max |E_torch - E_ebmlab| over {m} models = {max_diff:e}");
    assert!(max_diff <= 1e-5, "{max_diff}");
}

#[test]
fn an_ar_ebm_spec_must_be_ibcs_variant_and_the_error_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = "name = \"ar\"\n[policy]\nkind = \"ar_ebm\"\n";
    let ok = "[train.negatives]\nkind = \"uniform\"\n[train.grad_penalty]\nenabled = false\n\
              [eval]\ninference = \"autoregressive_dfo\"\n";
    let cases = [
        (
            "[train.grad_penalty]\nenabled = false\n[eval]\ninference = \"autoregressive_dfo\"\n",
            "train.negatives.kind",
        ),
        (
            "[train.negatives]\nkind = \"uniform\"\n[eval]\ninference = \"autoregressive_dfo\"\n",
            "train.grad_penalty.enabled",
        ),
        (
            "[train.negatives]\nkind = \"uniform\"\n[train.grad_penalty]\nenabled = false\n",
            "eval.inference",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&file, format!("{base}{text}")).unwrap();
        let err = format!(
            "{:#}",
            ebmlab::spec::load_spec_with_env(&file, &[], Vec::new()).expect_err("refused")
        );
        assert!(
            err.contains(key) && err.contains(&format!("case{i}.toml")),
            "{err}"
        );
    }
    let file = dir.path().join("plain_ebm.toml");
    std::fs::write(
        &file,
        "name = \"x\"\n[eval]\ninference = \"autoregressive_dfo\"\n",
    )
    .unwrap();
    let err = format!(
        "{:#}",
        ebmlab::spec::load_spec_with_env(&file, &[], Vec::new()).expect_err("refused")
    );
    assert!(err.contains("policy.kind = \"ar_ebm\""), "{err}");
    let file = dir.path().join("ok.toml");
    std::fs::write(&file, format!("{base}{ok}")).unwrap();
    ebmlab::spec::load_spec_with_env(&file, &[], Vec::new()).unwrap();
}
