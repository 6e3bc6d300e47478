//! Online linear regression on raw features, and a Page-Hinkley drift detector.
//!
//! Two optimisers behind one type, [`OnlineLinear`]:
//!
//! * **RLS** (the default up to [`RLS_MAX_FEATURES`] features): recursive least squares
//!   with exponential forgetting. Each sample is an exact rank-one update of the
//!   least-squares solution, so a trend, a level shift or a new slope is followed as fast
//!   as the forgetting factor λ allows, whatever the units of the features (RLS is
//!   invariant to any invertible linear change of the inputs; only its prior is not).
//!   - Features are shifted by a **fixed** reference, the first sample learned, for
//!     conditioning (`z = [1, x − r]`). Running means would change the basis under the
//!     learned state; a fixed shift never does.
//!   - **Forgetting is chosen automatically**: a bank of learners with λ ∈ {0.95, 0.99,
//!     1} learns every sample; the served prediction mixes them with weights
//!     `exp(−(W/2)(Lᵢ/L_best − 1))` from their recent prequential squared errors Lᵢ
//!     (W = 20 samples), so one default serves
//!     stationary streams (λ = 1 wins) and drifting ones (a small λ wins).
//!     `forgetting: λ` fixes a single learner instead.
//!   - **No covariance wind-up**: with λ < 1 the covariance P grows as λ⁻ᵗ in every
//!     direction the inputs stop exciting (a constant feature, identical samples). Each
//!     diagonal entry is bounded by its prior variance: when `P_kk` exceeds it, a
//!     pseudo-observation along coordinate k with zero error (it leaves the weights
//!     untouched) shrinks `P_kk` back to the bound. A PSD matrix with a bounded diagonal
//!     is bounded, so P stays finite after any number of identical samples, and the
//!     unexcited directions are exactly as ready to learn as at the start.
//!   - A feature's prior is set once it has differed from the reference 3 times (until
//!     then it is inert and the bias absorbs it), with variance `PRIOR / rms(x − r)²`
//!     (PRIOR = 10⁶): weak, and in the feature's own units.
//!
//! * **AdaGrad** (`optimizer: 'adagrad'`, and the automatic choice above
//!   [`RLS_MAX_FEATURES`] features where O(d²) per sample stops paying): the previous
//!   default. It predicts `b + Σ wᵢ (xᵢ − μᵢ)` on running means, re-centring with bias
//!   compensation so the function never jumps, and takes AdaGrad steps on features
//!   normalised by their running RMS, scaled back by the target's spread, in the spirit of
//!   normalised adaptive gradient descent (Ross, Mineiro & Langford 2013). States saved by
//!   earlier versions (which only had this optimiser) load as AdaGrad learners.
//!
//! Both clip the error (in units of its running scale) before it moves the weights, so one
//! wild outlier moves the model by a bounded amount instead of sending it to NaN, and both
//! export exactly an old-format `{weights, bias}` model ([`OnlineLinear::to_raw`]).

use super::linear::LinearModel;
use serde::{Deserialize, Serialize};

/// Which optimiser a learner uses.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// RLS up to [`RLS_MAX_FEATURES`] features, AdaGrad above.
    #[default]
    Auto,
    Rls,
    Adagrad,
}

impl Optimizer {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "rls" => Ok(Self::Rls),
            "adagrad" => Ok(Self::Adagrad),
            _ => Err(format!(
                "optimizer must be 'auto', 'rls' or 'adagrad', got {s:?}"
            )),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct OnlineConfig {
    /// AdaGrad: base step size in normalised units.
    pub learning_rate: f64,
    /// Errors are clipped to ±clip times their running scale (outlier robustness).
    pub clip: f64,
    /// AdaGrad: L2 shrinkage per step (0 = none).
    pub l2: f64,
    /// `auto` (default), `rls` or `adagrad`.
    pub optimizer: Optimizer,
    /// RLS forgetting factor in (0, 1]; `None` = chosen by the bank.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forgetting: Option<f64>,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            learning_rate: 0.1,
            clip: 3.0,
            l2: 0.0,
            optimizer: Optimizer::Auto,
            forgetting: None,
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
        if let Some(l) = self.forgetting {
            if !(l.is_finite() && (MIN_FORGETTING..=1.0).contains(&l)) {
                return Err(format!(
                    "forgetting must be within [{MIN_FORGETTING}, 1], got {l}"
                ));
            }
        }
        Ok(())
    }

    /// The optimiser a learner of `features` inputs gets.
    pub fn resolve(&self, features: usize) -> Optimizer {
        match self.optimizer {
            Optimizer::Auto if features > RLS_MAX_FEATURES => Optimizer::Adagrad,
            Optimizer::Auto => Optimizer::Rls,
            o => o,
        }
    }
}

/// Largest magnitude a feature or target may have to be learned (squares stay finite).
pub const MAX_MAGNITUDE: f64 = 1e100;

/// Above this many features `optimizer: 'auto'` uses AdaGrad. The RLS bank costs
/// O(3·d²) per sample; measured in Rust alone by `node scripts/bench/run.js online` on
/// this shared 2-core machine: 0.3–0.8 µs at 8 features (3–4× AdaGrad), 4–9 µs at 32,
/// 9–20 µs at 48 (50–100k samples/s, 11–16× AdaGrad), 20–40 µs at 64. Past 48 a learner
/// would cap a stream below ~50–100k samples/s per core for a statistical gain that
/// needs ever more samples to show.
pub const RLS_MAX_FEATURES: usize = 48;

