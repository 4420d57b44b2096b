//! Counter-examples: which are refined, and IBC's iterative DFO resampling by the inverse
//! CDF of `softmax(-E/T)` over pre-drawn uniforms.

mod common;

use ebmlab::policy::ebm::{
    counter_examples, dfo_refine, Bounds, CounterExampleDraws, NegativeKind, NegativesConfig,
    SequenceEbm,
};
use ebmlab::policy::NetConfig;
use tch::{nn, Device, Kind, Tensor};

fn bounds() -> Bounds {
    Bounds::new(&[-1.0], &[1.0], Device::Cpu)
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn a_dfo_round_picks_the_rows_whose_cumulative_probability_covers_each_uniform() {
    let _torch = common::torch_lock();
    // Two problems of four rows; rows hold their own index as the action.
    let samples = Tensor::from_slice(&[0f32, 1., 2., 3., 0., 1., 2., 3.]).view([2, 4, 1]);
    // Problem 0: probabilities 0.1, 0.2, 0.3, 0.4 (cumulative 0.1, 0.3, 0.6, 1.0);
    // problem 1: all mass on row 2.
    let probs = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.4, 1e-30, 1e-30, 1.0, 1e-30]);
    let logits = probs.log().view([2, 4]);
    let uniforms =
        Tensor::from_slice(&[0.35f32, 0.65, 0.09, 0.29, 0.01, 0.5, 0.7, 0.999]).view([1, 2, 4]);
    let picked = dfo_refine(
        samples / 3.0, // inside the bounds: rows 0, 1/3, 2/3, 1
        &bounds(),
        1,
        0.33,
        |i| (uniforms.get(i as i64), None),
        |_| logits.shallow_clone(),
    );
    let rows: Vec<i64> = values(&picked)
        .iter()
        .map(|v| (v * 3.0).round() as i64)
        .collect();
    assert_eq!(rows, [2, 3, 0, 1, 2, 2, 2, 2]);
}

#[test]
fn dfo_rounds_gather_counter_examples_at_the_low_energy_and_stay_in_bounds() {
    let _torch = common::torch_lock();
    tch::manual_seed(3);
    let target = 0.4;
    let start = Tensor::rand([8, 256, 1], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let spread_before = (&start - target).abs().mean(Kind::Float).double_value(&[]);
    let uniforms = Tensor::rand([3, 8, 256], (Kind::Float, Device::Cpu));
    let noise = Tensor::randn([2, 8, 256, 1], (Kind::Float, Device::Cpu)) * 10.0;
    let refined = dfo_refine(
        start,
        &bounds(),
        3,
        0.33,
        |i| {
            (
                uniforms.get(i as i64),
                (i > 0).then(|| noise.get(i as i64 - 1)),
            )
        },
        // E = 200 (a - target)^2: the model's distribution is a narrow bump at the target.
        |a| (a - target).square().squeeze_dim(-1) * -200.0,
    );
    let spread_after = (&refined - target)
        .abs()
        .mean(Kind::Float)
        .double_value(&[]);
    // Uniform on [-1, 1]: mean |a - 0.4| = 0.58; the bump's own spread is about 0.04.
    assert!(spread_before > 0.5, "{spread_before}");
    assert!(spread_after < 0.1, "{spread_after}");
    // The large noise is clipped back into the bounds.
    assert!(refined.abs().max().double_value(&[]) <= 1.0);
}

#[test]
fn only_the_refined_share_of_counter_examples_leaves_its_uniform_draw() {
    let _torch = common::torch_lock();
    let cfg = NetConfig {
        obs_dim: 3,
        obs_seq_len: 2,
        action_dim: 2,
        hidden: 16,
        blocks: 1,
        layer_norm: false,
        dropout: 0.0,
    };
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = SequenceEbm::new(&vs.root(), cfg);
    let bounds = Bounds::new(&[-1.0, -1.0], &[1.0, 1.0], Device::Cpu);
    let obs = Tensor::randn([5, 2, 3], (Kind::Float, Device::Cpu));
    let context = model.observation_context(&obs);
    for (kind, fraction, refined) in [
        (NegativeKind::Uniform, 1.0, 0),
        (NegativeKind::Dfo, 0.5, 4),
        (NegativeKind::Dfo, 0.3, 2), // 2.4 rounds down: the rest stay uniform
        (NegativeKind::Langevin, 0.5, 4),
        (NegativeKind::Dfo, 0.0, 0),
    ] {
        let negatives = NegativesConfig {
            kind,
            count: 8,
            refined_fraction: fraction,
            dfo_iters: 1,
            dfo_noise_scale: 0.0,
            ..Default::default()
        };
        assert_eq!(negatives.refined_count(), refined);
        tch::manual_seed(7);
        let drawn = CounterExampleDraws::draw(5, 2, &bounds, &negatives);
        tch::manual_seed(7);
        let made = counter_examples(&model, &obs, &context, &bounds, &negatives, 1.0);
        assert_eq!(made.size(), [5, 8, 2]);
        let uniform = 8 - refined;
        let same = made
            .narrow(1, 0, uniform)
            .equal(&drawn.init.narrow(1, 0, uniform));
        assert!(same, "{kind:?} {fraction}: the uniform share was changed");
        if refined == 0 {
            continue;
        }
        let (start, done) = (
            drawn.init.narrow(1, uniform, refined),
            made.narrow(1, uniform, refined),
        );
        assert!(
            !done.equal(&start),
            "{kind:?} {fraction}: nothing was refined"
        );
        if kind == NegativeKind::Dfo {
            // One noiseless round resamples from all the draws (as IBC seeds it): every
            // refined row is one of its problem's uniform draws.
            let distance = (done.unsqueeze(2) - drawn.init.unsqueeze(1))
                .abs()
                .sum_dim_intlist(-1, false, Kind::Float)
                .amin(-1, false);
            assert_eq!(distance.max().double_value(&[]), 0.0);
        }
    }
}
