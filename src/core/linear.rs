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
        let weights = match map.get("weights") {
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, w)| match w.as_f64() {
                    Some(f) if f.is_finite() => Ok(f),
                    _ => Err(format!("weights[{i}] must be a finite number")),
                })
                .collect::<Result<Vec<f64>, String>>()?,
            Some(_) => return Err("weights must be an array of numbers".into()),
            None => return Err("model has no weights".into()),
        };
        let bias = match map.get("bias") {
            Some(b) => match b.as_f64() {
                Some(f) if f.is_finite() => f,
                _ => return Err("bias must be a finite number".into()),
            },
            None => return Err("model has no bias".into()),
        };
        if weights.is_empty() {
            return Err("weights must not be empty".into());
        }
        Ok(Self {
            weights,
            bias,
            extra: map,
        })
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
        map.insert(
            "weights".into(),
            self.weights.iter().map(|&w| Value::from(w)).collect(),
        );
        map.insert("bias".into(), Value::from(self.bias));
        Value::Object(map)
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).unwrap_or_else(|_| "{}".into())
    }
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
}
