//! Truncation as TRL does it.
//!
//! SFT: the sequence and its mask keep their first (`keep_start`) or last (`keep_end`) `max_length` tokens; a row
//! left with no trained token is dropped. DPO: the prompt keeps its last `max_prompt_length` tokens and each
//! completion its first `max_completion_length` tokens (older TRL); then each `prompt + completion` sequence keeps
//! its first or last `max_length` tokens (TRL's `DataCollatorForPreference`); with `keep_start` a row whose prompt
//! alone fills `max_length` is dropped. With `truncation_mode = "off"` a row over a limit is a bad row.

use super::config::{DataConfig, TruncationMode};
use super::tokenize::{DpoTokens, Sequence};

/// What truncation did to a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit<T> {
    /// Within the limits.
    Whole(T),
    /// Cut to fit.
    Truncated(T),
    /// Nothing left to train on after truncation.
    Dropped(String),
    /// Over a limit with truncation off: the message says which.
    TooLong(String),
}

fn slice<T: Clone>(v: &[T], max: usize, mode: TruncationMode) -> Vec<T> {
    if v.len() <= max {
        return v.to_vec();
    }
    match mode {
        TruncationMode::KeepEnd => v[v.len() - max..].to_vec(),
        _ => v[..max].to_vec(),
    }
}

/// Fits an SFT sequence into `max_length`.
pub fn truncate_sft(seq: Sequence, cfg: &DataConfig) -> Fit<Sequence> {
    let Some(limit) = cfg.length_limit() else {
        return Fit::Whole(seq);
    };
    let max = limit.tokens;
    if seq.len() <= max {
        return Fit::Whole(seq);
    }
    if cfg.truncation_mode == TruncationMode::Off {
        return Fit::TooLong(format!(
            "{} tokens, longer than {limit} (truncation_mode = \"off\")",
            seq.len()
        ));
    }
    let out = Sequence {
        input_ids: slice(&seq.input_ids, max, cfg.truncation_mode),
        loss_mask: slice(&seq.loss_mask, max, cfg.truncation_mode),
    };
    if out.n_trained() == 0 {
        return Fit::Dropped(format!(
            "no trained token left in the {} kept of {} tokens",
            cfg.truncation_mode,
            seq.len()
        ));
    }
    Fit::Truncated(out)
}

/// A preference pair ready for training, held as its three token lists only: the two training
/// sequences share the prompt, and their loss masks follow from where the prompt ends, so they
/// are built when batched rather than stored (a 200k-pair dataset stays a few tokens per token).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DpoExample {
    /// The prompt, the chosen and the rejected completion (after `max_prompt_length` / `max_completion_length`).
    pub parts: DpoTokens,
    /// The tokens of `prompt + chosen` kept by `max_length`, as a range of that concatenation.
    chosen_kept: Kept,
    /// The same for `prompt + rejected`.
    rejected_kept: Kept,
}

/// A range `start..end` of a concatenated `prompt + completion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Kept {
    start: u32,
    end: u32,
}

impl Kept {
    fn whole(prompt: &[u32], completion: &[u32]) -> Self {
        Self {
            start: 0,
            end: (prompt.len() + completion.len()) as u32,
        }
    }

    /// At most `max` tokens, from the end the mode keeps.
    fn limited(self, max: usize, mode: TruncationMode) -> Self {
        let len = (self.end - self.start) as usize;
        if len <= max {
            return self;
        }
        match mode {
            TruncationMode::KeepEnd => Self {
                start: self.end - max as u32,
                ..self
            },
            _ => Self {
                end: self.start + max as u32,
                ..self
            },
        }
    }

    fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    /// The kept tokens, the completion's in the loss mask.
    fn sequence(self, prompt: &[u32], completion: &[u32]) -> Sequence {
        let (start, end) = (self.start as usize, self.end as usize);
        let mut input_ids = Vec::with_capacity(end - start);
        let mut loss_mask = Vec::with_capacity(end - start);
        for i in start..end {
            let in_prompt = i < prompt.len();
            input_ids.push(if in_prompt {
                prompt[i]
            } else {
                completion[i - prompt.len()]
            });
            loss_mask.push(!in_prompt);
        }
        Sequence {
            input_ids,
            loss_mask,
        }
    }
}

