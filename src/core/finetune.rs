//! Fine-tuning a linear model on new rows, with a validation that means something: the
//! base model and the fine-tuned one are scored on the same held-out rows.
//!
//! Optimisers:
//! - `sgd`: the old mini-batch gradient descent, exactly (fixed rate, fixed epochs, raw
//!   features, no early stopping unless asked);
//! - `adam` (default): per-feature adaptive steps on standardised features, so raw
//!   features of very different scales converge without tuning; early stopping on the
//!   validation loss keeps the best epoch;
//! - `ridge`: closed-form refit, for when the data is the full history.
//!
//! Whatever the optimiser, the result is folded back to raw-feature weights.

use super::kernels;
use super::linalg::cholesky_solve;
use super::linear::LinearModel;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Optimizer {
    Sgd,
    Adam,
    Ridge,
}

#[derive(Clone, Debug)]
pub struct FineTuneOptions {
    pub learning_rate: f64,
    pub batch_size: usize,
    pub epochs: usize,
    pub validation_split: f64,
    pub min_samples: usize,
    pub max_samples: usize,
    pub seed: u64,
    pub optimizer: Optimizer,
    /// L2 penalty per sample (0 = none).
    pub l2: f64,
    /// Stop after this many epochs without a better validation loss (None = never).
    pub patience: Option<usize>,
    pub min_improvement: f64,
}

impl Default for FineTuneOptions {
    fn default() -> Self {
        Self {
            learning_rate: 0.001,
            batch_size: 32,
            epochs: 10,
            validation_split: 0.2,
            min_samples: 100,
            max_samples: 10_000,
            seed: 42,
            optimizer: Optimizer::Adam,
            l2: 0.0,
            patience: Some(3),
            min_improvement: 0.0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Metrics {
    pub mse: f64,
    pub mae: f64,
    pub r2: f64,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EpochInfo {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    pub val_loss: f64,
}

#[derive(Clone, Debug)]
pub struct FineTuneOutcome {
    pub model: LinearModel,
    pub metrics: Metrics,
    pub base_metrics: Metrics,
    /// Relative MSE improvement over the base model on the same held-out rows.
    pub improvement: f64,
    pub accepted: bool,
    pub epochs: Vec<EpochInfo>,
    pub best_epoch: usize,
    pub train_rows: usize,
    pub validation_rows: usize,
    /// Fingerprint of the rows used, so the registry can tell which data made a version.
    pub data_hash: String,
    pub rows_used: usize,
}

pub fn metrics(pred: &[f64], actual: &[f64]) -> Metrics {
    let n = actual.len().min(pred.len());
    if n == 0 {
        return Metrics::default();
    }
    let mean = actual[..n].iter().sum::<f64>() / n as f64;
    let (mut se, mut ae, mut tot) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let e = pred[i] - actual[i];
        se += e * e;
        ae += e.abs();
        tot += (actual[i] - mean).powi(2);
    }
    Metrics {
        mse: se / n as f64,
        mae: ae / n as f64,
        r2: if tot > 0.0 { 1.0 - se / tot } else { 0.0 },
    }
}

/// SplitMix64: tiny, seedable, and good enough for shuffling.
pub struct SplitMix(pub u64);
impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize
    }
}

/// Data fingerprint: FNV-1a-style over 64-bit words in four independent lanes (a serial
/// byte-wise FNV over a 10k × 32 matrix cost more than the training itself).
fn fingerprint(x: &[f64], y: &[f64]) -> String {
    const P: u64 = 0x100000001b3;
    let mut lanes = [
        0xcbf29ce484222325u64,
        0x84222325cbf29ce4,
        0x9E3779B97F4A7C15,
        0xBF58476D1CE4E5B9,
    ];
    for part in [x, y] {
        let chunks = part.chunks_exact(4);
        let rest = chunks.remainder();
        for c in chunks {
            for k in 0..4 {
                lanes[k] = (lanes[k] ^ c[k].to_bits()).wrapping_mul(P);
            }
        }
        for (k, v) in rest.iter().enumerate() {
            lanes[k] = (lanes[k] ^ v.to_bits()).wrapping_mul(P);
        }
        lanes[0] = (lanes[0] ^ part.len() as u64).wrapping_mul(P);
    }
    let h = lanes.iter().fold(0xcbf29ce484222325u64, |h, l| {
        (h ^ l).wrapping_mul(P).rotate_left(29)
    });
    format!("{h:016x}")
}

/// Checks shapes and values before any work; the message names the first bad row/field.
pub fn check_data(
    x: &[f64],
    y: &[f64],
    d: usize,
    base: &LinearModel,
    opts: &FineTuneOptions,
) -> Result<(), String> {
    if d == 0 {
        return Err("features must be at least 1".into());
    }
    if x.len() != y.len() * d {
        return Err(format!(
            "X has {} values, expected rows × features = {} × {d}",
            x.len(),
            y.len()
        ));
    }
    if d != base.weights.len() {
        return Err(format!(
            "newData rows have {d} features but the base model has {} weights",
            base.weights.len()
        ));
    }
    if y.len() < opts.min_samples {
        return Err(format!(
            "newData has {} rows, fewer than minSamples ({})",
            y.len(),
            opts.min_samples
        ));
    }
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "newData[{}].features[{}] must be a finite number",
            i / d,
            i % d
        ));
    }
    if let Some(i) = y.iter().position(|v| !v.is_finite()) {
        return Err(format!("newData[{i}].quality must be a finite number"));
    }
    Ok(())
}

