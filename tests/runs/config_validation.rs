//! Bad config values get an error naming the key (and the `--set` argument that brought them),
//! never a line that does not exist, a panic, or a run that starts anyway.

use lora_dpo::config::LoadedConfig;
use std::process::Command;

fn config(sft: &str) -> String {
    format!(
        "[model]\nname_or_path = \"m\"\n[lora]\nr = 4\n[sft]\nlearning_rate = 0.01\n{sft}\n[dpo]\nbeta = 0.1\n"
    )
}

fn error(text: &str, overrides: &[&str]) -> String {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    match LoadedConfig::from_str(text, &overrides) {
        Ok(_) => panic!("accepted: {text} {overrides:?}"),
        Err(e) => format!("{e:#}"),
    }
}

fn accepted(text: &str, overrides: &[&str]) -> LoadedConfig {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    LoadedConfig::from_str(text, &overrides).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn the_valid_base_config_is_accepted() {
    accepted(&config(""), &[]);
}

#[test]
fn infinite_learning_rate_is_named() {
    let text = config("").replace("learning_rate = 0.01", "learning_rate = inf");
    assert_eq!(
        error(&text, &[]),
        "[sft] learning_rate: inf is not a finite number"
    );
}

#[test]
fn nan_max_grad_norm_is_named() {
    assert_eq!(
        error(&config("max_grad_norm = nan"), &[]),
        "[sft] max_grad_norm: nan is not a finite number"
    );
}

#[test]
fn non_finite_values_outside_the_stages_are_named() {
    let text = config("").replace("r = 4", "r = 4\nlora_alpha = -inf");
    assert_eq!(
        error(&text, &[]),
        "[lora] lora_alpha: -inf is not a finite number"
    );
}

#[test]
fn a_number_too_large_for_toml_names_its_line() {
    let err = error(&config("warmup_ratio = 1e400"), &[]);
    assert!(
        err.contains("line 7") && err.contains("warmup_ratio") && err.contains("overflowed"),
        "{err}"
    );
}

#[test]
fn a_number_too_large_in_set_names_the_argument() {
    assert_eq!(
        error(&config(""), &["sft.learning_rate=1e400"]),
        "--set sft.learning_rate=1e400: [sft] learning_rate: 1e400 is not a finite number"
    );
}

#[test]
fn nan_in_set_names_the_argument() {
    assert_eq!(
        error(&config(""), &["dpo.beta=nan"]),
        "--set dpo.beta=nan: [dpo] beta: nan is not a finite number"
    );
}

#[test]
fn epochs_that_overflow_the_step_count_name_the_limit() {
    assert_eq!(
        error(&config("num_train_epochs = 1e300"), &[]),
        "[sft]: `num_train_epochs` = 1e300 would overflow the step count; at most 1000000 (or set `max_steps`)"
    );
}

#[test]
fn huge_epochs_are_ignored_when_max_steps_is_set() {
    // As in transformers: max_steps > 0 overrides num_train_epochs.
    accepted(&config("num_train_epochs = 1e300\nmax_steps = 10"), &[]);
}

#[test]
fn negative_learning_rate_is_named() {
    let text = config("").replace("learning_rate = 0.01", "learning_rate = -1e-5");
    assert_eq!(
        error(&text, &[]),
        "[sft]: `learning_rate` must be positive, got -0.00001"
    );
}

#[test]
fn zero_beta_is_named() {
    let text = config("").replace("beta = 0.1", "beta = 0.0");
    assert_eq!(error(&text, &[]), "[dpo]: `beta` must be positive, got 0");
}

#[test]
fn negative_max_grad_norm_is_named_and_zero_turns_clipping_off() {
    assert_eq!(
        error(&config("max_grad_norm = -1.0"), &[]),
        "[sft]: `max_grad_norm` must be at least 0 (0: no clipping), got -1"
    );
    assert_eq!(
        accepted(&config("max_grad_norm = 0.0"), &[])
            .run
            .sft
            .unwrap()
            .max_grad_norm,
        0.0
    );
}

#[test]
fn adam_settings_outside_torchs_ranges_are_named() {
    for (line, message) in [
        (
            "adam_beta1 = -0.1",
            "`adam_beta1` must be in [0, 1), got -0.1",
        ),
        ("adam_beta2 = 1.0", "`adam_beta2` must be in [0, 1), got 1"),
        ("adam_epsilon = -1e-8", "`adam_epsilon` must be at least 0"),
        ("weight_decay = -0.01", "`weight_decay` must be at least 0"),
    ] {
        let err = error(&config(line), &[]);
        assert!(
            err.starts_with(&format!("[sft]: {message}")),
            "{line}: {err}"
        );
    }
}

#[test]
fn set_with_an_unknown_key_names_the_argument() {
    assert_eq!(
        error(&config(""), &["dpo.betta=0.2"]),
        "--set dpo.betta=0.2: [dpo] unknown key `betta` (did you mean `beta`?)"
    );
}

#[test]
fn set_with_an_unknown_section_names_the_argument() {
    assert_eq!(
        error(&config(""), &["dpoo.beta=0.2"]),
        "--set dpoo.beta=0.2: unknown section [dpoo] (did you mean `dpo`?)"
    );
}

#[test]
fn set_without_a_key_names_the_argument() {
    assert_eq!(
        error(&config(""), &["dpo"]),
        "--set dpo: expected section.key=value"
    );
}

#[test]
fn set_with_an_unparseable_value_names_the_argument_not_a_line() {
    // `abc` is not TOML, so it is read as the string "abc": not a number.
    let err = error(&config(""), &["dpo.beta=abc"]);
    assert_eq!(
        err,
        "--set dpo.beta=abc: [dpo] beta: invalid type: string \"abc\", expected f64"
    );
}

#[test]
fn set_with_a_wrong_type_for_a_data_key_names_the_argument() {
    let err = error(&config(""), &["sft.max_length=\"long\""]);
    assert!(
        err.starts_with("--set sft.max_length=\"long\": [sft] max_length: invalid type"),
        "{err}"
    );
}

#[test]
fn set_with_a_bad_value_names_the_argument() {
    assert_eq!(
        error(&config(""), &["lora.r=8", "dpo.beta=-1"]),
        "--set dpo.beta=-1: [dpo]: `beta` must be positive, got -1"
    );
}

#[test]
fn a_bad_value_in_the_file_does_not_blame_a_good_set() {
    let text = config("").replace("beta = 0.1", "beta = 0.0");
    assert_eq!(
        error(&text, &["sft.learning_rate=0.02"]),
        "[dpo]: `beta` must be positive, got 0"
    );
}

#[test]
fn a_wrong_type_in_the_file_cites_its_line_even_with_sets() {
    let text = config("").replace("beta = 0.1", "beta = \"high\"");
    let err = error(&text, &["lora.r=8"]);
    assert!(err.contains("line 9") && err.contains("beta"), "{err}");
    assert!(!err.contains("--set"), "{err}");
}

#[test]
fn the_cli_names_the_set_argument_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, config("")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .arg("dpo")
        .arg("--config")
        .arg(&path)
        .args(["--no-progress", "--set", "dpo.beta=abc"])
        .env("LORA_DPO_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: --set dpo.beta=abc: [dpo] beta: invalid type: string \"abc\", expected f64"
    );
}

