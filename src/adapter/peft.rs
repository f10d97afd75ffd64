//! PEFT's on-disk LoRA format: `adapter_config.json` + `adapter_model.safetensors`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

use crate::model::{Adapter, LoraConfig, LoraPair, ModelConfig, PerProjection, Projection};
use crate::source::Source;

use super::targets::targeted_modules;

const CONFIG_FILE: &str = "adapter_config.json";
const WEIGHTS_FILE: &str = "adapter_model.safetensors";
pub const KEY_PREFIX: &str = "base_model.model.";

/// What a loader does when `adapter_config.json` targets modules whose tensors the weights file
/// lacks (a truncated or hand-edited file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingTensors {
    /// Refuse the adapter, listing the missing keys.
    #[default]
    Refuse,
    /// Load it with those modules left out, a zero delta (what PEFT leaves in a module whose
    /// trained B factor it never received), and report the keys.
    Allow,
}

/// An adapter and the tensor keys its config implies but its file lacks (empty unless loaded
/// with [`MissingTensors::Allow`]).
pub struct LoadedAdapter {
    pub adapter: Adapter,
    pub missing: Vec<String>,
}

/// How many missing keys a message lists before it only counts the rest.
const LISTED_KEYS: usize = 10;

/// `N tensor(s): k1, k2, ... and M more`, for errors and warnings about missing keys.
pub fn describe_keys(keys: &[String]) -> String {
    let listed = keys[..keys.len().min(LISTED_KEYS)].join(", ");
    let rest = keys.len().saturating_sub(LISTED_KEYS);
    let more = if rest > 0 {
        format!(" and {rest} more")
    } else {
        String::new()
    };
    format!("{} tensor(s): {listed}{more}", keys.len())
}

/// Loads a PEFT LoRA adapter (folder or hub repo id) for a model with config `model`; refuses
/// one whose file lacks tensors its config targets.
pub fn load_adapter(spec: &str, model: &ModelConfig, device: &Device) -> Result<Adapter> {
    Ok(load_adapter_with(spec, model, device, MissingTensors::Refuse)?.adapter)
}

/// [`load_adapter`], with the choice of what to do about missing tensors.
pub fn load_adapter_with(
    spec: &str,
    model: &ModelConfig,
    device: &Device,
    on_missing: MissingTensors,
) -> Result<LoadedAdapter> {
    let source = Source::parse(spec)?;
    let config_path = source.require(CONFIG_FILE)?;
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{}: cannot read", config_path.display()))?;
    let json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", config_path.display()))?;
    let mut lora = read_config(&json).with_context(|| format!("{}", config_path.display()))?;
    let targeted = targeted_modules(&json, model.num_hidden_layers)
        .with_context(|| format!("{}", config_path.display()))?;
    let weights_path = match source.find(WEIGHTS_FILE)? {
        Some(p) => p,
        None if source.find("adapter_model.bin")?.is_some() => bail!(
            "{}: only adapter_model.bin (a pickle) is present; save the adapter with \
             safe_serialization=True",
            source.display_name()
        ),
        None => source.require(WEIGHTS_FILE)?,
    };
    let tensors = candle_core::safetensors::load(&weights_path, device)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{}: not a valid safetensors file", weights_path.display()))?;
    let (adapter, missing) =
        build_adapter(tensors, &mut lora, model, targeted.as_deref(), on_missing).with_context(
            || {
                format!(
                    "{} (targets from {})",
                    weights_path.display(),
                    config_path.display()
                )
            },
        )?;
    Ok(LoadedAdapter { adapter, missing })
}

