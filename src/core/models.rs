//! Model families: one loader, one predictor and one file format for every kind of model
//! fine-tuning can produce.
//!
//! - `linear`: `bias + Σ wᵢxᵢ` ([`LinearModel`]); its files keep their own shape (flat
//!   `{weights, bias}` or the services' nested shapes), so old readers still read them.
//! - `gbm`: gradient-boosted trees, fitted by smartcore's `XGRegressor`.
//! - `random_forest`, `extra_trees`: smartcore's forests.
//!
//! Tree families are saved as a versioned envelope,
//! `{format: 'mlops-native/<family>@1', features, metrics, hyperparameters, model}`, where
//! `model` is smartcore's own serde form. Loading deserialises that form into smartcore's
//! type (so a file smartcore would refuse is refused) and flattens the trees into arrays:
//! smartcore predicts one row by copying it into a fresh `Vec` per tree, which costs more
//! than the tree walk itself; the flat form walks 200 depth-6 trees in about a microsecond.
//! Anything else (no known `format`, a format of another version, a corrupt body) is
//! refused with the file's name and what is wrong.

use super::linear::{feature_names_in, LinearModel};
use ndarray::{Array1, Array2};
use serde_json::{json, Map, Value};
use smartfit::{EtParams, GbmParams, RfParams};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Linear,
    Gbm,
    RandomForest,
    ExtraTrees,
}

pub const TREE_FAMILIES: [Family; 3] = [Family::Gbm, Family::RandomForest, Family::ExtraTrees];

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Linear => "linear",
            Family::Gbm => "gbm",
            Family::RandomForest => "random_forest",
            Family::ExtraTrees => "extra_trees",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "linear" => Family::Linear,
            "gbm" => Family::Gbm,
            "random_forest" => Family::RandomForest,
            "extra_trees" => Family::ExtraTrees,
            _ => return None,
        })
    }
    pub fn format(self) -> String {
        format!("mlops-native/{}@1", self.name())
    }
}

/// Tree hyperparameters. `None` fields take the family's default (see [`TreeParams::resolved`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TreeParams {
    pub trees: Option<usize>,
    pub max_depth: Option<u16>,
    pub learning_rate: Option<f64>,
    pub min_samples_leaf: Option<usize>,
    /// Features tried per split (forests); default: smartcore's.
    pub mtry: Option<usize>,
    /// gbm: L2 penalty on leaf values.
    pub lambda: Option<f64>,
    /// gbm: rows sampled per tree, in (0, 1].
    pub subsample: Option<f64>,
    /// gbm: stop adding trees after this many without a better validation loss (0: off).
    pub early_stopping_rounds: Option<usize>,
    pub seed: u64,
}

/// The hyperparameters a fit really used (recorded in files and in the registry).
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub trees: usize,
    pub max_depth: Option<u16>,
    pub learning_rate: f64,
    pub min_samples_leaf: usize,
    pub mtry: Option<usize>,
    pub lambda: f64,
    pub subsample: f64,
    pub early_stopping_rounds: usize,
    pub seed: u64,
}

impl TreeParams {
    /// Defaults: gbm 200 trees of depth 4 at rate 0.1 (xgboost's usual setting for a few
    /// thousand rows), stopping 20 rounds after the best validation loss; forests 100 trees
    /// with leaves of at least 5 rows, trying half the features per split (random forest)
    /// or all of them (extra trees, whose randomness is in the thresholds). On the bundled
    /// data these beat smartcore's own defaults (leaves of 1, √d features) by 5–15 % in
    /// held-out MSE and make files 4× smaller.
    pub fn resolved(&self, family: Family) -> Resolved {
        let gbm = family == Family::Gbm;
        Resolved {
            trees: self.trees.unwrap_or(if gbm { 200 } else { 100 }),
            max_depth: self.max_depth.or(if gbm { Some(4) } else { None }),
            learning_rate: self.learning_rate.unwrap_or(0.1),
            min_samples_leaf: self.min_samples_leaf.unwrap_or(if gbm { 1 } else { 5 }),
            mtry: self.mtry,
            lambda: self.lambda.unwrap_or(1.0),
            subsample: self.subsample.unwrap_or(1.0),
            early_stopping_rounds: self.early_stopping_rounds.unwrap_or(20),
            seed: self.seed,
        }
    }
}

