//! Frozen projection weights, dense or quantized (GGML block types), and the options that
//! choose between them at load time.
//!
//! A quantized weight stays quantized in memory; its products dequantize it a tile at a time
//! (see [`crate::ops::quantized_linear`]). Embeddings, norms and the LM head are never
//! quantized here: they stay in the load dtype, as QLoRA does.

use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

use crate::choice::Choice;
use crate::model::config::ModelConfig;
use crate::model::weights::WeightFiles;
use crate::ops::{self, Kernels, QuantizedWeight};

/// How the frozen base is loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    /// The dtype of dense weights (embeddings, norms, LM head, unquantized projections) and of
    /// activations.
    pub dtype: DType,
    /// Quantize the seven projections of every layer to this GGML type at load. `None` keeps
    /// them dense. Projections stored quantized in a GGUF file keep their own type whatever this
    /// says; it applies to the dense (F32/F16/BF16) ones.
    pub quantize: Option<GgmlDType>,
    /// Dequantize projections stored quantized in a GGUF file to `dtype` (`quantize = "dense"`):
    /// more memory, but fast multi-threaded GEMMs on CPU, where some GGML types (Q4_1, Q5_x)
    /// only have scalar kernels.
    pub dequantize_gguf: bool,
    /// Which implementation of the ops the model's passes run.
    pub kernels: Kernels,
}

impl LoadOptions {
    pub fn new(dtype: DType) -> Self {
        Self {
            dtype,
            quantize: None,
            dequantize_gguf: false,
            kernels: Kernels::Auto,
        }
    }

    pub fn quantized(dtype: DType, quantize: Option<GgmlDType>) -> Self {
        Self {
            quantize,
            ..Self::new(dtype)
        }
    }

    /// The same options with the ops run by `kernels`.
    pub fn with_kernels(self, kernels: Kernels) -> Self {
        Self { kernels, ..self }
    }

    /// From the config's `quantize` value.
    pub fn from_config(dtype: DType, quantize: Quantize) -> Self {
        match quantize {
            Quantize::None => Self::new(dtype),
            Quantize::Dense => Self {
                dequantize_gguf: true,
                ..Self::new(dtype)
            },
            Quantize::Ggml(t) => Self::quantized(dtype, Some(t)),
        }
    }
}

/// `[model] quantize` (also `--quantize`): how the frozen projections are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantize {
    /// As loaded: dense in the load dtype, a GGUF's quantized projections in their stored types.
    #[default]
    None,
    /// A GGUF's quantized projections dequantized to the load dtype.
    Dense,
    /// The dense projections quantized to this GGML type at load.
    Ggml(GgmlDType),
}

impl crate::choice::Choice for Quantize {
    // Q8_1 and Q8K are left out: candle has no matmul for them. The `_k` aliases are
    // llama.cpp's spelling of the k-quants.
    const CHOICES: &'static [(Self, &'static [&'static str])] = &[
        (Quantize::None, &["none"]),
        (Quantize::Dense, &["dense"]),
        (Quantize::Ggml(GgmlDType::Q8_0), &["q8_0"]),
        (Quantize::Ggml(GgmlDType::Q5_1), &["q5_1"]),
        (Quantize::Ggml(GgmlDType::Q5_0), &["q5_0"]),
        (Quantize::Ggml(GgmlDType::Q4_1), &["q4_1"]),
        (Quantize::Ggml(GgmlDType::Q4_0), &["q4_0"]),
        (Quantize::Ggml(GgmlDType::Q6K), &["q6k", "q6_k"]),
        (Quantize::Ggml(GgmlDType::Q5K), &["q5k", "q5_k"]),
        (Quantize::Ggml(GgmlDType::Q4K), &["q4k", "q4_k"]),
        (Quantize::Ggml(GgmlDType::Q3K), &["q3k", "q3_k"]),
        (Quantize::Ggml(GgmlDType::Q2K), &["q2k", "q2_k"]),
    ];

    // Case and spaces have always been ignored here, and an empty value meant none.
    fn normalize(raw: &str) -> std::borrow::Cow<'_, str> {
        match raw.trim().to_ascii_lowercase() {
            empty if empty.is_empty() => "none".into(),
            name => name.into(),
        }
    }
}
crate::choice::choice_impls!(Quantize);

/// The user-facing name of a GGML type (`q8_0`, `q4k`, `f32`...).
pub fn quantization_name(t: GgmlDType) -> String {
    let q = Quantize::Ggml(t);
    if Quantize::CHOICES.iter().any(|(c, _)| *c == q) {
        q.name().to_string()
    } else {
        format!("{t:?}").to_ascii_lowercase()
    }
}

/// A frozen projection weight `[out, in]`.
#[derive(Clone)]
pub enum FrozenWeight {
    /// A plain tensor in the load dtype.
    Dense(Tensor),
    /// GGML blocks in row tiles, dequantized a tile at a time by the products.
    Quantized(Arc<QuantizedWeight>),
}

impl std::fmt::Debug for FrozenWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrozenWeight::Dense(t) => write!(f, "Dense({:?}, {:?})", t.dims(), t.dtype()),
            FrozenWeight::Quantized(q) => write!(f, "{q:?}"),
        }
    }
}

