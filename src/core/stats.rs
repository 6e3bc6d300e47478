//! Exponentially decayed running statistics: the memory of every learner here fades so
//! that a model that got better (or worse) last hour is judged on last hour.

use serde::{Deserialize, Serialize};

/// Decayed error record of one predictor: mean squared error, mean absolute error, and how
/// many observations stand behind them (the count is not decayed; it is the evidence).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ErrorStats {
    pub mse: f64,
    pub mae: f64,
    pub count: u64,
}

impl ErrorStats {
    /// `decay` is the weight kept by the past (0.95 ≈ the last 20 observations).
    pub fn record(&mut self, error: f64, decay: f64) {
        // An error whose square overflows (a finite but absurd outcome) would make the
        // record infinite for good, and a saved state that no load accepts.
        if !(error * error).is_finite() {
            return;
        }
        if self.count == 0 {
            self.mse = error * error;
            self.mae = error.abs();
        } else {
            self.mse = decay * self.mse + (1.0 - decay) * error * error;
            self.mae = decay * self.mae + (1.0 - decay) * error.abs();
        }
        self.count += 1;
    }

    pub fn rmse(&self) -> f64 {
        self.mse.sqrt()
    }
}

/// Decayed mean and variance of a target, used to turn errors into scale-free scores.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct TargetStats {
    pub mean: f64,
    pub var: f64,
    pub count: u64,
}

impl TargetStats {
    pub fn record(&mut self, y: f64, decay: f64) {
        if !y.is_finite() {
            return;
        }
        if self.count == 0 {
            self.mean = y;
            self.var = 0.0;
        } else {
            let a = 1.0 - decay;
            let d = y - self.mean;
            self.mean += a * d;
            self.var = decay * (self.var + a * d * d);
        }
        self.count += 1;
    }

    /// A spread to compare errors against: the target's standard deviation, floored by a
    /// sliver of its level so a near-constant target does not make every error infinite.
    pub fn scale(&self) -> f64 {
        self.var.max(0.0).sqrt() + 0.01 * self.mean.abs() + 1e-9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stats_forget_the_past() {
        let mut e = ErrorStats::default();
        for _ in 0..200 {
            e.record(10.0, 0.95);
        }
        for _ in 0..200 {
            e.record(1.0, 0.95);
        }
        assert!((e.mae - 1.0).abs() < 1e-3, "{}", e.mae);
        assert_eq!(e.count, 400);
        e.record(f64::NAN, 0.95);
        assert_eq!(e.count, 400);
    }

    #[test]
    fn target_stats_track_mean_and_spread() {
        let mut t = TargetStats::default();
        for i in 0..2000 {
            t.record(if i % 2 == 0 { 4.0 } else { 6.0 }, 0.99);
        }
        assert!((t.mean - 5.0).abs() < 0.1);
        assert!((t.var.sqrt() - 1.0).abs() < 0.1);
    }
}

#[cfg(test)]
mod overflow_tests {
    use super::ErrorStats;

    #[test]
    fn an_error_whose_square_overflows_is_not_recorded() {
        let mut e = ErrorStats::default();
        e.record(2.0, 0.9);
        e.record(1e200, 0.9);
        assert!(e.mse.is_finite() && e.mae.is_finite());
        assert_eq!(e.count, 1);
    }
}