impl TreeParams {
    /// The parameters a saved model was fitted with (its `hyperparameters`, as
    /// [`Resolved::to_json`] wrote them), so a refit grows the same kind of ensemble. gbm
    /// asks for the trees it fitted before early stopping cut them (`treesFitted`): the
    /// refit stops early on its own validation rows. Missing or odd fields take defaults.
    pub fn from_hyperparameters(h: &Value) -> Self {
        let num = |k: &str| h.get(k).and_then(Value::as_f64).filter(|v| v.is_finite());
        let count = |k: &str| {
            num(k)
                .filter(|v| *v >= 1.0 && *v <= 1e6)
                .map(|v| v as usize)
        };
        TreeParams {
            trees: count("treesFitted").or_else(|| count("trees")),
            max_depth: num("maxDepth")
                .filter(|v| *v >= 1.0 && *v <= 64.0)
                .map(|v| v as u16),
            learning_rate: num("learningRate").filter(|v| *v > 0.0),
            min_samples_leaf: count("minChildWeight").or_else(|| count("minSamplesLeaf")),
            mtry: count("mtry"),
            lambda: num("lambda").filter(|v| *v >= 0.0),
            subsample: num("subsample").filter(|v| *v > 0.0 && *v <= 1.0),
            early_stopping_rounds: num("earlyStoppingRounds")
                .filter(|v| *v >= 0.0)
                .map(|v| v as usize),
            seed: h.get("seed").and_then(Value::as_u64).unwrap_or(0),
        }
    }
}

impl Resolved {
    pub fn to_json(&self, family: Family) -> Value {
        match family {
            Family::Gbm => json!({
                "trees": self.trees, "maxDepth": self.max_depth, "learningRate": self.learning_rate,
                "minChildWeight": self.min_samples_leaf, "lambda": self.lambda,
                "subsample": self.subsample, "earlyStoppingRounds": self.early_stopping_rounds,
                "seed": self.seed,
            }),
            _ => json!({
                "trees": self.trees, "maxDepth": self.max_depth, "minSamplesLeaf": self.min_samples_leaf,
                "mtry": self.mtry, "seed": self.seed,
            }),
        }
    }
}

/// One node, 16 bytes. The walk always does `i = left + (x[feat] > thr)`: a split sends
/// `x <= thr` to `left` and the rest to `left + 1` (siblings are adjacent, so a child is an
/// add, not a branch); a leaf points at itself with `thr = +∞`, so extra steps stay put.
/// That lets [`TreeModel::predict`] walk several trees in lockstep for a fixed number of
/// steps, overlapping their memory latencies instead of chasing one pointer chain at a time.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Node {
    thr: f64,
    feat: u32,
    left: u32,
}

/// One tree as a node array (see [`Node`]) plus leaf values; smartcore's rule for both its
/// boosted and its forest trees is `x <= threshold` → left.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlatTree {
    nodes: Vec<Node>,
    values: Vec<f64>,
    /// Longest root-to-leaf path: steps that reach a leaf from anywhere.
    depth: usize,
    /// 1 + the largest feature index a split reads: the unchecked walk needs `x` this long.
    need: usize,
}

impl FlatTree {
    #[inline]
    fn step(&self, i: usize, x: &[f64]) -> usize {
        let n = self.nodes[i];
        n.left as usize + (x[n.feat as usize] > n.thr) as usize
    }

    /// Whether [`Self::step_unchecked`] may walk this tree over an `x` of `n` values.
    #[inline]
    fn walkable(&self, n: usize) -> bool {
        !self.nodes.is_empty() && self.need <= n
    }

    /// [`Self::step`] without bounds checks: the lockstep walk's inner loop, where the two
    /// checks per step cost as much as the walk. Sound because every tree is built only by
    /// `set_leaf`/`set_split` (each `left + 1` indexes a pushed node, a leaf points at
    /// itself) and `need` covers every `feat`; [`TreeModel::predict`] checks
    /// [`Self::walkable`] for each tree before walking it.
    #[inline(always)]
    unsafe fn step_unchecked(&self, i: usize, x: &[f64]) -> usize {
        // SAFETY: see above; `i` starts at 0 (the root exists: walkable) and only ever takes
        // values `left` or `left + 1` of a node, which index nodes.
        let n = unsafe { *self.nodes.get_unchecked(i) };
        n.left as usize + (unsafe { *x.get_unchecked(n.feat as usize) } > n.thr) as usize
    }

    /// `x` must hold at least as many values as the model has features (checked by callers;
    /// every `feat` was checked against that count at load).
    #[inline]
    pub fn predict(&self, x: &[f64]) -> f64 {
        let mut i = 0usize;
        for _ in 0..self.depth {
            i = self.step(i, x);
        }
        self.values[i]
    }

    fn new_root() -> Self {
        FlatTree {
            nodes: vec![Self::leaf(0)],
            values: vec![0.0],
            depth: 0,
            need: 0,
        }
    }