/// Smallest fixed forgetting factor accepted (an effective memory of 2 samples).
pub const MIN_FORGETTING: f64 = 0.5;

/// The forgetting factors of the automatic bank.
pub const BANK: [f64; 3] = [0.95, 0.99, 1.0];

/// Prior variance scale: a feature's weight starts with variance `PRIOR / (x − r)²`, the
/// bias with `PRIOR`; P's diagonal never exceeds these (no wind-up). As a ridge it is
/// worth 1/PRIOR of one sample: negligible, but it keeps P finite.
const PRIOR: f64 = 1e6;

/// Nonzero deviations from the reference a feature shows before it gets its prior.
const ONSET: u32 = 3;

/// Memory of the bank's error averages (samples): short enough to switch within a few
/// dozen samples of a drift, long enough not to chase noise.
const BANK_HORIZON: f64 = 20.0;

/// Memory of the running error scale used for clipping.
const CLIP_HORIZON: f64 = 200.0;

/// Errors are not clipped before this many samples (the scale is not known yet).
const CLIP_WARMUP: u64 = 30;

/// One RLS learner: weights on `z = [1, x − r]` and the covariance P (row-major, `(d+1)²`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RlsMember {
    pub lambda: f64,
    pub theta: Vec<f64>,
    pub p: Vec<f64>,
    /// Recent mean squared prequential error (bank weighting).
    pub err: f64,
    /// Slow mean squared prequential error (clipping scale).
    pub scale: f64,
}

/// RLS with exponential forgetting: a bank of members, or one when λ is fixed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RlsBank {
    /// Fixed reference subtracted from the features (the first sample learned).
    pub reference: Option<Vec<f64>>,
    /// Bound on each diagonal entry of P (set with a feature's prior; 0 = not yet).
    pub cap: Vec<f64>,
    /// Per feature, before its prior is set: sum of squares and count of its nonzero
    /// deviations from the reference.
    pub onset_sq: Vec<f64>,
    pub onset_n: Vec<u32>,
    pub members: Vec<RlsMember>,
    /// Mixing weights of the members (sum 1).
    pub mix: Vec<f64>,
    #[serde(skip)]
    scratch: Vec<f64>,
}

impl PartialEq for RlsBank {
    fn eq(&self, o: &Self) -> bool {
        // `scratch` is working memory, not state.
        self.reference == o.reference
            && self.cap == o.cap
            && self.onset_sq == o.onset_sq
            && self.onset_n == o.onset_n
            && self.members == o.members
            && self.mix == o.mix
    }
}

impl RlsBank {
    fn new(features: usize, lambdas: &[f64], w: &[f64], bias: f64) -> Self {
        let n = features + 1;
        let mut theta = Vec::with_capacity(n);
        theta.push(bias);
        theta.extend_from_slice(w);
        let mut p = vec![0.0; n * n];
        p[0] = PRIOR;
        let mut cap = vec![0.0; n];
        cap[0] = PRIOR;
        let members = lambdas
            .iter()
            .map(|&lambda| RlsMember {
                lambda,
                theta: theta.clone(),
                p: p.clone(),
                err: 0.0,
                scale: 0.0,
            })
            .collect::<Vec<_>>();
        let k = members.len();
        Self {
            reference: None,
            cap,
            onset_sq: vec![0.0; features],
            onset_n: vec![0; features],
            members,
            mix: vec![1.0 / k as f64; k],
            scratch: vec![0.0; 2 * n],
        }
    }

    fn features(&self) -> usize {
        self.cap.len() - 1
    }

    /// The mixed model on raw features: `(weights, bias)`.
    fn to_raw(&self) -> (Vec<f64>, f64) {
        let d = self.features();
        let mut w = vec![0.0; d];
        let mut b = 0.0;
        for (m, &a) in self.members.iter().zip(&self.mix) {
            b += a * m.theta[0];
            for i in 0..d {
                w[i] += a * m.theta[i + 1];
            }
        }
        if let Some(r) = &self.reference {
            b -= w.iter().zip(r).map(|(w, r)| w * r).sum::<f64>();
        }
        (w, b)
    }

    fn member_predict(m: &RlsMember, x: &[f64], r: Option<&[f64]>) -> f64 {
        let mut s = m.theta[0];
        match r {
            Some(r) => {
                for i in 0..x.len() {
                    s += m.theta[i + 1] * (x[i] - r[i]);
                }
            }
            None => {
                for i in 0..x.len() {
                    s += m.theta[i + 1] * x[i];
                }
            }
        }
        s
    }

    fn predict(&self, x: &[f64]) -> f64 {
        let r = self.reference.as_deref();
        self.members
            .iter()
            .zip(&self.mix)
            .map(|(m, &a)| a * Self::member_predict(m, x, r))
            .sum()
    }

