//! Batches with right padding, and the order in which rows are batched (shuffled, optionally grouped by length).

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::tokenize::Sequence;
use super::truncate::DpoExample;

/// A right-padded batch, stored row-major: element `(row, t)` is at `row * seq_len + t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    /// Token ids, padded with the pad id.
    pub input_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u8>,
    /// 1 where token `t` is a loss target (predicted from the tokens before it), 0 elsewhere and on padding.
    pub loss_mask: Vec<u8>,
}

impl Batch {
    /// Number of real (non-padding) tokens.
    pub fn n_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m == 1).count()
    }

    /// Number of loss-target tokens.
    pub fn n_trained(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m == 1).count()
    }

    /// One row's ids, without padding.
    pub fn row_ids(&self, row: usize) -> Vec<u32> {
        let r = row * self.seq_len..(row + 1) * self.seq_len;
        self.input_ids[r.clone()]
            .iter()
            .zip(&self.attention_mask[r])
            .filter(|(_, &m)| m == 1)
            .map(|(&id, _)| id)
            .collect()
    }
}

/// Pads sequences on the right to the longest one (rounded up to a multiple of `pad_to_multiple_of`).
pub fn collate(seqs: &[&Sequence], pad_id: u32, pad_to_multiple_of: Option<usize>) -> Batch {
    let mut seq_len = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    if let Some(m) = pad_to_multiple_of.filter(|&m| m > 1) {
        seq_len = seq_len.div_ceil(m) * m;
    }
    let n = seqs.len() * seq_len;
    let mut batch = Batch {
        batch_size: seqs.len(),
        seq_len,
        input_ids: Vec::with_capacity(n),
        attention_mask: Vec::with_capacity(n),
        loss_mask: Vec::with_capacity(n),
    };
    for s in seqs {
        let pad = seq_len - s.len();
        batch.input_ids.extend_from_slice(&s.input_ids);
        batch.input_ids.extend(std::iter::repeat_n(pad_id, pad));
        batch
            .attention_mask
            .extend(std::iter::repeat_n(1u8, s.len()));
        batch.attention_mask.extend(std::iter::repeat_n(0u8, pad));
        batch
            .loss_mask
            .extend(s.loss_mask.iter().map(|&m| u8::from(m)));
        batch.loss_mask.extend(std::iter::repeat_n(0u8, pad));
    }
    batch
}

/// A DPO batch as TRL builds it: rows `0..n` are `prompt + chosen`, rows `n..2n` are `prompt + rejected` of the
/// same pairs, all padded to one length; the loss mask covers the completions.
pub fn collate_dpo(
    examples: &[&DpoExample],
    pad_id: u32,
    pad_to_multiple_of: Option<usize>,
) -> Batch {
    let seqs: Vec<Sequence> = examples
        .iter()
        .map(|e| e.chosen())
        .chain(examples.iter().map(|e| e.rejected()))
        .collect();
    collate(&seqs.iter().collect::<Vec<_>>(), pad_id, pad_to_multiple_of)
}

/// `train_sampling_strategy`, with transformers' names: the order rows are batched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplingStrategy {
    /// A shuffle seeded by `[output] seed` and the epoch (transformers' default).
    Random,
    /// File order, the same every epoch (KTO's default).
    Sequential,
    /// Shuffled, then rows of similar length batched together.
    GroupByLength,
    /// transformers' balancing of padding across devices; refused, as lora-dpo runs on one.
    BatchRebalance,
}

impl crate::choice::Choice for SamplingStrategy {
    const CHOICES: &'static [(Self, &'static [&'static str])] = &[
        (SamplingStrategy::Random, &["random"]),
        (SamplingStrategy::Sequential, &["sequential"]),
        (SamplingStrategy::GroupByLength, &["group_by_length"]),
        (SamplingStrategy::BatchRebalance, &["batch_rebalance"]),
    ];
}
crate::choice::choice_impls!(SamplingStrategy);

impl SamplingStrategy {
    /// The strategy a stage runs with: `train_sampling_strategy`, else `group_by_length = true`
    /// (its spelling before transformers 5), else the stage's own default.
    pub fn resolve(
        requested: Option<SamplingStrategy>,
        group_by_length: bool,
        default: SamplingStrategy,
    ) -> anyhow::Result<SamplingStrategy> {
        match (requested, group_by_length) {
            (Some(SamplingStrategy::BatchRebalance), _) => anyhow::bail!(
                "`train_sampling_strategy` = \"batch_rebalance\" balances padding across devices; \
                 lora-dpo trains on one: use \"group_by_length\""
            ),
            (Some(s), true) if s != SamplingStrategy::GroupByLength => anyhow::bail!(
                "`train_sampling_strategy` = \"{s}\" with `group_by_length = true`: give one \
                 (`group_by_length = true` is the older spelling of \"group_by_length\")"
            ),
            (Some(s), _) => Ok(s),
            (None, true) => Ok(SamplingStrategy::GroupByLength),
            (None, false) => Ok(default),
        }
    }
}