    fn leaf(at: usize) -> Node {
        Node {
            thr: f64::INFINITY,
            feat: 0,
            left: at as u32,
        }
    }

    fn set_leaf(&mut self, at: usize, value: f64) {
        self.nodes[at] = Self::leaf(at);
        self.values[at] = value;
    }

    /// Makes `at` a split and returns the index of its left child (the right one follows).
    fn set_split(&mut self, at: usize, feat: u32, thr: f64) -> usize {
        let left = self.nodes.len();
        self.need = self.need.max(feat as usize + 1);
        self.nodes.extend([Self::leaf(left), Self::leaf(left + 1)]);
        self.values.extend([0.0, 0.0]);
        self.nodes[at] = Node {
            thr,
            feat,
            left: left as u32,
        };
        left
    }

    /// smartcore's boosted tree: nested `{left, right, value, threshold, split_feature_idx}`.
    fn from_xgb(root: &Value, d: usize) -> Result<Self, String> {
        let mut t = Self::new_root();
        let mut stack = vec![(root, 0usize, 0usize)];
        while let Some((node, at, depth)) = stack.pop() {
            if depth > 64 {
                return Err("tree deeper than 64 levels".into());
            }
            t.depth = t.depth.max(depth);
            let num = |k: &str| node.get(k).and_then(Value::as_f64);
            let value = num("value")
                .filter(|v| v.is_finite())
                .ok_or("node value must be a finite number")?;
            match (node.get("left"), node.get("right")) {
                (Some(l @ Value::Object(_)), Some(r @ Value::Object(_))) => {
                    let f = node
                        .get("split_feature_idx")
                        .and_then(Value::as_u64)
                        .filter(|&f| (f as usize) < d)
                        .ok_or_else(|| {
                            format!("split feature out of range (model has {d} features)")
                        })?;
                    let thr = num("threshold")
                        .filter(|t| !t.is_nan())
                        .ok_or("split threshold must be a number")?;
                    let left = t.set_split(at, f as u32, thr);
                    stack.push((l, left, depth + 1));
                    stack.push((r, left + 1, depth + 1));
                }
                _ => t.set_leaf(at, value),
            }
        }
        Ok(t)
    }

    /// smartcore's forest tree: `nodes[]` of `{output, split_feature, split_value, true_child,
    /// false_child}`, children by index. Re-laid out so siblings are adjacent; a node
    /// reached twice (a cycle or a shared child in a corrupt file) is refused.
    fn from_forest(tree: &Value, d: usize) -> Result<Self, String> {
        let src = tree
            .get("nodes")
            .and_then(Value::as_array)
            .ok_or("tree has no nodes")?;
        if src.is_empty() {
            return Err("tree has no nodes".into());
        }
        let mut seen = vec![false; src.len()];
        let mut t = Self::new_root();
        let mut stack = vec![(0usize, 0usize, 0usize)];
        while let Some((si, at, depth)) = stack.pop() {
            if std::mem::replace(&mut seen[si], true) {
                return Err("tree nodes form a cycle or share a child".into());
            }
            t.depth = t.depth.max(depth);
            let n = &src[si];
            let value = n
                .get("output")
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite())
                .ok_or("node output must be a finite number")?;
            let child = |k: &str| n.get(k).and_then(Value::as_u64);
            match (child("true_child"), child("false_child")) {
                (Some(a), Some(b)) => {
                    if a as usize >= src.len() || b as usize >= src.len() {
                        return Err("child index out of range".into());
                    }
                    let f = n
                        .get("split_feature")
                        .and_then(Value::as_u64)
                        .filter(|&f| (f as usize) < d)
                        .ok_or_else(|| {
                            format!("split feature out of range (model has {d} features)")
                        })?;
                    let thr = n
                        .get("split_value")
                        .and_then(Value::as_f64)
                        .filter(|t| !t.is_nan())
                        .ok_or("split value must be a number")?;
                    let left = t.set_split(at, f as u32, thr);
                    stack.push((a as usize, left, depth + 1));
                    stack.push((b as usize, left + 1, depth + 1));
                }
                _ => t.set_leaf(at, value),
            }
        }
        Ok(t)
    }
}