pub fn check_options(o: &FineTuneOptions) -> Result<(), String> {
    if !(o.learning_rate.is_finite() && o.learning_rate > 0.0) {
        return Err(format!(
            "learningRate must be a positive number, got {}",
            o.learning_rate
        ));
    }
    if o.batch_size == 0 {
        return Err("batchSize must be ≥ 1".into());
    }
    if o.epochs == 0 || o.epochs > 100_000 {
        return Err(format!("epochs must be in [1, 100000], got {}", o.epochs));
    }
    if !(o.validation_split > 0.0 && o.validation_split < 1.0) {
        return Err(format!(
            "validationSplit must be in (0, 1), got {}",
            o.validation_split
        ));
    }
    if o.max_samples == 0 {
        return Err("maxSamples must be ≥ 1".into());
    }
    if !(o.l2.is_finite() && o.l2 >= 0.0) {
        return Err(format!("l2 must be ≥ 0, got {}", o.l2));
    }
    if !o.min_improvement.is_finite() {
        return Err("minImprovement must be a finite number".into());
    }
    Ok(())
}

struct Split {
    train: Vec<usize>,
    val: Vec<usize>,
}

fn split(rows: usize, start: usize, opts: &FineTuneOptions) -> Split {
    let mut idx: Vec<usize> = (start..start + rows).collect();
    let mut rng = SplitMix(opts.seed);
    for i in (1..idx.len()).rev() {
        let j = rng.below(i + 1);
        idx.swap(i, j);
    }
    let n_val = ((rows as f64 * opts.validation_split).floor() as usize)
        .clamp(1, rows.saturating_sub(1).max(1));
    let val = idx.split_off(rows - n_val);
    Split { train: idx, val }
}

/// Linear predictor in whatever space training happens in.
struct Params {
    w: Vec<f64>,
    b: f64,
}

/// Per-feature standardisation: `z = (x − mean) / std`.
struct Scaler {
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl Scaler {
    fn identity(d: usize) -> Self {
        Self {
            mean: vec![0.0; d],
            std: vec![1.0; d],
        }
    }
    fn fit(x: &[f64], rows: &[usize], d: usize) -> Self {
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0.0; d];
        for &r in rows {
            for j in 0..d {
                mean[j] += x[r * d + j];
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0; d];
        for &r in rows {
            for j in 0..d {
                var[j] += (x[r * d + j] - mean[j]).powi(2);
            }
        }
        // A constant feature keeps scale 1 (nothing to learn from it, nothing to divide by).
        let std = var.iter().map(|v| {
            let s = (v / n).sqrt();
            if s > 1e-12 {
                s
            } else {
                1.0
            }
        });
        Self {
            mean,
            std: std.collect(),
        }
    }
    /// Raw-space model → standardised-space parameters.
    fn to_scaled(&self, m: &LinearModel) -> Params {
        let w: Vec<f64> = m
            .weights
            .iter()
            .zip(&self.std)
            .map(|(w, s)| w * s)
            .collect();
        let b = m.bias
            + m.weights
                .iter()
                .zip(&self.mean)
                .map(|(w, mu)| w * mu)
                .sum::<f64>();
        Params { w, b }
    }
    /// Standardised-space parameters → raw-space weights and bias.
    fn to_raw(&self, p: &Params) -> (Vec<f64>, f64) {
        let w: Vec<f64> = p.w.iter().zip(&self.std).map(|(w, s)| w / s).collect();
        let b = p.b - w.iter().zip(&self.mean).map(|(w, mu)| w * mu).sum::<f64>();
        (w, b)
    }
}

fn loss(p: &Params, sc: &Scaler, x: &[f64], y: &[f64], rows: &[usize], d: usize) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    // Evaluate in raw space: fold the scaler into the weights once, then one dot per row.
    let w: Vec<f64> = p.w.iter().zip(&sc.std).map(|(w, s)| w / s).collect();
    let b = p.b - w.iter().zip(&sc.mean).map(|(w, m)| w * m).sum::<f64>();
    let mut s = 0.0;
    for &r in rows {
        let e = b + dot(&w, &x[r * d..(r + 1) * d]) - y[r];
        s += e * e;
    }
    s / rows.len() as f64
}

