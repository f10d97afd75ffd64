//! A padded token batch on the device, in the shapes the model and the losses take.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

pub struct DeviceBatch {
    /// `[b, t]` u32.
    pub input_ids: Tensor,
    /// `[b, t]` u32, 1 for real tokens.
    pub attention_mask: Tensor,
    /// `[b, t-1]` f32: 1 where token `t+1` is a loss target.
    pub target_mask: Tensor,
    /// Real tokens in the batch.
    pub tokens: usize,
    /// Loss targets in the batch (counted on the host: the mask came from there).
    pub targets: usize,
}

impl DeviceBatch {
    /// From row-major `[rows, seq_len]` buffers; `loss_mask[t]` marks token `t` as a target.
    pub fn new(
        input_ids: &[u32],
        attention_mask: &[u8],
        loss_mask: &[u8],
        rows: usize,
        seq_len: usize,
        device: &Device,
    ) -> Result<Self> {
        let ids = Tensor::from_slice(input_ids, (rows, seq_len), device)?;
        let attn: Vec<u32> = attention_mask.iter().map(|&m| m as u32).collect();
        let attn = Tensor::from_vec(attn, (rows, seq_len), device)?;
        let loss: Vec<f32> = loss_mask.iter().map(|&m| m as f32).collect();
        let loss = Tensor::from_vec(loss, (rows, seq_len), device)?;
        Ok(Self {
            input_ids: ids,
            attention_mask: attn,
            target_mask: loss.narrow(1, 1, seq_len - 1)?.to_dtype(DType::F32)?,
            tokens: attention_mask.iter().filter(|&&m| m != 0).count(),
            targets: (loss_mask.chunks(seq_len.max(1)))
                .map(|row| row.iter().skip(1).filter(|&&m| m != 0).count())
                .sum(),
        })
    }

    pub fn from_data(batch: &crate::data::Batch, device: &Device) -> Result<Self> {
        Self::new(
            &batch.input_ids,
            &batch.attention_mask,
            &batch.loss_mask,
            batch.batch_size,
            batch.seq_len,
            device,
        )
    }
}
