//! The one linear model type of the package and its JSON file format.
//!
//! The format is the old one: `{weights: number[], bias: number, ...}`. Any other keys a
//! file carries (names, descriptions, training notes written by other tools) are kept in
//! `extra` and written back unchanged, so a round trip through this package loses nothing.
//! Training may standardise features internally, but a saved model is always folded back
//! to raw-feature weights, so old readers (`bias + Σ wᵢxᵢ`) keep working.

use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
pub struct LinearModel {
    pub weights: Vec<f64>,
    pub bias: f64,
    pub extra: Map<String, Value>,
}

/// Files larger than this are refused: a model of a few thousand weights is kilobytes.
pub const MAX_MODEL_BYTES: u64 = 64 << 20;

impl LinearModel {
    pub fn zeros(features: usize) -> Self {
        Self {
            weights: vec![0.0; features],
            bias: 0.0,
            extra: Map::new(),
        }
    }

    pub fn predict(&self, x: &[f64]) -> f64 {
        self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>()
    }

    pub fn from_value(v: Value) -> Result<Self, String> {
        let Value::Object(map) = v else {
            return Err("model must be a JSON object with weights and bias".into());
        };
        // `extra` keeps the whole object, weights and bias included, so that writing it back
        // updates those two in place and every key keeps its position.
        let (w_key, b_key, inner) = Self::layout(&map);
        let src = match inner {
            Some(Value::Object(m)) => m,
            _ => &map,
        };
        let weights = match src.get(w_key) {
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, w)| match w.as_f64() {
                    Some(f) if f.is_finite() => Ok(f),
                    _ => Err(format!("{w_key}[{i}] must be a finite number")),
                })
                .collect::<Result<Vec<f64>, String>>()?,
            Some(_) => return Err(format!("{w_key} must be an array of numbers")),
            None => return Err("model has no weights".into()),
        };
        let bias = match src.get(b_key) {
            Some(b) => match b.as_f64() {
                Some(f) if f.is_finite() => f,
                _ => return Err(format!("{b_key} must be a finite number")),
            },
            None => return Err(format!("model has no {b_key}")),
        };
        if weights.is_empty() {
            return Err(format!("{w_key} must not be empty"));
        }
        Ok(Self {
            weights,
            bias,
            extra: map,
        })
    }

    /// Where a file keeps its coefficients. Three shapes are in use:
    /// - ours and the old module's: `{weights, bias, …}`;
    /// - the services' nested one: `{model: {weights, bias, featureNames}, metrics, featureNames}`;
    /// - the services' exported one: `{model: {type: 'linear_regression', coefficients,
    ///   intercept, featureNames}}`.
    ///
    /// The shape is read from the keys each time (not stored), so a file is written back in
    /// the shape it came in.
    fn layout(map: &Map<String, Value>) -> (&'static str, &'static str, Option<&Value>) {
        if map.contains_key("weights") {
            return ("weights", "bias", None);
        }
        match map.get("model") {
            Some(inner @ Value::Object(m)) if m.contains_key("coefficients") => {
                ("coefficients", "intercept", Some(inner))
            }
            Some(inner @ Value::Object(m)) if m.contains_key("weights") => {
                ("weights", "bias", Some(inner))
            }
            _ => ("weights", "bias", None),
        }
    }

    /// `flat`, `nested` or `coefficients`: the file shape this model is written back in.
    pub fn shape(&self) -> &'static str {
        match Self::layout(&self.extra) {
            (_, _, None) => "flat",
            ("coefficients", _, _) => "coefficients",
            _ => "nested",
        }
    }

    /// Feature names a file carries: `featureNames` at the top or inside `model`, or a
    /// top-level `features` array of strings (the bundled model's key).
    pub fn feature_names(&self) -> Option<Vec<String>> {
        feature_names_in(&self.extra)
    }

    /// Whether `v` looks like a linear model file in any of the shapes above.
    pub fn is_linear_value(v: &Value) -> bool {
        let Value::Object(map) = v else { return false };
        map.contains_key("weights")
            || matches!(map.get("model"), Some(Value::Object(m)) if m.contains_key("weights") || m.contains_key("coefficients"))
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
        Self::from_value(v)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = super::fsutil::read_text(path, MAX_MODEL_BYTES)?;
        Self::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn to_value(&self) -> Value {
        let mut map = self.extra.clone();
        let (w_key, b_key, inner) = Self::layout(&self.extra);
        let target = if inner.is_some() {
            match map.get_mut("model") {
                Some(Value::Object(m)) => m,
                _ => unreachable!("layout found an inner model object"),
            }
        } else {
            &mut map
        };
        target.insert(
            w_key.into(),
            self.weights.iter().map(|&w| Value::from(w)).collect(),
        );
        target.insert(b_key.into(), Value::from(self.bias));
        Value::Object(map)
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_else(|_| "{}".into())
    }
}

