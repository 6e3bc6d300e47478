//! Request-level predictions (latency, cost, satisfaction, resources) that start as the
//! old fixed formulas and learn from recorded outcomes.
//!
//! Every target is `prior(x) + θᵀφ(x)`: the old formula plus a learned correction, fitted
//! by recursive least squares with a zero-mean Gaussian prior on θ. With no outcomes θ is
//! exactly 0, so day-one answers are exactly the old ones; each outcome then moves θ as
//! far as the evidence warrants (RLS is the exact Bayesian posterior of that prior).
//! Latency and cost corrections are kept per `(serviceName, provider, model)`;
//! satisfaction and resources per `serviceName`. Latency quantiles are split-conformal:
//! rolling windows of log(actual / predicted), per key, backing off to a global window.

use super::stats::ErrorStats;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// Context slots (the JS layer packs a context into this layout; NaN = absent).
pub mod slot {
    pub const SERVICE: usize = 0;
    pub const PROVIDER: usize = 1;
    pub const MODEL: usize = 2;
    pub const CACHE_HIT: usize = 3;
    pub const INPUT_SIZE: usize = 4;
    pub const INPUT_TOKENS: usize = 5;
    pub const OUTPUT_TOKENS: usize = 6;
    pub const CACHED_INPUT_TOKENS: usize = 7;
    pub const MAX_TOKENS: usize = 8;
    pub const QUALITY: usize = 9;
    pub const LATENCY: usize = 10;
    pub const RELEVANCE: usize = 11;
    pub const COHERENCE: usize = 12;
    pub const HISTORICAL_SATISFACTION: usize = 13;
    pub const BATCH_SIZE: usize = 14;
    pub const CONCURRENT: usize = 15;
    pub const HOUR: usize = 16;
    pub const COUNT: usize = 17;
}

/// Outcome slots.
pub mod outcome {
    pub const LATENCY_MS: usize = 0;
    pub const INPUT_TOKENS: usize = 1;
    pub const OUTPUT_TOKENS: usize = 2;
    pub const COST: usize = 3;
    pub const SATISFACTION: usize = 4;
    pub const CPU: usize = 5;
    pub const MEMORY: usize = 6;
    pub const NETWORK: usize = 7;
    pub const COUNT: usize = 8;
}

/// Output layout of one context's `predict_all`.
pub mod out {
    pub const LATENCY: usize = 0;
    pub const LATENCY_CONF: usize = 1;
    pub const P50: usize = 2;
    pub const P95: usize = 3;
    pub const P99: usize = 4;
    pub const LATENCY_SAMPLES: usize = 5;
    pub const BASE_LATENCY: usize = 6;
    pub const COST: usize = 7;
    pub const COST_CONF: usize = 8;
    pub const COST_USD: usize = 9;
    pub const COST_BASE: usize = 10;
    pub const COST_INPUT: usize = 11;
    pub const COST_OUTPUT: usize = 12;
    pub const COST_CACHE_DISCOUNT: usize = 13;
    pub const OUTPUT_TOKENS_USED: usize = 14;
    pub const OUTPUT_TOKENS_PREDICTED: usize = 15;
    pub const COST_SAMPLES: usize = 16;
    pub const SATISFACTION: usize = 17;
    pub const SATISFACTION_CONF: usize = 18;
    pub const SATISFACTION_SAMPLES: usize = 19;
    pub const CPU: usize = 20;
    pub const MEMORY: usize = 21;
    pub const NETWORK: usize = 22;
    pub const RESOURCES_CONF: usize = 23;
    pub const RESOURCES_SAMPLES: usize = 24;
    pub const COUNT: usize = 25;
}

/// LiteLLM `model_prices_and_context_window.json` entry (the fields used here).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Price {
    pub input_cost_per_token: f64,
    pub output_cost_per_token: f64,
    #[serde(default)]
    pub cache_read_input_token_cost: Option<f64>,
    #[serde(default)]
    pub litellm_provider: Option<String>,
}

pub type PriceTable = HashMap<String, Price>;

/// Parses a LiteLLM-format table: entries without both per-token prices (LiteLLM's
/// `sample_spec`, image and embedding-only models) are skipped, bad prices refused.
pub fn parse_price_table(v: &serde_json::Value) -> Result<PriceTable, String> {
    let obj = v
        .as_object()
        .ok_or("price table must be an object keyed by model name")?;
    let mut t = PriceTable::new();
    for (name, e) in obj {
        let (Some(i), Some(o)) = (
            e.get("input_cost_per_token"),
            e.get("output_cost_per_token"),
        ) else {
            continue;
        };
        let num = |x: &serde_json::Value, f: &str| match x.as_f64() {
            Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(format!("priceTable[{name:?}].{f} must be a number ≥ 0")),
        };
        let cache = match e.get("cache_read_input_token_cost") {
            None | Some(serde_json::Value::Null) => None,
            Some(c) => Some(num(c, "cache_read_input_token_cost")?),
        };
        t.insert(
            name.clone(),
            Price {
                input_cost_per_token: num(i, "input_cost_per_token")?,
                output_cost_per_token: num(o, "output_cost_per_token")?,
                cache_read_input_token_cost: cache,
                litellm_provider: e
                    .get("litellm_provider")
                    .and_then(|p| p.as_str())
                    .map(str::to_owned),
            },
        );
    }
    // A file that prices nothing is a wrong file, not a request to forget every price.
    if t.is_empty() && !obj.is_empty() {
        return Err(
            "price table has no entry with input_cost_per_token and output_cost_per_token".into(),
        );
    }
    Ok(t)
}

const MAX_RLS_DIM: usize = 16;

/// Recursive least squares with a zero-mean Gaussian prior (variances `prior`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Rls {
    pub theta: Vec<f64>,
    pub p: Vec<f64>,
    pub n: u64,
    /// Decayed error of the prequential predictions (prior + correction).
    pub error: ErrorStats,
}

impl Rls {
    pub fn new(prior: &[f64]) -> Self {
        let d = prior.len();
        let mut p = vec![0.0; d * d];
        for (i, v) in prior.iter().enumerate() {
            p[i * d + i] = *v;
        }
        Self {
            theta: vec![0.0; d],
            p,
            n: 0,
            error: ErrorStats::default(),
        }
    }

    pub fn predict(&self, phi: &[f64]) -> f64 {
        self.theta.iter().zip(phi).map(|(t, x)| t * x).sum()
    }

