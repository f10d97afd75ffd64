//! Two stacked LoRAs equal one LoRA of rank r1 + r2 with the factors concatenated (the
//! `combined` adapter `train` writes), including different scales and targets.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::{expected, fixture_str, max_abs_diff};
use lora_dpo::adapter::combine;
use lora_dpo::model::{load_model, Adapter, LoraConfig, Pass};

fn random_adapter(model: &lora_dpo::model::ModelConfig, cfg: LoraConfig, seed: u64) -> Adapter {
    let a = Adapter::init(model, cfg, seed, &Device::Cpu).unwrap();
    // B starts at zero: give it values so the adapter changes the output.
    for (i, (name, var)) in a.named_vars().into_iter().enumerate() {
        if name.ends_with("lora_B") {
            let t = Tensor::rand(-0.3f32, 0.3, var.dims(), &Device::Cpu).unwrap();
            var.set(&(t * (1.0 + i as f64 * 0.01)).unwrap()).unwrap();
        }
    }
    a
}

#[test]
fn combined_adapter_equals_the_stack() {
    let model = load_model(
        &fixture_str("models/tiny-mistral"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let first = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        ..Default::default()
    };
    let second = LoraConfig {
        r: 2,
        lora_alpha: 3.0,
        use_rslora: true,
        ..Default::default()
    };
    let a1 = random_adapter(&model.config, first, 1);
    let a2 = random_adapter(&model.config, second, 2);
    let combined = combine(&[&a1, &a2], &model.config).unwrap();
    assert_eq!(combined.config.r, 6);
    assert_eq!(combined.config.target_modules.len(), 7);
    let exp = expected("tiny-mistral");
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let stacked = model.forward(&ids, None, Pass::eval(&[&a1, &a2])).unwrap();
    let single = model.forward(&ids, None, Pass::eval(&[&combined])).unwrap();
    let base = model.forward(&ids, None, Pass::eval(&[])).unwrap();
    assert!(
        max_abs_diff(&stacked, &base) > 1e-2,
        "the adapters must change the output"
    );
    let d = max_abs_diff(&stacked, &single);
    assert!(d < 1e-5, "combined differs from the stack by {d}");
}
