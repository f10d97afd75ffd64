//! Packed batches (`model::PackedBatch`: a shared trunk and branches in one row, attended group
//! by group) give the hidden states of the same sequences run one by one, padded: on the tiny
//! Mistral whose sliding window is shorter than the sequences, with its LoRA adapter applied.
//! Both paths; tolerance 1e-4 absolute (f32).

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::{fixture_str, load_on, max_abs_diff, PATHS};
use lora_dpo::adapter::load_adapter;
use lora_dpo::model::{PackedBatch, Pass};
use lora_dpo::ops::Kernels;

#[test]
fn packed_trunk_and_branches_equal_the_sequences_run_alone() {
    for kernels in PATHS {
        packed_equals_alone_on(kernels);
    }
}

fn packed_equals_alone_on(kernels: Kernels) {
    let dir = fixture_str("models/tiny-mistral");
    let model = load_on(&dir, DType::F32, kernels);
    let adapter = load_adapter(&format!("{dir}/adapter"), &model.config, &Device::Cpu).unwrap();
    let adapters = [&adapter];
    let window = model.config.sliding_window().unwrap_or(0);
    // Two groups: a trunk longer than the sliding window with two branches, and a lone
    // sequence (empty trunk).
    let trunk: Vec<u32> = (0..window as u32 + 3)
        .map(|i| (i * 7 + 3) % 50 + 1)
        .collect();
    let (left, right): (Vec<u32>, Vec<u32>) = (vec![11, 12, 13, 14], vec![21, 22]);
    let lone: Vec<u32> = vec![5, 6, 7, 8, 9];
    let mut packed = PackedBatch::default();
    let (t0, b0) = packed.push_group(&trunk, &[&left, &right]);
    let (_, b1) = packed.push_group(&[], &[&lone]);
    let hidden = model
        .hidden_states_of(model.packed_inputs(&packed).unwrap(), Pass::eval(&adapters))
        .unwrap()
        .squeeze(0)
        .unwrap();

    let alone = |ids: &[u32]| -> Tensor {
        let t = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
        model
            .hidden_states(&t, None, Pass::eval(&adapters))
            .unwrap()
            .squeeze(0)
            .unwrap()
    };
    let rows = |start: usize, len: usize| hidden.narrow(0, start, len).unwrap();
    for (branch, start) in [(&left, b0[0]), (&right, b0[1])] {
        let full: Vec<u32> = trunk.iter().chain(branch.iter()).copied().collect();
        let want = alone(&full);
        let n = trunk.len();
        let d = max_abs_diff(&rows(t0, n), &want.narrow(0, 0, n).unwrap());
        assert!(d < 1e-4, "trunk: {d}");
        let d = max_abs_diff(
            &rows(start, branch.len()),
            &want.narrow(0, n, branch.len()).unwrap(),
        );
        assert!(d < 1e-4, "branch: {d}");
    }
    let d = max_abs_diff(&rows(b1[0], lone.len()), &alone(&lone));
    assert!(d < 1e-4, "lone sequence: {d}");
}