/// The batches of one epoch, as lists of row indices.
///
/// With `shuffle` the rows are shuffled with `seed`. With `group_by_length` rows of similar length share a batch,
/// as transformers' `LengthGroupedSampler` does: the shuffled rows are cut into mega-batches of 50 batches, each
/// sorted by length (longest first); the batch holding the longest row comes first so that running out of memory
/// shows at once. The last batch may be smaller.
pub fn batch_order(
    lengths: &[usize],
    batch_size: usize,
    shuffle: bool,
    group_by_length: bool,
    seed: u64,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    if shuffle {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        idx.shuffle(&mut rng);
    }
    if group_by_length {
        let mega = batch_size * 50;
        for chunk in idx.chunks_mut(mega) {
            chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        }
    }
    let mut batches: Vec<Vec<usize>> = idx.chunks(batch_size).map(<[usize]>::to_vec).collect();
    if group_by_length && !batches.is_empty() {
        let longest = batches
            .iter()
            .enumerate()
            .max_by_key(|(k, b)| {
                (
                    b.iter().map(|&i| lengths[i]).max().unwrap_or(0),
                    std::cmp::Reverse(*k),
                )
            })
            .map(|(k, _)| k)
            .unwrap_or(0);
        batches.swap(0, longest);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_strategy_is_the_key_else_group_by_length_else_the_stages_default() {
        use SamplingStrategy::*;
        let resolve = SamplingStrategy::resolve;
        assert_eq!(resolve(None, false, Sequential).unwrap(), Sequential);
        assert_eq!(resolve(None, true, Sequential).unwrap(), GroupByLength);
        assert_eq!(resolve(Some(Random), false, Sequential).unwrap(), Random);
        assert_eq!(
            resolve(Some(GroupByLength), true, Random).unwrap(),
            GroupByLength
        );
        let err = resolve(Some(Sequential), true, Random)
            .unwrap_err()
            .to_string();
        assert!(err.contains("train_sampling_strategy") && err.contains("group_by_length"));
        let err = resolve(Some(BatchRebalance), false, Random)
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch_rebalance"), "{err}");
    }

    #[test]
    fn right_padding_and_masks() {
        let a = Sequence {
            input_ids: vec![5, 6, 7],
            loss_mask: vec![false, true, true],
        };
        let b = Sequence {
            input_ids: vec![8],
            loss_mask: vec![true],
        };
        let batch = collate(&[&a, &b], 0, Some(4));
        assert_eq!(batch.seq_len, 4);
        assert_eq!(batch.input_ids, vec![5, 6, 7, 0, 8, 0, 0, 0]);
        assert_eq!(batch.attention_mask, vec![1, 1, 1, 0, 1, 0, 0, 0]);
        assert_eq!(batch.loss_mask, vec![0, 1, 1, 0, 1, 0, 0, 0]);
        assert_eq!(batch.row_ids(1), vec![8]);
    }

    #[test]
    fn order_covers_every_row_once() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 50).collect();
        for (shuffle, group) in [(false, false), (true, false), (true, true)] {
            let order = batch_order(&lengths, 8, shuffle, group, 1);
            let mut all: Vec<usize> = order.concat();
            all.sort();
            assert_eq!(all, (0..103).collect::<Vec<_>>());
            assert!(order.iter().all(|b| b.len() <= 8));
        }
        let grouped = batch_order(&lengths, 8, true, true, 1);
        let max_len = *lengths.iter().max().unwrap();
        assert!(grouped[0].iter().any(|&i| lengths[i] == max_len));
        // Grouping reduces padding compared with a plain shuffle.
        let padding = |order: &Vec<Vec<usize>>| -> usize {
            order
                .iter()
                .map(|b| {
                    let m = b.iter().map(|&i| lengths[i]).max().unwrap();
                    b.iter().map(|&i| m - lengths[i]).sum::<usize>()
                })
                .sum()
        };
        assert!(padding(&grouped) < padding(&batch_order(&lengths, 8, true, false, 1)));
    }
}