#[test]
fn the_cli_names_a_non_finite_key_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    std::fs::write(&path, config("max_grad_norm = inf")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
        .arg("sft")
        .arg("--config")
        .arg(&path)
        .arg("--no-progress")
        .env("LORA_DPO_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {}: [sft] max_grad_norm: inf is not a finite number",
            path.display()
        )
    );
}

/// `(section, key, a name none of its values, the accepted names)`.
const NAMED: &[(&str, &str, &str, &str)] = &[
    ("model", "dtype", "f8", "f32, bf16, f16"),
    (
        "model",
        "quantize",
        "q3_1",
        "none, dense, q8_0, q5_1, q5_0, q4_1, q4_0, q6k, q5k, q4k, q3k, q2k",
    ),
    ("model", "device", "tpu", "cpu, cuda, auto"),
    ("model", "kernels", "fast", "auto, generic"),
    (
        "dpo",
        "loss_type",
        "hinge2",
        "sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, \
         aot_unpaired, apo_zero, apo_down, discopop, sft, sigmoid_norm, simpo, cpo, kto, \
         apo_zero_unpaired",
    ),
    (
        "sft",
        "lr_scheduler_type",
        "zigzag",
        "linear, cosine, constant, constant_with_warmup",
    ),
];

#[test]
fn an_unknown_name_in_the_file_names_file_line_key_value_and_the_names() {
    let dir = tempfile::tempdir().unwrap();
    for (section, key, bad, names) in NAMED {
        let text = config("").replace(
            &format!("[{section}]\n"),
            &format!("[{section}]\n{key} = \"{bad}\"\n"),
        );
        let line = text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
        let path = dir.path().join("run.toml");
        std::fs::write(&path, &text).unwrap();
        let err = format!("{:#}", LoadedConfig::load(&path, &[]).unwrap_err());
        assert_eq!(
            err,
            format!(
                "{}: line {line}: [{section}] {key}: unknown value `{bad}` (expected one of {names})",
                path.display()
            )
        );
    }
}

#[test]
fn an_unknown_name_in_set_names_the_argument_key_value_and_the_names() {
    for (section, key, bad, names) in NAMED {
        let set = format!("{section}.{key}={bad}");
        assert_eq!(
            error(&config(""), &[&set]),
            format!(
                "--set {set}: [{section}] {key}: unknown value `{bad}` (expected one of {names})"
            )
        );
    }
}

#[test]
fn a_name_of_the_wrong_type_names_the_key() {
    assert_eq!(
        error(&config(""), &["model.dtype=16"]),
        "--set model.dtype=16: [model] dtype: invalid type: integer `16`, expected a string"
    );
}

#[test]
fn a_flag_takes_the_names_of_its_key_and_lists_them() {
    for (flag, bad, names) in [
        ("--dtype", "f8", "f32, bf16, f16"),
        ("--kernels", "fast", "auto, generic"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_lora-dpo"))
            .args(["sft", "--config", "unused.toml", flag, bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{bad}' for '{flag}"))
                && stderr.contains(&format!("[possible values: {names}]")),
            "{stderr}"
        );
    }
}
