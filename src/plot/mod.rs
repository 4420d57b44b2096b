//! Pictures of episodes.

mod trajectory;

pub use trajectory::{plot_episode, EpisodePlot};
