//! Packed batches: the tokens of several sequences in one row, no padding, where sequences
//! that start alike share their common prefix (DPO's chosen and rejected continue one prompt).
//!
//! Each group is a trunk (the shared prefix) and branches that continue it: a token sees the
//! earlier tokens of its trunk and of its own branch. Positions restart at 0 in every group.
//! Attention runs group by group, so its cost is that of the groups, not of the whole row.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

/// Where a token of a packed row belongs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    /// 0 = the group's trunk (seen by every branch), 1.. = a branch.
    pub branch: u16,
    pub position: u32,
}

/// Several sequences packed into one row.
#[derive(Debug, Clone, Default)]
pub struct PackedBatch {
    pub ids: Vec<u32>,
    pub slots: Vec<Slot>,
    /// `(start, len)` of each group in the row.
    pub groups: Vec<(usize, usize)>,
}

impl PackedBatch {
    /// Appends a group: the shared `trunk`, then each branch. Returns the row index of the
    /// first token of the trunk and of each branch.
    pub fn push_group(&mut self, trunk: &[u32], branches: &[&[u32]]) -> (usize, Vec<usize>) {
        let start = self.ids.len();
        for (p, &id) in trunk.iter().enumerate() {
            self.ids.push(id);
            self.slots.push(Slot {
                branch: 0,
                position: p as u32,
            });
        }
        let mut starts = Vec::with_capacity(branches.len());
        for (b, branch) in branches.iter().enumerate() {
            starts.push(self.ids.len());
            for (p, &id) in branch.iter().enumerate() {
                self.ids.push(id);
                self.slots.push(Slot {
                    branch: b as u16 + 1,
                    position: (trunk.len() + p) as u32,
                });
            }
        }
        self.groups.push((start, self.ids.len() - start));
        (start, starts)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The longest position plus one.
    pub fn max_position(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.position as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// The additive attention bias `[1, 1, len, len]` of group `g`: causal by position, within
    /// the attention `window`, trunk visible to all, branches only to themselves.
    pub fn group_bias(&self, g: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
        let Some(&(start, len)) = self.groups.get(g) else {
            bail!("packed batch has no group {g}");
        };
        let slots: Vec<(usize, usize)> = self.slots[start..start + len]
            .iter()
            .map(|s| (s.position as usize, s.branch as usize))
            .collect();
        crate::model::mask::packed_group(window, &slots, device)
    }

    /// Token ids `[1, len]` and positions `[len]` (u32) on `device`.
    pub fn tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let ids = Tensor::from_slice(&self.ids, (1, self.ids.len()), device)?;
        let positions: Vec<u32> = self.slots.iter().map(|s| s.position).collect();
        let positions = Tensor::from_vec(positions, self.slots.len(), device)?;
        Ok((ids, positions))
    }
}
