//! What a trial runner trains: one trial on a solo [`Trainer`] (any policy), or a pack of
//! one or more energy models on a [`PackedTrainer`]. Members are addressed by position;
//! a member that ends is removed and the others move up.

use std::path::Path;

use anyhow::Result;

use super::{PackedTrainer, QueuedStep, Trainer};
use crate::checkpoint::{SavedCheckpoint, VerifiedCheckpoint};
use crate::policy::{LoadedPolicy, PackedPolicies, PolicyView};

pub enum Learner {
    /// `None` once its one member was removed.
    Solo(Option<Box<Trainer>>),
    Pack(Box<PackedTrainer>),
}

impl Learner {
    pub fn len(&self) -> usize {
        match self {
            Learner::Solo(t) => usize::from(t.is_some()),
            Learner::Pack(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterations done by every member.
    pub fn step(&self) -> u64 {
        match self {
            Learner::Solo(t) => t.as_ref().map_or(0, |t| t.step()),
            Learner::Pack(p) => p.step(),
        }
    }

    /// One iteration of every member, their metrics still on their way to the host.
    pub fn queue_step(&mut self) -> QueuedStep {
        match self {
            Learner::Solo(Some(t)) => t.queue_step(),
            Learner::Solo(None) => QueuedStep::empty(self.step() + 1),
            Learner::Pack(p) => p.queue_step(),
        }
    }

    pub fn save_checkpoint(&self, member: usize, dir: &Path) -> Result<SavedCheckpoint> {
        match self {
            Learner::Solo(t) => solo(t).save_checkpoint(dir),
            Learner::Pack(p) => p.save_checkpoint(member, dir),
        }
    }

    /// Restores every member from its checkpoint (in member order).
    pub fn restore(&mut self, checkpoints: &[VerifiedCheckpoint]) -> Result<()> {
        match self {
            Learner::Solo(Some(t)) => t.restore(&checkpoints[0]),
            Learner::Solo(None) => Ok(()),
            Learner::Pack(p) => p.restore(checkpoints),
        }
    }

    pub fn remove(&mut self, member: usize) {
        match self {
            Learner::Solo(t) => *t = None,
            Learner::Pack(p) => p.remove(member),
        }
    }

    /// Runs `f` with member `member`'s current weights as a policy that acts.
    pub fn with_policy<R>(&self, member: usize, f: impl FnOnce(&PolicyView) -> R) -> Result<R> {
        match self {
            Learner::Solo(t) => Ok(f(&solo(t).policy_view())),
            Learner::Pack(p) => {
                let m = p.member(member);
                let device = m.data.actions.device();
                let policy = LoadedPolicy::from_state(
                    &m.spec,
                    &m.normalizer,
                    &p.member_state(member),
                    p.step(),
                    device,
                )?;
                Ok(f(&policy.view()))
            }
        }
    }

    /// The members at `positions` as policies acting together (an error where they cannot:
    /// [`PackedPolicies::new`]); `None` for a solo learner.
    pub fn packed_policies(&self, positions: &[usize]) -> Option<Result<PackedPolicies>> {
        let Learner::Pack(p) = self else {
            return None;
        };
        let index: Vec<i64> = positions.iter().map(|&k| k as i64).collect();
        let members: Vec<_> = positions
            .iter()
            .map(|&k| (&p.member(k).spec, &p.member(k).normalizer))
            .collect();
        Some(PackedPolicies::new(&p.model().members_at(&index), &members))
    }
}

fn solo(trainer: &Option<Box<Trainer>>) -> &Trainer {
    trainer.as_ref().expect("a solo learner with its trial")
}
