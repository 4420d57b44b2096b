//! Evaluation: batched rollouts of a policy, success rates with intervals, episode records.

mod cancel;
mod rollout;
mod stats;
mod summary;

pub use cancel::{is_cancelled, Cancellable, Cancelled};
pub use rollout::{rollout, rollout_pack, Actor, EpisodeRecord, PackActor};
pub use stats::{wilson_interval, Z95};
pub use summary::{plot_episodes, write_episodes_csv, EvalSummary};