    /// One exact Bayesian update toward `residual` (target minus prior).
    pub fn update(&mut self, phi: &[f64], residual: f64, noise_var: f64) {
        let d = self.theta.len();
        if d > MAX_RLS_DIM
            || phi.len() != d
            || !residual.is_finite()
            || phi.iter().any(|v| !v.is_finite())
        {
            return;
        }
        // On the stack: this runs several times per recorded outcome.
        let mut px = [0.0; MAX_RLS_DIM];
        for i in 0..d {
            let row = &self.p[i * d..(i + 1) * d];
            px[i] = row.iter().zip(phi).map(|(a, b)| a * b).sum();
        }
        let denom = noise_var + phi.iter().zip(&px).map(|(a, b)| a * b).sum::<f64>();
        if !(denom > 0.0) || !denom.is_finite() {
            return;
        }
        let e = residual - self.predict(phi);
        // An absurd (finite) input can overflow the update; then the sample is dropped and
        // the model stays as it was rather than turning every later answer into NaN.
        let mut theta = [0.0; MAX_RLS_DIM];
        for i in 0..d {
            theta[i] = self.theta[i] + px[i] * e / denom;
        }
        if !theta[..d].iter().all(|v| v.is_finite()) {
            return;
        }
        let before = self.p.clone();
        let inv = 1.0 / denom;
        for i in 0..d {
            let a = px[i] * inv;
            for (pij, pxj) in self.p[i * d..(i + 1) * d].iter_mut().zip(&px[..d]) {
                *pij -= a * pxj;
            }
        }
        if !self.p.iter().all(|v| v.is_finite()) {
            self.p = before;
            return;
        }
        self.theta[..d].copy_from_slice(&theta[..d]);
        self.n += 1;
    }

    /// Exponential forgetting: `P ← P/λ`, so old outcomes weigh λ^age and the correction
    /// follows a change in the level within ~1/(1−λ) outcomes. Without a cap, directions
    /// the data never excite (a cache flag that is always 0) would grow without bound
    /// (wind-up); each variance is therefore held at its prior by a congruence `D P D`
    /// (D diagonal, ≤ 1), which keeps P positive semi-definite.
    pub fn forget(&mut self, lambda: f64, prior: &[f64]) {
        let d = self.theta.len();
        if !(lambda > 0.0 && lambda < 1.0) || prior.len() != d || self.p.len() != d * d {
            return;
        }
        let mut scale = [1.0; MAX_RLS_DIM];
        for i in 0..d.min(MAX_RLS_DIM) {
            let v = self.p[i * d + i] / lambda;
            if v > prior[i] && v > 0.0 {
                scale[i] = (prior[i] / v).sqrt();
            }
        }
        for i in 0..d.min(MAX_RLS_DIM) {
            for j in 0..d.min(MAX_RLS_DIM) {
                self.p[i * d + j] *= scale[i] * scale[j] / lambda;
            }
        }
    }
}

/// Rolling window of values with its sorted copy, for exact empirical quantiles. Stored as
/// f32 (log ratios need no more) and grown on demand, so a key with few outcomes costs
/// bytes, not a preallocated window.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RollingQuantiles {
    pub cap: usize,
    pub ring: VecDeque<f32>,
    pub sorted: Vec<f32>,
}

impl RollingQuantiles {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ring: VecDeque::new(),
            sorted: Vec::new(),
        }
    }

    pub fn push(&mut self, v: f64) {
        let v = v as f32;
        if !v.is_finite() || self.cap == 0 {
            return;
        }
        if self.ring.len() >= self.cap {
            if let Some(old) = self.ring.pop_front() {
                let i = self.sorted.partition_point(|x| *x < old);
                if i < self.sorted.len() {
                    self.sorted.remove(i);
                }
            }
        }
        self.ring.push_back(v);
        let i = self.sorted.partition_point(|x| *x < v);
        self.sorted.insert(i, v);
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Bytes held on the heap (for the memory bound).
    pub fn heap_bytes(&self) -> usize {
        4 * (self.ring.capacity() + self.sorted.capacity())
    }

    /// Level-`tau` upper bound for the next value, exact in finite samples:
    /// - the conformal rank ⌈(n+1)τ⌉ when it exists (coverage ≥ τ for exchangeable data);
    /// - past the largest rank (n < 1/(1−τ) − 1, e.g. p99 below 99 values) the window
    ///   maximum would promise only n/(n+1) (97.6 % at n = 40), so the normal-theory
    ///   prediction bound `mean + t(n−1, τ)·s·√(1 + 1/n)` is returned instead (exact for
    ///   normal values), never less than the maximum.
    ///
    /// `tau` is clamped to [0, 0.9999]; None without values.
    pub fn quantile(&self, tau: f64) -> Option<f64> {
        let n = self.sorted.len();
        if n == 0 {
            return None;
        }
        let tau = tau.clamp(0.0, 0.9999);
        let k = ((n + 1) as f64 * tau).ceil() as usize;
        if k <= n {
            return Some(self.sorted[k.max(1) - 1] as f64);
        }
        let max = self.sorted[n - 1] as f64;
        Some(self.normal_bound(tau).map_or(max, |b| b.max(max)))
    }

    /// `mean + t(n−1, τ)·s·√(1 + 1/n)`: the prediction bound for one more value from a
    /// normal sample of n (None below 2 values).
    pub fn normal_bound(&self, tau: f64) -> Option<f64> {
        let n = self.sorted.len();
        if n < 2 {
            return None;
        }
        let nf = n as f64;
        let mean = self.sorted.iter().map(|&x| x as f64).sum::<f64>() / nf;
        let var = self
            .sorted
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / (nf - 1.0);
        Some(mean + student_t_quantile(tau, nf - 1.0) * var.sqrt() * (1.0 + 1.0 / nf).sqrt())
    }
}

/// Standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// Student-t quantile with `df` degrees of freedom: exact closed forms for 1 and 2, the
/// Cornish-Fisher expansion in 1/df beyond (error < 1e-3 from df = 3 at p ≤ 0.999).
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    if df <= 1.0 {
        return (std::f64::consts::PI * (p - 0.5)).tan();
    }
    if df <= 2.0 {
        let a = 4.0 * p * (1.0 - p);
        return (2.0 * p - 1.0) * (2.0 / a).sqrt();
    }
    let z = normal_quantile(p);
    let (z2, v) = (z * z, df);
    let g1 = (z2 + 1.0) * z / 4.0;
    let g2 = ((5.0 * z2 + 16.0) * z2 + 3.0) * z / 96.0;
    let g3 = (((3.0 * z2 + 19.0) * z2 + 17.0) * z2 - 15.0) * z / 384.0;
    let g4 = ((((79.0 * z2 + 776.0) * z2 + 1482.0) * z2 - 1920.0) * z2 - 945.0) * z / 92160.0;
    z + g1 / v + g2 / (v * v) + g3 / (v * v * v) + g4 / (v * v * v * v)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RequestKey {
    pub latency: Rls,
    pub cost: Rls,
    /// Decayed mean output tokens (for cost when `outputTokens` is not given).
    pub output_tokens: f64,
    pub output_count: u64,
    /// Interval calibration per kind of served prediction: `[INFORMED, BLIND]`.
    /// (State files of format 1 held one window, `log_ratio`; it is not read back: it
    /// scored a prediction that was never served, which is what this replaces.)
    pub calib: [Calib; 2],
}

/// Calibration kinds: the prediction served with `outputTokens` in the context, and the
/// one served without it (the usual case: the answer does not exist yet).
pub const INFORMED: usize = 0;
pub const BLIND: usize = 1;

/// Weight of the past in a calibration's fast level (≈ the last 7 outcomes): after a level
/// shift the intervals recentre within a handful of outcomes, while the point estimate
/// (whose corrections forget more slowly) catches up.
const LEVEL_DECAY: f64 = 0.85;