    /// Learns one sample; returns the prediction made before learning it.
    fn learn(&mut self, x: &[f64], y: f64, clip: f64, n_seen: u64) -> f64 {
        let d = self.features();
        let n = d + 1;
        if self.scratch.len() != 2 * n {
            self.scratch = vec![0.0; 2 * n];
        }
        if self.reference.is_none() {
            // Anchor the basis on the first sample. Only the prior exists so far, so the
            // shift is folded into the bias and the function is unchanged.
            for m in &mut self.members {
                let shift: f64 = (0..d).map(|i| m.theta[i + 1] * x[i]).sum();
                m.theta[0] += shift;
            }
            self.reference = Some(x.to_vec());
        }
        let (z, g) = self.scratch.split_at_mut(n);
        let r = self.reference.as_deref().unwrap_or(x);
        z[0] = 1.0;
        for i in 0..d {
            let v = x[i] - r[i];
            z[i + 1] = v;
            if v != 0.0 && self.cap[i + 1] == 0.0 {
                // Feature i is not learned yet (its rows and columns of every P are zero,
                // so it is inert and the bias absorbs it). After ONSET nonzero deviations
                // it gets its prior, in its own units: the RMS of those deviations, not a
                // single one, which may be tiny and would make P's first updates cancel
                // catastrophically.
                self.onset_sq[i] += v * v;
                self.onset_n[i] += 1;
                if self.onset_n[i] >= ONSET {
                    let c = PRIOR * self.onset_n[i] as f64 / self.onset_sq[i];
                    if c.is_finite() && c > 0.0 {
                        self.cap[i + 1] = c;
                        for m in &mut self.members {
                            m.p[(i + 1) * n + i + 1] = c;
                        }
                    }
                }
            }
        }
        let warm = n_seen > CLIP_WARMUP;
        let rate = (1.0 / n_seen as f64).max(1.0 / BANK_HORIZON);
        let slow = (1.0 / n_seen as f64).max(1.0 / CLIP_HORIZON);
        let mut best = f64::INFINITY;
        let mut served = 0.0;
        for (m, &w) in self.members.iter_mut().zip(&self.mix) {
            let pred: f64 = m.theta.iter().zip(z.iter()).map(|(t, v)| t * v).sum();
            served += w * pred;
            let e = y - pred;
            let e2 = e * e;
            // Bank and clip statistics are prequential: scored before learning.
            m.err += rate * (e2 - m.err);
            best = best.min(m.err);
            let e_used = if warm {
                let bound = clip * m.scale.sqrt();
                e.clamp(-bound, bound)
            } else {
                e
            };
            // One outlier may raise the scale by a bounded factor (≤ 1 + 1e4/CLIP_HORIZON);
            // a real level change raises it geometrically by that factor per sample, so
            // clipping stalls recovery for a handful of samples at most, even after a
            // long stretch of near-zero errors.
            m.scale += slow * (if warm { e2.min(1e4 * m.scale) } else { e2 } - m.scale);
            let zpz = mat_vec(&m.p, z, g);
            rls_step(m, z, g, zpz, e_used);
            if m.lambda < 1.0 {
                // Wind-up guard: bound P's diagonal by the prior (λ = 1 only shrinks P).
                for k in 0..n {
                    let c = self.cap[k];
                    if c > 0.0 && m.p[k * n + k] > c {
                        shrink_coordinate(&mut m.p, n, k, c, g);
                    }
                }
            }
            if !(0..n).all(|k| {
                let v = m.p[k * n + k];
                v >= 0.0 && v.is_finite()
            }) || !(m.p[0] > 0.0)
            {
                // Numerical breakdown (never seen in practice): restart this member's
                // covariance from the prior, keeping its weights.
                reset_cov(&mut m.p, &self.cap, n);
            }
        }
        // Mixing weights: a Gaussian likelihood of each member's recent errors, relative to
        // the best one, `exp(−(W/2)(L_j/L_best − 1))` with W the averaging window: the
        // errors of the members are strongly correlated (same noise), so this ratio is a
        // sharp test, and a member whose recent error is 10% worse keeps 37% of the weight
        // of the best (e⁻¹) while one that is twice as bad has none (e⁻¹⁰).
        let floor = best.max(f64::MIN_POSITIVE) * 1e-12 + 1e-300;
        let mut total = 0.0;
        for (w, m) in self.mix.iter_mut().zip(&self.members) {
            let excess = (m.err - best) / (best + floor);
            *w = if excess > 0.0 {
                (-0.5 * BANK_HORIZON * excess).exp()
            } else {
                1.0
            };
            total += *w;
        }
        for w in &mut self.mix {
            *w /= total;
        }
        served
    }

    fn check(&self, d: usize) -> Result<(), String> {
        let n = d + 1;
        if self.cap.len() != n
            || self.onset_sq.len() != d
            || self.onset_n.len() != d
            || self.members.is_empty()
            || self.mix.len() != self.members.len()
            || self.reference.as_ref().is_some_and(|r| r.len() != d)
        {
            return Err("online model state vectors differ in length".into());
        }
        for m in &self.members {
            if m.theta.len() != n || m.p.len() != n * n {
                return Err("online model state vectors differ in length".into());
            }
            if !(m.lambda >= MIN_FORGETTING && m.lambda <= 1.0) {
                return Err(format!("forgetting {} is out of range", m.lambda));
            }
        }
        if self.cap[0] <= 0.0 || self.cap.iter().chain(&self.mix).any(|&v| v < 0.0) {
            return Err("online model state holds negative bounds or weights".into());
        }
        let all = self
            .members
            .iter()
            .flat_map(|m| m.theta.iter().chain(&m.p).chain([&m.err, &m.scale]))
            .chain(&self.cap)
            .chain(&self.onset_sq)
            .chain(&self.mix)
            .chain(self.reference.iter().flatten());
        if !all.copied().all(f64::is_finite) {
            return Err("online model state holds non-finite numbers".into());
        }
        Ok(())
    }
}

