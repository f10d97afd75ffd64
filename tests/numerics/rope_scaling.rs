//! `rope_scaling` / `rope_parameters` as transformers reads them: for each case of
//! scripts/make_rope_fixtures.py (YaRN with its defaults, its betas, `truncate = false`,
//! `mscale`, an explicit `attention_factor`; Llama 3; linear), the config.json transformers
//! writes, read here, gives its inverse frequencies within 1e-6 relative (both in f32) and its
//! attention scaling within 1e-12.

use crate::common;

use lora_dpo::model::rotary::{attention_scaling, inverse_frequencies};
use lora_dpo::model::ModelConfig;

#[test]
fn rotary_frequencies_match_transformers_for_every_rope_type() {
    let text = std::fs::read_to_string(common::fixture("models/rope_cases.json")).unwrap();
    let cases: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 6);
    for (name, case) in &cases {
        let cfg = ModelConfig::from_json(&case["config"].to_string())
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let want: Vec<f64> = serde_json::from_value(case["inv_freq"].clone()).unwrap();
        let ours = inverse_frequencies(&cfg);
        assert_eq!(ours.len(), want.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            let rel = (a - b).abs() / b.abs();
            assert!(rel < 1e-6, "{name} frequency {i}: {a} vs transformers {b}");
        }
        let scaling = case["attention_scaling"].as_f64().unwrap();
        let d = (attention_scaling(&cfg) - scaling).abs();
        assert!(
            d < 1e-12,
            "{name}: attention scaling {} vs {scaling}",
            attention_scaling(&cfg)
        );
    }
}