/// Reads the fields we can honour and refuses what we cannot represent.
fn read_config(json: &Value) -> Result<LoraConfig> {
    let peft_type = json.get("peft_type").and_then(Value::as_str).unwrap_or("");
    if peft_type != "LORA" {
        bail!("field `peft_type`: {peft_type:?} is not supported (only LORA)");
    }
    let refuse_true = |key: &str, what: &str| -> Result<()> {
        if json.get(key).and_then(Value::as_bool) == Some(true) {
            bail!("field `{key}`: {what} adapters are not supported");
        }
        Ok(())
    };
    refuse_true("use_dora", "DoRA")?;
    refuse_true("fan_in_fan_out", "fan_in_fan_out (Conv1D-style)")?;
    refuse_true("lora_bias", "LoRA-with-bias")?;
    if let Some(bias) = json.get("bias").and_then(Value::as_str) {
        if bias != "none" {
            bail!("field `bias`: {bias:?} is not supported (only \"none\": LoRA without biases)");
        }
    }
    let non_empty = |key: &str| match json.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    };
    if non_empty("modules_to_save") {
        bail!("field `modules_to_save`: adapters that save whole modules are not supported");
    }
    if non_empty("rank_pattern") || non_empty("alpha_pattern") {
        bail!("fields `rank_pattern`/`alpha_pattern`: per-module ranks are not supported");
    }
    refuse_true("use_qalora", "QA-LoRA")?;
    for (key, what) in [
        ("layer_replication", "layer replication"),
        ("alora_invocation_tokens", "activated LoRA (aLoRA)"),
        ("target_parameters", "LoRA on raw parameters"),
        ("trainable_token_indices", "trainable-token"),
    ] {
        if non_empty(key) {
            bail!("field `{key}`: {what} adapters are not supported");
        }
    }
    let r = json
        .get("r")
        .and_then(Value::as_u64)
        .context("field `r` is missing or not a positive integer")? as usize;
    let lora_alpha = json
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .unwrap_or(8.0);
    Ok(LoraConfig {
        r,
        lora_alpha,
        lora_dropout: json
            .get("lora_dropout")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        target_modules: vec![],
        use_rslora: json
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// Builds an adapter from PEFT-named tensors; `lora.target_modules` is filled from what is present.
pub fn adapter_from_tensors(
    tensors: HashMap<String, Tensor>,
    lora: &mut LoraConfig,
    model: &ModelConfig,
) -> Result<Adapter> {
    Ok(build_adapter(tensors, lora, model, None, MissingTensors::Refuse)?.0)
}

/// Builds an adapter from PEFT-named tensors, checking that every module in `targeted` (when
/// known) has both factors. Returns the adapter and the keys it lacks (allowed ones only).
fn build_adapter(
    tensors: HashMap<String, Tensor>,
    lora: &mut LoraConfig,
    model: &ModelConfig,
    targeted: Option<&[(usize, Projection)]>,
    on_missing: MissingTensors,
) -> Result<(Adapter, Vec<String>)> {
    let mut layers: Vec<PerProjection<Option<LoraPair>>> = (0..model.num_hidden_layers)
        .map(|_| Default::default())
        .collect();
    let mut found: PerProjection<bool> = Default::default();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        if !name.contains(".lora_A.") && !name.contains(".lora_B.") {
            bail!("tensor `{name}` is not a LoRA factor; only lora_A/lora_B weights are supported");
        }
    }
    let mut recognised = 0;
    let mut missing = Vec::new();
    for (layer, slots) in layers.iter_mut().enumerate() {
        for p in Projection::ALL {
            let module = p.module_path(layer);
            let key = |ab: &str| format!("{KEY_PREFIX}{module}.{ab}.weight");
            let (ka, kb) = (key("lora_A"), key("lora_B"));
            let (a, b) = (tensors.get(&ka), tensors.get(&kb));
            recognised += usize::from(a.is_some()) + usize::from(b.is_some());
            let expected = targeted.is_some_and(|t| t.contains(&(layer, p)));
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (None, None) if !expected => continue,
                (a, b) if expected => {
                    // A targeted module short of a factor is untrained as far as PEFT goes:
                    // the factor it lacks stays at its initialisation, B = 0.
                    missing.extend(a.is_none().then(|| ka.clone()));
                    missing.extend(b.is_none().then(|| kb.clone()));
                    continue;
                }
                _ => bail!("{module}: lora_A and lora_B must both be present"),
            };
            let (out, inp) = model.projection_shape(p);
            if a.dims() != [lora.r, inp] || b.dims() != [out, lora.r] {
                bail!(
                    "{module}: lora_A {:?} / lora_B {:?} do not fit r={} on a [{out}, {inp}] weight",
                    a.dims(),
                    b.dims(),
                    lora.r
                );
            }
            slots[p] = Some(LoraPair {
                a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
                b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            });
            found[p] = true;
        }
    }
    if recognised != tensors.len() {
        bail!(
            "{} of its {} tensors do not name a layer/projection of this model \
             (expected names like {KEY_PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight)",
            tensors.len() - recognised,
            tensors.len()
        );
    }
    if !missing.is_empty() && on_missing == MissingTensors::Refuse {
        bail!(
            "the adapter's target modules need {} that the file lacks (--allow-missing loads \
             it with those modules untrained)",
            describe_keys(&missing)
        );
    }
    if !found.values().any(|f| *f) {
        bail!("holds no complete lora_A/lora_B pair for any module of this model");
    }
    lora.target_modules = found
        .iter()
        .filter(|(_, f)| **f)
        .map(|(p, _)| p.name().to_string())
        .collect();
    lora.validate()?;
    Ok((
        Adapter {
            config: lora.clone(),
            frozen: false,
            layers,
        },
        missing,
    ))
}