/// The conformal calibration of one kind of served latency. Residuals are the log ratios
/// `ln(actual / served)`; the window holds their innovations around a fast exponentially
/// weighted `level`, and a bound is `level + window quantile`, with adaptive conformal
/// inference steering the level asked of the window.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Calib {
    pub window: RollingQuantiles,
    pub aci: Aci,
    pub level: f64,
}

impl Calib {
    pub fn new(cap: usize) -> Self {
        Self {
            window: RollingQuantiles::new(cap),
            aci: Aci::default(),
            level: 0.0,
        }
    }

    /// Log-ratio bounds for p50/p95/p99 (None below `MIN_WINDOW` residuals).
    fn bounds(&self) -> Option<[f64; 3]> {
        if self.window.len() < MIN_WINDOW {
            return None;
        }
        let mut b = [0.0; 3];
        for (i, x) in b.iter_mut().enumerate() {
            *x = self.level + self.aci.quantile(&self.window, i)?;
        }
        Some(b)
    }

    /// Below `MIN_WINDOW` residuals: the fixed band (p95 1.5×, p99 2×) widened to the
    /// normal-theory prediction bound of the residuals there are (from 2 on), so that a
    /// key's first outcomes are covered at the nominal rate rather than at the band's.
    fn small_bounds(&self) -> [f64; 3] {
        let fixed = [0.0, 1.5f64.ln(), 2.0f64.ln()];
        let mut b = fixed;
        for i in 1..3 {
            if let Some(t) = self.window.normal_bound(LEVELS[i]) {
                b[i] = b[i].max(self.level + t);
            }
        }
        b
    }

    /// Scores one served prediction: `r` = ln(actual / served). `judge`: this window
    /// served it (so its ACI step is judged on it).
    fn record(&mut self, r: f64, judge: bool) {
        if !r.is_finite() {
            return;
        }
        let innovation = r - self.level;
        if judge {
            self.aci.update(&self.window, innovation);
        } else {
            self.aci = Aci::default();
        }
        self.window.push(innovation);
        self.level = LEVEL_DECAY * self.level + (1.0 - LEVEL_DECAY) * r;
    }
}

/// The quantile levels served (p50, p95, p99).
pub const LEVELS: [f64; 3] = [0.5, 0.95, 0.99];

/// Adaptive conformal inference (Gibbs & Candès, 2021): the level asked of the residual
/// window is nudged after every outcome, `α ← α + γ(α* − miss)`, so coverage holds in the
/// long run even when the residuals drift (load over the day, a model that improves).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Aci {
    pub alpha: [f64; 3],
}

impl Default for Aci {
    fn default() -> Self {
        Self {
            alpha: LEVELS.map(|l| 1.0 - l),
        }
    }
}

const ACI_GAMMA: f64 = 0.005;
const MIN_WINDOW: usize = 20;

impl Aci {
    /// Log-ratio quantile for level `i` from `window` (None: no residuals yet).
    fn quantile(&self, window: &RollingQuantiles, i: usize) -> Option<f64> {
        // Asked for more than the window's ranks can promise (τ near or past 1): the
        // quantile goes past the largest rank (see `RollingQuantiles::quantile`).
        window.quantile(1.0 - self.alpha[i])
    }

    fn update(&mut self, window: &RollingQuantiles, observed: f64) {
        for i in 0..LEVELS.len() {
            if window.len() < MIN_WINDOW {
                return;
            }
            if let Some(q) = self.quantile(window, i) {
                let miss = if observed > q { 1.0 } else { 0.0 };
                let target = 1.0 - LEVELS[i];
                self.alpha[i] = (self.alpha[i] + ACI_GAMMA * (target - miss)).clamp(-0.5, 1.0);
            }
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceModels {
    pub satisfaction: Rls,
    pub cpu: Rls,
    pub memory: Rls,
    pub network: Rls,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ForecastConfig {
    /// Rolling window of latency residuals per key (and 8× that globally).
    pub quantile_window: usize,
    /// Residuals a key needs before its own quantiles are used.
    pub min_key_residuals: usize,
    /// Weight of the past in the decayed output-token mean.
    pub output_decay: f64,
    /// Forgetting factor λ of the learned corrections: an outcome `a` outcomes old weighs
    /// λ^a (1 = never forget).
    pub forgetting: f64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self {
            quantile_window: 400,
            min_key_residuals: 40,
            output_decay: 0.98,
            forgetting: 0.997,
        }
    }
}

const LATENCY_DIM: usize = 10;
const COST_DIM: usize = 4;
const SAT_DIM: usize = 6;
const RES_DIM: usize = 4;
/// Prior variances of the corrections (units: ms, credits or USD, 1-5 points, percent),
/// wide enough that a few dozen outcomes dominate, narrow enough that one cannot.
const LATENCY_PRIOR: [f64; LATENCY_DIM] = [
    400.0 * 400.0,
    200.0 * 200.0,
    0.05,
    300.0 * 300.0,
    2000.0 * 2000.0,
    50.0 * 50.0,
    100.0 * 100.0,
    100.0 * 100.0,
    500.0 * 500.0,
    500.0 * 500.0,
];
const COST_PRIOR: [f64; COST_DIM] = [1e-4, 1e-4, 1e-4, 1e-4];
const SAT_PRIOR: [f64; SAT_DIM] = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
const RES_PRIOR: [f64; RES_DIM] = [400.0, 100.0, 25.0, 25.0];
/// Noise variances assumed by the updates (only their ratio to the prior matters).
const LATENCY_NOISE: f64 = 100.0 * 100.0;
const COST_NOISE: f64 = 1e-6;
const SAT_NOISE: f64 = 0.25;
const RES_NOISE: f64 = 25.0;
pub const MAX_KEYS: usize = 100_000;

fn key_new(cfg: &ForecastConfig) -> RequestKey {
    RequestKey {
        latency: Rls::new(&LATENCY_PRIOR),
        cost: Rls::new(&COST_PRIOR),
        output_tokens: 0.0,
        output_count: 0,
        calib: [
            Calib::new(cfg.quantile_window),
            Calib::new(cfg.quantile_window),
        ],
    }
}

fn service_new() -> ServiceModels {
    ServiceModels {
        satisfaction: Rls::new(&SAT_PRIOR),
        cpu: Rls::new(&RES_PRIOR),
        memory: Rls::new(&RES_PRIOR),
        network: Rls::new(&RES_PRIOR),
    }
}

#[inline]
fn get(ctx: &[f64], i: usize) -> Option<f64> {
    ctx.get(i).copied().filter(|v| !v.is_nan())
}

fn or0(ctx: &[f64], i: usize) -> f64 {
    get(ctx, i).unwrap_or(0.0)
}

/// Confidence from evidence: the prior's fixed confidence with no data, moving toward a
/// fit score (error small next to the level predicted) as outcomes accumulate.
fn confidence(prior: f64, n: u64, err: &ErrorStats, level: f64) -> f64 {
    if n == 0 {
        return prior;
    }
    let w = n as f64 / (n as f64 + 20.0);
    let fit = 1.0 / (1.0 + err.rmse() / (level.abs() + 1e-9));
    ((1.0 - w) * prior + w * fit).clamp(0.05, 0.99)
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Forecaster {
    pub config: ForecastConfig,
    /// Interned names; index 0 of each is "" (absent).
    pub services: Vec<String>,
    pub providers: Vec<String>,
    pub models: Vec<String>,
    pub keys: Vec<((u32, u32, u32), RequestKey)>,
    pub per_service: Vec<(u32, ServiceModels)>,
    /// Back-off calibration per kind (`[INFORMED, BLIND]`), over every key's residuals.
    pub global: [Calib; 2],
    pub prices: PriceTable,
    pub outcomes: u64,
    #[serde(skip)]
    key_index: HashMap<(u32, u32, u32), usize>,
    #[serde(skip)]
    service_index: HashMap<u32, usize>,
    #[serde(skip)]
    names: [HashMap<String, u32>; 3],
    #[serde(skip)]
    price_cache: HashMap<(u32, u32), Option<Price>>,
}

/// Which name table `intern` adds to.
#[derive(Clone, Copy)]
pub enum NameKind {
    Service = 0,
    Provider = 1,
    Model = 2,
}

/// The old per-service base latency (ms).
pub fn base_latency(service: &str) -> f64 {
    match service {
        "ai-gm" => 80.0,
        "oracle" => 60.0,
        "code-roach" => 70.0,
        "daisy-chain" => 65.0,
        "first-mate" => 40.0,
        "game-app" => 50.0,
        _ => 50.0,
    }
}

impl Forecaster {
    pub fn new(config: ForecastConfig, prices: PriceTable) -> Self {
        let mut f = Forecaster {
            global: [
                Calib::new(config.quantile_window * 8),
                Calib::new(config.quantile_window * 8),
            ],
            config,
            prices,
            ..Default::default()
        };
        f.services.push(String::new());
        f.providers.push(String::new());
        f.models.push(String::new());
        f.rebuild();
        f
    }

    fn rebuild(&mut self) {
        self.key_index = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (*k, i))
            .collect();
        self.service_index = self
            .per_service
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (*k, i))
            .collect();
        for (t, names) in [&self.services, &self.providers, &self.models]
            .into_iter()
            .enumerate()
        {
            self.names[t] = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i as u32))
                .collect();
        }
        self.price_cache.clear();
    }

