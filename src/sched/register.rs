//! Recording an experiment's trials before any starts, so `status` and `resume` see every
//! one of them from the beginning.

use std::path::Path;

use anyhow::Result;

use crate::spec::TrialPlan;
use crate::store::{block_on, Database, KnownTrial, Store};

/// Records the experiment and each planned trial (as pending, unless already known).
pub fn register_trials(db: &Database, spec_path: &Path, plans: &[TrialPlan]) -> Result<()> {
    let Some(first) = plans.first() else {
        return Ok(());
    };
    block_on(async {
        let store = Store::open(db).await?;
        store
            .upsert_experiment(&first.spec.name, &spec_path.display().to_string())
            .await?;
        for plan in plans {
            store
                .add_trial(
                    &plan.spec.name,
                    &plan.id(),
                    &serde_json::to_string(&plan.overrides)?,
                    &serde_json::to_string(&plan.spec)?,
                    plan.spec.train.iterations,
                    KnownTrial::TakesConfig,
                )
                .await?;
        }
        anyhow::Ok(())
    })
}
