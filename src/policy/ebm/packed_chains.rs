//! The Langevin chains of a pack's counter-examples: every member's chains as one batched
//! chain, each member with its own schedule. On a GPU the chain is replayed as a CUDA
//! graph (one launch instead of ~20 per step), but only after the first chains gave what
//! the eager chain gives: until then, and wherever capture is unavailable or fails, the
//! chain runs eagerly and the result is the eager one.

use anyhow::{ensure, Result};
use tch::Tensor;
use tracing::{info, warn};

use super::langevin::{chain_with_clip, Bounds, LangevinConfig, StepCoefficients};
use super::PackedEbm;
use crate::policy::cuda_graph::{self, CapturedFn};
use crate::policy::{NetConfig, Precision};

/// Chains that must agree with their eager run before the graph is trusted: the capture's
/// own inputs, and one set it has not seen (a replay that ignored its new inputs would
/// still match the first).
const CHECKED_CHAINS: u32 = 2;

/// Largest difference between a replayed and an eager chain, as a share of the bounds'
/// widest span, that still counts as the same result (the same kernels run, so it is
/// expected to be zero; wrong inputs move samples by a good part of the span).
const AGREEMENT: f64 = 1e-3;

/// The pack's Langevin sampler: the members' step tables, uploaded once, and the graph.
pub struct PackedChains {
    tables: ChainTables,
    graph: GraphState,
    capture: Capture,
}

/// A captured chain, replayed on new inputs.
trait Replay {
    fn replay(&self, inputs: &[Tensor]) -> Result<Tensor>;
}

impl Replay for CapturedFn {
    fn replay(&self, inputs: &[Tensor]) -> Result<Tensor> {
        self.run(inputs)
    }
}

/// Captures the eager chain on `inputs`: the replay, and the warm-up's (eager) output.
type Capture =
    Box<dyn Fn(&[Tensor], &dyn Fn(&[Tensor]) -> Tensor) -> Result<(Box<dyn Replay>, Tensor)>>;

fn capture_cuda_graph(
    inputs: &[Tensor],
    chain: &dyn Fn(&[Tensor]) -> Tensor,
) -> Result<(Box<dyn Replay>, Tensor)> {
    let (captured, warm_up) = CapturedFn::capture(inputs, chain)?;
    Ok((Box::new(captured), warm_up))
}

/// What every chain of the pack uses, on the device.
struct ChainTables {
    steps: usize,
    bounds: Bounds,
    /// Each member's largest move per step `[K, 1, 1, A]`.
    clip: Tensor,
    coefficients: StepCoefficients,
    /// The widest span of any member's bounds (for comparing chains).
    span: f64,
}

enum GraphState {
    /// Eager: on the CPU, when asked so, or after a capture failed or disagreed.
    Off,
    /// To capture at the next chain.
    Wanted,
    /// Captured; each chain still runs eagerly too until `left` more have agreed.
    Checking {
        captured: Box<dyn Replay>,
        left: u32,
    },
    Trusted(Box<dyn Replay>),
}

impl PackedChains {
    /// Chains for members with schedules `cfgs` within `bounds` `[K, 1, 1, A]`; replayed
    /// as a CUDA graph when `cuda_graphs` and the bounds are on a CUDA device (and this
    /// build can capture).
    pub fn new(cfgs: &[LangevinConfig], bounds: &Bounds, cuda_graphs: bool) -> Self {
        let device = bounds.low.device();
        let per_member = [cfgs.len() as i64, 1, 1, 1];
        let clip: Vec<f32> = cfgs.iter().map(|c| (0.5 * c.delta_clip) as f32).collect();
        let clip = Tensor::from_slice(&clip).to_device(device).view(per_member);
        let width = &bounds.high - &bounds.low;
        let span = width.max().double_value(&[]);
        let mut chains = Self {
            tables: ChainTables {
                steps: cfgs[0].steps,
                bounds: Bounds {
                    low: bounds.low.shallow_clone(),
                    high: bounds.high.shallow_clone(),
                },
                clip: width * clip,
                coefficients: StepCoefficients::new(cfgs, device, &per_member),
                span,
            },
            graph: GraphState::Off,
            capture: Box::new(capture_cuda_graph),
        };
        chains.allow_cuda_graphs(cuda_graphs);
        chains
    }