    pub fn intern(&mut self, kind: NameKind, name: &str) -> Result<u32, String> {
        let t = kind as usize;
        if let Some(&id) = self.names[t].get(name) {
            return Ok(id);
        }
        if name.len() > 1024 {
            return Err("names must be at most 1024 bytes".into());
        }
        let table = match kind {
            NameKind::Service => &mut self.services,
            NameKind::Provider => &mut self.providers,
            NameKind::Model => &mut self.models,
        };
        if table.len() >= MAX_KEYS {
            return Err(format!("too many distinct names (limit {MAX_KEYS})"));
        }
        let id = table.len() as u32;
        table.push(name.to_owned());
        self.names[t].insert(name.to_owned(), id);
        Ok(id)
    }

    pub fn set_prices(&mut self, prices: PriceTable) {
        self.prices = prices;
        self.price_cache.clear();
    }

    fn ids(&self, ctx: &[f64]) -> Result<(u32, u32, u32), String> {
        let id = |i: usize, len: usize, what: &str| {
            let v = get(ctx, i).unwrap_or(0.0);
            if v >= 0.0 && v.fract() == 0.0 && (v as usize) < len {
                Ok(v as u32)
            } else {
                Err(format!("unknown {what} id {v}"))
            }
        };
        Ok((
            id(slot::SERVICE, self.services.len(), "service")?,
            id(slot::PROVIDER, self.providers.len(), "provider")?,
            id(slot::MODEL, self.models.len(), "model")?,
        ))
    }

    /// The price of `model` (as `<model>` or `<provider>/<model>` in the table), cached.
    fn price(&mut self, provider: u32, model: u32) -> Option<Price> {
        if model == 0 {
            return None;
        }
        if let Some(p) = self.price_cache.get(&(provider, model)) {
            return p.clone();
        }
        let m = &self.models[model as usize];
        let p = &self.providers[provider as usize];
        let found = self
            .prices
            .get(m)
            .or_else(|| {
                if p.is_empty() {
                    None
                } else {
                    self.prices.get(&format!("{p}/{m}"))
                }
            })
            .cloned();
        if self.price_cache.len() > 10_000 {
            self.price_cache.clear();
        }
        self.price_cache.insert((provider, model), found.clone());
        found
    }

