//! Experiment specs: layered TOML files resolved into one [`Spec`] per trial.

mod load;
mod model;
mod pack;
mod sweep;
mod validate;

pub use load::{
    check_key, known_keys, load_spec, load_spec_with_env, override_eval, LoadedSpec, ENV_PREFIX,
};
pub use model::{
    DataSpec, EvalSpec, MpsMode, PolicySection, ResourcesSpec, SlurmSpec, Spec, TrainSpec,
};
pub use pack::PackSize;
pub use sweep::{describe_settings, expand_trials, TrialPlan};
pub use validate::{parse_device, validate, validate_eval, DeviceChoice, POLICY_KINDS};

use sha2::{Digest, Sha256};

impl Spec {
    /// The fully resolved spec as TOML (written beside a trial's outputs).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a spec serializes to TOML")
    }

    /// A stable id of what a trial computes: a hash of its resolved config (the experiment
    /// name, the sweep table and the output-only settings excluded).
    pub fn trial_id(&self) -> String {
        let mut identity = self.clone();
        identity.name = String::new();
        identity.sweep.clear();
        identity.trials.clear();
        identity.eval.plots = false;
        // Where a trial runs (device, slots, threads, pack) is the scheduler's choice, not
        // part of what it computes. (Keys added to the spec since ids were first made are
        // left out of it while at their defaults, so those ids stay valid.)
        identity.resources = Default::default();
        identity.slurm = Default::default();
        let canonical = serde_json::to_string(&identity).expect("a spec serializes");
        let digest = Sha256::digest(canonical.as_bytes());
        digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
    }
}