    /// Whether the chains may be replayed as a CUDA graph (on a CUDA device, in a build and
    /// process that can capture): a graph captured before is dropped either way.
    pub fn allow_cuda_graphs(&mut self, on: bool) {
        let possible = self.tables.bounds.low.device().is_cuda() && cuda_graph::available();
        self.graph = match on && possible {
            true => GraphState::Wanted,
            false => GraphState::Off,
        };
    }

    /// Whether chains are now replayed from a CUDA graph.
    pub fn replaying(&self) -> bool {
        matches!(self.graph, GraphState::Trusted(_))
    }

    /// The chains from `init` `[K, B, N, A]` with `noise` `[K, steps, B, N, A]` on the
    /// energies of `sampler` (frozen weights) for observation windows `obs` `[K, B, S, D]`.
    /// Member k's chain is the same arithmetic as its solo `langevin_with_noise`.
    pub fn run(
        &mut self,
        sampler: &PackedEbm,
        obs: &Tensor,
        init: Tensor,
        noise: &Tensor,
    ) -> Tensor {
        if matches!(self.graph, GraphState::Off) {
            return self.tables.chain_on(sampler, obs, init, noise);
        }
        let weights = sampler.named_parameters();
        let names: Vec<String> = weights.iter().map(|(n, _)| n.clone()).collect();
        let inputs: Vec<Tensor> = [init, noise.shallow_clone(), obs.shallow_clone()]
            .into_iter()
            .chain(weights.into_iter().map(|(_, t)| t))
            .collect();
        let tables = &self.tables;
        let (net, precision) = (sampler.config(), sampler.precision());
        let eager = |inputs: &[Tensor]| tables.chain(net, precision, &names, inputs);
        let (state, result) = match std::mem::replace(&mut self.graph, GraphState::Off) {
            GraphState::Off => (GraphState::Off, eager(&inputs)),
            GraphState::Wanted => match (self.capture)(&inputs, &eager) {
                Ok((captured, warm_up)) => {
                    let state = tables.check(captured, &inputs, &warm_up, CHECKED_CHAINS, &eager);
                    (state, warm_up)
                }
                Err(e) => {
                    warn!(
                        "Langevin chains stay eager: capturing them as a CUDA graph failed: {e:#}"
                    );
                    (GraphState::Off, eager(&inputs))
                }
            },
            GraphState::Checking { captured, left } => {
                let reference = eager(&inputs);
                let state = tables.check(captured, &inputs, &reference, left, &eager);
                (state, reference)
            }
            GraphState::Trusted(captured) => match captured.replay(&inputs) {
                Ok(result) => (GraphState::Trusted(captured), result),
                Err(e) => {
                    warn!("Langevin chains go back to eager: {e:#}");
                    (GraphState::Off, eager(&inputs))
                }
            },
        };
        self.graph = state;
        result
    }
}

impl ChainTables {
    /// The eager chain; `inputs` = init, noise, observations, then the sampler's weights (named
    /// `names`), so that a capture sees every tensor it reads.
    fn chain(
        &self,
        net: &NetConfig,
        precision: Precision,
        names: &[String],
        inputs: &[Tensor],
    ) -> Tensor {
        let stacked: Vec<(String, Tensor)> = names
            .iter()
            .cloned()
            .zip(inputs[3..].iter().map(Tensor::shallow_clone))
            .collect();
        let model = PackedEbm::from_stacked(net, precision, &stacked)
            .expect("a sampler's own weights form its pack");
        self.chain_on(&model, &inputs[2], inputs[0].shallow_clone(), &inputs[1])
    }

