//! Profiling harness for the tree families (docs/gbm-profile.md); not a test, not a bench
//! target. Reads data/production-sample.jsonl (first 3,200 rows train, last 800 test).
//!   cargo run --release --example trees -- fit [trees] [depth] [lr] [reps] [family]
//!   cargo run --release --example trees -- gbm [trees] [depth] [lr] [reps]
//!       env LAYOUT=row|col (default col), BINS=<n> (quantile pre-binning, 0: off),
//!       SUBSAMPLE=<f> (default 1): smartcore's XGRegressor called directly.
//!   cargo run --release --example trees -- predict [model.json] [calls]
//!       (no file, or "": 200 boosted trees of depth 6 fitted on all 4,000 rows)
//! Times are the minimum over repetitions, in thread CPU time: on a shared machine, load
//! only ever adds.

use mlops_native::core::models::{
    fit_trees, gather, gather_columns, Family, Model, ModelKind, TreeModel, TreeParams,
};
use serde_json::Value;

/// CPU time of this thread in ns (first field of /proc/thread-self/schedstat).
fn cpu_ns() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Quantile cut points per feature from the training rows: at most `bins` distinct values,
/// each the largest training value of its bin (LightGBM's idea, 255 bins by default).
fn cuts(x: &[f64], d: usize, train: &[usize], bins: usize) -> Vec<Vec<f64>> {
    (0..d)
        .map(|j| {
            let mut v: Vec<f64> = train.iter().map(|&r| x[r * d + j]).collect();
            v.sort_by(f64::total_cmp);
            v.dedup();
            if v.len() <= bins {
                return v;
            }
            let mut c: Vec<f64> = (1..=bins)
                .map(|b| v[(b * v.len()).div_ceil(bins) - 1])
                .collect();
            c.dedup();
            c
        })
        .collect()
}

/// Every value replaced by the smallest cut ≥ it (the last cut above the range).
fn bin(x: &[f64], d: usize, cuts: &[Vec<f64>]) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = &cuts[i % d];
            let k = c.partition_point(|&t| t < v).min(c.len() - 1);
            c[k]
        })
        .collect()
}

/// smartcore's thresholds are midpoints between two present values; with binned inputs the
/// lower one is a cut, and `raw <= cut[b]` iff `bin(raw) <= b`: rewriting each threshold
/// to the largest cut ≤ it makes the model exact on raw inputs.
fn snap(node: &mut Value, cuts: &[Vec<f64>]) {
    let Value::Object(m) = node else { return };
    if !matches!(m.get("left"), Some(Value::Object(_))) {
        return;
    }
    let f = m["split_feature_idx"].as_u64().unwrap_or(0) as usize;
    let t = m["threshold"].as_f64().unwrap_or(0.0);
    let c = &cuts[f];
    let k = c.partition_point(|&v| v <= t);
    if k > 0 {
        m.insert("threshold".into(), c[k - 1].into());
    }
    for k in ["left", "right"] {
        if let Some(child) = m.get_mut(k) {
            snap(child, cuts);
        }
    }
}