/// smartcore marks a boosted leaf with `split_feature_idx: usize::MAX`, which JSON readers
/// in JS (doubles) turn into 18446744073709552000, a number serde then refuses as a usize.
/// Leaves never read the index, so it is written as 0 and any value is accepted back.
fn zero_leaf_features(node: &mut Value, depth: usize) {
    if depth > 64 {
        return;
    }
    let Value::Object(m) = node else { return };
    let leaf = !matches!(m.get("left"), Some(Value::Object(_)));
    if leaf {
        m.insert("split_feature_idx".into(), 0.into());
    } else {
        for k in ["left", "right"] {
            if let Some(child) = m.get_mut(k) {
                zero_leaf_features(child, depth + 1);
            }
        }
    }
}

/// A fitted tree ensemble: `base + scale · Σ tree(x)` (gbm: base score and learning rate;
/// forests: 0 and 1/trees, the mean).
#[derive(Clone, Debug)]
pub struct TreeModel {
    pub family: Family,
    pub base: f64,
    pub scale: f64,
    pub trees: Vec<FlatTree>,
    pub d: usize,
    /// smartcore's serde form, written back as the envelope's `model`.
    pub native: Value,
    pub hyperparameters: Value,
}

impl TreeModel {
    /// `x` must hold at least `d` values; an `x` shorter than a tree reads predicts NaN
    /// (callers check the length and name the field first).
    pub fn predict(&self, x: &[f64]) -> f64 {
        self.predict_lockstep::<16>(x)
    }

    /// `K` trees in lockstep: K independent load chains in flight at once. Sums in tree
    /// order, so the result does not depend on `K`.
    #[doc(hidden)]
    pub fn predict_lockstep<const K: usize>(&self, x: &[f64]) -> f64 {
        let mut s = 0.0;
        let chunks = self.trees.chunks_exact(K);
        let rest = chunks.remainder();
        for c in chunks {
            if !c.iter().all(|t| t.walkable(x.len())) {
                return f64::NAN;
            }
            let steps = c.iter().map(|t| t.depth).max().unwrap_or(0);
            let mut i = [0usize; K];
            for _ in 0..steps {
                for k in 0..K {
                    // SAFETY: every tree of the chunk is walkable over x (checked above).
                    i[k] = unsafe { c[k].step_unchecked(i[k], x) };
                }
            }
            for k in 0..K {
                // SAFETY: `i[k]` indexes nodes, and values has one entry per node.
                s += unsafe { *c[k].values.get_unchecked(i[k]) };
            }
        }
        for t in rest {
            if !t.walkable(x.len()) {
                return f64::NAN;
            }
            s += t.predict(x);
        }
        self.base + self.scale * s
    }

    /// The walk as it was before the unchecked lockstep (bounds-checked steps), kept for
    /// the profiling example's comparison.
    #[doc(hidden)]
    pub fn predict_checked(&self, x: &[f64]) -> f64 {
        const K: usize = 8;
        let mut s = 0.0;
        let chunks = self.trees.chunks_exact(K);
        let rest = chunks.remainder();
        for c in chunks {
            let steps = c.iter().map(|t| t.depth).max().unwrap_or(0);
            let mut i = [0usize; K];
            for _ in 0..steps {
                for k in 0..K {
                    i[k] = c[k].step(i[k], x);
                }
            }
            for k in 0..K {
                s += c[k].values[i[k]];
            }
        }
        for t in rest {
            s += t.predict(x);
        }
        self.base + self.scale * s
    }

    /// Builds the flat form from smartcore's serde form, after checking that smartcore
    /// itself accepts it.
    pub fn from_native(
        family: Family,
        mut native: Value,
        d: usize,
        hyper: Value,
    ) -> Result<Self, String> {
        if family == Family::Gbm {
            if let Some(Value::Array(regs)) = native.get_mut("regressors") {
                regs.iter_mut().for_each(|r| zero_leaf_features(r, 0));
            }
        }
        let bad = |e: String| format!("model is not a smartcore {} ({e})", family.name());
        if family != Family::Linear {
            smartfit::check(family.name(), &native).map_err(bad)?;
        }
        Self::flatten(family, native, d, hyper).map_err(bad)
    }