    /// The chain on `model`'s energies from `init` with `noise`, for observation windows
    /// `obs`.
    fn chain_on(&self, model: &PackedEbm, obs: &Tensor, init: Tensor, noise: &Tensor) -> Tensor {
        chain_with_clip(
            init,
            &self.bounds,
            self.steps,
            self.clip.shallow_clone(),
            &self.coefficients,
            |i, _| noise.select(1, i as i64),
            model.input_gradient().chain(obs.shallow_clone()),
        )
    }

    /// The next state after comparing a replay of `captured` on `inputs` with the eager
    /// `reference`: trusted after `left` agreements, eager for good after a disagreement.
    /// A disagreement's warning says how far a second `eager` chain on the same inputs is
    /// from the first: whether the eager arithmetic itself varies that much (a reduction's
    /// order in bf16) or the graph computes something else.
    fn check(
        &self,
        captured: Box<dyn Replay>,
        inputs: &[Tensor],
        reference: &Tensor,
        left: u32,
        eager: &dyn Fn(&[Tensor]) -> Tensor,
    ) -> GraphState {
        match self.agree(captured.as_ref(), inputs, reference) {
            Ok(difference) if left <= 1 => {
                info!(
                    "Langevin chains replayed as a CUDA graph from now on (largest difference \
                     from eager {difference:e})"
                );
                GraphState::Trusted(captured)
            }
            Ok(_) => GraphState::Checking {
                captured,
                left: left - 1,
            },
            Err(e) => {
                let spread = (eager(inputs) - reference).abs().max().double_value(&[]);
                warn!(
                    "Langevin chains stay eager: {e:#} (two eager chains on the same inputs \
                     differ by {spread:e})"
                );
                GraphState::Off
            }
        }
    }

    /// The largest difference between the replay and the eager chain, if within bounds.
    fn agree(&self, captured: &dyn Replay, inputs: &[Tensor], reference: &Tensor) -> Result<f64> {
        let replayed = captured.replay(inputs)?;
        let difference = (replayed - reference).abs().max().double_value(&[]);
        ensure!(
            difference <= AGREEMENT * self.span,
            "the CUDA graph's chain differs from the eager one by {difference:e} (bounds span \
             {:e})",
            self.span
        );
        Ok(difference)
    }
}

#[cfg(test)]
mod tests {
    //! The guard around the graph, with stand-ins for the capture (a CPU has no CUDA
    //! graphs): whatever a capture does, the chains' results are the eager ones until
    //! replays have agreed with eager chains on two sets of inputs.

    use std::cell::Cell;
    use std::rc::Rc;

    use tch::{nn, Device, Kind};

    use super::*;
    use crate::policy::ebm::SequenceEbm;

    const MEMBERS: i64 = 2;

    fn configs() -> Vec<LangevinConfig> {
        (0..MEMBERS)
            .map(|k| LangevinConfig {
                steps: 5,
                step_size_init: 0.1 + 0.05 * k as f64,
                ..Default::default()
            })
            .collect()
    }

    fn bounds() -> Bounds {
        let shape = [MEMBERS, 1, 1, 2];
        Bounds {
            low: Tensor::full(shape, -1.0, (Kind::Float, Device::Cpu)),
            high: Tensor::full(shape, 1.0, (Kind::Float, Device::Cpu)),
        }
    }

    fn sampler() -> PackedEbm {
        let net = NetConfig {
            obs_seq_len: 1,
            obs_dim: 3,
            action_dim: 2,
            hidden: 16,
            blocks: 1,
            dropout: 0.0,
            layer_norm: false,
        };
        let members: Vec<Vec<(String, Tensor)>> = (0..MEMBERS)
            .map(|k| {
                tch::manual_seed(k);
                let vs = nn::VarStore::new(Device::Cpu);
                let _model = SequenceEbm::new(&vs.root(), net.clone());
                vs.variables().into_iter().collect()
            })
            .collect();
        PackedEbm::stack(&net, Precision::Fp32, &members)
            .expect("members of one shape")
            .frozen()
    }