fn data() -> (Vec<f64>, Vec<f64>, usize) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/production-sample.jsonl");
    let text = std::fs::read_to_string(path).expect("data/production-sample.jsonl");
    let (mut x, mut y, mut d) = (Vec::new(), Vec::new(), 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON row");
        let f = v["features"].as_array().expect("features");
        d = f.len();
        x.extend(f.iter().map(|v| v.as_f64().expect("number")));
        y.push(v["quality"].as_f64().expect("quality"));
    }
    (x, y, d)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (x, y, d) = data();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("fit") => {
            let family = Family::parse(arg(5).unwrap_or("gbm")).expect("family");
            let params = TreeParams {
                trees: arg(1).map(|v| v.parse().expect("trees")),
                max_depth: arg(2).map(|v| v.parse().expect("depth")),
                learning_rate: arg(3).map(|v| v.parse().expect("lr")),
                early_stopping_rounds: Some(0),
                seed: 1,
                ..Default::default()
            };
            let reps: usize = arg(4).map_or(3, |v| v.parse().expect("reps"));
            let train: Vec<usize> = (0..3200).collect();
            let test: Vec<usize> = (3200..y.len()).collect();
            let mut best = f64::INFINITY;
            let mut model = None;
            for _ in 0..reps {
                let t0 = cpu_ns();
                let t = fit_trees(family, &x, &y, d, &train, &[], &params).expect("fit");
                best = best.min((cpu_ns() - t0) / 1e6);
                model = Some(t);
            }
            let t = model.expect("one fit");
            let mse = test
                .iter()
                .map(|&r| (t.predict(&x[r * d..(r + 1) * d]) - y[r]).powi(2))
                .sum::<f64>()
                / test.len() as f64;
            println!(
                "{} trees={} fit {best:.0} ms (min of {reps}), test MSE {mse:.4}",
                family.name(),
                t.trees.len()
            );
        }
        Some("gbm") => {
            let env = |k: &str| std::env::var(k).ok();
            let col = env("LAYOUT").as_deref() != Some("row");
            let bins: usize = env("BINS").map_or(0, |v| v.parse().expect("BINS"));
            let subsample: f64 = env("SUBSAMPLE").map_or(1.0, |v| v.parse().expect("SUBSAMPLE"));
            let trees: usize = arg(1).map_or(200, |v| v.parse().expect("trees"));
            let depth: u16 = arg(2).map_or(4, |v| v.parse().expect("depth"));
            let lr: f64 = arg(3).map_or(0.1, |v| v.parse().expect("lr"));
            let reps: usize = arg(4).map_or(3, |v| v.parse().expect("reps"));
            let train: Vec<usize> = (0..3200).collect();
            let test: Vec<usize> = (3200..y.len()).collect();
            let (mut best, mut native) = (f64::INFINITY, Value::Null);
            let mut c = Vec::new();
            for _ in 0..reps {
                let t0 = cpu_ns();
                // Binning is part of the fit, as LightGBM's Dataset construction is.
                let xb = if bins > 0 {
                    c = cuts(&x, d, &train, bins);
                    bin(&x, d, &c)
                } else {
                    x.clone()
                };
                let (xm, ym) = if col {
                    gather_columns(&xb, &y, d, &train)
                } else {
                    gather(&xb, &y, d, &train)
                };
                let q = smartfit::GbmParams::default()
                    .with_n_estimators(trees)
                    .with_learning_rate(lr)
                    .with_base_score(ym.mean().unwrap_or(0.0))
                    .with_lambda(1.0)
                    .with_min_child_weight(1)
                    .with_subsample(subsample)
                    .with_seed(1)
                    .with_max_depth(depth);
                native = smartfit::fit_gbm(&xm, &ym, q).expect("fit");
                if bins > 0 {
                    if let Some(Value::Array(regs)) = native.get_mut("regressors") {
                        regs.iter_mut().for_each(|r| snap(r, &c));
                    }
                }
                best = best.min((cpu_ns() - t0) / 1e6);
            }
            let t = TreeModel::from_native(Family::Gbm, native, d, Value::Null).expect("model");
            let mse = test
                .iter()
                .map(|&r| (t.predict(&x[r * d..(r + 1) * d]) - y[r]).powi(2))
                .sum::<f64>()
                / test.len() as f64;
            println!(
                "gbm {trees} trees depth {depth} lr {lr} layout {} bins {bins} subsample {subsample}: fit {best:.0} ms CPU (min of {reps}), test MSE {mse:.4}",
                if col { "col" } else { "row" }
            );
        }
        Some("predict") => {
            // Without a file: the case, 200 boosted trees of depth 6 on all rows.
            let m = match arg(1).filter(|p| !p.is_empty()) {
                Some(p) => Model::from_json(&std::fs::read_to_string(p).expect("model file"))
                    .expect("model"),
                None => {
                    let all: Vec<usize> = (0..y.len()).collect();
                    let p = TreeParams {
                        trees: Some(200),
                        max_depth: Some(6),
                        early_stopping_rounds: Some(0),
                        seed: 1,
                        ..Default::default()
                    };
                    Model {
                        kind: ModelKind::Trees(
                            fit_trees(Family::Gbm, &x, &y, d, &all, &[], &p).expect("fit"),
                        ),
                        features: None,
                        metrics: Value::Null,
                    }
                }
            };
            let ModelKind::Trees(t) = &m.kind else {
                panic!("not a tree model")
            };
            let calls: usize = arg(2).map_or(100_000, |v| v.parse().expect("calls"));
            let rows = y.len();
            type Walk<'a> = Box<dyn Fn(&[f64]) -> f64 + 'a>;
            let walks: Vec<(&str, Walk)> = vec![
                ("checked, 8 in lockstep (before)", Box::new(|r| t.predict_checked(r))),
                ("unchecked, 4 in lockstep", Box::new(|r| t.predict_lockstep::<4>(r))),
                ("unchecked, 8 in lockstep", Box::new(|r| t.predict_lockstep::<8>(r))),
                ("unchecked, 16 in lockstep", Box::new(|r| t.predict_lockstep::<16>(r))),
                ("unchecked, 1 (no lockstep)", Box::new(|r| t.predict_lockstep::<1>(r))),
            ];
            for (name, f) in &walks {
                let mut best = f64::INFINITY;
                let mut sink = 0.0;
                for _ in 0..9 {
                    let t0 = cpu_ns();
                    for i in 0..calls {
                        let r = i % rows;
                        sink += f(std::hint::black_box(&x[r * d..(r + 1) * d]));
                    }
                    best = best.min((cpu_ns() - t0) / calls as f64);
                }
                println!("{name:<34} {best:>6.0} ns/call CPU (min of 9) [{sink:.3}]");
            }
        }
        _ => eprintln!("usage: trees fit [trees] [depth] [lr] [reps] [family] | trees gbm [trees] [depth] [lr] [reps] | trees predict [model.json] [calls]"),
    }
}
