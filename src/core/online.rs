//! Online linear regression that works on raw features of very different scales without
//! tuning, and a Page-Hinkley drift detector.
//!
//! The model predicts `b + Σ wᵢ (xᵢ − μᵢ)` with weights in raw units, so a snapshot is
//! exactly an old-format `{weights, bias}` file (`bias = b − Σ wᵢ μᵢ`). The running means
//! μᵢ centre the features (a large constant offset otherwise fights the bias), and every
//! time μᵢ moves the bias is compensated, so re-centring never changes the function.
//! Steps are AdaGrad on normalised coordinates, in the spirit of normalised adaptive
//! gradient descent (Ross, Mineiro & Langford 2013): the gradient of feature i is taken
//! on `(xᵢ − μᵢ)/sᵢ` with sᵢ its running RMS, and scaled back by `σ_y / sᵢ`, so the step
//! size means the same thing whatever the units of the features and of the target. The
//! error is normalised by σ_y and clipped, so one wild outlier moves the model by a
//! bounded amount instead of sending it to NaN.

use super::linear::LinearModel;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct OnlineConfig {
    /// Base step size in normalised units.
    pub learning_rate: f64,
    /// Normalised errors are clipped to ±this (outlier robustness).
    pub clip: f64,
    /// L2 shrinkage per step (0 = none).
    pub l2: f64,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            learning_rate: 0.1,
            clip: 3.0,
            l2: 0.0,
        }
    }
}

impl OnlineConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!(
                "learningRate must be a positive number, got {}",
                self.learning_rate
            ));
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return Err(format!("clip must be a positive number, got {}", self.clip));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(format!("l2 must be ≥ 0, got {}", self.l2));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OnlineLinear {
    pub config: OnlineConfig,
    /// Weights on centred features, in raw units.
    pub w: Vec<f64>,
    /// Bias on centred features.
    pub b: f64,
    /// Running feature means and mean squares of the centred values.
    pub mean: Vec<f64>,
    pub sq: Vec<f64>,
    /// AdaGrad accumulators (features, then bias).
    pub g: Vec<f64>,
    pub gb: f64,
    /// Running target mean and variance.
    pub y_mean: f64,
    pub y_var: f64,
    /// Samples learned.
    pub n: u64,
}

/// Feature means and scales stop moving after this many samples' worth of weight, so a
/// long stream keeps adapting to shifts instead of freezing on its first million rows.
const STATS_HORIZON: f64 = 10_000.0;

/// Largest magnitude a feature or target may have to be learned (squares stay finite).
pub const MAX_MAGNITUDE: f64 = 1e100;

impl OnlineLinear {
    pub fn new(features: usize, config: OnlineConfig) -> Self {
        Self {
            config,
            w: vec![0.0; features],
            b: 0.0,
            mean: vec![0.0; features],
            sq: vec![0.0; features],
            g: vec![0.0; features],
            gb: 0.0,
            y_mean: 0.0,
            y_var: 0.0,
            n: 0,
        }
    }

    /// Starts from a saved raw model: same predictions, fresh optimiser state.
    pub fn from_model(m: &LinearModel, config: OnlineConfig) -> Self {
        let mut s = Self::new(m.weights.len(), config);
        s.w.clone_from(&m.weights);
        s.b = m.bias;
        s
    }

    pub fn features(&self) -> usize {
        self.w.len()
    }

    pub fn predict(&self, x: &[f64]) -> f64 {
        let mut s = self.b;
        for i in 0..self.w.len().min(x.len()) {
            s += self.w[i] * (x[i] - self.mean[i]);
        }
        s
    }

    /// The model as raw `{weights, bias}` (what a file holds and what serving uses).
    pub fn to_raw(&self) -> (Vec<f64>, f64) {
        let bias = self.b
            - self
                .w
                .iter()
                .zip(&self.mean)
                .map(|(w, m)| w * m)
                .sum::<f64>();
        (self.w.clone(), bias)
    }

