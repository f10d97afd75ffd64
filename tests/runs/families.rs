//! Every family through the whole job: `lora-dpo train` runs SFT then DPO (gradient
//! checkpointing on, LoRA dropout on) on each tiny model, writes both adapters, and the DPO
//! adapter loads back on its base and changes its logits.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::{fixture_str, lora_dpo, max_abs_diff, MODELS};
use lora_dpo::adapter::load_adapter;
use lora_dpo::model::{load_model, Pass};

fn config(model: &str, out: &std::path::Path) -> String {
    format!(
        r#"
[model]
name_or_path = "{model}"
[lora]
r = 4
lora_alpha = 8
lora_dropout = 0.1
[sft]
train_file = "{sft}"
learning_rate = 0.01
max_steps = 2
per_device_train_batch_size = 2
gradient_checkpointing = true
[dpo]
train_file = "{dpo}"
learning_rate = 0.01
max_steps = 2
per_device_train_batch_size = 2
gradient_checkpointing = true
[output]
dir = "{out}"
"#,
        model = fixture_str(&format!("models/{model}")),
        sft = fixture_str("train/sft.jsonl"),
        dpo = fixture_str("train/prefs.jsonl"),
        out = out.display()
    )
}

#[test]
fn every_family_trains_sft_then_dpo_and_its_adapter_loads_back() {
    for name in MODELS {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let cfg = tmp.path().join("run.toml");
        std::fs::write(&cfg, config(name, &out)).unwrap();
        let (code, _, err) =
            lora_dpo(&["train", "--config", cfg.to_str().unwrap(), "--no-progress"]);
        assert_eq!(code, 0, "{name}: {err}");
        for stage in ["sft", "dpo"] {
            let file = out.join(format!("{stage}/adapter/adapter_model.safetensors"));
            assert!(file.is_file(), "{name}: no {stage} adapter");
        }
        let model = load_model(
            &fixture_str(&format!("models/{name}")),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let dir = out.join("dpo/adapter");
        let adapter = load_adapter(dir.to_str().unwrap(), &model.config, &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[3u32, 20, 30, 40, 50, 4]], &Device::Cpu).unwrap();
        let base = model.forward(&ids, None, Pass::eval(&[])).unwrap();
        let tuned = model.forward(&ids, None, Pass::eval(&[&adapter])).unwrap();
        assert!(
            max_abs_diff(&base, &tuned) > 1e-4,
            "{name}: the adapter changes nothing"
        );
    }
}