/// One forgetting RLS update with error `e` on regressor `z`; `g` holds `P z` and
/// `zpz` is `zᵀ P z` (both computed by the caller, which needed them for the prediction).
#[inline]
fn rls_step(m: &mut RlsMember, z: &[f64], g: &mut [f64], zpz: f64, e: f64) {
    let n = z.len();
    let alpha = m.lambda + zpz;
    if !(alpha.is_finite() && alpha > 0.0) {
        return;
    }
    let inv = 1.0 / alpha;
    let ke = inv * e;
    for (t, &gi) in m.theta.iter_mut().zip(g.iter()) {
        *t += gi * ke;
    }
    // P ← (P − h hᵀ)/λ with h = g/√α. `h_i·h_j` and `h_j·h_i` are the same product, so P
    // stays exactly symmetric. (With `(g_i/α)·g_j` it would not: the rounding differs
    // between (i, j) and (j, i), and with λ < 1 that skew part grows as λ⁻ᵗ until P is
    // no longer positive definite: after ~400 samples at λ = 0.95.)
    let il = 1.0 / m.lambda;
    let s = inv.sqrt();
    g.iter_mut().for_each(|v| *v *= s);
    let h = &*g;
    for (row, &hi) in m.p.chunks_exact_mut(n).zip(h) {
        for (r, &hj) in row.iter_mut().zip(h) {
            *r = (*r - hi * hj) * il;
        }
    }
}

/// `g = P z`; returns `zᵀ P z`.
#[inline]
fn mat_vec(p: &[f64], z: &[f64], g: &mut [f64]) -> f64 {
    let n = z.len();
    let mut zpz = 0.0;
    for ((row, gi), &zi) in p.chunks_exact(n).zip(g.iter_mut()).zip(z) {
        let s: f64 = row.iter().zip(z).map(|(a, b)| a * b).sum();
        *gi = s;
        zpz += zi * s;
    }
    zpz
}

/// Pseudo-observation `√ρ·e_k` with zero error: `P ← P − ρ P e_k e_kᵀ P / (1 + ρ P_kk)`,
/// with ρ chosen so that the new `P_kk` equals `c`. Weights do not move.
fn shrink_coordinate(p: &mut [f64], n: usize, k: usize, c: f64, col: &mut [f64]) {
    let pkk = p[k * n + k];
    let rho = 1.0 / c - 1.0 / pkk;
    let f = rho / (1.0 + rho * pkk);
    // h = √f · P e_k, and P ← P − h hᵀ: exactly symmetric, as in `rls_step`.
    let s = f.sqrt();
    for i in 0..n {
        col[i] = p[i * n + k] * s;
    }
    for (row, &hi) in p.chunks_exact_mut(n).zip(col.iter()) {
        for (r, &hj) in row.iter_mut().zip(col.iter()) {
            *r -= hi * hj;
        }
    }
}

fn reset_cov(p: &mut [f64], cap: &[f64], n: usize) {
    p.iter_mut().for_each(|v| *v = 0.0);
    for k in 0..n {
        p[k * n + k] = cap[k];
    }
}

/// The AdaGrad learner's state (exactly the fields of the pre-RLS `OnlineLinear`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdaGrad {
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
}

/// Feature means and scales stop moving after this many samples' worth of weight, so a
/// long stream keeps adapting to shifts instead of freezing on its first million rows.
const STATS_HORIZON: f64 = 10_000.0;

impl AdaGrad {
    fn new(features: usize) -> Self {
        Self {
            w: vec![0.0; features],
            mean: vec![0.0; features],
            sq: vec![0.0; features],
            g: vec![0.0; features],
            ..Self::default()
        }
    }

    fn predict(&self, x: &[f64]) -> f64 {
        let mut s = self.b;
        for i in 0..self.w.len().min(x.len()) {
            s += self.w[i] * (x[i] - self.mean[i]);
        }
        s
    }

    fn to_raw(&self) -> (Vec<f64>, f64) {
        let bias = self.b
            - self
                .w
                .iter()
                .zip(&self.mean)
                .map(|(w, m)| w * m)
                .sum::<f64>();
        (self.w.clone(), bias)
    }

