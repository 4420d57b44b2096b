//! Packs: trials of one shape, at the same step, that train together in one worker as one
//! batched model. How many go together is `resources.pack` (a number, or `auto`: as many as
//! the GPU's memory holds, and one on the CPU, where a pack does not pay: measured).

use crate::spec::{PackSize, Spec};

/// The most trials a pack takes, whatever the memory.
const MAX_PACK: usize = 64;

/// How many trials of `spec`'s shape go in one pack on a GPU with `gpu_memory` bytes (or
/// on the CPU).
pub fn pack_size(setting: PackSize, spec: &Spec, gpu_memory: Option<u64>) -> usize {
    match (setting, gpu_memory) {
        (PackSize::Count(n), _) => n,
        (PackSize::Auto, None) => 1,
        (PackSize::Auto, Some(memory)) => {
            // Half the card for the pack, the rest for libtorch's caches and other slots.
            let fit = memory / 2 / training_bytes(spec).max(1);
            (fit as usize).clamp(1, MAX_PACK)
        }
    }
}

/// A generous estimate of one member's memory in a training step (fp32): the activations
/// kept for the loss and its second derivative, one Langevin step's, the noise of all
/// steps, and weights with their gradients and Adam moments.
pub fn training_bytes(spec: &Spec) -> u64 {
    let t = &spec.train;
    let (b, n, h) = (
        t.batch_size as u64,
        t.negatives.count as u64,
        spec.policy.hidden as u64,
    );
    let blocks = spec.policy.blocks as u64;
    let action = spec.policy_spec().map_or(2, |p| p.shapes().2 as u64);
    let steps = t.negatives.langevin.steps as u64;
    let loss = 2 * (4 + 4 * blocks) * b * (n + 1) * h;
    let langevin = 3 * b * n * h + steps * b * n * action;
    let weights = 4 * (h * h * (2 * blocks + 1));
    4 * (loss + langevin + weights)
}

/// A trial waiting to train: its id, its pack key (`None`: it trains alone) and the step
/// of its latest checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub trial: String,
    pub key: Option<String>,
    pub step: u64,
}

/// Packs of at most `size` trials with the same key and step, in the order their first
/// trials come.
pub fn form_packs(candidates: &[Candidate], size: usize) -> Vec<Vec<String>> {
    // Each pack with the key and step its members share (`None`: a trial alone).
    type Forming = (Option<(String, u64)>, Vec<String>);
    let mut packs: Vec<Forming> = Vec::new();
    for c in candidates {
        let key = c.key.clone().map(|k| (k, c.step));
        let open = packs
            .iter_mut()
            .rev()
            .find(|(k, members)| key.is_some() && *k == key && members.len() < size.max(1));
        match open {
            Some((_, members)) => members.push(c.trial.clone()),
            None => packs.push((key, vec![c.trial.clone()])),
        }
    }
    packs.into_iter().map(|(_, members)| members).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(trial: &str, key: Option<&str>, step: u64) -> Candidate {
        Candidate {
            trial: trial.into(),
            key: key.map(str::to_owned),
            step,
        }
    }

    #[test]
    fn packs_group_one_shape_at_one_step_in_order() {
        let c = [
            candidate("a", Some("ebm"), 0),
            candidate("m", None, 0),
            candidate("b", Some("ebm"), 0),
            candidate("c", Some("ebm"), 500),
            candidate("d", Some("ebm"), 0),
            candidate("e", Some("wide"), 0),
            candidate("f", Some("ebm"), 0),
        ];
        assert_eq!(
            form_packs(&c, 2),
            [
                vec!["a", "b"],
                vec!["m"],
                vec!["c"],
                vec!["d", "f"],
                vec!["e"]
            ]
        );
        assert_eq!(form_packs(&c, 1).len(), c.len());
        assert_eq!(form_packs(&c, 64)[0], ["a", "b", "d", "f"]);
    }

    #[test]
    fn auto_packs_what_half_the_gpu_holds_and_one_on_the_cpu() {
        let spec = Spec::default(); // IBC's config: B 512, 8 negatives x 100 steps, 256 wide
        let bytes = training_bytes(&spec);
        assert!((50_000_000..200_000_000).contains(&bytes), "{bytes}");
        assert_eq!(pack_size(PackSize::Auto, &spec, None), 1);
        assert_eq!(pack_size(PackSize::Auto, &spec, Some(80 << 30)), 64);
        assert_eq!(pack_size(PackSize::Auto, &spec, Some(4 * bytes)), 2);
        assert_eq!(pack_size(PackSize::Count(5), &spec, None), 5);
        let parse = |t: &str| {
            toml::from_str::<toml::Table>(&format!("p = {t}"))
                .map(|mut t| t.remove("p").unwrap().try_into::<PackSize>())
        };
        assert_eq!(parse("\"auto\"").unwrap().unwrap(), PackSize::Auto);
        assert_eq!(parse("16").unwrap().unwrap(), PackSize::Count(16));
        assert!(parse("0").unwrap().is_err());
        assert!(parse("\"many\"").unwrap().is_err());
    }
}
