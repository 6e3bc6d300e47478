//! smartcore's estimators are generic over the matrix type, so their code is compiled in
//! the crate that names the concrete types. Naming them here, behind plain functions, lets
//! `[profile.dev.package.smartfit] opt-level = 3` optimise the fits even in debug builds
//! (a 200-tree boosted fit is ~25 s unoptimised, ~1 s optimised): `npm test` runs a debug
//! addon.
//!
//! Every function takes ndarray matrices (the form smartcore's API takes) and returns or
//! checks smartcore's own serde form as JSON.

use ndarray::{Array1, Array2};
use serde_json::Value;
use smartcore::ensemble::extra_trees_regressor::{
    ExtraTreesRegressor, ExtraTreesRegressorParameters,
};
use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::xgboost::{XGRegressor, XGRegressorParameters};

pub type Gbm = XGRegressor<f64, f64, Array2<f64>, Array1<f64>>;
pub type Rf = RandomForestRegressor<f64, f64, Array2<f64>, Array1<f64>>;
pub type Et = ExtraTreesRegressor<f64, f64, Array2<f64>, Array1<f64>>;

pub use smartcore::ensemble::extra_trees_regressor::ExtraTreesRegressorParameters as EtParams;
pub use smartcore::ensemble::random_forest_regressor::RandomForestRegressorParameters as RfParams;
pub use smartcore::xgboost::XGRegressorParameters as GbmParams;

fn to_json<T: serde::Serialize>(m: T) -> Result<Value, String> {
    serde_json::to_value(m).map_err(|e| e.to_string())
}

pub fn fit_gbm(
    x: &Array2<f64>,
    y: &Array1<f64>,
    p: XGRegressorParameters,
) -> Result<Value, String> {
    to_json(Gbm::fit(x, y, p).map_err(|e| format!("gbm fit failed: {e}"))?)
}

pub fn fit_random_forest(
    x: &Array2<f64>,
    y: &Array1<f64>,
    p: RandomForestRegressorParameters,
) -> Result<Value, String> {
    to_json(Rf::fit(x, y, p).map_err(|e| format!("random_forest fit failed: {e}"))?)
}

pub fn fit_extra_trees(
    x: &Array2<f64>,
    y: &Array1<f64>,
    p: ExtraTreesRegressorParameters,
) -> Result<Value, String> {
    to_json(Et::fit(x, y, p).map_err(|e| format!("extra_trees fit failed: {e}"))?)
}

/// Whether smartcore accepts `v` as a model of `family`; the error says why not.
pub fn check(family: &str, v: &Value) -> Result<(), String> {
    let r = match family {
        "gbm" => serde_json::from_value::<Gbm>(v.clone()).map(drop),
        "random_forest" => serde_json::from_value::<Rf>(v.clone()).map(drop),
        "extra_trees" => serde_json::from_value::<Et>(v.clone()).map(drop),
        f => return Err(format!("{f} is not a smartcore family")),
    };
    r.map_err(|e| e.to_string())
}

/// smartcore's own prediction, for parity tests of the flat predictor.
pub fn predict(family: &str, v: &Value, x: &Array2<f64>) -> Result<Vec<f64>, String> {
    let e = |e: String| e;
    match family {
        "gbm" => serde_json::from_value::<Gbm>(v.clone())
            .map_err(|x| x.to_string())?
            .predict(x)
            .map_err(|x| e(x.to_string())),
        "random_forest" => Ok(serde_json::from_value::<Rf>(v.clone())
            .map_err(|x| x.to_string())?
            .predict(x)
            .map_err(|x| x.to_string())?
            .to_vec()),
        "extra_trees" => Ok(serde_json::from_value::<Et>(v.clone())
            .map_err(|x| x.to_string())?
            .predict(x)
            .map_err(|x| x.to_string())?
            .to_vec()),
        f => Err(format!("{f} is not a smartcore family")),
    }
}