    fn learn(&mut self, x: &[f64], y: f64, pred: f64, c: &OnlineConfig, n: u64) {
        let d = self.w.len();
        let rate = 1.0 / (n as f64).min(STATS_HORIZON);
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
        let err = ((pred - y) / sigma_y).clamp(-c.clip, c.clip);
        let eta = c.learning_rate;
        // Bias: also bounded by the clipped error, so an outlier cannot run away with it.
        self.gb += err * err;
        self.b -= eta * sigma_y * err / (self.gb.sqrt() + 1e-12);
        for i in 0..d {
            let s = self.sq[i].sqrt();
            if s <= 1e-12 {
                continue; // a constant feature so far: nothing to learn from it
            }
            let z = (x[i] - self.mean[i]) / s;
            let gi = err * z + c.l2 * self.w[i] * s / sigma_y;
            self.g[i] += gi * gi;
            self.w[i] -= eta * (sigma_y / s) * gi / (self.g[i].sqrt() + 1e-12);
        }
    }

    fn check(&self) -> Result<(), String> {
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
        Ok(())
    }
}

/// The optimiser state of a learner.
#[derive(Clone, Debug, PartialEq)]
pub enum Engine {
    Rls(RlsBank),
    AdaGrad(AdaGrad),
}

/// Online linear regression (see the module docs).
///
/// ```
/// use mlops_native::core::online::{OnlineConfig, OnlineLinear, Optimizer};
///
/// // A trending first feature in raw units, and a relation that changes at t = 500.
/// let mut m = OnlineLinear::new(2, OnlineConfig::default());
/// assert_eq!(m.optimizer(), Optimizer::Rls);
/// let f = |t: usize| if t < 500 { (0.5, -2.0) } else { (0.8, 1.0) };
/// let mut late_error = 0.0;
/// for t in 0..1000 {
///     let x = [730_000.0 + t as f64, (t % 7) as f64];
///     let (a, b) = f(t);
///     let y = 3.0 + a * (x[0] - 730_000.0) + b * x[1];
///     let before = m.learn(&x, y); // predict, then learn
///     if t >= 800 {
///         late_error += (before - y).abs() / 200.0;
///     }
/// }
/// // The λ = 0.95 learner took over after the change and has forgotten the old relation.
/// assert!(late_error < 1e-4, "{late_error}");
/// assert!(m.bank()[0].1 > 0.99, "{:?}", m.bank());
/// // The mixed model is an ordinary raw `{weights, bias}` model.
/// let (w, _bias) = m.to_raw();
/// assert!((w[0] - 0.8).abs() < 1e-6 && (w[1] - 1.0).abs() < 1e-6, "{w:?}");
/// // Serialised state continues exactly.
/// let back: OnlineLinear = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
/// assert_eq!(back, m);
/// ```
///
/// Serialises as
/// `{config, n, rls: {...}}` or, for AdaGrad, as the pre-RLS flat shape
/// `{config, n, w, b, mean, sq, g, gb, yMean, yVar}`, which is also what earlier
/// versions saved: those states load unchanged, as AdaGrad learners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Repr", into = "Repr")]
pub struct OnlineLinear {
    pub config: OnlineConfig,
    /// Samples learned.
    pub n: u64,
    pub engine: Engine,
    features: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Repr {
    config: OnlineConfig,
    #[serde(default)]
    n: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rls: Option<RlsBank>,
    #[serde(flatten)]
    adagrad: Option<AdaGrad>,
}

impl From<OnlineLinear> for Repr {
    fn from(m: OnlineLinear) -> Self {
        let (rls, adagrad) = match m.engine {
            Engine::Rls(b) => (Some(b), None),
            Engine::AdaGrad(a) => (None, Some(a)),
        };
        Repr {
            config: m.config,
            n: m.n,
            rls,
            adagrad,
        }
    }
}

impl TryFrom<Repr> for OnlineLinear {
    type Error = String;
    fn try_from(r: Repr) -> Result<Self, String> {
        let mut config = r.config;
        let (engine, features) = match (r.rls, r.adagrad) {
            (Some(b), _) => {
                let d = b.features();
                (Engine::Rls(b), d)
            }
            (None, Some(a)) => {
                // States from before RLS carry no optimizer: they are AdaGrad's.
                config.optimizer = Optimizer::Adagrad;
                let d = a.w.len();
                (Engine::AdaGrad(a), d)
            }
            (None, None) => return Err("online state has neither rls nor AdaGrad fields".into()),
        };
        Ok(Self {
            config,
            n: r.n,
            engine,
            features,
        })
    }
}

impl OnlineLinear {
    pub fn new(features: usize, config: OnlineConfig) -> Self {
        Self::with_prior(&vec![0.0; features], 0.0, config)
    }

    fn with_prior(w: &[f64], bias: f64, config: OnlineConfig) -> Self {
        let d = w.len();
        let engine = match config.resolve(d) {
            Optimizer::Adagrad => {
                let mut a = AdaGrad::new(d);
                a.w.copy_from_slice(w);
                a.b = bias;
                Engine::AdaGrad(a)
            }
            _ => {
                let bank: &[f64] = match &config.forgetting {
                    Some(l) => std::slice::from_ref(l),
                    None => &BANK,
                };
                Engine::Rls(RlsBank::new(d, bank, w, bias))
            }
        };
        Self {
            config,
            n: 0,
            engine,
            features: d,
        }
    }

    /// Starts from a saved raw model: same predictions, fresh optimiser state (for RLS the
    /// saved weights are the prior mean).
    pub fn from_model(m: &LinearModel, config: OnlineConfig) -> Self {
        Self::with_prior(&m.weights, m.bias, config)
    }