    fn flatten(family: Family, native: Value, d: usize, hyper: Value) -> Result<Self, String> {
        match family {
            Family::Gbm => {
                let regs = native
                    .get("regressors")
                    .and_then(Value::as_array)
                    .ok_or("model has no trees")?;
                let p = native.get("parameters").ok_or("model has no parameters")?;
                let lr = p
                    .get("learning_rate")
                    .and_then(Value::as_f64)
                    .filter(|v| v.is_finite())
                    .ok_or("learning_rate must be a number")?;
                let base = p
                    .get("base_score")
                    .and_then(Value::as_f64)
                    .filter(|v| v.is_finite())
                    .ok_or("base_score must be a number")?;
                let trees = regs
                    .iter()
                    .map(|r| FlatTree::from_xgb(r, d))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Self {
                    family,
                    base,
                    scale: lr,
                    trees,
                    d,
                    native,
                    hyperparameters: hyper,
                })
            }
            Family::RandomForest | Family::ExtraTrees => {
                let f = native
                    .get("forest_regressor")
                    .ok_or("model has no forest")?;
                let n = f.get("num_features").and_then(Value::as_u64);
                if n.is_some_and(|n| n as usize != d) {
                    return Err(format!(
                        "forest has {} features, the file lists {d}",
                        n.unwrap_or(0)
                    ));
                }
                let trees = f
                    .get("trees")
                    .and_then(Value::as_array)
                    .ok_or("model has no trees")?;
                let trees = trees
                    .iter()
                    .map(|t| FlatTree::from_forest(t, d))
                    .collect::<Result<Vec<_>, _>>()?;
                if trees.is_empty() {
                    return Err("model has no trees".into());
                }
                let scale = 1.0 / trees.len() as f64;
                Ok(Self {
                    family,
                    base: 0.0,
                    scale,
                    trees,
                    d,
                    native,
                    hyperparameters: hyper,
                })
            }
            Family::Linear => Err("linear is not a tree family".into()),
        }
    }

    /// Keeps the first `k` boosted trees (early stopping after the fact).
    fn truncate(&mut self, k: usize) {
        self.trees.truncate(k);
        if let Some(Value::Array(a)) = self.native.get_mut("regressors") {
            a.truncate(k);
        }
        if let Some(p) = self.native.get_mut("parameters") {
            p["n_estimators"] = k.into();
        }
    }
}

/// Any model this package can load, predict with and save.
#[derive(Clone, Debug)]
pub enum ModelKind {
    Linear(LinearModel),
    Trees(TreeModel),
}

#[derive(Clone, Debug)]
pub struct Model {
    pub kind: ModelKind,
    /// Feature names, when the file or the caller gave them.
    pub features: Option<Vec<String>>,
    /// `metrics` of an envelope (kept on a round trip).
    pub metrics: Value,
}

/// Files larger than this are refused.
pub const MAX_MODEL_BYTES: u64 = 256 << 20;

impl Model {
    pub fn linear(m: LinearModel) -> Self {
        let features = m.feature_names().filter(|n| n.len() == m.weights.len());
        Self {
            kind: ModelKind::Linear(m),
            features,
            metrics: Value::Null,
        }
    }

    pub fn family(&self) -> Family {
        match &self.kind {
            ModelKind::Linear(_) => Family::Linear,
            ModelKind::Trees(t) => t.family,
        }
    }

    pub fn n_features(&self) -> usize {
        match &self.kind {
            ModelKind::Linear(m) => m.weights.len(),
            ModelKind::Trees(t) => t.d,
        }
    }

    #[inline]
    pub fn predict(&self, x: &[f64]) -> f64 {
        match &self.kind {
            ModelKind::Linear(m) => m.predict(x),
            ModelKind::Trees(t) => t.predict(x),
        }
    }

    pub fn hyperparameters(&self) -> Value {
        match &self.kind {
            ModelKind::Linear(_) => Value::Null,
            ModelKind::Trees(t) => t.hyperparameters.clone(),
        }
    }