    /// One prequential step: returns the prediction made before learning from `y`.
    /// Samples with a value beyond ±MAX_MAGNITUDE are not learned: their squares would
    /// overflow the running statistics and poison every later prediction.
    pub fn learn(&mut self, x: &[f64], y: f64) -> f64 {
        let d = self.w.len();
        let pred = self.predict(x);
        let ok = |v: f64| v.is_finite() && v.abs() <= MAX_MAGNITUDE;
        if x.len() != d || !ok(y) || !x.iter().all(|&v| ok(v)) {
            return pred;
        }
        self.n += 1;
        let rate = 1.0 / (self.n as f64).min(STATS_HORIZON);
        // Target scale.
        let dy = y - self.y_mean;
        self.y_mean += rate * dy;
        self.y_var += rate * (dy * (y - self.y_mean) - self.y_var);
        // Re-centre, compensating the bias so the function is unchanged.
        for i in 0..d {
            let dm = rate * (x[i] - self.mean[i]);
            self.mean[i] += dm;
            self.b += self.w[i] * dm;
            let c = x[i] - self.mean[i];
            self.sq[i] += rate * (c * c - self.sq[i]);
        }
        let sigma_y = self.y_var.sqrt().max(1e-9 * (1.0 + self.y_mean.abs()));
        let err = ((pred - y) / sigma_y).clamp(-self.config.clip, self.config.clip);
        let eta = self.config.learning_rate;
        // Bias: also bounded by the clipped error, so an outlier cannot run away with it.
        self.gb += err * err;
        self.b -= eta * sigma_y * err / (self.gb.sqrt() + 1e-12);
        for i in 0..d {
            let s = self.sq[i].sqrt();
            if s <= 1e-12 {
                continue; // a constant feature so far: nothing to learn from it
            }
            let z = (x[i] - self.mean[i]) / s;
            let gi = err * z + self.config.l2 * self.w[i] * s / sigma_y;
            self.g[i] += gi * gi;
            self.w[i] -= eta * (sigma_y / s) * gi / (self.g[i].sqrt() + 1e-12);
        }
        pred
    }

    pub fn check(&self) -> Result<(), String> {
        let d = self.w.len();
        if self.mean.len() != d || self.sq.len() != d || self.g.len() != d {
            return Err("online model state vectors differ in length".into());
        }
        let all = self
            .w
            .iter()
            .chain(&self.mean)
            .chain(&self.sq)
            .chain(&self.g);
        if !all
            .copied()
            .chain([self.b, self.gb, self.y_mean, self.y_var])
            .all(f64::is_finite)
        {
            return Err("online model state holds non-finite numbers".into());
        }
        self.config.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::finetune::SplitMix;

    fn stream(seed: u64) -> impl FnMut() -> ([f64; 3], f64) {
        let mut r = SplitMix(seed);
        move || {
            let mut u = || (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let a = 2000.0 + 3000.0 * u(); // thousands, with an offset
            let b = u(); // unit scale
            let c = 1e-3 * u(); // tiny scale
            let y = 500.0 + 0.4 * a - 300.0 * b + 2e5 * c + 5.0 * (u() - 0.5);
            ([a, b, c], y)
        }
    }

    #[test]
    fn converges_on_raw_features_of_very_different_scales_with_defaults() {
        let mut m = OnlineLinear::new(3, OnlineConfig::default());
        let mut s = stream(1);
        for _ in 0..20_000 {
            let (x, y) = s();
            m.learn(&x, y);
        }
        let mut se = 0.0;
        for _ in 0..2000 {
            let (x, y) = s();
            se += (m.predict(&x) - y).powi(2);
        }
        let rmse = (se / 2000.0).sqrt();
        // Target spread ≈ 360; noise RMS ≈ 1.4.
        assert!(rmse < 15.0, "rmse {rmse}");
        let (w, _) = m.to_raw();
        assert!(
            (w[0] - 0.4).abs() < 0.02 && (w[1] + 300.0).abs() < 15.0,
            "{w:?}"
        );
    }

    #[test]
    fn raw_export_predicts_the_same_and_recentring_keeps_the_function() {
        let mut m = OnlineLinear::new(3, OnlineConfig::default());
        let mut s = stream(2);
        for _ in 0..500 {
            let (x, y) = s();
            m.learn(&x, y);
        }
        let (w, b) = m.to_raw();
        let raw = LinearModel {
            weights: w,
            bias: b,
            extra: Default::default(),
        };
        let (x, _) = s();
        assert!((raw.predict(&x) - m.predict(&x)).abs() < 1e-6);
        let from = OnlineLinear::from_model(&raw, OnlineConfig::default());
        assert!((from.predict(&x) - raw.predict(&x)).abs() < 1e-9);
    }

    #[test]
    fn outliers_do_not_diverge() {
        let mut m = OnlineLinear::new(3, OnlineConfig::default());
        let mut s = stream(3);
        for t in 0..5000 {
            let (mut x, mut y) = s();
            if t % 97 == 0 {
                y *= 1e6;
                x[1] = 1e9;
            }
            m.learn(&x, y);
            assert!(m.predict(&x).is_finite());
        }
        assert!(m.check().is_ok());
        // Non-finite or overflow-scale input is ignored, not learned.
        let n = m.n;
        m.learn(&[f64::NAN, 1.0, 1.0], 1.0);
        m.learn(&[1.0, 1.0, 1.0], f64::INFINITY);
        m.learn(&[1.0, 1.0, 1.0], 1e308);
        m.learn(&[1e200, 1.0, 1.0], 1.0);
        assert_eq!(m.n, n);
        assert!(m.predict(&[1.0, 1.0, 1.0]).is_finite());
    }
}
