//! Every op used in training, its backward against central finite differences in f64, on both
//! paths (the CPU kernels and the device-generic one). Loss L = Σ op(x) ⊙ R for a fixed random
//! R; tolerance 1e-6 absolute on each dL/dx_i (the f64 central difference with h = 1e-5 is
//! accurate to ~1e-9 here).

use crate::common;

use candle_core::{DType, Device, Tensor, Var};
use common::{max_abs_diff, randn};
use lora_dpo::ops::{self, Kernels};

const PATHS: [Kernels; 2] = [Kernels::Auto, Kernels::Generic];

const H: f64 = 1e-5;
const TOL: f64 = 1e-6;

/// Compares the autograd gradient of `Σ f(x) ⊙ r` with central differences at every element.
fn check_one(name: &str, x: &Tensor, f: impl Fn(&Tensor) -> Tensor) {
    let var = Var::from_tensor(x).unwrap();
    let y = f(var.as_tensor());
    let r = randn(y.dims(), 99);
    let loss = (&y * &r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .unwrap_or_else(|| panic!("{name}: no gradient"));
    let g: Vec<f64> = g.flatten_all().unwrap().to_vec1().unwrap();
    let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let objective = |v: Vec<f64>| -> f64 {
        let t = Tensor::from_vec(v, x.dims(), &Device::Cpu).unwrap();
        (f(&t) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    for i in 0..base.len() {
        let (mut plus, mut minus) = (base.clone(), base.clone());
        plus[i] += H;
        minus[i] -= H;
        let fd = (objective(plus) - objective(minus)) / (2.0 * H);
        assert!(
            (fd - g[i]).abs() < TOL,
            "{name}[{i}]: autograd {} vs finite difference {fd}",
            g[i]
        );
    }
}

/// [`check_one`] on each path.
fn check(name: &str, x: Tensor, f: impl Fn(Kernels, &Tensor) -> Tensor) {
    for k in PATHS {
        check_one(&format!("{name} ({k})"), &x, |x| f(k, x));
    }
}

#[test]
fn rms_norm_backward() {
    let w = randn(&[6], 1).affine(0.3, 1.0).unwrap();
    check("rms_norm", randn(&[2, 3, 6], 2), |k, x| {
        ops::rms_norm(k, x, &w, 1e-5).unwrap()
    });
}

#[test]
fn rms_norm_backward_with_the_residual_is_one_pass_of_the_same_gradient() {
    // The fused CPU pass (f32 and f64) against the composite of candle ops plus the residual.
    for dtype in [DType::F64, DType::F32] {
        let t = |shape: &[usize], seed| randn(shape, seed).to_dtype(dtype).unwrap();
        let (x, w, g, res) = (
            t(&[3, 4, 40], 5),
            t(&[40], 6),
            t(&[3, 4, 40], 7),
            t(&[3, 4, 40], 8),
        );
        let composite = (ops::rms_norm_backward(&x, &w, 1e-5, &g).unwrap() + &res).unwrap();
        for k in PATHS {
            let fused = ops::rms_norm_backward_add(k, &x, &w, 1e-5, &g, &res).unwrap();
            let d = max_abs_diff(
                &fused.to_dtype(DType::F32).unwrap(),
                &composite.to_dtype(DType::F32).unwrap(),
            );
            assert!(d < 1e-5, "{dtype:?} {k}: max |diff| {d}");
        }
    }
}

#[test]
fn rope_backward() {
    let angles = (randn(&[5, 4], 3) * 3.0).unwrap();
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    check("rope", randn(&[2, 3, 5, 8], 4), |_, x| {
        ops::rope(x, &cos, &sin).unwrap()
    });
}

#[test]
fn rope_backward_through_a_transposed_input() {
    let angles = randn(&[5, 4], 5);
    let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
    check("rope(transposed)", randn(&[2, 5, 3, 8], 6), |_, x| {
        ops::rope(&x.transpose(1, 2).unwrap(), &cos, &sin).unwrap()
    });
}

#[test]
fn softmax_backward() {
    check("softmax", randn(&[3, 4, 7], 7), |_, x| {
        ops::softmax_last_dim(x).unwrap()
    });
}

#[test]
fn frozen_linear_backward() {
    let w = randn(&[5, 6], 8);
    check("frozen_linear", randn(&[2, 3, 6], 9), |_, x| {
        ops::frozen_linear(x, &w).unwrap()
    });
}

#[test]
fn frozen_linear_never_computes_a_weight_gradient() {
    // Even a weight that autograd tracks gets nothing: the op's backward returns dX only.
    let w = Var::from_tensor(&randn(&[5, 6], 10)).unwrap();
    let x = Var::from_tensor(&randn(&[4, 6], 11)).unwrap();
    let grads = ops::frozen_linear(x.as_tensor(), w.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(x.as_tensor()).is_some());
    assert!(
        grads.get(w.as_tensor()).is_none(),
        "frozen weight received a gradient"
    );
    // A plain matmul would have computed one: the check above can fail.
    let plain = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
    let grads = plain.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(w.as_tensor()).is_some());
}

#[test]
fn untracked_inputs_build_no_graph() {
    let w = randn(&[5, 6], 12).to_dtype(DType::F32).unwrap();
    let x = randn(&[4, 6], 13).to_dtype(DType::F32).unwrap();
    let y = ops::frozen_linear(&x, &w).unwrap();
    assert!(!y.track_op());
}

#[test]
fn next_token_logprobs_backward() {
    let ids = Tensor::new(&[[1u32, 4, 0, 2], [3, 3, 1, 0]], &Device::Cpu).unwrap();
    check("next_token_logprobs", randn(&[2, 4, 5], 14), |_, x| {
        lora_dpo::train::logprobs::next_token_logprobs(x, &ids)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
    });
}

#[test]
fn next_token_logprobs_equals_log_softmax() {
    let ids = Tensor::new(&[[1u32, 4, 0, 2]], &Device::Cpu).unwrap();
    let x = randn(&[1, 4, 5], 15).to_dtype(DType::F32).unwrap();
    let ours: Vec<f32> = lora_dpo::train::logprobs::next_token_logprobs(&x, &ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let ls = candle_nn::ops::log_softmax(&x, candle_core::D::Minus1).unwrap();
    for (t, id) in [4u32, 0, 2].iter().enumerate() {
        let want = ls
            .get(0)
            .unwrap()
            .get(t)
            .unwrap()
            .get(*id as usize)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((ours[t] - want).abs() < 1e-6);
    }
}

#[test]
fn head_logprobs_backward_in_chunks() {
    // 2 rows × 3 target positions = 6 positions in chunks of 4: one full chunk, one partial.
    let ids = Tensor::new(&[[1u32, 6, 0, 2], [3, 3, 1, 5]], &Device::Cpu).unwrap();
    let head = randn(&[7, 5], 16);
    check("head_logprobs", randn(&[2, 4, 5], 17), |k, x| {
        ops::head_logprobs(k, x, &head, &ids, 4)
            .unwrap()
            .token_logps
    });
}

#[test]
fn head_logprobs_equal_the_unchunked_log_softmax() {
    let ids = Tensor::new(&[[1u32, 6, 0, 2], [3, 3, 1, 5]], &Device::Cpu).unwrap();
    let head = randn(&[7, 5], 18).to_dtype(DType::F32).unwrap();
    let x = randn(&[2, 4, 5], 19).to_dtype(DType::F32).unwrap();
    let logits = ops::matmul_t(&x, &head).unwrap();
    let want = lora_dpo::train::logprobs::next_token_logprobs(&logits, &ids).unwrap();
    let want_means = logits
        .narrow(1, 0, 3)
        .unwrap()
        .mean(candle_core::D::Minus1)
        .unwrap();
    for (chunk, k) in [1, 4, 100].into_iter().flat_map(|c| PATHS.map(|k| (c, k))) {
        let got = ops::head_logprobs(k, &x, &head, &ids, chunk).unwrap();
        assert!(
            max_abs_diff(&got.token_logps, &want) < 1e-5,
            "chunk {chunk}"
        );
        assert!(
            max_abs_diff(&got.mean_logits, &want_means) < 1e-5,
            "chunk {chunk}"
        );
    }
}

/// The head's per-token entropy, top-1 hit and `log Σp²` (DPOTrainer's `entropy`,
/// `mean_token_accuracy` and WPO weights) against their definitions in f64, on every path,
/// with half the targets set to the most likely token so that both hit values occur.
#[test]
fn head_per_token_stats_equal_their_definitions() {
    let head = randn(&[9, 5], 28).to_dtype(DType::F32).unwrap();
    let x = randn(&[2, 5, 5], 29).to_dtype(DType::F32).unwrap();
    let logits: Vec<Vec<Vec<f32>>> = ops::matmul_t(&x, &head).unwrap().to_vec3().unwrap();
    let argmax = |row: &[f32]| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap()
    };
    let mut ids = vec![vec![0u32; 5]; 2];
    for b in 0..2 {
        for t in 0..4 {
            let best = argmax(&logits[b][t]);
            ids[b][t + 1] = if (b + t) % 2 == 0 {
                best as u32
            } else {
                ((best + 3) % 9) as u32
            };
        }
    }
    let ids_t = Tensor::new(ids.clone(), &Device::Cpu).unwrap();
    for (chunk, k) in [1, 3, 100].into_iter().flat_map(|c| PATHS.map(|k| (c, k))) {
        let got = ops::head_logprobs(k, &x, &head, &ids_t, chunk).unwrap();
        let entropy: Vec<Vec<f32>> = got.entropy.to_vec2().unwrap();
        let top1: Vec<Vec<f32>> = got.is_top1.to_vec2().unwrap();
        let lss: Vec<Vec<f32>> = got.log_sum_sq_probs.to_vec2().unwrap();
        for b in 0..2 {
            for t in 0..4 {
                let row: Vec<f64> = logits[b][t].iter().map(|&v| v as f64).collect();
                let max = row.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
                let p: Vec<f64> = row.iter().map(|v| (v - max).exp() / z).collect();
                let h: f64 = -p.iter().map(|q| q * q.ln()).sum::<f64>();
                let sq: f64 = p.iter().map(|q| q * q).sum::<f64>().ln();
                let hit = (argmax(&logits[b][t]) == ids[b][t + 1] as usize) as u8 as f32;
                let at = format!("{k:?} chunk {chunk} ({b}, {t})");
                assert!((entropy[b][t] as f64 - h).abs() < 1e-5, "{at}: entropy");
                assert!((lss[b][t] as f64 - sq).abs() < 1e-5, "{at}: log sum p^2");
                assert_eq!(top1[b][t], hit, "{at}: top-1");
            }
        }
        let hits: f32 = top1.iter().flatten().sum();
        assert_eq!(hits, 4.0, "half the targets are the most likely token");
    }
}

/// Causal mask with the last key of row 1 padded: `[2, 1, 3, 3]`.
fn attention_mask() -> Tensor {
    let neg = -1e9;
    let rows = [[0.0, neg, neg], [0.0, 0.0, neg], [0.0, 0.0, 0.0]];
    let mut v = Vec::new();
    for b in 0..2 {
        for r in rows {
            let mut r = r;
            if b == 1 {
                r[2] = neg;
            }
            v.extend(r);
        }
    }
    Tensor::from_vec(v, (2, 1, 3, 3), &Device::Cpu).unwrap()
}

#[test]
fn attention_backward_grouped_heads() {
    // 4 query heads over 2 kv heads, head_dim 3, 3 positions; each of q, k, v checked.
    let (q, k, v) = (
        randn(&[2, 4, 3, 3], 20),
        randn(&[2, 2, 3, 3], 21),
        randn(&[2, 2, 3, 3], 22),
    );
    let mask = attention_mask();
    check("attention dq", q.clone(), |kn, x| {
        ops::attention(kn, x, &k, &v, &mask, DType::F64).unwrap()
    });
    check("attention dk", k.clone(), |kn, x| {
        ops::attention(kn, &q, x, &v, &mask, DType::F64).unwrap()
    });
    check("attention dv", v.clone(), |kn, x| {
        ops::attention(kn, &q, &k, x, &mask, DType::F64).unwrap()
    });
}

#[test]
fn swiglu_backward() {
    let up = randn(&[2, 3, 4], 23);
    let gate = randn(&[2, 3, 4], 24);
    check("swiglu dgate", gate.clone(), |k, x| {
        ops::swiglu(k, x, &up).unwrap()
    });
    check("swiglu dup", up.clone(), |k, x| {
        ops::swiglu(k, &gate, x).unwrap()
    });
}

#[test]
fn swiglu_equals_silu_times_up() {
    let (gate, up) = (randn(&[5, 7], 25), randn(&[5, 7], 26));
    let want = (gate.silu().unwrap() * &up).unwrap();
    for k in PATHS {
        let got = ops::swiglu(k, &gate, &up).unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-6, "{k}: {diff}");
    }
}