    pub fn from_value(v: Value) -> Result<Self, String> {
        let Value::Object(map) = &v else {
            return Err("a model file must hold a JSON object".into());
        };
        let Some(format) = map.get("format") else {
            // No envelope: a linear file in one of its shapes (the old format included).
            return LinearModel::from_value(v).map(Model::linear);
        };
        let format = format.as_str().ok_or("format must be a string")?;
        let family = format
            .strip_prefix("mlops-native/")
            .and_then(|s| s.strip_suffix("@1"))
            .and_then(Family::parse)
            .ok_or_else(|| {
                format!(
                    "unknown model format {format:?} (known: {})",
                    [
                        Family::Linear,
                        Family::Gbm,
                        Family::RandomForest,
                        Family::ExtraTrees
                    ]
                    .map(|f| f.format())
                    .join(", ")
                )
            })?;
        let metrics = map.get("metrics").cloned().unwrap_or(Value::Null);
        if family == Family::Linear {
            let mut m = Model::linear(LinearModel::from_value(v.clone())?);
            m.metrics = metrics;
            return Ok(m);
        }
        let features = match map.get("features") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or("features must be an array of names")?,
            _ => return Err("envelope has no features (an array of feature names)".into()),
        };
        let native = map.get("model").cloned().ok_or("envelope has no model")?;
        let hyper = map.get("hyperparameters").cloned().unwrap_or(Value::Null);
        let t = TreeModel::from_native(family, native, features.len(), hyper)?;
        Ok(Self {
            kind: ModelKind::Trees(t),
            features: Some(features),
            metrics,
        })
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
        Self::from_value(v)
    }

    /// Loads any family; every error names the file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = super::fsutil::read_text(path, MAX_MODEL_BYTES)?;
        Self::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Feature names for an envelope: the known ones, else `x0…x{d-1}`.
    pub fn feature_list(&self) -> Vec<String> {
        self.features
            .clone()
            .unwrap_or_else(|| (0..self.n_features()).map(|i| format!("x{i}")).collect())
    }

    /// The file body: linear models in their own shape, tree models as the envelope.
    pub fn to_value(&self) -> Value {
        match &self.kind {
            ModelKind::Linear(m) => m.to_value(),
            ModelKind::Trees(t) => {
                let mut map = Map::new();
                map.insert("format".into(), t.family.format().into());
                map.insert("features".into(), self.feature_list().into());
                map.insert("metrics".into(), self.metrics.clone());
                map.insert("hyperparameters".into(), t.hyperparameters.clone());
                map.insert("model".into(), t.native.clone());
                Value::Object(map)
            }
        }
    }

    pub fn to_json_pretty(&self) -> String {
        match &self.kind {
            // Linear files stay human-readable; tree bodies are large, so compact.
            ModelKind::Linear(m) => m.to_json_pretty(),
            ModelKind::Trees(_) => {
                serde_json::to_string(&self.to_value()).unwrap_or_else(|_| "{}".into())
            }
        }
    }
}

/// Feature names of any model object (linear shapes or envelope).
pub fn names_of(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Object(m) => feature_names_in(m),
        _ => None,
    }
}

/// Row-major `x` (`rows × d`), rows picked by `idx`, as an ndarray matrix: the form
/// smartcore's API takes.
pub fn gather(x: &[f64], y: &[f64], d: usize, idx: &[usize]) -> (Array2<f64>, Array1<f64>) {
    let mut flat = Vec::with_capacity(idx.len() * d);
    for &r in idx {
        flat.extend_from_slice(&x[r * d..(r + 1) * d]);
    }
    let xm = Array2::from_shape_vec((idx.len(), d), flat).expect("rows × d values");
    let ym = Array1::from_iter(idx.iter().map(|&r| y[r]));
    (xm, ym)
}

/// [`gather`] into a column-major (Fortran-order) matrix: the same values, so smartcore fits
/// the same trees, but one feature's values are contiguous. smartcore's exact-greedy boosted
/// trees sort each node's rows by one feature at a time through `get((row, feature))`;
/// row-major, every comparison touches two rows 8·d bytes apart (3,200 × 8 rows: 200 KB,
/// beyond L1); column-major, a feature's 25 KB stay in L1.
pub fn gather_columns(x: &[f64], y: &[f64], d: usize, idx: &[usize]) -> (Array2<f64>, Array1<f64>) {
    use ndarray::ShapeBuilder;
    let n = idx.len();
    let mut flat = vec![0.0; n * d];
    for (k, &r) in idx.iter().enumerate() {
        for j in 0..d {
            flat[j * n + k] = x[r * d + j];
        }
    }
    let xm = Array2::from_shape_vec((n, d).f(), flat).expect("rows × d values");
    let ym = Array1::from_iter(idx.iter().map(|&r| y[r]));
    (xm, ym)
}

