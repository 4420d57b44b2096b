//! Pictures of episodes, and the font every figure is drawn with.

mod trajectory;

/// Registers the bundled font (DejaVu Sans, `assets/fonts/`) as `sans-serif`, once: text
/// is rendered in Rust, so the binary needs no fontconfig or freetype.
pub fn fonts() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes)
            .unwrap_or_else(|_| panic!("the bundled font is a valid TrueType font"));
    });
}

pub use trajectory::{plot_episode, EpisodePlot};
