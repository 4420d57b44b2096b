//! Pictures of episodes.

mod trajectory;

pub use trajectory::{plot_particle_episode, EpisodePlot};
