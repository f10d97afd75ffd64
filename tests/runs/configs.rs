//! The shipped configs parse and validate (model files are not needed for that).

use lora_dpo::config::LoadedConfig;
use lora_dpo::data::Stage;
use std::path::Path;

#[test]
fn zephyr_recipe_has_the_handbook_settings() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/zephyr-7b-beta-qlora.toml");
    let cfg = LoadedConfig::load(&path, &[]).unwrap();
    let lora = &cfg.run.lora.lora;
    assert_eq!(
        (lora.r, lora.lora_alpha, lora.target_modules.len()),
        (128, 128.0, 7)
    );
    let dpo = cfg.run.dpo.as_ref().unwrap();
    assert_eq!(
        (dpo.beta, dpo.learning_rate, dpo.num_train_epochs),
        (0.01, 5e-6, 1.0)
    );
    assert_eq!(
        dpo.per_device_train_batch_size * dpo.gradient_accumulation_steps,
        16
    );
    let data = cfg.data_config(Stage::Dpo).unwrap();
    assert_eq!(
        (data.max_length, data.max_prompt_length),
        (Some(1024), Some(512))
    );
}

#[test]
fn inspect_with_a_config_prints_a_memory_estimate_per_stage() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .args(["inspect", "--config"])
        .arg(root.join("configs/zephyr-7b-beta-qlora.toml"))
        .arg("--model")
        .arg(root.join("tests/fixtures/models/tiny-mistral"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[sft] 4 x 2048 tokens") && text.contains("[dpo] 4 x 1024 tokens"),
        "{text}"
    );
    assert!(text.contains("with gradient checkpointing"), "{text}");
}
