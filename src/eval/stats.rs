//! Success statistics.

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval of `successes` out of `n` at normal quantile `z`.
pub fn wilson_interval(successes: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((center - half).max(0.0), (center + half).min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_published_values() {
        // Textbook values (e.g. Newcombe 1998, Table I): 81/263 -> [0.2553, 0.3662].
        let (lo, hi) = wilson_interval(81, 263, Z95);
        assert!(
            (lo - 0.2553).abs() < 5e-4 && (hi - 0.3662).abs() < 5e-4,
            "{lo} {hi}"
        );
        // 15/148 -> [0.0624, 0.1605].
        let (lo, hi) = wilson_interval(15, 148, Z95);
        assert!(
            (lo - 0.0624).abs() < 5e-4 && (hi - 0.1605).abs() < 5e-4,
            "{lo} {hi}"
        );
        // 0/10 -> [0, 0.2775]; 10/10 -> [0.7225, 1].
        let (lo, hi) = wilson_interval(0, 10, Z95);
        assert!(lo == 0.0 && (hi - 0.2775).abs() < 5e-4, "{hi}");
        let (lo, hi) = wilson_interval(10, 10, Z95);
        assert!(
            (lo - 0.7225).abs() < 5e-4 && (hi - 1.0).abs() < 1e-12,
            "{lo}"
        );
        assert_eq!(wilson_interval(0, 0, Z95), (0.0, 1.0));
    }
}