impl DpoExample {
    /// `prompt + chosen` after `max_length`, with the chosen completion's tokens in the loss mask.
    pub fn chosen(&self) -> Sequence {
        self.chosen_kept
            .sequence(&self.parts.prompt_ids, &self.parts.chosen_ids)
    }

    /// `prompt + rejected` after `max_length`, with the rejected completion's tokens in the loss mask.
    pub fn rejected(&self) -> Sequence {
        self.rejected_kept
            .sequence(&self.parts.prompt_ids, &self.parts.rejected_ids)
    }

    /// Tokens of [`DpoExample::chosen`], without building it.
    pub fn chosen_len(&self) -> usize {
        self.chosen_kept.len()
    }

    /// Tokens of [`DpoExample::rejected`], without building it.
    pub fn rejected_len(&self) -> usize {
        self.rejected_kept.len()
    }

    /// The longer of the two sequences' lengths.
    pub fn len(&self) -> usize {
        self.chosen_len().max(self.rejected_len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Applies the DPO length limits and builds the two training sequences.
pub fn truncate_dpo(tokens: DpoTokens, cfg: &DataConfig) -> Fit<DpoExample> {
    let off = cfg.truncation_mode == TruncationMode::Off;
    let mut parts = tokens;
    let mut truncated = false;
    if let Some(mp) = cfg.max_prompt_length {
        if parts.prompt_ids.len() > mp {
            if off {
                return Fit::TooLong(format!(
                    "prompt of {} tokens, longer than max_prompt_length {mp} (truncation_mode = \"off\")",
                    parts.prompt_ids.len()
                ));
            }
            parts.prompt_ids = parts.prompt_ids[parts.prompt_ids.len() - mp..].to_vec();
            truncated = true;
        }
    }
    if let Some(mc) = cfg.max_completion_length {
        for (name, ids) in [
            ("chosen", &mut parts.chosen_ids),
            ("rejected", &mut parts.rejected_ids),
        ] {
            if ids.len() > mc {
                if off {
                    return Fit::TooLong(format!(
                        "{name} completion of {} tokens, longer than max_completion_length {mc} \
                         (truncation_mode = \"off\")",
                        ids.len()
                    ));
                }
                ids.truncate(mc);
                truncated = true;
            }
        }
    }
    let mut chosen_kept = Kept::whole(&parts.prompt_ids, &parts.chosen_ids);
    let mut rejected_kept = Kept::whole(&parts.prompt_ids, &parts.rejected_ids);
    if let Some(limit) = cfg.length_limit() {
        let max = limit.tokens;
        let longest = chosen_kept.len().max(rejected_kept.len());
        if longest > max {
            match cfg.truncation_mode {
                TruncationMode::Off => {
                    return Fit::TooLong(format!(
                        "{longest} tokens (prompt + longer completion), longer than {limit} \
                         (truncation_mode = \"off\")"
                    ))
                }
                TruncationMode::KeepStart if parts.prompt_ids.len() >= max => {
                    return Fit::Dropped(format!(
                        "the prompt alone ({} tokens) fills {limit}",
                        parts.prompt_ids.len()
                    ))
                }
                mode => {
                    chosen_kept = chosen_kept.limited(max, mode);
                    rejected_kept = rejected_kept.limited(max, mode);
                    truncated = true;
                }
            }
        }
    }
    let ex = DpoExample {
        parts,
        chosen_kept,
        rejected_kept,
    };
    if truncated {
        Fit::Truncated(ex)
    } else {
        Fit::Whole(ex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max: usize, mode: TruncationMode) -> DataConfig {
        DataConfig {
            max_length: Some(max),
            truncation_mode: mode,
            ..DataConfig::default()
        }
    }

    fn seq(n: usize, prompt: usize) -> Sequence {
        Sequence {
            input_ids: (0..n as u32).collect(),
            loss_mask: (0..n).map(|i| i >= prompt).collect(),
        }
    }

    #[test]
    fn sft_keep_start_and_end() {
        let s = seq(6, 3);
        match truncate_sft(s.clone(), &cfg(4, TruncationMode::KeepStart)) {
            Fit::Truncated(t) => {
                assert_eq!(t.input_ids, vec![0, 1, 2, 3]);
                assert_eq!(t.loss_mask, vec![false, false, false, true]);
            }
            other => panic!("{other:?}"),
        }
        match truncate_sft(s.clone(), &cfg(4, TruncationMode::KeepEnd)) {
            Fit::Truncated(t) => assert_eq!(t.input_ids, vec![2, 3, 4, 5]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            truncate_sft(s.clone(), &cfg(3, TruncationMode::KeepStart)),
            Fit::Dropped(_)
        ));
        assert!(matches!(
            truncate_sft(s.clone(), &cfg(5, TruncationMode::Off)),
            Fit::TooLong(_)
        ));
        assert_eq!(
            truncate_sft(s.clone(), &cfg(6, TruncationMode::Off)),
            Fit::Whole(s)
        );
    }

    #[test]
    fn model_limit_is_tighter_than_max_length() {
        let s = seq(6, 0);
        let c = cfg(1024, TruncationMode::KeepStart).with_model_max_length(4);
        match truncate_sft(s.clone(), &c) {
            Fit::Truncated(t) => assert_eq!(t.input_ids, vec![0, 1, 2, 3]),
            other => panic!("{other:?}"),
        }
        let off = cfg(1024, TruncationMode::Off).with_model_max_length(4);
        match truncate_sft(s.clone(), &off) {
            Fit::TooLong(why) => assert!(why.contains("max_position_embeddings 4"), "{why}"),
            other => panic!("{other:?}"),
        }
        // With no max_length the model's limit still holds.
        let unset = DataConfig {
            max_length: None,
            ..DataConfig::default()
        }
        .with_model_max_length(5);
        assert!(matches!(truncate_sft(s, &unset), Fit::Truncated(t) if t.len() == 5));
    }

    #[test]
    fn dpo_like_trl_collator() {
        let t = DpoTokens {
            prompt_ids: vec![1, 2, 3],
            chosen_ids: vec![4, 5],
            rejected_ids: vec![6],
        };
        match truncate_dpo(t.clone(), &cfg(4, TruncationMode::KeepStart)) {
            Fit::Truncated(ex) => {
                assert_eq!(ex.chosen().input_ids, vec![1, 2, 3, 4]);
                assert_eq!(ex.chosen().loss_mask, vec![false, false, false, true]);
                assert_eq!(ex.rejected().input_ids, vec![1, 2, 3, 6]);
            }
            other => panic!("{other:?}"),
        }
        match truncate_dpo(t.clone(), &cfg(3, TruncationMode::KeepEnd)) {
            Fit::Truncated(ex) => {
                assert_eq!(ex.chosen().input_ids, vec![3, 4, 5]);
                assert_eq!(ex.rejected().input_ids, vec![2, 3, 6]);
                assert_eq!(ex.rejected().loss_mask, vec![false, false, true]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            truncate_dpo(t.clone(), &cfg(3, TruncationMode::KeepStart)),
            Fit::Dropped(_)
        ));
        assert!(matches!(
            truncate_dpo(t.clone(), &cfg(4, TruncationMode::Off)),
            Fit::TooLong(_)
        ));
        let c = DataConfig {
            max_prompt_length: Some(2),
            max_completion_length: Some(1),
            max_length: None,
            ..DataConfig::default()
        };
        match truncate_dpo(t, &c) {
            Fit::Truncated(ex) => {
                assert_eq!(ex.parts.prompt_ids, vec![2, 3]);
                assert_eq!(ex.chosen().input_ids, vec![2, 3, 4]);
            }
            other => panic!("{other:?}"),
        }
    }
}
