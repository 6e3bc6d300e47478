//! Ensembles of base-model predictions that learn from feedback.
//!
//! Four ways to combine base predictions, all judged prequentially (each feedback first
//! scores what every strategy *would have said*, then learns), per context
//! (`serviceName` + `predictionType`) with a global fallback:
//! - stacking: a ridge-regularised, exponentially forgetting least-squares meta-learner on
//!   the base predictions plus an intercept, so it can both weight models and undo a
//!   biased one; the ridge pulls toward equal weights while evidence is thin;
//! - dynamic selection: the most competent models for the context (decayed error);
//! - confidence-weighted voting: the old `confidence²` rule, optionally with confidences
//!   calibrated against observed error;
//! - the plain average, kept as the baseline every strategy must beat.

use super::linalg::cholesky_solve;
use super::stats::{ErrorStats, TargetStats};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// Strategy names in the order used by the per-strategy error arrays.
pub const STRATEGIES: [&str; 4] = [
    "stacking",
    "dynamicSelection",
    "confidenceWeighted",
    "average",
];

/// A meta-learner never grows beyond this many base models; later newcomers keep the prior
/// weight. Guards memory and the O(d³) solve against callers inventing model names.
const MAX_META_MODELS: usize = 64;

/// How many distinct contexts and model names one ensemble accepts before refusing new ones,
/// so a caller that puts request ids in `serviceName` cannot grow memory without bound.
pub const MAX_CONTEXTS: usize = 100_000;
/// Longest name kept (the JS layer caps names at 256 characters; UTF-8 may need 4 bytes each).
pub const MAX_NAME_BYTES: usize = 1024;
pub const MAX_MODELS: usize = 100_000;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EnsembleConfig {
    /// Feedback entries kept for `getStatistics()` (the old code kept 1000).
    pub history_size: usize,
    /// Feedback a context needs before its own meta-learner is trusted.
    pub min_samples: u64,
    /// Weight kept by the past in the meta-learner's statistics per new sample.
    pub forgetting: f64,
    /// Precision of the prior that pulls meta-weights toward equal weights, relative to the
    /// noise: weights start within about ±1/√ridgePrior of equal.
    pub ridge_prior: f64,
    /// Weight kept by the past in per-model competence records.
    pub competence_decay: f64,
    /// Relative score bonus for an entry whose `predictionType` matches the context's.
    pub type_match_bonus: f64,
    /// How many of the latest errors `getStatistics().recentErrors` lists.
    pub recent_errors: usize,
}

impl Default for EnsembleConfig {
    fn default() -> Self {
        Self {
            history_size: 1000,
            min_samples: 10,
            forgetting: 0.995,
            ridge_prior: 5.0,
            competence_decay: 0.95,
            type_match_bonus: 0.1,
            recent_errors: 10,
        }
    }
}

impl EnsembleConfig {
    pub fn validate(&self) -> Result<(), String> {
        let unit = |v: f64, name: &str| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(format!("{name} must be in (0, 1], got {v}"))
            }
        };
        unit(self.forgetting, "forgetting")?;
        unit(self.competence_decay, "competenceDecay")?;
        if !(self.ridge_prior.is_finite() && self.ridge_prior > 0.0) {
            return Err(format!(
                "ridgePrior must be a positive number, got {}",
                self.ridge_prior
            ));
        }
        if !(self.type_match_bonus.is_finite() && self.type_match_bonus >= 0.0) {
            return Err(format!(
                "typeMatchBonus must be ≥ 0, got {}",
                self.type_match_bonus
            ));
        }
        if self.history_size > 10_000_000 {
            return Err(format!(
                "historySize must be ≤ 10000000, got {}",
                self.history_size
            ));
        }
        if self.recent_errors > 10_000 {
            return Err(format!(
                "recentErrors must be ≤ 10000, got {}",
                self.recent_errors
            ));
        }
        Ok(())
    }
}

/// One base prediction, with names already interned to ids by the caller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    pub model: u32,
    pub value: f64,
    pub confidence: f64,
    pub type_match: bool,
}

/// Where a stacking answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The context's own meta-learner.
    Context = 0,
    /// The global meta-learner (the context has too little feedback yet).
    Global = 1,
    /// The old confidence × performance weighting (no learner has enough feedback).
    Prior = 2,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Combined {
    pub prediction: f64,
    pub confidence: f64,
    /// Per entry, aligned with the input: for stacking the normalised meta-weights
    /// (sum 1), for voting the normalised vote weights, for selection the combination
    /// weights (0 for models not selected).
    pub weights: Vec<f64>,
    /// Stacking: raw coefficients (`prediction = intercept + Σ raw·value`).
    /// Selection: each entry's competence score.
    pub raw: Vec<f64>,
    pub intercept: f64,
    pub samples: u64,
    pub source: Option<Source>,
    /// Selection: indices of the chosen entries, best first.
    pub selected: Vec<usize>,
}

/// Ridge least squares over `[1, p_1 … p_d]` with exponential forgetting.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct MetaLearner {
    /// Model id of column `i + 1` (column 0 is the intercept).
    pub models: Vec<u32>,
    /// Decayed Σ x xᵀ, row-major `(models.len()+1)²`.
    pub xtx: Vec<f64>,
    /// Decayed Σ x y.
    pub xty: Vec<f64>,
    pub n_eff: f64,
    pub count: u64,
    /// Prequential (predict-then-learn) residuals of this learner.
    pub residuals: ErrorStats,
    pub target: TargetStats,
    #[serde(skip)]
    cache: Option<(Vec<u32>, Vec<f64>)>,
}

impl MetaLearner {
    fn dim(&self) -> usize {
        self.models.len() + 1
    }