    /// Chain inputs of the `i`th training step: observation windows, starts, noise.
    fn step_inputs(i: i64) -> (Tensor, Tensor, Tensor) {
        tch::manual_seed(100 + i);
        let options = (Kind::Float, Device::Cpu);
        (
            Tensor::randn([MEMBERS, 4, 1, 3], options),
            Tensor::rand([MEMBERS, 4, 3, 2], options) * 2.0 - 1.0,
            Tensor::randn([MEMBERS, 5, 4, 3, 2], options),
        )
    }

    /// Chains whose graph is `capture`'s (wanted, as on a GPU).
    fn chains_capturing(capture: Capture) -> PackedChains {
        let mut chains = PackedChains::new(&configs(), &bounds(), false);
        chains.graph = GraphState::Wanted;
        chains.capture = capture;
        chains
    }

    /// Runs `chains` and eager chains on three steps' inputs: whether the graph was
    /// replaying after each step, and asserts every result is the eager one.
    fn replaying_after_each_step(chains: &mut PackedChains) -> Vec<bool> {
        let model = sampler();
        let mut eager = PackedChains::new(&configs(), &bounds(), false);
        (0..3)
            .map(|i| {
                let (obs, init, noise) = step_inputs(i);
                let expected = eager.run(&model, &obs, init.copy(), &noise);
                let got = chains.run(&model, &obs, init, &noise);
                assert!(
                    got.equal(&expected),
                    "step {i}: not the eager chain's result"
                );
                chains.replaying()
            })
            .collect()
    }

    /// A replay that runs the chain again on its inputs, as a good graph does.
    struct Faithful {
        tables: ChainTables,
        net: NetConfig,
        names: Vec<String>,
    }

    impl Replay for Faithful {
        fn replay(&self, inputs: &[Tensor]) -> Result<Tensor> {
            Ok(self
                .tables
                .chain(&self.net, Precision::Fp32, &self.names, inputs))
        }
    }

    /// A replay that gives the captured inputs' result whatever it is given (a graph
    /// whose inputs were not copied in).
    struct Stale(Tensor);

    impl Replay for Stale {
        fn replay(&self, _inputs: &[Tensor]) -> Result<Tensor> {
            Ok(self.0.copy())
        }
    }

    #[test]
    fn a_faithful_graph_is_trusted_after_two_agreeing_chains_and_gives_the_eager_results() {
        let captures = Rc::new(Cell::new(0));
        let counted = captures.clone();
        let mut chains = chains_capturing(Box::new(move |inputs, chain| {
            counted.set(counted.get() + 1);
            let model = sampler();
            let replay = Faithful {
                tables: PackedChains::new(&configs(), &bounds(), false).tables,
                net: model.config().clone(),
                names: model
                    .named_parameters()
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect(),
            };
            Ok((Box::new(replay) as Box<dyn Replay>, chain(inputs)))
        }));
        assert_eq!(replaying_after_each_step(&mut chains), [false, true, true]);
        assert_eq!(captures.get(), 1, "captured once");
    }

    #[test]
    fn a_graph_that_ignores_new_inputs_is_caught_at_the_second_chain_and_dropped() {
        let mut chains = chains_capturing(Box::new(|inputs, chain| {
            let out = chain(inputs);
            Ok((Box::new(Stale(out.copy())) as Box<dyn Replay>, out))
        }));
        assert_eq!(
            replaying_after_each_step(&mut chains),
            [false, false, false]
        );
        assert!(matches!(chains.graph, GraphState::Off), "eager for good");
    }

    #[test]
    fn a_failed_capture_leaves_the_chains_eager() {
        let mut chains = chains_capturing(Box::new(|_, _| anyhow::bail!("no graph today")));
        assert_eq!(
            replaying_after_each_step(&mut chains),
            [false, false, false]
        );
        assert!(matches!(chains.graph, GraphState::Off));
    }

    #[test]
    fn chains_on_the_cpu_never_want_a_graph() {
        let chains = PackedChains::new(&configs(), &bounds(), true);
        assert!(matches!(chains.graph, GraphState::Off));
    }
}