/// Feature names in a model object (see `LinearModel::feature_names`).
pub fn feature_names_in(map: &Map<String, Value>) -> Option<Vec<String>> {
    let as_names = |v: Option<&Value>| -> Option<Vec<String>> {
        let Some(Value::Array(a)) = v else {
            return None;
        };
        a.iter()
            .map(|x| x.as_str().map(str::to_owned))
            .collect::<Option<Vec<String>>>()
            .filter(|n| !n.is_empty())
    };
    as_names(map.get("featureNames"))
        .or_else(|| match map.get("model") {
            Some(Value::Object(m)) => as_names(m.get("featureNames")),
            _ => None,
        })
        .or_else(|| as_names(map.get("features")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_files_round_trip_with_their_extra_keys() {
        let text =
            r#"{"weights":[0.5,-1.25],"bias":2.5,"name":"quality","meta":{"trainedOn":"2025-12"}}"#;
        let m = LinearModel::from_json(text).unwrap();
        assert_eq!(m.predict(&[2.0, 4.0]), 2.5 + 1.0 - 5.0);
        let back: Value = serde_json::from_str(&m.to_json_pretty()).unwrap();
        let orig: Value = serde_json::from_str(text).unwrap();
        assert_eq!(back, orig);
        let keys: Vec<&String> = back.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["weights", "bias", "name", "meta"],
            "keys keep their order"
        );
    }

    #[test]
    fn corrupt_models_are_refused_with_a_reason() {
        assert!(LinearModel::from_json(r#"{"weights":[1,2],"bias":1"#)
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(LinearModel::from_json(r#"{"bias":1}"#)
            .unwrap_err()
            .contains("no weights"));
        assert!(LinearModel::from_json(r#"{"weights":[1,"x"],"bias":1}"#)
            .unwrap_err()
            .contains("weights[1]"));
        assert!(LinearModel::from_json(r#"{"weights":[1],"bias":null}"#)
            .unwrap_err()
            .contains("bias"));
        assert!(LinearModel::from_json(r#"[1,2]"#).is_err());
    }

    #[test]
    fn the_services_nested_shapes_load_and_write_back_in_their_own_shape() {
        let nested = r#"{"model":{"weights":[1,2],"bias":0.5,"featureNames":["a","b"]},"metrics":{"mse":1},"featureNames":["a","b"]}"#;
        let mut m = LinearModel::from_json(nested).unwrap();
        assert_eq!(
            (m.weights.clone(), m.bias, m.shape()),
            (vec![1.0, 2.0], 0.5, "nested")
        );
        assert_eq!(m.feature_names().unwrap(), ["a", "b"]);
        m.weights[0] = 3.0;
        let back = m.to_value();
        assert_eq!(back["model"]["weights"][0], 3.0);
        assert!(back.get("weights").is_none(), "no second copy at the top");
        let coef = r#"{"model":{"type":"linear_regression","coefficients":[0.25],"intercept":-1,"featureNames":["x"]}}"#;
        let mut c = LinearModel::from_json(coef).unwrap();
        assert_eq!(
            (c.weights.clone(), c.bias, c.shape()),
            (vec![0.25], -1.0, "coefficients")
        );
        c.bias = 2.0;
        let back = c.to_value();
        assert_eq!(back["model"]["intercept"], 2.0);
        assert_eq!(back["model"]["type"], "linear_regression");
        assert!(
            LinearModel::from_json(r#"{"model":{"coefficients":[1,"x"],"intercept":0}}"#)
                .unwrap_err()
                .contains("coefficients[1]")
        );
    }
}