/// PEFT's `adapter_config.json` for `adapter`.
pub fn config_json(adapter: &Adapter, base_model: &str) -> Value {
    let c = &adapter.config;
    json!({
        "alpha_pattern": {},
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "lora_alpha": c.lora_alpha,
        "lora_dropout": c.lora_dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": c.r,
        "rank_pattern": {},
        "target_modules": saved_targets(adapter),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": c.use_rslora,
    })
}

/// `target_modules` as PEFT reads it back to exactly the modules `adapter` holds: the projection
/// names when every layer has the same ones, else each module's full path (an adapter loaded
/// with missing modules allowed), so that reloading it finds no tensor missing.
fn saved_targets(adapter: &Adapter) -> Vec<String> {
    let uniform = adapter.layers.iter().all(|l| {
        Projection::ALL
            .into_iter()
            .all(|p| l[p].is_some() == adapter.layers[0][p].is_some())
    });
    if uniform {
        return adapter.config.target_modules.clone();
    }
    let mut modules = Vec::new();
    for (layer, slots) in adapter.layers.iter().enumerate() {
        for (p, slot) in slots.iter() {
            if slot.is_some() {
                modules.push(p.module_path(layer));
            }
        }
    }
    modules
}

/// Writes the adapter as a PEFT folder at `dir`, through a temporary folder renamed at the end.
pub fn save_adapter(adapter: &Adapter, base_model: &str, dir: &Path) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create", parent.display()))?;
    let name = dir
        .file_name()
        .context("adapter output path has no folder name")?;
    let tmp = parent.join(format!(".{}.tmp", name.to_string_lossy()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    let config = serde_json::to_string_pretty(&config_json(adapter, base_model))?;
    std::fs::write(tmp.join(CONFIG_FILE), config + "\n")?;
    let mut data: Vec<(String, Tensor)> = Vec::new();
    for (name, var) in adapter.named_vars() {
        data.push((
            format!("{KEY_PREFIX}{name}.weight"),
            var.as_tensor().to_device(&Device::Cpu)?.contiguous()?,
        ));
    }
    write_safetensors(&data, &tmp.join(WEIGHTS_FILE))?;
    crate::fault::point("adapter-before-rename");
    crate::atomic_dir::replace_dir(&tmp, dir)?;
    Ok(())
}

/// Writes tensors with the `{"format": "pt"}` metadata transformers and PEFT expect.
pub fn write_safetensors(data: &[(String, Tensor)], path: &Path) -> Result<()> {
    let views: Vec<(String, TensorBytes)> = data
        .iter()
        .map(|(n, t)| Ok((n.clone(), TensorBytes::new(t)?)))
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(metadata), path)
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// A tensor's bytes in the layout safetensors wants.
struct TensorBytes {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl TensorBytes {
    fn new(t: &Tensor) -> Result<Self> {
        let shape = t.dims().to_vec();
        let t = t.to_device(&Device::Cpu)?.flatten_all()?;
        let (dtype, bytes) = match t.dtype() {
            DType::F32 => (
                safetensors::Dtype::F32,
                le_bytes(&t.to_vec1::<f32>()?, f32::to_le_bytes),
            ),
            DType::BF16 => (
                safetensors::Dtype::BF16,
                le_bytes(&t.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
            ),
            DType::F16 => (
                safetensors::Dtype::F16,
                le_bytes(&t.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
            ),
            DType::U32 => (
                safetensors::Dtype::U32,
                le_bytes(&t.to_vec1::<u32>()?, u32::to_le_bytes),
            ),
            DType::I64 => (
                safetensors::Dtype::I64,
                le_bytes(&t.to_vec1::<i64>()?, i64::to_le_bytes),
            ),
            other => bail!("cannot write {other:?} tensors"),
        };
        Ok(Self {
            dtype,
            shape,
            bytes,
        })
    }
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|v| f(*v)).collect()
}

impl safetensors::View for TensorBytes {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}
