//! Several datasets mixed by fractions of their rows, and a held-out split carved from the
//! result, as the alignment-handbook's `dataset_mixer` and `train_test_split` do: each part
//! keeps a seeded sample of `fraction` of its rows (at least one), the parts are concatenated in
//! the order given, and a seeded shuffle picks the held-out rows.

use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::reader::RawDataset;

/// How many rows are held out of the training rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeldOut {
    /// A share of the rows (`eval_split_ratio`), rounded, at least one.
    Ratio(f64),
    /// A number of rows (`test_split_size`).
    Rows(usize),
}

/// The rows kept of one part: `fraction` of them (rounded, at least one), chosen by a shuffle
/// seeded with `seed` and the part's index, kept in file order.
pub fn sample(raw: RawDataset, fraction: f64, seed: u64, part: usize) -> RawDataset {
    let n = raw.rows.len();
    if fraction >= 1.0 || n == 0 {
        return raw;
    }
    let keep = ((n as f64 * fraction).round() as usize).clamp(1, n);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ (part as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    let mut chosen = order[..keep].to_vec();
    chosen.sort_unstable();
    let mut rows: Vec<Option<_>> = raw.rows.into_iter().map(Some).collect();
    RawDataset {
        files: raw.files,
        rows: chosen.into_iter().filter_map(|i| rows[i].take()).collect(),
    }
}

/// The parts one after the other.
pub fn concat(parts: Vec<RawDataset>) -> RawDataset {
    let mut out = RawDataset::default();
    for p in parts {
        out.files.extend(p.files);
        out.rows.extend(p.rows);
    }
    out
}

/// Splits `raw` into training and held-out rows (both in their original order), the held-out
/// rows chosen by a shuffle seeded with `seed`.
pub fn carve(raw: RawDataset, held_out: HeldOut, seed: u64) -> Result<(RawDataset, RawDataset)> {
    let n = raw.rows.len();
    let k = match held_out {
        HeldOut::Ratio(r) => ((n as f64 * r).round() as usize).max(1),
        HeldOut::Rows(k) => k,
    };
    if k == 0 || k >= n {
        bail!("holding out {k} of {n} rows leaves no training rows or no held-out rows");
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut is_held = vec![false; n];
    for &i in &order[..k] {
        is_held[i] = true;
    }
    let (mut train, mut eval) = (Vec::with_capacity(n - k), Vec::with_capacity(k));
    for (row, held) in raw.rows.into_iter().zip(is_held) {
        if held {
            eval.push(row);
        } else {
            train.push(row);
        }
    }
    let files = raw.files;
    Ok((
        RawDataset {
            files: files.clone(),
            rows: train,
        },
        RawDataset { files, rows: eval },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::reader::{Pos, RawRow, RowLoc};
    use std::path::PathBuf;
    use std::sync::Arc;

    fn rows(name: &str, n: usize) -> RawDataset {
        let file = Arc::new(PathBuf::from(name));
        RawDataset {
            files: vec![PathBuf::from(name)],
            rows: (0..n)
                .map(|i| RawRow {
                    loc: RowLoc {
                        file: file.clone(),
                        pos: Pos::Line(i + 1),
                    },
                    value: Ok(serde_json::Map::new()),
                })
                .collect(),
        }
    }

    fn lines(raw: &RawDataset) -> Vec<String> {
        raw.rows.iter().map(|r| r.loc.to_string()).collect()
    }

    #[test]
    fn a_fraction_keeps_that_share_seeded_in_file_order() {
        let a = sample(rows("a", 10), 0.3, 7, 0);
        assert_eq!(a.rows.len(), 3);
        assert_eq!(lines(&a), lines(&sample(rows("a", 10), 0.3, 7, 0)));
        let positions: Vec<usize> = a
            .rows
            .iter()
            .map(|r| match r.loc.pos {
                Pos::Line(l) => l,
                Pos::Row(r) => r,
            })
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        assert_ne!(
            lines(&a),
            lines(&sample(rows("a", 10), 0.3, 8, 0)),
            "the seed draws"
        );
        assert_eq!(
            sample(rows("a", 10), 0.01, 7, 0).rows.len(),
            1,
            "at least one row"
        );
        assert_eq!(sample(rows("a", 10), 1.0, 7, 0).rows.len(), 10);
    }

    #[test]
    fn mixtures_concatenate_and_carving_is_seeded_and_disjoint() {
        let mixed = concat(vec![sample(rows("a", 10), 0.5, 1, 0), rows("b", 4)]);
        assert_eq!(mixed.rows.len(), 9);
        assert_eq!(mixed.files.len(), 2);
        let (train, eval) = carve(mixed.clone(), HeldOut::Ratio(0.25), 3).unwrap();
        assert_eq!((train.rows.len(), eval.rows.len()), (7, 2));
        let (t2, e2) = carve(mixed.clone(), HeldOut::Rows(2), 3).unwrap();
        assert_eq!((lines(&t2), lines(&e2)), (lines(&train), lines(&eval)));
        let mut all: Vec<String> = lines(&train).into_iter().chain(lines(&eval)).collect();
        all.sort();
        let mut want = lines(&mixed);
        want.sort();
        assert_eq!(all, want);
        assert!(carve(mixed.clone(), HeldOut::Rows(9), 3).is_err());
        assert!(carve(mixed, HeldOut::Rows(0), 3).is_err());
    }
}