    pub fn features(&self) -> usize {
        self.features
    }

    /// The optimiser in use (`Rls` or `Adagrad`, never `Auto`).
    pub fn optimizer(&self) -> Optimizer {
        match self.engine {
            Engine::Rls(_) => Optimizer::Rls,
            Engine::AdaGrad(_) => Optimizer::Adagrad,
        }
    }

    pub fn predict(&self, x: &[f64]) -> f64 {
        let x = &x[..x.len().min(self.features)];
        match &self.engine {
            Engine::Rls(b) if x.len() == self.features => b.predict(x),
            Engine::Rls(b) => {
                let mut full = x.to_vec();
                full.resize(self.features, 0.0);
                b.predict(&full)
            }
            Engine::AdaGrad(a) => a.predict(x),
        }
    }

    /// The model as raw `{weights, bias}` (what a file holds and what serving uses).
    pub fn to_raw(&self) -> (Vec<f64>, f64) {
        match &self.engine {
            Engine::Rls(b) => b.to_raw(),
            Engine::AdaGrad(a) => a.to_raw(),
        }
    }

    /// For RLS: the members' forgetting factors and their current mixing weights.
    pub fn bank(&self) -> Vec<(f64, f64)> {
        match &self.engine {
            Engine::Rls(b) => b
                .members
                .iter()
                .zip(&b.mix)
                .map(|(m, &w)| (m.lambda, w))
                .collect(),
            Engine::AdaGrad(_) => vec![],
        }
    }

    /// One prequential step: returns the prediction made before learning from `y`.
    /// Samples with a value beyond ±MAX_MAGNITUDE are not learned: their squares would
    /// overflow the running statistics and poison every later prediction.
    pub fn learn(&mut self, x: &[f64], y: f64) -> f64 {
        let d = self.features;
        let ok = |v: f64| v.is_finite() && v.abs() <= MAX_MAGNITUDE;
        if x.len() != d || !ok(y) || !x.iter().all(|&v| ok(v)) {
            return self.predict(x);
        }
        self.n += 1;
        match &mut self.engine {
            Engine::Rls(b) => b.learn(x, y, self.config.clip, self.n),
            Engine::AdaGrad(a) => {
                let pred = a.predict(x);
                a.learn(x, y, pred, &self.config, self.n);
                pred
            }
        }
    }

