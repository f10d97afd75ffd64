//! Which projections an `adapter_config.json` targets, decided the way PEFT decides when it
//! builds the model the adapter's tensors are loaded into: a module is adapted when its name
//! equals a `target_modules` entry or ends with `.<entry>`, its layer is in
//! `layers_to_transform` (when set), and no `exclude_modules` entry names it the same way.
//! Knowing that set is what lets a loader tell a complete adapter from one whose file lost
//! tensors.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::model::Projection;

/// `(layer, projection)` of every module PEFT would adapt on a model with `num_layers`
/// layers, or `None` when the config says it in a way this reader does not evaluate (a regular
/// expression, or no `target_modules` at all): then only the tensors present say what is adapted.
pub fn targeted_modules(
    config: &Value,
    num_layers: usize,
) -> Result<Option<Vec<(usize, Projection)>>> {
    let targets = match config.get("target_modules") {
        None | Some(Value::Null) => return Ok(None),
        // PEFT saves "all-linear" as written; it means every linear layer but the output head.
        Some(Value::String(s)) if s == "all-linear" => None,
        // Any other string is a regular expression PEFT full-matches against module names.
        Some(Value::String(_)) => return Ok(None),
        Some(Value::Array(items)) => Some(strings(items, "target_modules")?),
        Some(_) => bail!("field `target_modules`: expected a list of module names or a string"),
    };
    let excluded = match config.get("exclude_modules") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(_)) => return Ok(None),
        Some(Value::Array(items)) => strings(items, "exclude_modules")?,
        Some(_) => bail!("field `exclude_modules`: expected a list of module names or a string"),
    };
    let layers: Option<Vec<u64>> = match config.get("layers_to_transform") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(vec![layer_index(n.as_u64())?]),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| layer_index(v.as_u64()))
                .collect::<Result<_>>()?,
        ),
        Some(_) => bail!("field `layers_to_transform`: expected a layer index or a list of them"),
    };
    let names = |list: &[String], module: &str| {
        list.iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
    };
    let mut modules = Vec::new();
    for layer in 0..num_layers {
        if layers
            .as_ref()
            .is_some_and(|l| !l.contains(&(layer as u64)))
        {
            continue;
        }
        for p in Projection::ALL {
            let module = p.module_path(layer);
            let targeted = targets.as_ref().is_none_or(|t| names(t, &module));
            if targeted && !names(&excluded, &module) {
                modules.push((layer, p));
            }
        }
    }
    Ok(Some(modules))
}

fn strings(items: &[Value], field: &str) -> Result<Vec<String>> {
    items
        .iter()
        .map(|v| match v.as_str() {
            Some(s) => Ok(s.to_string()),
            None => bail!("field `{field}`: {v} is not a module name"),
        })
        .collect()
}

fn layer_index(value: Option<u64>) -> Result<u64> {
    value.ok_or_else(|| {
        anyhow::anyhow!("field `layers_to_transform`: expected non-negative layer indices")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_match_whole_or_as_a_dotted_suffix() {
        let config = json!({"target_modules": ["q_proj", "mlp.down_proj", "roj"]});
        let got = targeted_modules(&config, 2).unwrap().unwrap();
        use Projection::{Down, Q};
        assert_eq!(got, vec![(0, Q), (0, Down), (1, Q), (1, Down)]);
    }

    #[test]
    fn layers_to_transform_and_exclude_modules_narrow_the_set() {
        let config = json!({
            "target_modules": ["q_proj", "v_proj"],
            "layers_to_transform": [1],
            "exclude_modules": ["model.layers.1.self_attn.v_proj"],
        });
        assert_eq!(
            targeted_modules(&config, 3).unwrap().unwrap(),
            vec![(1, Projection::Q)]
        );
        let one = json!({"target_modules": "all-linear", "layers_to_transform": 0});
        assert_eq!(targeted_modules(&one, 2).unwrap().unwrap().len(), 7);
    }

    #[test]
    fn a_regular_expression_or_no_list_is_not_evaluated() {
        for config in [
            json!({"target_modules": ".*q_proj"}),
            json!({"target_modules": null}),
            json!({"target_modules": ["q_proj"], "exclude_modules": ".*layers\\.0.*"}),
        ] {
            assert_eq!(targeted_modules(&config, 2).unwrap(), None, "{config}");
        }
    }

    #[test]
    fn malformed_fields_are_named() {
        let err = targeted_modules(&json!({"target_modules": [3]}), 2).unwrap_err();
        assert!(err.to_string().contains("target_modules"), "{err}");
        let err = targeted_modules(
            &json!({"target_modules": ["q_proj"], "layers_to_transform": [-1]}),
            2,
        )
        .unwrap_err();
        assert!(err.to_string().contains("layers_to_transform"), "{err}");
    }
}