/// Dot product with four independent accumulators, so the compiler can keep several
/// multiply-adds in flight (a single running sum serialises on its own latency).
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let chunks = n / 4;
    for c in 0..chunks {
        let i = c * 4;
        acc[0] += a[i] * b[i];
        acc[1] += a[i + 1] * b[i + 1];
        acc[2] += a[i + 2] * b[i + 2];
        acc[3] += a[i + 3] * b[i + 3];
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in chunks * 4..n {
        s += a[i] * b[i];
    }
    s
}

/// `y += a·x`
#[inline]
fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// Fine-tunes `base` on row-major `x` (`rows × d`) and `y`. `progress` is called after
/// every epoch (the napi layer forwards it to JS without blocking).
pub fn fine_tune(
    base: &LinearModel,
    x: &[f64],
    y: &[f64],
    d: usize,
    opts: &FineTuneOptions,
    progress: &mut dyn FnMut(EpochInfo),
) -> Result<FineTuneOutcome, String> {
    check_options(opts)?;
    check_data(x, y, d, base, opts)?;
    // maxSamples keeps the most recent rows (the end of the input).
    let rows = y.len().min(opts.max_samples);
    let start = y.len() - rows;
    let Split { mut train, val } = split(rows, start, opts);
    if train.is_empty() {
        return Err("not enough rows left for training after the validation split".into());
    }
    let yv: Vec<f64> = val.iter().map(|&r| y[r]).collect();
    let score = |m: &LinearModel| {
        let p: Vec<f64> = val
            .iter()
            .map(|&r| m.predict(&x[r * d..(r + 1) * d]))
            .collect();
        metrics(&p, &yv)
    };
    let base_metrics = score(base);

    let sc = match opts.optimizer {
        Optimizer::Sgd => Scaler::identity(d),
        _ => Scaler::fit(x, &train, d),
    };
    let mut p = sc.to_scaled(base);
    let mut history = Vec::new();
    let mut best = (loss(&p, &sc, x, y, &val, d), p.w.clone(), p.b, 0usize);

    match opts.optimizer {
        Optimizer::Ridge => {
            // Normal equations on standardised features with an unpenalised intercept.
            let n = d + 1;
            let mut a = vec![0.0; n * n];
            let mut b = vec![0.0; n];
            let mut z = vec![0.0; n];
            for &r in &train {
                z[0] = 1.0;
                for j in 0..d {
                    z[j + 1] = (x[r * d + j] - sc.mean[j]) / sc.std[j];
                }
                for i in 0..n {
                    for k in 0..n {
                        a[i * n + k] += z[i] * z[k];
                    }
                    b[i] += z[i] * y[r];
                }
            }
            let lambda = opts.l2.max(1e-8) * train.len() as f64;
            for i in 1..n {
                a[i * n + i] += lambda;
            }
            if !cholesky_solve(&mut a, &mut b, n) {
                return Err("ridge system is singular".into());
            }
            p = Params {
                b: b[0],
                w: b[1..].to_vec(),
            };
            let info = EpochInfo {
                epoch: 1,
                epochs: 1,
                train_loss: loss(&p, &sc, x, y, &train, d),
                val_loss: loss(&p, &sc, x, y, &val, d),
            };
            progress(info);
            history.push(info);
            best = (info.val_loss, p.w.clone(), p.b, 1);
        }
        Optimizer::Sgd | Optimizer::Adam => {
            let adam = opts.optimizer == Optimizer::Adam;
            let (b1, b2, eps): (f64, f64, f64) = (0.9, 0.999, 1e-8);
            let (mut mw, mut vw) = (vec![0.0; d], vec![0.0; d]);
            let (mut mb, mut vb) = (0.0, 0.0);
            let mut step = 0i32;
            let mut gw = vec![0.0; d];
            let mut z = vec![0.0; d];
            let inv_std: Vec<f64> = sc.std.iter().map(|s| 1.0 / s).collect();
            let mut rng = SplitMix(opts.seed ^ 0x5eed);
            let mut since_best = 0usize;
            for epoch in 1..=opts.epochs {
                if adam {
                    // Reshuffle per epoch; the old SGD walked the rows in one fixed order.
                    for i in (1..train.len()).rev() {
                        let j = rng.below(i + 1);
                        train.swap(i, j);
                    }
                }
                let mut train_se = 0.0;
                for batch in train.chunks(opts.batch_size) {
                    gw.iter_mut().for_each(|g| *g = 0.0);
                    let mut gb = 0.0;
                    if adam {
                        for &r in batch {
                            let raw = &x[r * d..(r + 1) * d];
                            for j in 0..d {
                                z[j] = (raw[j] - sc.mean[j]) * inv_std[j];
                            }
                            let err = p.b + dot(&p.w, &z) - y[r];
                            train_se += err * err;
                            axpy(&mut gw, err, &z);
                            gb += err;
                        }
                    } else {
                        // Raw rows: the runtime-dispatched SIMD kernel (src/core/kernels.rs).
                        let (g, se) = kernels::batch_gradient(&p.w, p.b, x, y, batch, &mut gw);
                        gb = g;
                        train_se += se;
                    }
                    let m = batch.len() as f64;
                    for j in 0..d {
                        gw[j] = gw[j] / m + opts.l2 * p.w[j];
                    }
                    gb /= m;
                    if adam {
                        step += 1;
                        let c1 = 1.0 - b1.powi(step);
                        let c2 = 1.0 - b2.powi(step);
                        for j in 0..d {
                            mw[j] = b1 * mw[j] + (1.0 - b1) * gw[j];
                            vw[j] = b2 * vw[j] + (1.0 - b2) * gw[j] * gw[j];
                            p.w[j] -=
                                opts.learning_rate * (mw[j] / c1) / ((vw[j] / c2).sqrt() + eps);
                        }
                        mb = b1 * mb + (1.0 - b1) * gb;
                        vb = b2 * vb + (1.0 - b2) * gb * gb;
                        p.b -= opts.learning_rate * (mb / c1) / ((vb / c2).sqrt() + eps);
                    } else {
                        axpy(&mut p.w, -opts.learning_rate, &gw);
                        p.b -= opts.learning_rate * gb;
                    }
                }
                if !p.b.is_finite() || p.w.iter().any(|w| !w.is_finite()) {
                    return Err(format!(
                        "training diverged at epoch {epoch} (learningRate {} is too large for these features)",
                        opts.learning_rate
                    ));
                }
                let info = EpochInfo {
                    epoch,
                    epochs: opts.epochs,
                    train_loss: train_se / train.len() as f64,
                    val_loss: loss(&p, &sc, x, y, &val, d),
                };
                progress(info);
                history.push(info);
                if info.val_loss < best.0 {
                    best = (info.val_loss, p.w.clone(), p.b, epoch);
                    since_best = 0;
                } else {
                    since_best += 1;
                }
                if let Some(pat) = opts.patience {
                    if since_best >= pat {
                        break;
                    }
                }
            }
            // With early stopping the best epoch is kept; plain SGD keeps its last state.
            if opts.patience.is_none() {
                best = (0.0, p.w.clone(), p.b, history.len());
            }
        }
    }
    let (w, b) = sc.to_raw(&Params {
        w: best.1,
        b: best.2,
    });
    let model = LinearModel {
        weights: w,
        bias: b,
        extra: base.extra.clone(),
    };
    let m = score(&model);
    let improvement = if base_metrics.mse > 0.0 {
        (base_metrics.mse - m.mse) / base_metrics.mse
    } else {
        0.0
    };
    Ok(FineTuneOutcome {
        model,
        metrics: m,
        base_metrics,
        improvement,
        accepted: improvement >= opts.min_improvement,
        epochs: history,
        best_epoch: best.3,
        train_rows: train.len(),
        validation_rows: val.len(),
        data_hash: fingerprint(&x[start * d..], &y[start..]),
        rows_used: rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// y = 3 + 0.002·a − 4·b + noise, with `a` in the thousands and `b` in [0, 1].
    fn data(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut r = SplitMix(seed);
        let mut u = || (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..n {
            let a = 5000.0 * u();
            let b = u();
            x.extend([a, b]);
            y.push(3.0 + 0.002 * a - 4.0 * b + 0.1 * (u() - 0.5));
        }
        (x, y)
    }

    #[test]
    fn adam_converges_on_raw_features_of_different_scales() {
        let (x, y) = data(2000, 1);
        let base = LinearModel::zeros(2);
        let opts = FineTuneOptions {
            learning_rate: 0.05,
            epochs: 60,
            patience: Some(5),
            ..Default::default()
        };
        let out = fine_tune(&base, &x, &y, 2, &opts, &mut |_| {}).unwrap();
        assert!(out.metrics.r2 > 0.99, "{:?}", out.metrics);
        assert!(
            (out.model.weights[0] - 0.002).abs() < 2e-4 && (out.model.weights[1] + 4.0).abs() < 0.2,
            "{:?}",
            out.model
        );
        assert!(out.accepted && out.improvement > 0.9);
    }

    #[test]
    fn sgd_is_the_plain_old_update() {
        // One epoch, one batch of the whole train set: a single averaged gradient step.
        let x = vec![1.0, 2.0, 3.0, 4.0, 5.0];
        let y = vec![2.0, 4.0, 6.0, 8.0, 10.0];
        let base = LinearModel::zeros(1);
        let opts = FineTuneOptions {
            optimizer: Optimizer::Sgd,
            epochs: 1,
            batch_size: 100,
            min_samples: 1,
            patience: None,
            learning_rate: 0.01,
            ..Default::default()
        };
        let out = fine_tune(&base, &x, &y, 1, &opts, &mut |_| {}).unwrap();
        let s = split(5, 0, &opts);
        let n = s.train.len() as f64;
        let gw: f64 = s.train.iter().map(|&r| -y[r] * x[r]).sum::<f64>() / n;
        let gb: f64 = s.train.iter().map(|&r| -y[r]).sum::<f64>() / n;
        assert!((out.model.weights[0] + 0.01 * gw).abs() < 1e-12);
        assert!((out.model.bias + 0.01 * gb).abs() < 1e-12);
    }

    #[test]
    fn ridge_recovers_the_coefficients() {
        let (x, y) = data(1000, 2);
        let opts = FineTuneOptions {
            optimizer: Optimizer::Ridge,
            ..Default::default()
        };
        let out = fine_tune(&LinearModel::zeros(2), &x, &y, 2, &opts, &mut |_| {}).unwrap();
        assert!((out.model.bias - 3.0).abs() < 0.05 && (out.model.weights[1] + 4.0).abs() < 0.05);
    }

    #[test]
    fn checks_name_the_first_bad_row() {
        let (mut x, y) = data(200, 3);
        let base = LinearModel::zeros(2);
        let o = FineTuneOptions::default();
        assert!(
            fine_tune(&LinearModel::zeros(3), &x, &y, 2, &o, &mut |_| {})
                .unwrap_err()
                .contains("base model has 3")
        );
        assert!(fine_tune(&base, &x[..100], &y[..50], 2, &o, &mut |_| {})
            .unwrap_err()
            .contains("minSamples"));
        x[7] = f64::NAN;
        assert!(fine_tune(&base, &x, &y, 2, &o, &mut |_| {})
            .unwrap_err()
            .contains("newData[3].features[1]"));
        let bad = FineTuneOptions {
            validation_split: 1.5,
            ..Default::default()
        };
        assert!(fine_tune(&base, &x, &y, 2, &bad, &mut |_| {})
            .unwrap_err()
            .contains("validationSplit"));
    }

    #[test]
    fn max_samples_keeps_the_newest_rows_and_the_split_is_seeded() {
        let (x, y) = data(500, 4);
        let o = FineTuneOptions {
            max_samples: 200,
            ..Default::default()
        };
        let a = fine_tune(&LinearModel::zeros(2), &x, &y, 2, &o, &mut |_| {}).unwrap();
        let b = fine_tune(
            &LinearModel::zeros(2),
            &x[600..],
            &y[300..],
            2,
            &o,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(a.rows_used, 200);
        assert_eq!(a.data_hash, b.data_hash);
        assert_eq!(a.model, b.model, "same rows + same seed = same model");
    }
}
