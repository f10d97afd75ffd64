//! Preference pairs packed for one forward pass: chosen and rejected continue the same prompt,
//! so the tokens they share run through the model once (a prompt of 160 tokens with two
//! 90-token completions costs 340 token passes instead of 500), and no row is padded.

use crate::data::DpoExample;
use crate::model::PackedBatch;

/// The packed row and where each scored token's log-prob comes from.
pub struct PackedPairs {
    pub batch: PackedBatch,
    /// For each scored token: the row of the hidden state that predicts it, the token, and
    /// its sequence (`0..n` chosen of each pair, `n..2n` rejected).
    pub rows: Vec<u32>,
    pub targets: Vec<u32>,
    pub sequence: Vec<usize>,
    /// Tokens of the `prompt + chosen` and `prompt + rejected` sequences, unshared (what a
    /// padded batch holds without its padding).
    pub tokens: usize,
    pub pairs: usize,
    /// Sequences scored beyond the `2n` completions: ORPO's chosen prompts (`2n..3n`).
    pub extra_sequences: usize,
    /// LD-DPO's `ld_alpha`: in each pair's sums, the completion tokens past the shorter
    /// completion's length count this much (`None`: every token counts 1).
    pub tail_weight: Option<f64>,
}

impl PackedPairs {
    pub fn with_tail_weight(mut self, tail_weight: Option<f64>) -> Self {
        self.tail_weight = tail_weight;
        self
    }

    /// The weight of each scored token in its sequence's sum: 1, or `tail_weight` for a
    /// completion token at a position the pair's other completion does not reach.
    pub fn token_weights(&self) -> Vec<f32> {
        let Some(alpha) = self.tail_weight else {
            return vec![1.0; self.sequence.len()];
        };
        let n = self.pairs;
        let mut len = vec![0usize; 2 * n + self.extra_sequences];
        for &s in &self.sequence {
            len[s] += 1;
        }
        // Tokens are grouped by sequence, in position order.
        let mut seen = vec![0usize; len.len()];
        self.sequence
            .iter()
            .map(|&s| {
                let k = seen[s];
                seen[s] += 1;
                if s >= 2 * n {
                    return 1.0;
                }
                let pair = s % n;
                let shared = len[pair].min(len[n + pair]);
                if k < shared {
                    1.0
                } else {
                    alpha as f32
                }
            })
            .collect()
    }
}

/// Packs `examples`: each pair is a group whose trunk is the longest common prefix of its two
/// sequences.
pub fn pack_pairs(examples: &[&DpoExample]) -> PackedPairs {
    pack(examples, false)
}

/// [`pack_pairs`], also scoring the prompt tokens of each chosen sequence, as sequence `2n + i`
/// (ORPO's NLL runs over the whole chosen sequence).
pub fn pack_pairs_with_chosen_prompts(examples: &[&DpoExample]) -> PackedPairs {
    pack(examples, true)
}

fn pack(examples: &[&DpoExample], chosen_prompts: bool) -> PackedPairs {
    let n = examples.len();
    let mut out = PackedPairs {
        batch: PackedBatch::default(),
        rows: Vec::new(),
        targets: Vec::new(),
        sequence: Vec::new(),
        tokens: 0,
        pairs: n,
        extra_sequences: if chosen_prompts { n } else { 0 },
        tail_weight: None,
    };
    let mut scored: Vec<Vec<(u32, u32)>> =
        vec![Vec::new(); if chosen_prompts { 3 * n } else { 2 * n }];
    for (i, e) in examples.iter().enumerate() {
        let (c, r) = (&e.chosen(), &e.rejected());
        let shared = c
            .input_ids
            .iter()
            .zip(&r.input_ids)
            .take_while(|(a, b)| a == b)
            .count();
        let (trunk, branches) = out.batch.push_group(
            &c.input_ids[..shared],
            &[&c.input_ids[shared..], &r.input_ids[shared..]],
        );
        for (seq, branch_start, sequence) in [(i, branches[0], c), (n + i, branches[1], r)] {
            out.tokens += sequence.len();
            // Token j is predicted by the hidden state at j − 1: in the trunk, or in the branch.
            for j in 1..sequence.len() {
                let target = match sequence.loss_mask[j] {
                    true => seq,
                    false if chosen_prompts && seq == i => 2 * n + i,
                    false => continue,
                };
                let p = j - 1;
                let row = if p < shared {
                    trunk + p
                } else {
                    branch_start + (p - shared)
                };
                scored[target].push((row as u32, sequence.input_ids[j]));
            }
        }
    }
    for (seq, tokens) in scored.into_iter().enumerate() {
        for (row, target) in tokens {
            out.rows.push(row);
            out.targets.push(target);
            out.sequence.push(seq);
        }
    }
    out
}