impl FrozenWeight {
    /// Quantizes a dense `[out, in]` weight. `name` (the tensor's name) is used in errors.
    ///
    /// The GGML block runs along the last (input) dimension, which must be a multiple of the
    /// block size: 32 for the legacy types, 256 for the k-quants.
    pub fn quantize(
        name: &str,
        weight: &Tensor,
        dtype: GgmlDType,
        device: &Device,
    ) -> Result<Self> {
        let block = dtype.block_size();
        let last = *weight.dims().last().unwrap_or(&0);
        if last == 0 || !last.is_multiple_of(block) {
            bail!(
                "cannot quantize `{name}` (shape {:?}) to {}: its last dimension {last} is not a \
                 multiple of the block size {block}; use quantize = \"none\" or a type with a \
                 smaller block ({})",
                weight.dims(),
                quantization_name(dtype),
                if block == 256 {
                    "q8_0, q4_0 and the other legacy types use 32"
                } else {
                    "every GGML type needs at least 32"
                }
            );
        }
        let q = QuantizedWeight::quantize(weight, dtype, device)
            .with_context(|| format!("quantizing `{name}` to {}", quantization_name(dtype)))?;
        Ok(FrozenWeight::Quantized(Arc::new(q)))
    }

    /// `x @ W.T` over any leading dimensions, in `x`'s dtype; the backward computes the input
    /// gradient only.
    pub fn forward(&self, kernels: Kernels, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => ops::frozen_linear(x, w),
            FrozenWeight::Quantized(q) => ops::quantized_linear(kernels, x, q),
        }
    }

    /// `grad @ W` for `grad: [n, out]`: the input gradient of [`FrozenWeight::forward`].
    pub fn input_grad(&self, kernels: Kernels, grad: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => ops::frozen_matmul(grad, w)?.to_dtype(grad.dtype()),
            FrozenWeight::Quantized(q) => ops::quantized_input_grad(kernels, q, grad),
        }
    }

    /// `(out_features, in_features)`.
    pub fn dims2(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            FrozenWeight::Dense(w) => w.dims2(),
            FrozenWeight::Quantized(q) => Ok(q.dims2()),
        }
    }

    /// The weight as a dense tensor in `dtype` on `device` (a copy when quantized).
    pub fn to_dense(&self, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => w.to_dtype(dtype)?.to_device(device),
            FrozenWeight::Quantized(q) => q.dequantize(device)?.to_dtype(dtype),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self, FrozenWeight::Quantized(_))
    }

    /// The GGML type of a quantized weight.
    pub fn ggml_dtype(&self) -> Option<GgmlDType> {
        match self {
            FrozenWeight::Dense(_) => None,
            FrozenWeight::Quantized(q) => Some(q.dtype()),
        }
    }

    /// Bytes the weight occupies on its device.
    pub fn storage_bytes(&self) -> usize {
        match self {
            FrozenWeight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            FrozenWeight::Quantized(q) => q.storage_bytes(),
        }
    }

    /// `Dense`, or `q8_0`, `q4k`... for reports.
    pub fn kind(&self) -> String {
        match self {
            FrozenWeight::Dense(w) => format!("{:?}", w.dtype()).to_ascii_lowercase(),
            FrozenWeight::Quantized(q) => quantization_name(q.dtype()),
        }
    }
}

/// Where the frozen base's tensors come from (safetensors folders, GGUF files). Names and
/// shapes are always Hugging Face's.
pub trait WeightSource {
    /// Checks that every tensor `config` calls for is present with the right shape.
    fn check_against(&self, config: &ModelConfig) -> Result<()>;

    fn contains(&self, name: &str) -> bool;

    /// A dense tensor in `dtype` on `device` (dequantized if it is stored quantized).
    fn load_dense(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor>;

    /// A projection weight as [`LoadOptions`] say.
    fn load_frozen(
        &self,
        name: &str,
        shape: &[usize],
        options: &LoadOptions,
        device: &Device,
    ) -> Result<FrozenWeight>;
}

impl WeightSource for WeightFiles {
    fn check_against(&self, config: &ModelConfig) -> Result<()> {
        WeightFiles::check_against(self, config)
    }

    fn contains(&self, name: &str) -> bool {
        WeightFiles::contains(self, name)
    }

    fn load_dense(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.load(name, shape, dtype, device)
    }

    fn load_frozen(
        &self,
        name: &str,
        shape: &[usize],
        options: &LoadOptions,
        device: &Device,
    ) -> Result<FrozenWeight> {
        match options.quantize {
            None => Ok(FrozenWeight::Dense(self.load(
                name,
                shape,
                options.dtype,
                device,
            )?)),
            Some(q) => {
                let w = self.load(name, shape, DType::F32, &Device::Cpu)?;
                FrozenWeight::quantize(name, &w, q, device)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantization_names() {
        let parse = |s: &str| s.parse::<Quantize>().unwrap();
        assert_eq!(parse("none"), Quantize::None);
        assert_eq!(parse(""), Quantize::None);
        assert_eq!(parse(" Dense "), Quantize::Dense);
        assert_eq!(parse("q8_0"), Quantize::Ggml(GgmlDType::Q8_0));
        assert_eq!(parse("Q4_K"), Quantize::Ggml(GgmlDType::Q4K));
        assert_eq!(parse("q4k"), Quantize::Ggml(GgmlDType::Q4K));
        let err = "q3_1".parse::<Quantize>().unwrap_err().to_string();
        assert!(err.contains("q3_1") && err.contains("q4k"), "{err}");
        assert_eq!(quantization_name(GgmlDType::Q6K), "q6k");
        assert_eq!(quantization_name(GgmlDType::F16), "f16");
    }

    #[test]
    fn block_size_error_names_tensor_and_type() {
        let w = Tensor::zeros((8, 96), DType::F32, &Device::Cpu).unwrap();
        let err = FrozenWeight::quantize(
            "model.layers.0.mlp.down_proj.weight",
            &w,
            GgmlDType::Q4K,
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("down_proj") && err.contains("q4k") && err.contains("256"),
            "{err}"
        );
        assert!(FrozenWeight::quantize("w", &w, GgmlDType::Q8_0, &Device::Cpu).is_ok());
    }
}