    pub fn check(&self) -> Result<(), String> {
        match &self.engine {
            Engine::Rls(b) => b.check(self.features)?,
            Engine::AdaGrad(a) => a.check()?,
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

    /// Uniform in [0, 1) and a standard normal (Box-Muller), seeded.
    struct Rng(SplitMix);
    impl Rng {
        fn u(&mut self) -> f64 {
            (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (a, b) = (self.u().max(1e-300), self.u());
            (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
        }
    }

    fn cfg(optimizer: Optimizer, forgetting: Option<f64>) -> OnlineConfig {
        OnlineConfig {
            optimizer,
            forgetting,
            ..OnlineConfig::default()
        }
    }

    /// Progressive (predict-then-learn) MAE of `m` on `data[from..to]`, learning all of `data`.
    fn progressive(m: &mut OnlineLinear, data: &[(Vec<f64>, f64)], from: usize, to: usize) -> f64 {
        let mut ae = 0.0;
        for (t, (x, y)) in data.iter().enumerate() {
            let p = m.learn(x, *y);
            assert!(p.is_finite(), "prediction {p} at {t}");
            if (from..to).contains(&t) {
                ae += (p - y).abs();
            }
        }
        ae / (to - from) as f64
    }

    /// Four features of mixed scales; the weights jump at `change` (abrupt) or turn over
    /// `ramp` samples (gradual). Noise σ = 1.
    fn drifting(seed: u64, n: usize, change: usize, ramp: usize) -> Vec<(Vec<f64>, f64)> {
        let mut r = Rng(SplitMix(seed));
        let before = [3.0, -0.02, 40.0, 1.0];
        let after = [-2.0, 0.05, 10.0, -3.0];
        (0..n)
            .map(|t| {
                let x = vec![
                    r.normal(),
                    100.0 + 50.0 * r.normal(),
                    r.u(),
                    5.0 * r.normal(),
                ];
                let a = ((t as f64 - change as f64) / ramp.max(1) as f64).clamp(0.0, 1.0);
                let y = 10.0
                    + (0..4)
                        .map(|i| ((1.0 - a) * before[i] + a * after[i]) * x[i])
                        .sum::<f64>()
                    + r.normal();
                (x, y)
            })
            .collect()
    }

    #[test]
    fn rls_bank_recovers_from_an_abrupt_drift_far_faster_than_adagrad() {
        let data = drifting(11, 4000, 2000, 0);
        let bank = progressive(
            &mut OnlineLinear::new(4, cfg(Optimizer::Auto, None)),
            &data,
            2000,
            2300,
        );
        let ada = progressive(
            &mut OnlineLinear::new(4, cfg(Optimizer::Adagrad, None)),
            &data,
            2000,
            2300,
        );
        let frozen = progressive(
            &mut OnlineLinear::new(4, cfg(Optimizer::Rls, Some(1.0))),
            &data,
            2000,
            2300,
        );
        // Noise MAE is √(2/π) ≈ 0.8; the jump is worth ≈ 16 in MAE.
        assert!(bank < 0.5 * ada, "bank {bank} vs AdaGrad {ada}");
        assert!(bank < 0.5 * frozen, "bank {bank} vs λ = 1 {frozen}");
        // And it has settled by the end.
        let late = progressive(
            &mut OnlineLinear::new(4, OnlineConfig::default()),
            &data,
            3500,
            4000,
        );
        assert!(late < 1.0, "late MAE {late}");
    }

    #[test]
    fn rls_bank_tracks_a_gradual_drift() {
        let data = drifting(12, 6000, 1000, 4000);
        let bank = progressive(
            &mut OnlineLinear::new(4, OnlineConfig::default()),
            &data,
            1000,
            5000,
        );
        let ada = progressive(
            &mut OnlineLinear::new(4, cfg(Optimizer::Adagrad, None)),
            &data,
            1000,
            5000,
        );
        let frozen = progressive(
            &mut OnlineLinear::new(4, cfg(Optimizer::Rls, Some(1.0))),
            &data,
            1000,
            5000,
        );
        assert!(bank < 1.2, "bank {bank}: noise alone is 0.8");
        assert!(
            bank < 0.6 * ada && bank < 0.3 * frozen,
            "bank {bank}, AdaGrad {ada}, λ=1 {frozen}"
        );
    }

    #[test]
    fn a_trending_feature_is_followed_on_raw_units() {
        // A date-like feature (days since 1 AD) that only grows, and two noisy covariates:
        // the level of the target moves with the date.
        let mut r = Rng(SplitMix(13));
        let data: Vec<(Vec<f64>, f64)> = (0..1000)
            .map(|t| {
                let day = 736_389.0 + t as f64;
                let a = 40.0 + 3.0 * r.normal();
                let b = 45.0 + 3.0 * r.normal();
                let y = 0.01 * (day - 736_389.0) + 0.3 * a + 0.2 * b + 0.2 * r.normal();
                (vec![day, a, b], y)
            })
            .collect();
        let bank = progressive(
            &mut OnlineLinear::new(3, OnlineConfig::default()),
            &data,
            0,
            1000,
        );
        let ada = progressive(
            &mut OnlineLinear::new(3, cfg(Optimizer::Adagrad, None)),
            &data,
            0,
            1000,
        );
        assert!(bank < 0.5, "bank {bank}");
        assert!(bank * 10.0 < ada, "bank {bank} vs AdaGrad {ada}");
    }

    #[test]
    fn stationary_error_is_within_a_tolerance_of_the_optimum() {
        let data = drifting(14, 6000, usize::MAX / 2, 0);
        let mut m = OnlineLinear::new(4, OnlineConfig::default());
        let mut se = 0.0;
        let mut weight = [0.0; 3];
        for (t, (x, y)) in data.iter().enumerate() {
            let p = m.learn(x, *y);
            if t >= 1000 {
                se += (p - y) * (p - y);
                for (i, (_, w)) in m.bank().into_iter().enumerate() {
                    weight[i] += w / 5000.0;
                }
            }
        }
        // The optimum's MSE is the noise variance, 1.
        let mse = se / 5000.0;
        assert!(mse < 1.08, "stationary MSE {mse} vs 1");
        // λ = 1 carries a stationary stream, on average.
        assert!(
            weight[2] > 0.45 && weight[2] > 2.0 * weight[0],
            "mean weights {weight:?}"
        );
    }

    #[test]
    fn no_covariance_wind_up_after_100k_identical_samples() {
        let mut m = OnlineLinear::new(3, OnlineConfig::default());
        let mut r = Rng(SplitMix(15));
        // Some variation first, so every feature has a prior, then 100k identical samples.
        for _ in 0..200 {
            let x = [r.normal(), 10.0 * r.normal(), r.u()];
            m.learn(&x, 1.0 + x[0] - 0.1 * x[1] + 2.0 * x[2] + 0.1 * r.normal());
        }
        for _ in 0..100_000 {
            m.learn(&[0.5, 3.0, 0.25], 1.2);
        }
        assert!(m.check().is_ok());
        let Engine::Rls(b) = &m.engine else {
            panic!("not RLS")
        };
        for mem in &b.members {
            for k in 0..4 {
                assert!(
                    mem.p[k * 4 + k] <= b.cap[k] * (1.0 + 1e-9),
                    "P diag {k} of λ={} unbounded",
                    mem.lambda
                );
            }
        }
        // Then the relation changes: within a few hundred samples the error is back to noise.
        let mut errs = vec![];
        for _ in 0..600 {
            let x = [r.normal(), 10.0 * r.normal(), r.u()];
            let y = -3.0 + 2.0 * x[0] + 0.3 * x[1] - x[2] + 0.1 * r.normal();
            errs.push((m.learn(&x, y) - y).abs());
        }
        assert!(errs.iter().all(|e| e.is_finite()));
        let tail = errs[300..].iter().sum::<f64>() / 300.0;
        assert!(tail < 0.2, "MAE after 300 samples {tail} (noise ≈ 0.08)");
    }

    #[test]
    fn covariance_stays_exactly_symmetric_and_positive_over_a_long_forgetting_run() {
        // An asymmetric rounding in the P update grows as λ⁻ᵗ: with λ = 0.95 it broke
        // positive definiteness within ~400 samples before the update was made symmetric.
        let data = drifting(18, 20_000, usize::MAX / 2, 0);
        let mut m = OnlineLinear::new(4, cfg(Optimizer::Rls, Some(0.95)));
        let mut ae = 0.0;
        for (t, (x, y)) in data.iter().enumerate() {
            let p = m.learn(x, *y);
            if t >= 19_000 {
                ae += (p - y).abs() / 1000.0;
            }
        }
        let Engine::Rls(b) = &m.engine else {
            panic!("not RLS")
        };
        let p = &b.members[0].p;
        for i in 0..5 {
            assert!(p[i * 5 + i] > 0.0, "P[{i}][{i}] = {}", p[i * 5 + i]);
            for j in 0..5 {
                assert_eq!(p[i * 5 + j].to_bits(), p[j * 5 + i].to_bits());
            }
        }
        // λ = 0.95 on 5 parameters: ≈ 6% above the noise MAE of 0.8.
        assert!(ae < 0.9, "MAE {ae}");
    }

    #[test]
    fn json_round_trip_continues_bit_for_bit() {
        for c in [
            OnlineConfig::default(),
            cfg(Optimizer::Adagrad, None),
            cfg(Optimizer::Rls, Some(0.97)),
        ] {
            let data = drifting(16, 700, 300, 0);
            let mut m = OnlineLinear::new(4, c.clone());
            for (x, y) in &data[..400] {
                m.learn(x, *y);
            }
            let text = serde_json::to_string(&m).unwrap();
            let mut back: OnlineLinear = serde_json::from_str(&text).unwrap();
            assert_eq!(back, m);
            for (x, y) in &data[400..] {
                assert_eq!(m.learn(x, *y).to_bits(), back.learn(x, *y).to_bits());
            }
            assert_eq!(m.to_raw(), back.to_raw());
        }
    }

    #[test]
    fn states_saved_before_rls_load_as_adagrad() {
        // What the pre-RLS version wrote (its `OnlineLinear` serialised as-is).
        let old = r#"{"config":{"learningRate":0.1,"clip":3.0,"l2":0.0},"w":[0.5,-2.0],
            "b":1.5,"mean":[1.0,2.0],"sq":[0.25,4.0],"g":[3.0,5.0],"gb":2.0,"yMean":1.0,
            "yVar":2.0,"n":42}"#;
        let mut m: OnlineLinear = serde_json::from_str(old).unwrap();
        assert_eq!(m.optimizer(), Optimizer::Adagrad);
        assert_eq!(m.config.optimizer, Optimizer::Adagrad);
        assert_eq!(m.n, 42);
        assert!(m.check().is_ok());
        // Same function as before: b + Σ w (x − μ).
        assert_eq!(m.predict(&[2.0, 3.0]), 1.5 + 0.5 * 1.0 - 2.0 * 1.0);
        m.learn(&[2.0, 3.0], 1.0);
        assert_eq!(m.n, 43);
        // And it saves back in that same flat shape.
        let v = serde_json::to_value(&m).unwrap();
        assert!(v.get("w").is_some() && v.get("rls").is_none());
    }

    #[test]
    fn auto_uses_adagrad_above_the_rls_feature_limit_and_a_fixed_forgetting_is_one_learner() {
        let c = OnlineConfig::default();
        assert_eq!(
            OnlineLinear::new(RLS_MAX_FEATURES, c.clone()).optimizer(),
            Optimizer::Rls
        );
        assert_eq!(
            OnlineLinear::new(RLS_MAX_FEATURES + 1, c).optimizer(),
            Optimizer::Adagrad
        );
        let big = OnlineLinear::new(RLS_MAX_FEATURES + 1, cfg(Optimizer::Rls, None));
        assert_eq!(big.optimizer(), Optimizer::Rls);
        let one = OnlineLinear::new(2, cfg(Optimizer::Auto, Some(0.9)));
        assert_eq!(one.bank(), vec![(0.9, 1.0)]);
        assert!(cfg(Optimizer::Auto, Some(0.2)).validate().is_err());
        assert!(cfg(Optimizer::Auto, Some(1.01)).validate().is_err());
    }

    #[test]
    fn from_model_keeps_the_function_and_a_constant_feature_learns_nothing() {
        let raw = LinearModel {
            weights: vec![2.0, -1.0],
            bias: 0.5,
            extra: Default::default(),
        };
        let mut m = OnlineLinear::from_model(&raw, OnlineConfig::default());
        assert_eq!(m.predict(&[3.0, 4.0]), raw.predict(&[3.0, 4.0]));
        // Feature 1 never moves: its weight stays the prior's, its covariance stays 0.
        let mut r = Rng(SplitMix(17));
        for _ in 0..2000 {
            let a = r.normal();
            m.learn(&[a, 7.0], 1.0 + 3.0 * a);
        }
        let (w, b) = m.to_raw();
        assert!((w[0] - 3.0).abs() < 1e-6 && w[1] == -1.0, "{w:?}");
        assert!((b + 7.0 * w[1] - 1.0).abs() < 1e-6, "bias {b}");
    }
}