/// Fits a tree family on the `train` rows. gbm adds trees while the validation loss keeps
/// improving (smartcore has no callback, so all trees are fitted and the best prefix is
/// kept: the same model early stopping gives).
pub fn fit_trees(
    family: Family,
    x: &[f64],
    y: &[f64],
    d: usize,
    train: &[usize],
    val: &[usize],
    params: &TreeParams,
) -> Result<TreeModel, String> {
    let mut p = params.resolved(family);
    p.mtry = p.mtry.or(match family {
        Family::RandomForest => Some(d.div_ceil(2)),
        Family::ExtraTrees => Some(d),
        _ => None,
    });
    if p.trees == 0 {
        return Err("trees must be ≥ 1".into());
    }
    let (xm, ym) = if family == Family::Gbm {
        gather_columns(x, y, d, train)
    } else {
        gather(x, y, d, train)
    };
    let native = match family {
        Family::Gbm => {
            let mean = ym.mean().unwrap_or(0.0);
            let mut q = GbmParams::default()
                .with_n_estimators(p.trees)
                .with_learning_rate(p.learning_rate)
                .with_base_score(mean)
                .with_lambda(p.lambda)
                .with_min_child_weight(p.min_samples_leaf)
                .with_subsample(p.subsample)
                .with_seed(p.seed);
            if let Some(depth) = p.max_depth {
                q = q.with_max_depth(depth);
            }
            smartfit::fit_gbm(&xm, &ym, q)?
        }
        Family::RandomForest => {
            let mut q = RfParams::default()
                .with_n_trees(p.trees)
                .with_min_samples_leaf(p.min_samples_leaf)
                .with_seed(p.seed);
            if let Some(depth) = p.max_depth {
                q = q.with_max_depth(depth);
            }
            if let Some(m) = p.mtry {
                q = q.with_m(m.clamp(1, d));
            }
            smartfit::fit_random_forest(&xm, &ym, q)?
        }
        Family::ExtraTrees => {
            let mut q = EtParams::default()
                .with_n_trees(p.trees)
                .with_min_samples_leaf(p.min_samples_leaf)
                .with_seed(p.seed);
            if let Some(depth) = p.max_depth {
                q = q.with_max_depth(depth);
            }
            if let Some(m) = p.mtry {
                q = q.with_m(m.clamp(1, d));
            }
            smartfit::fit_extra_trees(&xm, &ym, q)?
        }
        Family::Linear => return Err("linear is not a tree family".into()),
    };
    let mut hyper = p.to_json(family);
    let mut t = TreeModel::from_native(family, native, d, Value::Null)?;
    if family == Family::Gbm && !val.is_empty() {
        // Validation loss after each tree, from running sums: O(trees × val rows).
        let mut acc: Vec<f64> = vec![t.base; val.len()];
        let (mut best, mut best_k) = (f64::INFINITY, 0usize);
        for (k, tree) in t.trees.iter().enumerate() {
            let mut se = 0.0;
            for (a, &r) in acc.iter_mut().zip(val) {
                *a += t.scale * tree.predict(&x[r * d..(r + 1) * d]);
                se += (*a - y[r]).powi(2);
            }
            if se < best {
                best = se;
                best_k = k + 1;
            } else if p.early_stopping_rounds > 0 && k + 1 - best_k >= p.early_stopping_rounds {
                break;
            }
        }
        let fitted = t.trees.len();
        t.truncate(best_k.max(1));
        hyper["treesFitted"] = fitted.into();
        hyper["trees"] = t.trees.len().into();
    }
    t.hyperparameters = hyper;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::finetune::SplitMix;

    fn data(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let mut r = SplitMix(seed);
        let mut u = || (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (a, b, c) = (u(), u(), u());
            x.extend([a, b, c]);
            // A step and an interaction: what a line cannot fit and trees can.
            y.push(if a > 0.5 { 2.0 } else { 0.0 } + 3.0 * b * c + 0.05 * (u() - 0.5));
        }
        (x, y)
    }

    #[test]
    fn every_tree_family_fits_saves_loads_and_predicts_like_smartcore() {
        let (x, y) = data(600, 1);
        let train: Vec<usize> = (0..400).collect();
        let val: Vec<usize> = (400..600).collect();
        for family in TREE_FAMILIES {
            let params = TreeParams {
                trees: Some(30),
                ..Default::default()
            };
            let t = fit_trees(family, &x, &y, 3, &train, &val, &params).unwrap();
            let m = Model {
                kind: ModelKind::Trees(t.clone()),
                features: None,
                metrics: json!({"mse": 1}),
            };
            let text = m.to_json_pretty();
            let back = Model::from_json(&text).unwrap();
            assert_eq!(back.family(), family);
            assert_eq!(back.feature_list(), ["x0", "x1", "x2"]);
            // Flat walk == smartcore's own predict on the same rows.
            let (xm, _) = gather(&x, &y, 3, &val);
            let theirs = smartfit::predict(family.name(), &t.native, &xm).unwrap();
            let mut se = 0.0;
            for (i, &r) in val.iter().enumerate() {
                let ours = back.predict(&x[r * 3..r * 3 + 3]);
                assert!(
                    (ours - theirs[i]).abs() < 1e-9,
                    "{family:?} row {r}: {ours} vs {}",
                    theirs[i]
                );
                se += (ours - y[r]).powi(2);
            }
            // y has variance ≈ 1.4; a line leaves ≈ 0.35 (the interaction).
            assert!(
                se / 200.0 < 0.25,
                "{family:?} fits the step: mse {}",
                se / 200.0
            );
        }
    }

    #[test]
    fn the_unchecked_lockstep_walk_agrees_bit_for_bit_and_refuses_short_rows() {
        let (x, y) = data(500, 4);
        let idx: Vec<usize> = (0..500).collect();
        let p = TreeParams {
            trees: Some(37), // not a multiple of any lockstep width: the remainder is walked too
            max_depth: Some(6),
            ..Default::default()
        };
        for family in TREE_FAMILIES {
            let t = fit_trees(family, &x, &y, 3, &idx, &[], &p).unwrap();
            for r in 0..100 {
                let row = &x[r * 3..r * 3 + 3];
                let want = t.predict_checked(row);
                for got in [
                    t.predict(row),
                    t.predict_lockstep::<1>(row),
                    t.predict_lockstep::<4>(row),
                    t.predict_lockstep::<8>(row),
                ] {
                    assert_eq!(got.to_bits(), want.to_bits(), "{family:?} row {r}");
                }
            }
            // A row shorter than the features the trees read is NaN, never an
            // out-of-bounds read.
            assert!(t.predict(&x[..1]).is_nan());
            assert!(t.predict(&[]).is_nan());
        }
        // The column-major matrix holds the same values: the same boosted trees.
        let (a, _) = gather(&x, &y, 3, &idx[..50]);
        let (b, _) = gather_columns(&x, &y, 3, &idx[..50]);
        assert_eq!(a, b);
    }

    #[test]
    fn gbm_keeps_the_best_prefix_of_trees_on_validation() {
        let (x, y) = data(300, 2);
        let train: Vec<usize> = (0..200).collect();
        let val: Vec<usize> = (200..300).collect();
        let p = TreeParams {
            trees: Some(400),
            learning_rate: Some(0.5),
            early_stopping_rounds: Some(10),
            ..Default::default()
        };
        let t = fit_trees(Family::Gbm, &x, &y, 3, &train, &val, &p).unwrap();
        assert!(t.trees.len() < 400, "stopped at {}", t.trees.len());
        assert_eq!(t.hyperparameters["trees"], t.trees.len());
        assert_eq!(
            t.native["regressors"].as_array().unwrap().len(),
            t.trees.len()
        );
    }

    #[test]
    fn unknown_or_corrupt_files_are_refused_with_the_reason() {
        let e = Model::from_json(r#"{"format":"mlops-native/gbm@2","model":{}}"#).unwrap_err();
        assert!(
            e.contains("unknown model format") && e.contains("gbm@2"),
            "{e}"
        );
        let e = Model::from_json(r#"{"format":"mlops-native/registry-manifest@1"}"#).unwrap_err();
        assert!(e.contains("unknown model format"), "{e}");
        let e = Model::from_json(r#"{"format":"mlops-native/random_forest@1","features":["a"],"model":{"forest_regressor":{"trees":"x"}}}"#).unwrap_err();
        assert!(e.contains("not a smartcore random_forest"), "{e}");
        let e = Model::from_json(r#"{"format":"mlops-native/gbm@1","model":{}}"#).unwrap_err();
        assert!(e.contains("features"), "{e}");
        // A split on a feature the file does not list is refused, not an out-of-bounds read.
        let (x, y) = data(100, 3);
        let idx: Vec<usize> = (0..100).collect();
        let t = fit_trees(
            Family::RandomForest,
            &x,
            &y,
            3,
            &idx,
            &[],
            &TreeParams {
                trees: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        let mut v = Model {
            kind: ModelKind::Trees(t),
            features: None,
            metrics: Value::Null,
        }
        .to_value();
        v["features"] = json!(["only-one"]);
        assert!(Model::from_value(v).unwrap_err().contains("features"));
        // A forest whose nodes loop back is refused instead of walked forever.
        let t = fit_trees(
            Family::RandomForest,
            &x,
            &y,
            3,
            &idx,
            &[],
            &TreeParams {
                trees: Some(1),
                max_depth: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        let mut v = Model {
            kind: ModelKind::Trees(t),
            features: None,
            metrics: Value::Null,
        }
        .to_value();
        v["model"]["forest_regressor"]["trees"][0]["nodes"][1]["true_child"] = json!(0);
        v["model"]["forest_regressor"]["trees"][0]["nodes"][1]["false_child"] = json!(2);
        v["model"]["forest_regressor"]["trees"][0]["nodes"][1]["split_value"] = json!(0.5);
        let e = Model::from_value(v).unwrap_err();
        assert!(e.contains("cycle"), "{e}");
        // Old flat files still load as linear.
        let m = Model::from_json(r#"{"weights":[1,2],"bias":3}"#).unwrap();
        assert_eq!((m.family(), m.predict(&[1.0, 1.0])), (Family::Linear, 6.0));
    }
}