    fn column(&self, model: u32) -> Option<usize> {
        self.models.iter().position(|&m| m == model).map(|i| i + 1)
    }

    /// A fresh learner has no matrices yet; give it the 1×1 intercept block.
    fn ensure_init(&mut self) {
        if self.xtx.is_empty() {
            self.xtx = vec![0.0];
            self.xty = vec![0.0];
        }
    }

    fn grow(&mut self, model: u32) -> Option<usize> {
        self.ensure_init();
        if let Some(c) = self.column(model) {
            return Some(c);
        }
        if self.models.len() >= MAX_META_MODELS {
            return None;
        }
        let d = self.dim();
        let nd = d + 1;
        let mut xtx = vec![0.0; nd * nd];
        for i in 0..d {
            xtx[i * nd..i * nd + d].copy_from_slice(&self.xtx[i * d..i * d + d]);
        }
        self.xtx = xtx;
        self.xty.push(0.0);
        self.models.push(model);
        Some(d)
    }

    /// Coefficients `[intercept, w_1 … w_k]` for the entries of one call (aligned with them).
    ///
    /// Solving on the sub-matrix of the models present is exactly the least-squares fit of
    /// the target on those models over the remembered samples, so models that come and go
    /// need no special case. An entry whose model has no column here has zero statistics,
    /// which decouples it from the system: its weight is exactly the prior `1/k`, so it is
    /// left out of the solve. Entries sharing a model share its column (and its weight,
    /// split evenly). The system therefore never exceeds `MAX_META_MODELS + 1` unknowns,
    /// however many entries a call has.
    pub fn solve(&mut self, entries: &[Entry], ridge_prior: f64) -> Vec<f64> {
        let key: Vec<u32> = entries.iter().map(|e| e.model).collect();
        if let Some((k, theta)) = &self.cache {
            if *k == key {
                return theta.clone();
            }
        }
        let k = entries.len();
        let w0 = 1.0 / k.max(1) as f64;
        let d = self.dim();
        // Unique learner columns used by this call, and how many entries share each.
        let mut cols: Vec<usize> = Vec::new();
        let mut share: Vec<usize> = Vec::new();
        let entry_col: Vec<Option<usize>> = entries
            .iter()
            .map(|e| {
                self.column(e.model)
                    .map(|c| match cols.iter().position(|&x| x == c) {
                        Some(j) => {
                            share[j] += 1;
                            j
                        }
                        None => {
                            cols.push(c);
                            share.push(1);
                            cols.len() - 1
                        }
                    })
            })
            .collect();
        let m = cols.len();
        let n = m + 1;
        let at = |i: usize, j: usize| self.xtx.get(i * d + j).copied().unwrap_or(0.0);
        let col = |i: usize| if i == 0 { 0 } else { cols[i - 1] };
        // Bayesian reading of the ridge: weights ~ N(equal, σ²/α) with σ² the noise
        // variance, so α = ridge_prior·σ² keeps the prior's pull in the target's units and
        // lets the small-variance directions that tell collinear models apart speak. σ² is
        // this learner's own prequential error once it has one (large while it is still
        // wrong, so early fits stay near equal weights), before that the target's spread.
        let noise = if self.residuals.count > 0 {
            self.residuals.mse
        } else if self.target.count > 1 {
            self.target.var
        } else {
            entries.iter().map(|e| e.value * e.value).sum::<f64>() / k.max(1) as f64
        };
        let alpha = ridge_prior * noise.max(1e-12);
        let alpha_c = 1e-3 * ridge_prior;
        let mut a = vec![0.0; n * n];
        let mut b = vec![0.0; n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = at(col(i), col(j));
            }
            b[i] = self.xty.get(col(i)).copied().unwrap_or(0.0);
        }
        a[0] += alpha_c;
        for i in 1..n {
            // A column shared by `s` entries carries their combined prior weight.
            let prior = w0 * share[i - 1] as f64;
            a[i * n + i] += alpha;
            b[i] += alpha * prior;
        }
        let solved = cholesky_solve(&mut a, &mut b, n);
        let mut theta = vec![w0; k + 1];
        theta[0] = 0.0;
        if solved {
            theta[0] = b[0];
            for (i, c) in entry_col.iter().enumerate() {
                if let Some(j) = c {
                    theta[i + 1] = b[j + 1] / share[*j] as f64;
                }
            }
        }
        self.cache = Some((key, theta.clone()));
        theta
    }

    /// Predict-then-learn one sample.
    pub fn learn(&mut self, entries: &[Entry], y: f64, cfg: &EnsembleConfig) {
        if entries.is_empty() || !y.is_finite() {
            return;
        }
        let theta = self.solve(entries, cfg.ridge_prior);
        let pred = theta[0]
            + entries
                .iter()
                .zip(&theta[1..])
                .map(|(e, w)| e.value * w)
                .sum::<f64>();
        self.residuals.record(pred - y, cfg.forgetting);
        self.target.record(y, cfg.forgetting);

        let mean = entries.iter().map(|e| e.value).sum::<f64>() / entries.len() as f64;
        self.ensure_init();
        for e in entries {
            self.grow(e.model);
        }
        let d = self.dim();
        // Models this learner knows but this sample lacks are imputed with the sample's
        // mean prediction: the most neutral value, which leaves their weight to evidence.
        let mut x = vec![mean; d];
        x[0] = 1.0;
        for e in entries {
            if let Some(c) = self.column(e.model) {
                x[c] = e.value;
            }
        }
        let lambda = cfg.forgetting;
        for i in 0..d {
            for j in 0..d {
                self.xtx[i * d + j] = lambda * self.xtx[i * d + j] + x[i] * x[j];
            }
            self.xty[i] = lambda * self.xty[i] + x[i] * y;
        }
        self.n_eff = lambda * self.n_eff + 1.0;
        self.count += 1;
        self.cache = None;
    }

    /// How much to trust this learner's answer: high when its prequential error is small
    /// next to the target's spread and many samples stand behind it.
    pub fn confidence(&self) -> f64 {
        if self.residuals.count == 0 {
            return 0.5;
        }
        let n = self.count as f64;
        let fit = 1.0 / (1.0 + self.residuals.rmse() / self.target.scale());
        (fit * n / (n + 10.0)).clamp(0.05, 0.99)
    }

    fn check(&self) -> Result<(), String> {
        let d = self.dim();
        let fresh = self.models.is_empty() && self.xtx.is_empty() && self.xty.is_empty();
        if !fresh && (self.xtx.len() != d * d || self.xty.len() != d) {
            return Err("meta-learner matrix sizes do not match its model list".into());
        }
        if !self.xtx.iter().chain(&self.xty).all(|v| v.is_finite()) || !self.n_eff.is_finite() {
            return Err("meta-learner holds non-finite statistics".into());
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct ContextState {
    pub service: u32,
    pub prediction_type: String,
    pub meta: MetaLearner,
    /// Decayed error of each model in this context, keyed by model id.
    pub competence: HashMap<u32, ErrorStats>,
    pub target: TargetStats,
    /// Prequential error of each strategy, in `STRATEGIES` order.
    pub strategies: [ErrorStats; 4],
    pub samples: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub timestamp: f64,
    pub context: u32,
    pub actual: f64,
    pub prediction: f64,
    pub error: f64,
}

/// Result of one feedback: what each strategy would have predicted, before learning.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedbackOutcome {
    pub predictions: [f64; 4],
    pub errors: [f64; 4],
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Ensemble {
    pub config: EnsembleConfig,
    pub models: Vec<String>,
    pub services: Vec<String>,
    pub contexts: Vec<ContextState>,
    pub global: ContextState,
    /// The old per-`${serviceName}_${model}` EMA `0.9·old + 0.1/(1+|error|)`, keyed by
    /// (service id, model id); kept because callers read it from `getStatistics()`.
    pub performance: Vec<(u32, u32, f64)>,
    pub history: VecDeque<HistoryEntry>,
    pub recent: VecDeque<f64>,
    pub feedback_count: u64,
    #[serde(skip)]
    model_ids: HashMap<String, u32>,
    #[serde(skip)]
    service_ids: HashMap<String, u32>,
    #[serde(skip)]
    context_ids: HashMap<(u32, String), u32>,
    #[serde(skip)]
    perf_index: HashMap<(u32, u32), usize>,
}

fn normalise(raw: &[f64]) -> Vec<f64> {
    let sum: f64 = raw.iter().sum();
    let abs: f64 = raw.iter().map(|v| v.abs()).sum();
    if abs == 0.0 || !abs.is_finite() {
        return vec![1.0 / raw.len().max(1) as f64; raw.len()];
    }
    if sum > 1e-9 * abs {
        raw.iter().map(|v| v / sum).collect()
    } else {
        raw.iter().map(|v| v.abs() / abs).collect()
    }
}

fn weighted_mean(entries: &[Entry], weights: &[f64]) -> Option<f64> {
    let total: f64 = weights.iter().sum();
    if !(total > 0.0) || !total.is_finite() {
        return None;
    }
    Some(
        entries
            .iter()
            .zip(weights)
            .map(|(e, w)| e.value * w)
            .sum::<f64>()
            / total,
    )
}

fn mean_value(entries: &[Entry]) -> f64 {
    entries.iter().map(|e| e.value).sum::<f64>() / entries.len().max(1) as f64
}

/// Largest magnitude a prediction or label may have: squares of larger values overflow
/// the meta-learners' statistics and would disable learning for good.
pub const MAX_MAGNITUDE: f64 = 1e100;

/// Validates one call's entries (the JS layer checks too; this keeps the core safe on its own).
pub fn check_entries(entries: &[Entry]) -> Result<(), String> {
    if entries.is_empty() {
        return Err("predictions must not be empty".into());
    }
    for (i, e) in entries.iter().enumerate() {
        if !e.value.is_finite() {
            return Err(format!("predictions[{i}].value must be a finite number"));
        }
        if e.value.abs() > MAX_MAGNITUDE {
            return Err(format!("predictions[{i}].value must be within ±1e100"));
        }
        if !(e.confidence.is_finite() && (0.0..=1.0).contains(&e.confidence)) {
            return Err(format!(
                "predictions[{i}].confidence must be a number in [0, 1]"
            ));
        }
    }
    Ok(())
}

impl Ensemble {
    pub fn new(config: EnsembleConfig) -> Result<Self, String> {
        config.validate()?;
        let mut e = Ensemble {
            config,
            ..Default::default()
        };
        e.intern_service("");
        Ok(e)
    }

    pub fn intern_model(&mut self, name: &str) -> Result<u32, String> {
        if let Some(&id) = self.model_ids.get(name) {
            return Ok(id);
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(format!("model name must be at most {MAX_NAME_BYTES} bytes"));
        }
        if self.models.len() >= MAX_MODELS {
            return Err(format!(
                "too many distinct model names (limit {MAX_MODELS})"
            ));
        }
        let id = self.models.len() as u32;
        self.models.push(name.to_owned());
        self.model_ids.insert(name.to_owned(), id);
        Ok(id)
    }

    fn intern_service(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.service_ids.get(name) {
            return id;
        }
        let id = self.services.len() as u32;
        self.services.push(name.to_owned());
        self.service_ids.insert(name.to_owned(), id);
        id
    }

    pub fn intern_context(&mut self, service: &str, prediction_type: &str) -> Result<u32, String> {
        if service.len() > MAX_NAME_BYTES || prediction_type.len() > MAX_NAME_BYTES {
            return Err(format!(
                "serviceName and predictionType must be at most {MAX_NAME_BYTES} bytes"
            ));
        }
        let sid = self.intern_service(service);
        if let Some(&id) = self.context_ids.get(&(sid, prediction_type.to_owned())) {
            return Ok(id);
        }
        if self.contexts.len() >= MAX_CONTEXTS {
            return Err(format!("too many distinct contexts (limit {MAX_CONTEXTS})"));
        }
        let id = self.contexts.len() as u32;
        self.contexts.push(ContextState {
            service: sid,
            prediction_type: prediction_type.to_owned(),
            ..Default::default()
        });
        self.context_ids
            .insert((sid, prediction_type.to_owned()), id);
        Ok(id)
    }

    fn context(&self, ctx: u32) -> Result<&ContextState, String> {
        self.contexts
            .get(ctx as usize)
            .ok_or_else(|| format!("unknown context id {ctx}"))
    }

    fn check_models(&self, entries: &[Entry]) -> Result<(), String> {
        check_entries(entries)?;
        if let Some(e) = entries
            .iter()
            .find(|e| e.model as usize >= self.models.len())
        {
            return Err(format!("unknown model id {}", e.model));
        }
        Ok(())
    }

    fn performance_weight(&self, service: u32, model: u32) -> f64 {
        self.perf_index
            .get(&(service, model))
            .map_or(1.0, |&i| self.performance[i].2)
    }

    /// Stacking: the context's meta-learner, else the global one, else the old
    /// confidence × performance weighting.
    pub fn stacking(&mut self, ctx: u32, entries: &[Entry]) -> Result<Combined, String> {
        self.check_models(entries)?;
        self.context(ctx)?;
        let min = self.config.min_samples;
        let prior = self.config.ridge_prior;
        let (learner, source) = if self.contexts[ctx as usize].meta.count >= min {
            (Some(&mut self.contexts[ctx as usize].meta), Source::Context)
        } else if self.global.meta.count >= min {
            (Some(&mut self.global.meta), Source::Global)
        } else {
            (None, Source::Prior)
        };
        if let Some(meta) = learner {
            let theta = meta.solve(entries, prior);
            let raw = theta[1..].to_vec();
            let prediction = theta[0]
                + entries
                    .iter()
                    .zip(&raw)
                    .map(|(e, w)| e.value * w)
                    .sum::<f64>();
            if prediction.is_finite() {
                return Ok(Combined {
                    prediction,
                    confidence: meta.confidence(),
                    weights: normalise(&raw),
                    raw,
                    intercept: theta[0],
                    samples: meta.count,
                    source: Some(source),
                    selected: vec![],
                });
            }
        }
        let service = self.contexts[ctx as usize].service;
        let raw: Vec<f64> = entries
            .iter()
            .map(|e| e.confidence * self.performance_weight(service, e.model))
            .collect();
        let prediction = weighted_mean(entries, &raw).unwrap_or_else(|| mean_value(entries));
        Ok(Combined {
            prediction,
            confidence: entries.iter().map(|e| e.confidence).sum::<f64>() / entries.len() as f64,
            weights: normalise(&raw),
            raw,
            intercept: 0.0,
            samples: self.contexts[ctx as usize].meta.count,
            source: Some(Source::Prior),
            selected: vec![],
        })
    }

    /// Competence score in (0, 1] of each entry for this context, and its decayed MSE when
    /// known. Backs off to the model's global record, then to a neutral `0.5·confidence`.
    fn competence(&self, ctx: &ContextState, entries: &[Entry]) -> Vec<(f64, Option<f64>)> {
        let bonus = self.config.type_match_bonus;
        entries
            .iter()
            .map(|e| {
                let (stats, scale) = match ctx.competence.get(&e.model) {
                    Some(s) if s.count > 0 => (Some(s), ctx.target.scale()),
                    _ => match self.global.competence.get(&e.model) {
                        Some(s) if s.count > 0 => (Some(s), self.global.target.scale()),
                        _ => (None, 1.0),
                    },
                };
                let base = match stats {
                    Some(s) => 1.0 / (1.0 + s.rmse() / scale),
                    None => 0.5 * e.confidence,
                };
                let score = if e.type_match {
                    base * (1.0 + bonus)
                } else {
                    base
                };
                (score, stats.map(|s| s.mse))
            })
            .collect()
    }

    /// Dynamic selection: the top `min(3, ceil(n/2))` entries by competence, combined by
    /// inverse decayed MSE (inverse-variance weighting) once errors are known.
    pub fn dynamic_selection(&self, ctx: u32, entries: &[Entry]) -> Result<Combined, String> {
        self.check_models(entries)?;
        let c = self.context(ctx)?;
        let comp = self.competence(c, entries);
        let n = entries.len();
        let k = 3.min(n.div_ceil(2)).max(1);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| comp[b].0.total_cmp(&comp[a].0).then(a.cmp(&b)));
        order.truncate(k);
        let known: Vec<f64> = order.iter().filter_map(|&i| comp[i].1).collect();
        let mut weights = vec![0.0; n];
        if known.is_empty() {
            for &i in &order {
                weights[i] = comp[i].0;
            }
        } else {
            // A selected model with no record yet counts as average among those selected.
            let neutral = known.iter().sum::<f64>() / known.len() as f64;
            let eps = 1e-12 * c.target.scale().powi(2) + f64::MIN_POSITIVE;
            for &i in &order {
                weights[i] = 1.0 / (comp[i].1.unwrap_or(neutral) + eps);
            }
        }
        let total: f64 = weights.iter().sum();
        if total > 0.0 && total.is_finite() {
            weights.iter_mut().for_each(|w| *w /= total);
        } else {
            weights.iter_mut().for_each(|w| *w = 0.0);
            order.iter().for_each(|&i| weights[i] = 1.0 / k as f64);
        }
        let prediction = entries
            .iter()
            .zip(&weights)
            .map(|(e, w)| e.value * w)
            .sum::<f64>();
        let confidence = order
            .iter()
            .map(|&i| weights[i] * comp[i].0.min(1.0))
            .sum::<f64>()
            .clamp(0.0, 1.0);
        Ok(Combined {
            prediction,
            confidence,
            weights,
            raw: comp.iter().map(|c| c.0).collect(),
            intercept: 0.0,
            samples: c.samples,
            source: None,
            selected: order,
        })
    }

    /// Confidence-weighted voting: weight = confidence². With `calibrate`, each stated
    /// confidence is blended with one measured from the model's observed error in this
    /// context, by how much evidence there is (5 observations weigh as much as the claim).
    pub fn voting(&self, ctx: u32, entries: &[Entry], calibrate: bool) -> Result<Combined, String> {
        self.check_models(entries)?;
        let c = self.context(ctx)?;
        let conf: Vec<f64> = if calibrate {
            entries
                .iter()
                .map(|e| match c.competence.get(&e.model) {
                    Some(s) if s.count > 0 => {
                        let measured = 1.0 / (1.0 + s.rmse() / c.target.scale());
                        let n = s.count as f64;
                        (n * measured + 5.0 * e.confidence) / (n + 5.0)
                    }
                    _ => e.confidence,
                })
                .collect()
        } else {
            entries.iter().map(|e| e.confidence).collect()
        };
        let raw: Vec<f64> = conf.iter().map(|c| c * c).collect();
        let prediction = weighted_mean(entries, &raw).unwrap_or_else(|| mean_value(entries));
        let total: f64 = raw.iter().sum();
        let weights = if total > 0.0 {
            raw.iter().map(|w| w / total).collect()
        } else {
            vec![1.0 / entries.len() as f64; entries.len()]
        };
        Ok(Combined {
            prediction,
            confidence: conf.iter().sum::<f64>() / conf.len() as f64,
            weights,
            raw: conf,
            intercept: 0.0,
            samples: c.samples,
            source: None,
            selected: vec![],
        })
    }

    /// Learns from one labelled outcome. Every strategy is scored on what it would have
    /// said *before* this label (prequential), then competence, meta-learners and the old
    /// performance weights are updated.
    pub fn feedback(
        &mut self,
        ctx: u32,
        entries: &[Entry],
        actual: f64,
        timestamp: f64,
    ) -> Result<FeedbackOutcome, String> {
        self.check_models(entries)?;
        self.context(ctx)?;
        if !actual.is_finite() {
            return Err("actual must be a finite number".into());
        }
        if actual.abs() > MAX_MAGNITUDE {
            return Err("actual must be within ±1e100".into());
        }
        let predictions = [
            self.stacking(ctx, entries)?.prediction,
            self.dynamic_selection(ctx, entries)?.prediction,
            self.voting(ctx, entries, false)?.prediction,
            mean_value(entries),
        ];
        let errors = predictions.map(|p| (p - actual).abs());
        let cfg = self.config.clone();
        let decay = cfg.competence_decay;
        {
            let c = &mut self.contexts[ctx as usize];
            for (s, e) in c.strategies.iter_mut().zip(errors) {
                s.record(e, decay);
            }
            for e in entries {
                c.competence
                    .entry(e.model)
                    .or_default()
                    .record(e.value - actual, decay);
            }
            c.target.record(actual, decay);
            c.meta.learn(entries, actual, &cfg);
            c.samples += 1;
        }
        {
            let g = &mut self.global;
            for (s, e) in g.strategies.iter_mut().zip(errors) {
                s.record(e, decay);
            }
            for e in entries {
                g.competence
                    .entry(e.model)
                    .or_default()
                    .record(e.value - actual, decay);
            }
            g.target.record(actual, decay);
            g.meta.learn(entries, actual, &cfg);
            g.samples += 1;
        }
        let service = self.contexts[ctx as usize].service;
        for e in entries {
            let err = (e.value - actual).abs();
            match self.perf_index.get(&(service, e.model)) {
                Some(&i) => {
                    let w = &mut self.performance[i].2;
                    *w = 0.9 * *w + 0.1 / (1.0 + err);
                }
                None => {
                    self.perf_index
                        .insert((service, e.model), self.performance.len());
                    self.performance
                        .push((service, e.model, 0.9 + 0.1 / (1.0 + err)));
                }
            }
        }
        self.history.push_back(HistoryEntry {
            timestamp,
            context: ctx,
            actual,
            prediction: predictions[0],
            error: errors[0],
        });
        while self.history.len() > cfg.history_size {
            self.history.pop_front();
        }
        self.recent.push_back(errors[0]);
        while self.recent.len() > cfg.recent_errors {
            self.recent.pop_front();
        }
        self.feedback_count += 1;
        Ok(FeedbackOutcome {
            predictions,
            errors,
        })
    }

    /// Combined stacking predictions for many rows that share one model set and context.
    /// The meta-weights are solved once; each row is then a dot product.
    pub fn stacking_batch(
        &mut self,
        ctx: u32,
        models: &[u32],
        values: &[f64],
        confidences: Option<&[f64]>,
        out: &mut [f64],
    ) -> Result<(), String> {
        let k = models.len();
        if k == 0 {
            return Err("models must not be empty".into());
        }
        if values.len() % k != 0 {
            return Err(format!(
                "predictions length {} is not a multiple of the model count {k}",
                values.len()
            ));
        }
        let rows = values.len() / k;
        if let Some(c) = confidences {
            if c.len() != values.len() {
                return Err(format!(
                    "confidences length {} differs from predictions length {}",
                    c.len(),
                    values.len()
                ));
            }
            if let Some(i) = c
                .iter()
                .position(|v| !(v.is_finite() && (0.0..=1.0).contains(v)))
            {
                return Err(format!("confidences[{i}] must be a number in [0, 1]"));
            }
        }
        if out.len() != rows {
            return Err(format!(
                "output length {} differs from the row count {rows}",
                out.len()
            ));
        }
        if let Some(i) = values
            .iter()
            .position(|v| !v.is_finite() || v.abs() > MAX_MAGNITUDE)
        {
            return Err(format!(
                "predictions[{i}] must be a finite number within ±1e100"
            ));
        }
        if rows == 0 {
            return Ok(()); // an empty batch combines to an empty result
        }
        let conf_at = |i: usize| confidences.map_or(0.5, |c| c[i]);
        let template: Vec<Entry> = models
            .iter()
            .enumerate()
            .map(|(j, &m)| Entry {
                model: m,
                value: values[j],
                confidence: conf_at(j),
                type_match: false,
            })
            .collect();
        let first = self.stacking(ctx, &template)?;
        if first.source != Some(Source::Prior) {
            for (r, o) in out.iter_mut().enumerate() {
                let row = &values[r * k..(r + 1) * k];
                *o = first.intercept + row.iter().zip(&first.raw).map(|(v, w)| v * w).sum::<f64>();
            }
        } else {
            let service = self.contexts[ctx as usize].service;
            let perf: Vec<f64> = models
                .iter()
                .map(|&m| self.performance_weight(service, m))
                .collect();
            for (r, o) in out.iter_mut().enumerate() {
                let mut num = 0.0;
                let mut den = 0.0;
                for j in 0..k {
                    let w = conf_at(r * k + j) * perf[j];
                    num += w * values[r * k + j];
                    den += w;
                }
                *o = if den > 0.0 {
                    num / den
                } else {
                    values[r * k..(r + 1) * k].iter().sum::<f64>() / k as f64
                };
            }
        }
        Ok(())
    }

    pub fn context_key(&self, ctx: &ContextState) -> String {
        let service = &self.services[ctx.service as usize];
        match (service.is_empty(), ctx.prediction_type.is_empty()) {
            (true, true) => "default".to_owned(),
            (false, true) => service.clone(),
            (true, false) => format!("*/{}", ctx.prediction_type),
            (false, false) => format!("{service}/{}", ctx.prediction_type),
        }
    }

    /// The old `performanceWeights` keys: `${serviceName}_${model}`, or `model` alone.
    pub fn performance_weights(&self) -> Vec<(String, f64)> {
        self.performance
            .iter()
            .map(|&(s, m, w)| {
                let service = &self.services[s as usize];
                let model = &self.models[m as usize];
                let key = if service.is_empty() {
                    model.clone()
                } else {
                    format!("{service}_{model}")
                };
                (key, w)
            })
            .collect()
    }

    pub fn avg_error(&self) -> f64 {
        if self.history.is_empty() {
            return 0.0;
        }
        self.history.iter().map(|h| h.error).sum::<f64>() / self.history.len() as f64
    }

    /// The strategy with the lowest decayed absolute error, once it has any record.
    pub fn best_strategy(c: &ContextState) -> Option<&'static str> {
        if c.samples == 0 {
            return None;
        }
        let (i, _) = c
            .strategies
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.mae.total_cmp(&b.1.mae))?;
        Some(STRATEGIES[i])
    }

    pub fn to_json(&self) -> Result<String, String> {
        let mut v = serde_json::to_value(self).map_err(|e| e.to_string())?;
        if let Some(o) = v.as_object_mut() {
            o.insert("format".into(), "mlops-native/advanced-ensemble".into());
            o.insert("formatVersion".into(), 1.into());
        }
        serde_json::to_string(&v).map_err(|e| e.to_string())
    }

    /// Restores a saved state, checking it is internally consistent before anything of it
    /// is used: a hand-edited or truncated file must be refused, not half-loaded.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("state is not valid JSON: {e}"))?;
        match v.get("format").and_then(|f| f.as_str()) {
            Some("mlops-native/advanced-ensemble") => {}
            _ => {
                return Err(
                    "state is not an AdvancedEnsemble state (format field missing or different)"
                        .into(),
                )
            }
        }
        let mut e: Ensemble = serde_json::from_value(v)
            .map_err(|e| format!("state does not match the AdvancedEnsemble schema: {e}"))?;
        e.config.validate()?;
        e.rebuild_indexes()?;
        Ok(e)
    }

    fn rebuild_indexes(&mut self) -> Result<(), String> {
        let (nm, ns, nc) = (self.models.len(), self.services.len(), self.contexts.len());
        if nm > MAX_MODELS || nc > MAX_CONTEXTS {
            return Err("state holds more models or contexts than allowed".into());
        }
        if self.services.first().map(|s| s.as_str()) != Some("") {
            return Err("state's service table is malformed".into());
        }
        self.model_ids = self
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i as u32))
            .collect();
        self.service_ids = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        if self.model_ids.len() != nm || self.service_ids.len() != ns {
            return Err("state has duplicate model or service names".into());
        }
        self.context_ids.clear();
        for (i, c) in self.contexts.iter().enumerate() {
            if c.service as usize >= ns {
                return Err(format!("context {i} names an unknown service"));
            }
            if self
                .context_ids
                .insert((c.service, c.prediction_type.clone()), i as u32)
                .is_some()
            {
                return Err(format!("context {i} is a duplicate"));
            }
        }
        for c in self.contexts.iter().chain(std::iter::once(&self.global)) {
            c.meta.check()?;
            if c.meta
                .models
                .iter()
                .chain(c.competence.keys())
                .any(|&m| m as usize >= nm)
            {
                return Err("state refers to an unknown model id".into());
            }
        }
        self.perf_index.clear();
        for (i, &(s, m, w)) in self.performance.iter().enumerate() {
            if s as usize >= ns || m as usize >= nm || !w.is_finite() {
                return Err(format!("performance entry {i} is malformed"));
            }
            self.perf_index.insert((s, m), i);
        }
        if self.history.iter().any(|h| h.context as usize >= nc) {
            return Err("history refers to an unknown context".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise for tests: the package's SplitMix64, plus an approximate normal.
    pub(crate) struct Rng(crate::core::finetune::SplitMix);
    fn rng(seed: u64) -> Rng {
        Rng(crate::core::finetune::SplitMix(seed))
    }
    impl Rng {
        pub fn uniform(&mut self) -> f64 {
            (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        pub fn normal(&mut self) -> f64 {
            (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
        }
    }

    fn entries(e: &mut Ensemble, vals: &[(&str, f64)]) -> Vec<Entry> {
        vals.iter()
            .map(|(m, v)| Entry {
                model: e.intern_model(m).unwrap(),
                value: *v,
                confidence: 0.8,
                type_match: false,
            })
            .collect()
    }

    #[test]
    fn cold_start_is_the_old_confidence_times_performance_rule() {
        let mut e = Ensemble::new(EnsembleConfig::default()).unwrap();
        let ctx = e.intern_context("svc", "quality").unwrap();
        let mut es = entries(&mut e, &[("a", 2.0), ("b", 4.0)]);
        es[1].confidence = 0.4;
        let r = e.stacking(ctx, &es).unwrap();
        assert_eq!(r.source, Some(Source::Prior));
        assert!((r.prediction - (0.8 * 2.0 + 0.4 * 4.0) / 1.2).abs() < 1e-12);
        assert!((r.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn stacking_learns_to_undo_a_biased_model_and_weight_the_good_one() {
        let mut e = Ensemble::new(EnsembleConfig::default()).unwrap();
        let ctx = e.intern_context("svc", "").unwrap();
        let mut rng = rng(7);
        for t in 0..600 {
            let y = 10.0 * rng.uniform();
            let es = entries(
                &mut e,
                &[
                    ("good", y + 0.1 * rng.normal()),
                    ("noisy", y + 2.0 * rng.normal()),
                    ("biased", 0.5 * y + 3.0 + 0.05 * rng.normal()),
                ],
            );
            e.feedback(ctx, &es, y, t as f64).unwrap();
        }
        let es = entries(&mut e, &[("good", 5.0), ("noisy", 5.0), ("biased", 5.5)]);
        let r = e.stacking(ctx, &es).unwrap();
        assert_eq!(r.source, Some(Source::Context));
        // The biased model is precise once de-biased: stacking leans on it (its fair share
        // next to "good" is 1.0 on its halved scale; the prior toward 1/3 holds it lower)
        // and the intercept takes its offset.
        assert!(r.raw[2] > 0.5, "biased weight {:?}", r.raw);
        assert!(r.intercept < -1.0, "intercept {}", r.intercept);
        assert!(r.raw[1].abs() < 0.1, "noisy weight {:?}", r.raw);
        assert!((r.prediction - 5.0).abs() < 0.3, "{}", r.prediction);
        let c = &e.contexts[ctx as usize];
        assert!(
            c.strategies[0].mae < c.strategies[3].mae,
            "stacking beats the average"
        );
        assert!(r.confidence > 0.8);
    }

    #[test]
    fn dynamic_selection_prefers_the_competent_model_per_context() {
        let mut e = Ensemble::new(EnsembleConfig::default()).unwrap();
        let s1 = e.intern_context("one", "").unwrap();
        let s2 = e.intern_context("two", "").unwrap();
        let mut rng = rng(3);
        for t in 0..400 {
            let y = 5.0 + rng.normal();
            let (ctx, na, nb) = if t % 2 == 0 {
                (s1, 0.1, 2.0)
            } else {
                (s2, 2.0, 0.1)
            };
            let es = entries(
                &mut e,
                &[
                    ("a", y + na * rng.normal()),
                    ("b", y + nb * rng.normal()),
                    ("c", y + 1.0),
                ],
            );
            e.feedback(ctx, &es, y, t as f64).unwrap();
        }
        let es = entries(&mut e, &[("a", 1.0), ("b", 2.0), ("c", 3.0)]);
        let r1 = e.dynamic_selection(s1, &es).unwrap();
        let r2 = e.dynamic_selection(s2, &es).unwrap();
        assert_eq!(r1.selected[0], 0);
        assert_eq!(r2.selected[0], 1);
        assert_eq!(r1.selected.len(), 2);
        assert!(r1.weights[0] > 0.9 && r2.weights[1] > 0.9);
    }

    #[test]
    fn a_new_model_starts_neutral_and_models_may_disappear() {
        let mut e = Ensemble::new(EnsembleConfig::default()).unwrap();
        let ctx = e.intern_context("", "").unwrap();
        for t in 0..50 {
            let y = t as f64 % 7.0;
            let es = entries(&mut e, &[("a", y), ("b", y + 1.0)]);
            e.feedback(ctx, &es, y, 0.0).unwrap();
        }
        // "c" is new: it gets no learned weight but does not break the solve.
        let es = entries(&mut e, &[("a", 3.0), ("c", 100.0)]);
        let r = e.stacking(ctx, &es).unwrap();
        assert!(r.prediction.is_finite());
        assert!(r.raw[1].abs() < 0.6, "{:?}", r.raw);
        let only_b = entries(&mut e, &[("b", 4.0)]);
        let r = e.stacking(ctx, &only_b).unwrap();
        assert!(
            (r.prediction - 3.0).abs() < 0.2,
            "b is a +1 biased copy: {}",
            r.prediction
        );
    }

    #[test]
    fn calibrated_voting_discounts_an_overconfident_model() {
        let mut e = Ensemble::new(EnsembleConfig::default()).unwrap();
        let ctx = e.intern_context("", "").unwrap();
        let mut rng = rng(11);
        for _ in 0..100 {
            let y = rng.normal();
            let mut es = entries(
                &mut e,
                &[
                    ("liar", y + 3.0 * rng.normal()),
                    ("honest", y + 0.1 * rng.normal()),
                ],
            );
            es[0].confidence = 0.99;
            es[1].confidence = 0.6;
            e.feedback(ctx, &es, y, 0.0).unwrap();
        }
        let mut es = entries(&mut e, &[("liar", 0.0), ("honest", 1.0)]);
        es[0].confidence = 0.99;
        es[1].confidence = 0.6;
        let plain = e.voting(ctx, &es, false).unwrap();
        let cal = e.voting(ctx, &es, true).unwrap();
        assert!(plain.weights[0] > plain.weights[1]);
        assert!(cal.weights[1] > cal.weights[0]);
    }

    #[test]
    fn state_round_trips_and_corrupt_state_is_refused() {
        let mut e = Ensemble::new(EnsembleConfig::default()).unwrap();
        let ctx = e.intern_context("svc", "q").unwrap();
        for t in 0..30 {
            let es = entries(&mut e, &[("a", t as f64), ("b", 1.0)]);
            e.feedback(ctx, &es, t as f64, t as f64).unwrap();
        }
        let json = e.to_json().unwrap();
        let mut back = Ensemble::from_json(&json).unwrap();
        let es = entries(&mut back, &[("a", 3.0), ("b", 1.0)]);
        let es2 = entries(&mut e, &[("a", 3.0), ("b", 1.0)]);
        assert_eq!(
            back.stacking(ctx, &es).unwrap(),
            e.stacking(ctx, &es2).unwrap()
        );
        assert!(Ensemble::from_json(&json[..json.len() / 2]).is_err());
        assert!(Ensemble::from_json("{\"format\":\"other\"}").is_err());
        let broken = json.replace("\"service\":1", "\"service\":99");
        assert!(Ensemble::from_json(&broken)
            .unwrap_err()
            .contains("unknown service"));
    }

    #[test]
    fn bad_entries_are_refused_with_the_field_named() {
        let mut e = Ensemble::new(EnsembleConfig::default()).unwrap();
        let ctx = e.intern_context("", "").unwrap();
        let mut es = entries(&mut e, &[("a", 1.0)]);
        es[0].value = f64::NAN;
        assert!(e
            .stacking(ctx, &es)
            .unwrap_err()
            .contains("predictions[0].value"));
        assert!(e.stacking(ctx, &[]).unwrap_err().contains("empty"));
        let es = entries(&mut e, &[("a", 1.0)]);
        assert!(e
            .feedback(ctx, &es, f64::INFINITY, 0.0)
            .unwrap_err()
            .contains("actual"));
        assert!(e.stacking(99, &es).is_err());
    }

    #[test]
    fn a_call_with_thousands_of_entries_stays_cheap() {
        let mut e = Ensemble::new(EnsembleConfig::default()).unwrap();
        let ctx = e.intern_context("", "").unwrap();
        let many: Vec<Entry> = (0..5000)
            .map(|i| {
                let name = if i % 2 == 0 {
                    "same".to_owned()
                } else {
                    format!("m{i}")
                };
                Entry {
                    model: e.intern_model(&name).unwrap(),
                    value: (i % 7) as f64,
                    confidence: 0.5,
                    type_match: false,
                }
            })
            .collect();
        let t = std::time::Instant::now();
        for _ in 0..20 {
            e.feedback(ctx, &many, 3.0, 0.0).unwrap();
        }
        let r = e.stacking(ctx, &many).unwrap();
        assert!(r.prediction.is_finite());
        assert!(t.elapsed().as_secs_f64() < 5.0, "took {:?}", t.elapsed());
        assert!(e.contexts[ctx as usize].meta.models.len() <= MAX_META_MODELS);
    }

    #[test]
    fn batch_matches_single_calls() {
        let mut e = Ensemble::new(EnsembleConfig::default()).unwrap();
        let ctx = e.intern_context("", "").unwrap();
        for t in 0..40 {
            let y = (t % 5) as f64;
            let es = entries(&mut e, &[("a", y + 0.5), ("b", y * 2.0)]);
            e.feedback(ctx, &es, y, 0.0).unwrap();
        }
        let ids = [e.intern_model("a").unwrap(), e.intern_model("b").unwrap()];
        let values = [1.0, 2.0, 3.0, 4.0, 0.0, 7.0];
        let mut out = [0.0; 3];
        e.stacking_batch(ctx, &ids, &values, None, &mut out)
            .unwrap();
        for r in 0..3 {
            let es = entries(&mut e, &[("a", values[2 * r]), ("b", values[2 * r + 1])]);
            let single = e.stacking(ctx, &es).unwrap().prediction;
            assert!((single - out[r]).abs() < 1e-9);
        }
        assert!(e
            .stacking_batch(ctx, &ids, &values[..5], None, &mut out)
            .is_err());
    }
}