    fn hour(ctx: &[f64]) -> f64 {
        get(ctx, slot::HOUR).unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            ((secs / 3600) % 24) as f64
        })
    }

    /// `out_tokens`: the request's output tokens when known, else the key's learned mean
    /// (at prediction time the answer's length is usually not known yet).
    fn latency_features(ctx: &[f64], out_tokens: f64) -> [f64; LATENCY_DIM] {
        let h = Self::hour(ctx) / 24.0 * std::f64::consts::TAU;
        let out_k = out_tokens / 1000.0;
        // Load over the day scales generation time, so the hour also enters as a product
        // with the output length, not only on its own.
        [
            1.0,
            if or0(ctx, slot::CACHE_HIT) != 0.0 {
                1.0
            } else {
                0.0
            },
            or0(ctx, slot::INPUT_SIZE),
            or0(ctx, slot::INPUT_TOKENS) / 1000.0,
            out_k,
            or0(ctx, slot::CONCURRENT),
            h.sin(),
            h.cos(),
            out_k * h.sin(),
            out_k * h.cos(),
        ]
    }

    /// The old latency rule: per-service base, ×0.1 on a cache hit, + 0.01 × inputSize.
    fn latency_prior(&self, service: u32, ctx: &[f64]) -> (f64, f64) {
        let base = base_latency(&self.services[service as usize]);
        let cache = or0(ctx, slot::CACHE_HIT) != 0.0;
        (
            (if cache { base * 0.1 } else { base }) + 0.01 * or0(ctx, slot::INPUT_SIZE),
            base,
        )
    }

    fn cost_features(ctx: &[f64], output_tokens: f64) -> [f64; COST_DIM] {
        [
            1.0,
            or0(ctx, slot::INPUT_TOKENS) / 1000.0,
            output_tokens / 1000.0,
            if or0(ctx, slot::CACHE_HIT) != 0.0 {
                1.0
            } else {
                0.0
            },
        ]
    }

    /// The old cost rule: (0.001 + 1e-6·in + 2e-6·out) × 0.1 on a cache hit.
    /// Returns (total, base, input, output, cache discount).
    fn cost_prior(ctx: &[f64], output_tokens: f64) -> (f64, f64, f64, f64, f64) {
        let base = 0.001;
        let input = 1e-6 * or0(ctx, slot::INPUT_TOKENS);
        let output = 2e-6 * output_tokens;
        let sum = base + input + output;
        // `sum × 0.1` as the old code computed it, so day-one values match to the last bit.
        let cost = if or0(ctx, slot::CACHE_HIT) != 0.0 {
            sum * 0.1
        } else {
            sum
        };
        (cost, base, input, output, sum - cost)
    }

    fn satisfaction_features(ctx: &[f64]) -> [f64; SAT_DIM] {
        [
            1.0,
            or0(ctx, slot::QUALITY) / 10.0,
            (1.0 - or0(ctx, slot::LATENCY) / 1000.0).max(0.0),
            get(ctx, slot::RELEVANCE).unwrap_or(0.5),
            get(ctx, slot::COHERENCE).unwrap_or(0.5),
            // The old latency term saturates at 1 s; LLM latencies are mostly above that.
            or0(ctx, slot::LATENCY) / 10_000.0,
        ]
    }

    /// The old satisfaction rule, before its [1, 5] clamp.
    fn satisfaction_prior(ctx: &[f64]) -> f64 {
        let f = Self::satisfaction_features(ctx);
        let s = 0.4 * f[1] + 0.2 * f[2] + 0.2 * f[3] + 0.2 * f[4];
        1.0 + 4.0 * s
    }

    /// The old rule's batch size, `context.batchSize || 1`: absent or 0 counts as 1.
    fn batch_size(ctx: &[f64]) -> f64 {
        let b = or0(ctx, slot::BATCH_SIZE);
        if b == 0.0 {
            1.0
        } else {
            b
        }
    }

    fn resource_features(ctx: &[f64]) -> [f64; RES_DIM] {
        [
            1.0,
            or0(ctx, slot::INPUT_SIZE) / 1000.0,
            Self::batch_size(ctx),
            or0(ctx, slot::CONCURRENT),
        ]
    }

    fn resource_prior(ctx: &[f64]) -> [f64; 3] {
        let size = or0(ctx, slot::INPUT_SIZE);
        [
            20.0 + 0.1 * size,
            30.0 + 5.0 * Self::batch_size(ctx),
            5.0 + 0.01 * size,
        ]
    }

    fn key(&self, k: (u32, u32, u32)) -> Option<&RequestKey> {
        self.key_index.get(&k).map(|&i| &self.keys[i].1)
    }

    fn key_mut(&mut self, k: (u32, u32, u32)) -> Result<&mut RequestKey, String> {
        let i = match self.key_index.get(&k) {
            Some(&i) => i,
            None => {
                if self.keys.len() >= MAX_KEYS {
                    return Err(format!(
                        "too many distinct service/provider/model keys (limit {MAX_KEYS})"
                    ));
                }
                self.keys.push((k, key_new(&self.config)));
                self.key_index.insert(k, self.keys.len() - 1);
                self.keys.len() - 1
            }
        };
        Ok(&mut self.keys[i].1)
    }

    fn service_mut(&mut self, s: u32) -> &mut ServiceModels {
        let i = *self.service_index.entry(s).or_insert_with(|| {
            self.per_service.push((s, service_new()));
            self.per_service.len() - 1
        });
        &mut self.per_service[i].1
    }

    fn service(&self, s: u32) -> Option<&ServiceModels> {
        self.service_index.get(&s).map(|&i| &self.per_service[i].1)
    }

    /// Everything for one packed context, into `o` (`out::COUNT` values).
    pub fn predict_all(&mut self, ctx: &[f64], o: &mut [f64]) -> Result<(), String> {
        if ctx.len() < slot::COUNT || o.len() < out::COUNT {
            return Err("packed buffers are too short".into());
        }
        let k @ (service, provider, model) = self.ids(ctx)?;
        let price = self.price(provider, model);
        let key = self.key(k);

        // Output tokens: given, else learned for this key, else 0 (the old rule's default).
        let given = get(ctx, slot::OUTPUT_TOKENS);
        let predicted_out = key
            .filter(|r| r.output_count > 0)
            .map(|r| r.output_tokens.round());
        let out_tokens = given.or(predicted_out).unwrap_or(0.0);

        // Latency.
        let (prior, base) = self.latency_prior(service, ctx);
        let phi = Self::latency_features(ctx, out_tokens);
        let (lat, n, err) = match key {
            Some(r) if r.latency.n > 0 => (
                (prior + r.latency.predict(&phi)).max(0.0),
                r.latency.n,
                r.latency.error,
            ),
            _ => (prior, 0, ErrorStats::default()),
        };
        let latency = lat.round();
        // The band is calibrated on residuals of the same kind of prediction as the one
        // served: with the output length given, or without it (then it was predicted).
        let kind = if given.is_some() { INFORMED } else { BLIND };
        let ratios = match key {
            // The old rule alone (nothing learned for this key yet): its fixed band.
            None => [0.0, 1.5f64.ln(), 2.0f64.ln()],
            Some(r) if r.latency.n == 0 => [0.0, 1.5f64.ln(), 2.0f64.ln()],
            Some(r) => {
                let c = if r.calib[kind].window.len() >= self.config.min_key_residuals {
                    &r.calib[kind]
                } else {
                    &self.global[kind]
                };
                c.bounds().unwrap_or_else(|| c.small_bounds())
            }
        };
        let scale = latency.max(1.0);
        let p50 = (scale * ratios[0].exp()).round();
        let p95 = (scale * ratios[1].exp()).round().max(p50);
        o[out::LATENCY] = latency;
        o[out::LATENCY_CONF] = confidence(0.7, n, &err, lat);
        o[out::P50] = p50;
        o[out::P95] = p95;
        o[out::P99] = (scale * ratios[2].exp()).round().max(p95);
        o[out::LATENCY_SAMPLES] = n as f64;
        o[out::BASE_LATENCY] = base;

        o[out::OUTPUT_TOKENS_USED] = out_tokens;
        o[out::OUTPUT_TOKENS_PREDICTED] = if given.is_none() && predicted_out.is_some() {
            1.0
        } else {
            0.0
        };

        // Cost.
        if let Some(p) = price {
            let input = or0(ctx, slot::INPUT_TOKENS);
            let cached = if get(ctx, slot::CACHED_INPUT_TOKENS).is_some() {
                or0(ctx, slot::CACHED_INPUT_TOKENS).min(input)
            } else if or0(ctx, slot::CACHE_HIT) != 0.0 {
                input
            } else {
                0.0
            };
            let cache_rate = p
                .cache_read_input_token_cost
                .unwrap_or(p.input_cost_per_token);
            let input_cost = (input - cached) * p.input_cost_per_token + cached * cache_rate;
            let output_cost = out_tokens * p.output_cost_per_token;
            o[out::COST] = input_cost + output_cost;
            o[out::COST_USD] = 1.0;
            o[out::COST_BASE] = 0.0;
            o[out::COST_INPUT] = input_cost;
            o[out::COST_OUTPUT] = output_cost;
            o[out::COST_CACHE_DISCOUNT] = cached * (p.input_cost_per_token - cache_rate);
            // Exact given the tokens; less sure when the output count was predicted.
            o[out::COST_CONF] = if given.is_some() {
                0.99
            } else if predicted_out.is_some() {
                0.85
            } else {
                0.6
            };
            o[out::COST_SAMPLES] = key.map_or(0, |r| r.output_count) as f64;
        } else {
            let (prior_cost, b, i, out_c, disc) = Self::cost_prior(ctx, out_tokens);
            let phi = Self::cost_features(ctx, out_tokens);
            let (cost, n, err) = match key {
                Some(r) if r.cost.n > 0 => (
                    (prior_cost + r.cost.predict(&phi)).max(0.0),
                    r.cost.n,
                    r.cost.error,
                ),
                _ => (prior_cost, 0, ErrorStats::default()),
            };
            o[out::COST] = cost;
            o[out::COST_USD] = 0.0;
            o[out::COST_BASE] = b;
            o[out::COST_INPUT] = i;
            o[out::COST_OUTPUT] = out_c;
            o[out::COST_CACHE_DISCOUNT] = disc;
            // An unknown named model is a guess by the old rule: say so.
            let prior_conf = if model != 0 { 0.6 } else { 0.8 };
            o[out::COST_CONF] = confidence(prior_conf, n, &err, cost);
            o[out::COST_SAMPLES] = n as f64;
        }

        // Satisfaction and resources, per service.
        let svc = self.service(service);
        let sphi = Self::satisfaction_features(ctx);
        let sprior = Self::satisfaction_prior(ctx);
        let (sat, sn, serr) = match svc {
            Some(s) if s.satisfaction.n > 0 => (
                sprior + s.satisfaction.predict(&sphi),
                s.satisfaction.n,
                s.satisfaction.error,
            ),
            _ => (sprior, 0, ErrorStats::default()),
        };
        o[out::SATISFACTION] = sat.clamp(1.0, 5.0);
        o[out::SATISFACTION_CONF] = confidence(0.75, sn, &serr, 4.0);
        o[out::SATISFACTION_SAMPLES] = sn as f64;

        let rphi = Self::resource_features(ctx);
        let rprior = Self::resource_prior(ctx);
        let mut rn = 0;
        let mut rerr = ErrorStats::default();
        for (j, slot_out) in [out::CPU, out::MEMORY, out::NETWORK]
            .into_iter()
            .enumerate()
        {
            let corr = svc
                .map(|s| [&s.cpu, &s.memory, &s.network][j])
                .filter(|m| m.n > 0);
            let v = rprior[j] + corr.map_or(0.0, |m| m.predict(&rphi));
            if let Some(m) = corr {
                if m.n > rn {
                    rn = m.n;
                    rerr = m.error;
                }
            }
            o[slot_out] = v.round().clamp(0.0, 100.0);
        }
        o[out::RESOURCES_CONF] = confidence(0.7, rn, &rerr, 50.0);
        o[out::RESOURCES_SAMPLES] = rn as f64;
        Ok(())
    }

    /// Learns from one outcome (packed context + packed outcome; NaN = not observed).
    pub fn record(&mut self, ctx: &[f64], oc: &[f64]) -> Result<(), String> {
        if ctx.len() < slot::COUNT || oc.len() < outcome::COUNT {
            return Err("packed buffers are too short".into());
        }
        let k @ (service, provider, model) = self.ids(ctx)?;
        let ctx_in = ctx;
        let mut ctx_v: [f64; slot::COUNT] = [f64::NAN; slot::COUNT];
        ctx_v.copy_from_slice(&ctx[..slot::COUNT]);
        // Observed token counts describe this request better than the caller's estimates.
        if let Some(t) = get(oc, outcome::INPUT_TOKENS) {
            ctx_v[slot::INPUT_TOKENS] = t;
        }
        if let Some(t) = get(oc, outcome::OUTPUT_TOKENS) {
            ctx_v[slot::OUTPUT_TOKENS] = t;
        }
        let ctx = &ctx_v[..];
        let priced = self.price(provider, model).is_some();
        let cfg_decay = self.config.output_decay;
        let lambda = self.config.forgetting;
        let min_key = self.config.min_key_residuals;
        let (lat_prior, _) = self.latency_prior(service, ctx);
        // The served prediction without the output length used the key's learned mean;
        // the informed one used the length given in the context (the caller's estimate)
        // or, failing that, the observed one.
        let served_tokens = get(ctx_in, slot::OUTPUT_TOKENS);

        let mut global_ratios = [None, None];
        {
            let key = self.key_mut(k)?;
            if let Some(lat) = get(oc, outcome::LATENCY_MS) {
                let learned = key.latency.n > 0;
                let predict = |key: &RequestKey, tokens: f64| {
                    let phi = Self::latency_features(ctx, tokens);
                    let c = if learned { key.latency.predict(&phi) } else { 0.0 };
                    (lat_prior + c).max(0.0).round().max(1.0)
                };
                let est = if key.output_count > 0 {
                    key.output_tokens.round()
                } else {
                    0.0
                };
                let informed_tokens = served_tokens.or(get(ctx, slot::OUTPUT_TOKENS));
                let blind = predict(key, est);
                let informed = informed_tokens.map(|t| predict(key, t));
                let ln_lat = lat.max(1.0).ln();
                // Score both kinds a caller could have been served. A prediction of the
                // old rule alone (nothing learned yet) is not scored: its band is fixed.
                let ratios = [informed.map(|p| ln_lat - p.ln()), Some(ln_lat - blind.ln())];
                if learned {
                    for kind in [INFORMED, BLIND] {
                        if let Some(r) = ratios[kind] {
                            let judge = key.calib[kind].window.len() >= min_key;
                            key.calib[kind].record(r, judge);
                            global_ratios[kind] = Some((r, judge));
                        }
                    }
                }
                // The point error is the one of the prediction made with the most
                // information (the observed length, when there is one).
                let phi = Self::latency_features(ctx, get(ctx, slot::OUTPUT_TOKENS).unwrap_or(est));
                let before = (lat_prior
                    + if learned {
                        key.latency.predict(&phi)
                    } else {
                        0.0
                    })
                .max(0.0);
                key.latency.error.record(before - lat, 0.98);
                key.latency.update(&phi, lat - lat_prior, LATENCY_NOISE);
                key.latency.forget(lambda, &LATENCY_PRIOR);
            }
            if let Some(t) = get(oc, outcome::OUTPUT_TOKENS) {
                key.output_tokens = if key.output_count == 0 {
                    t
                } else {
                    cfg_decay * key.output_tokens + (1.0 - cfg_decay) * t
                };
                key.output_count += 1;
            }
            if let (Some(cost), false) = (get(oc, outcome::COST), priced) {
                let out_t = or0(ctx, slot::OUTPUT_TOKENS);
                let (prior, ..) = Self::cost_prior(ctx, out_t);
                let phi = Self::cost_features(ctx, out_t);
                let before = prior
                    + if key.cost.n > 0 {
                        key.cost.predict(&phi)
                    } else {
                        0.0
                    };
                key.cost.error.record(before - cost, 0.98);
                key.cost.update(&phi, cost - prior, COST_NOISE);
                key.cost.forget(lambda, &COST_PRIOR);
            }
        }
        for kind in [INFORMED, BLIND] {
            if let Some((r, key_served)) = global_ratios[kind] {
                // The global window's ACI step is judged on the outcomes it served.
                let g = &mut self.global[kind];
                if key_served {
                    g.window.push(r - g.level);
                    g.level = LEVEL_DECAY * g.level + (1.0 - LEVEL_DECAY) * r;
                } else {
                    g.record(r, true);
                }
            }
        }
        let sphi = Self::satisfaction_features(ctx);
        let sprior = Self::satisfaction_prior(ctx);
        let rphi = Self::resource_features(ctx);
        let rprior = Self::resource_prior(ctx);
        let s = self.service_mut(service);
        if let Some(sat) = get(oc, outcome::SATISFACTION) {
            let before = (sprior
                + if s.satisfaction.n > 0 {
                    s.satisfaction.predict(&sphi)
                } else {
                    0.0
                })
            .clamp(1.0, 5.0);
            s.satisfaction.error.record(before - sat, 0.98);
            s.satisfaction.update(&sphi, sat - sprior, SAT_NOISE);
            s.satisfaction.forget(lambda, &SAT_PRIOR);
        }
        for (j, idx) in [outcome::CPU, outcome::MEMORY, outcome::NETWORK]
            .into_iter()
            .enumerate()
        {
            if let Some(v) = get(oc, idx) {
                let m = [&mut s.cpu, &mut s.memory, &mut s.network];
                let m = m.into_iter().nth(j).expect("three resource models");
                let before = rprior[j] + if m.n > 0 { m.predict(&rphi) } else { 0.0 };
                m.error.record(before - v, 0.98);
                m.update(&rphi, v - rprior[j], RES_NOISE);
                m.forget(lambda, &RES_PRIOR);
            }
        }
        self.outcomes += 1;
        Ok(())
    }

    pub fn to_json(&self) -> Result<String, String> {
        let mut v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let Some(o) = v.as_object_mut() {
            o.insert("format".into(), "mlops-native/expanded-predictions".into());
            o.insert("formatVersion".into(), 1.into());
        }
        serde_json::to_string(&v).map_err(|e| e.to_string())
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("state is not valid JSON: {e}"))?;
        if v.get("format").and_then(|f| f.as_str()) != Some("mlops-native/expanded-predictions") {
            return Err(
                "state is not an ExpandedPredictions state (format field missing or different)"
                    .into(),
            );
        }
        let mut f: Forecaster = serde_json::from_value(v)
            .map_err(|e| format!("state does not match the ExpandedPredictions schema: {e}"))?;
        let ok_rls = |r: &Rls, d: usize| {
            r.theta.len() == d
                && r.p.len() == d * d
                && r.theta.iter().chain(&r.p).all(|v| v.is_finite())
        };
        for (k, key) in &f.keys {
            if k.0 as usize >= f.services.len()
                || k.1 as usize >= f.providers.len()
                || k.2 as usize >= f.models.len()
            {
                return Err("state refers to an unknown name id".into());
            }
            if !ok_rls(&key.latency, LATENCY_DIM) || !ok_rls(&key.cost, COST_DIM) {
                return Err("state holds a malformed latency or cost model".into());
            }
        }
        for (s, m) in &f.per_service {
            if *s as usize >= f.services.len()
                || !ok_rls(&m.satisfaction, SAT_DIM)
                || !ok_rls(&m.cpu, RES_DIM)
                || !ok_rls(&m.memory, RES_DIM)
                || !ok_rls(&m.network, RES_DIM)
            {
                return Err("state holds a malformed service model".into());
            }
        }
        if [&f.services, &f.providers, &f.models]
            .iter()
            .any(|t| t.first().map(String::as_str) != Some(""))
        {
            return Err("state's name tables are malformed".into());
        }
        // Windows of older files (or of kinds they did not have) start empty at the
        // configured size.
        let cap = f.config.quantile_window.max(1);
        for (_, key) in f.keys.iter_mut() {
            for c in key.calib.iter_mut() {
                if c.window.cap == 0 {
                    c.window.cap = cap;
                }
            }
        }
        for c in f.global.iter_mut() {
            if c.window.cap == 0 {
                c.window.cap = cap * 8;
            }
        }
        f.rebuild();
        if f.names
            .iter()
            .zip([&f.services, &f.providers, &f.models])
            .any(|(m, t)| m.len() != t.len())
        {
            return Err("state has duplicate names".into());
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> [f64; slot::COUNT] {
        [f64::NAN; slot::COUNT]
    }

    fn fresh() -> Forecaster {
        let prices = parse_price_table(&serde_json::json!({
            "gpt-4o": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5, "cache_read_input_token_cost": 1.25e-6, "litellm_provider": "openai"},
            "sample_spec": {"max_tokens": "set to max"},
        }))
        .unwrap();
        Forecaster::new(ForecastConfig::default(), prices)
    }

    #[test]
    fn cold_start_is_exactly_the_old_rules() {
        let mut f = fresh();
        let s = f.intern(NameKind::Service, "ai-gm").unwrap();
        let mut c = ctx();
        c[slot::SERVICE] = s as f64;
        c[slot::CACHE_HIT] = 1.0;
        c[slot::INPUT_SIZE] = 250.0;
        c[slot::INPUT_TOKENS] = 1000.0;
        c[slot::OUTPUT_TOKENS] = 500.0;
        c[slot::QUALITY] = 8.0;
        c[slot::LATENCY] = 200.0;
        c[slot::BATCH_SIZE] = 4.0;
        let mut o = [0.0; out::COUNT];
        f.predict_all(&c, &mut o).unwrap();
        assert_eq!(o[out::LATENCY], (80.0f64 * 0.1 + 2.5).round());
        assert_eq!(o[out::LATENCY_CONF], 0.7);
        assert_eq!(o[out::COST], (0.001 + 1e-6 * 1000.0 + 2e-6 * 500.0) * 0.1);
        assert_eq!(o[out::COST_CONF], 0.8);
        let s = 0.4 * 0.8 + 0.2 * 0.8 + 0.2 * 0.5 + 0.2 * 0.5;
        assert!((o[out::SATISFACTION] - (1.0 + 4.0 * s)).abs() < 1e-12);
        assert_eq!(
            [o[out::CPU], o[out::MEMORY], o[out::NETWORK]],
            [45.0, 50.0, 8.0]
        );
    }

    #[test]
    fn priced_models_cost_exactly_and_unknown_ones_fall_back() {
        let mut f = fresh();
        let m = f.intern(NameKind::Model, "gpt-4o").unwrap();
        let mut c = ctx();
        c[slot::MODEL] = m as f64;
        c[slot::INPUT_TOKENS] = 1000.0;
        c[slot::CACHED_INPUT_TOKENS] = 400.0;
        c[slot::OUTPUT_TOKENS] = 200.0;
        let mut o = [0.0; out::COUNT];
        f.predict_all(&c, &mut o).unwrap();
        let want = 600.0 * 2.5e-6 + 400.0 * 1.25e-6 + 200.0 * 1e-5;
        assert!((o[out::COST] - want).abs() < 1e-15);
        assert_eq!(o[out::COST_USD], 1.0);
        assert!((o[out::COST_CACHE_DISCOUNT] - 400.0 * 1.25e-6).abs() < 1e-15);
        let u = f.intern(NameKind::Model, "mystery").unwrap();
        c[slot::MODEL] = u as f64;
        f.predict_all(&c, &mut o).unwrap();
        assert_eq!(o[out::COST_USD], 0.0);
        assert_eq!(o[out::COST_CONF], 0.6);
    }

    #[test]
    fn latency_learns_per_key_and_quantiles_cover() {
        let mut f = fresh();
        let fast = f.intern(NameKind::Model, "fast").unwrap();
        let slow = f.intern(NameKind::Model, "slow").unwrap();
        let mut rng = super::super::finetune::SplitMix(9);
        let mut u = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut o = [0.0; out::COUNT];
        let (mut covered, mut total, mut err) = (0, 0, 0.0);
        for t in 0..6000 {
            let m = if u() < 0.5 { fast } else { slow };
            let toks = (50.0 + 950.0 * u()).round();
            let truth = if m == fast {
                200.0 + 5.0 * toks
            } else {
                900.0 + 20.0 * toks
            };
            let lat = truth * (0.25 * (u() + u() + u() + u() - 2.0)).exp();
            let mut c = ctx();
            c[slot::MODEL] = m as f64;
            c[slot::OUTPUT_TOKENS] = toks;
            c[slot::HOUR] = 12.0;
            f.predict_all(&c, &mut o).unwrap();
            if t >= 4000 {
                total += 1;
                covered += (lat <= o[out::P95]) as i32;
                err += (o[out::LATENCY] - lat).abs();
            }
            let mut oc = [f64::NAN; outcome::COUNT];
            oc[outcome::LATENCY_MS] = lat;
            f.record(&c, &oc).unwrap();
        }
        let coverage = covered as f64 / total as f64;
        assert!((0.92..=0.98).contains(&coverage), "p95 coverage {coverage}");
        let mae = err / total as f64;
        assert!(mae < 0.25 * 8000.0, "mae {mae}");
        assert!(o[out::LATENCY_CONF] != 0.7);
    }

    #[test]
    fn an_absurd_outcome_does_not_poison_the_model() {
        let mut f = fresh();
        let mut c = ctx();
        c[slot::INPUT_TOKENS] = 1e300;
        c[slot::OUTPUT_TOKENS] = 1e300;
        let mut oc = [f64::NAN; outcome::COUNT];
        oc[outcome::LATENCY_MS] = 1e300;
        oc[outcome::COST] = 1e300;
        f.record(&c, &oc).unwrap();
        let mut o = [0.0; out::COUNT];
        let mut normal = ctx();
        normal[slot::INPUT_TOKENS] = 100.0;
        f.predict_all(&normal, &mut o).unwrap();
        assert!(o.iter().all(|v| v.is_finite()), "{o:?}");
        let mut oc = [f64::NAN; outcome::COUNT];
        oc[outcome::LATENCY_MS] = 500.0;
        for _ in 0..30 {
            f.record(&normal, &oc).unwrap();
        }
        f.predict_all(&normal, &mut o).unwrap();
        assert!(
            (o[out::LATENCY] - 500.0).abs() < 100.0,
            "still learns: {}",
            o[out::LATENCY]
        );
    }

    #[test]
    fn state_round_trips() {
        let mut f = fresh();
        let s = f.intern(NameKind::Service, "svc").unwrap();
        let mut c = ctx();
        c[slot::SERVICE] = s as f64;
        c[slot::QUALITY] = 7.0;
        let mut oc = [f64::NAN; outcome::COUNT];
        oc[outcome::SATISFACTION] = 2.0;
        oc[outcome::LATENCY_MS] = 300.0;
        for _ in 0..20 {
            f.record(&c, &oc).unwrap();
        }
        let back = Forecaster::from_json(&f.to_json().unwrap()).unwrap();
        let (mut a, mut b) = ([0.0; out::COUNT], [0.0; out::COUNT]);
        f.predict_all(&c, &mut a).unwrap();
        let mut back = back;
        back.predict_all(&c, &mut b).unwrap();
        assert_eq!(a, b);
        assert!(
            a[out::SATISFACTION] < 2.6,
            "learned toward 2: {}",
            a[out::SATISFACTION]
        );
        assert!(Forecaster::from_json("{}").is_err());
    }

    #[test]
    fn student_t_quantiles_match_tables() {
        for (p, df, want) in [
            (0.975, 10.0, 2.228),
            (0.99, 19.0, 2.539),
            (0.95, 3.0, 2.353),
            (0.99, 39.0, 2.426),
            (0.95, 1.0, 6.314),
            (0.95, 2.0, 2.920),
        ] {
            let t = student_t_quantile(p, df);
            assert!((t - want).abs() < 2e-3 * want, "t({p}, {df}) = {t}, table {want}");
        }
        assert!((normal_quantile(0.975) - 1.959964).abs() < 1e-6);
    }

    /// Coverage of the next value by `quantile(tau)` over windows of `sizes` normal draws.
    fn coverage(sizes: std::ops::Range<usize>, tau: f64, reps: usize) -> f64 {
        let mut rng = super::super::finetune::SplitMix(5);
        let mut u = move || ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let (mut hit, mut total) = (0usize, 0usize);
        for n in sizes {
            for _ in 0..reps {
                let mut w = RollingQuantiles::new(1000);
                for _ in 0..n {
                    w.push(normal_quantile(u()));
                }
                let q = if n < MIN_WINDOW {
                    w.normal_bound(tau).unwrap()
                } else {
                    w.quantile(tau).unwrap()
                };
                hit += (normal_quantile(u()) <= q) as usize;
                total += 1;
            }
        }
        hit as f64 / total as f64
    }

    #[test]
    fn small_windows_have_exact_finite_sample_quantiles() {
        // p99 with 20-98 values: past the largest conformal rank. The window maximum
        // covered n/(n+1) (≈ 96.7 % averaged over 20-39); the bound covers 99 %.
        let c = coverage(20..40, 0.99, 400);
        assert!(c >= 0.985, "p99 coverage at 20-39 values: {c}");
        let c = coverage(40..99, 0.99, 100);
        assert!(c >= 0.985, "p99 coverage at 40-98 values: {c}");
        // The band below 20 values: the prediction bound reaches nominal p95.
        let c = coverage(2..20, 0.95, 500);
        assert!((0.94..=0.96).contains(&c), "p95 coverage at 2-19 values: {c}");
        // Where the rank exists it is the conformal one.
        let mut w = RollingQuantiles::new(10);
        for v in 1..=9 {
            w.push(v as f64);
        }
        assert_eq!(w.quantile(0.5), Some(5.0));
        assert_eq!(w.quantile(0.9), Some(9.0));
        assert!(w.quantile(0.95).unwrap() > 9.0, "past the largest rank: above the max");
    }

    #[test]
    fn forgetting_follows_a_level_change_and_never_winds_up() {
        let mut r = Rls::new(&[100.0, 100.0]);
        for _ in 0..5000 {
            r.update(&[1.0, 0.0], 10.0, 1.0);
            r.forget(0.99, &[100.0, 100.0]);
        }
        for _ in 0..500 {
            r.update(&[1.0, 0.0], 20.0, 1.0);
            r.forget(0.99, &[100.0, 100.0]);
        }
        assert!((r.predict(&[1.0, 0.0]) - 20.0).abs() < 0.1, "{:?}", r.theta);
        // The unexcited direction stays at its prior variance, not λ^-5500 times it.
        assert!(r.p[3] <= 100.0 + 1e-9 && r.p[3] > 99.0, "{}", r.p[3]);
    }
}
