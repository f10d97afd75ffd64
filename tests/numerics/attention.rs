//! Grouped attention (the packed DPO layout): on both paths (the CPU kernel reading
//! `[b, t, heads, d]` views in place, and the generic path of GPUs and bf16), attention over all
//! groups in one call gives, group by group, what attention over each group alone gives; and the
//! paths agree with each other.

use crate::common;

use candle_core::{DType, Device, Tensor, D};
use common::{max_abs_diff, randn};
use lora_dpo::ops::{self, Group, Kernels};

const PATHS: [Kernels; 2] = [Kernels::Auto, Kernels::Generic];

/// A causal bias `[1, 1, len, len]`.
fn causal(len: usize) -> Tensor {
    let v: Vec<f32> = (0..len * len)
        .map(|i| if i % len <= i / len { 0.0 } else { f32::MIN })
        .collect();
    Tensor::from_vec(v, (1, 1, len, len), &Device::Cpu).unwrap()
}

struct Case {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    grad: Tensor,
    spans: Vec<(usize, usize)>,
    biases: Vec<Tensor>,
}

/// 2 kv heads shared by 6 query heads, head_dim 8, three groups over 17 positions; q, k, v in the
/// projections' layout [1, t, heads, d] seen as [1, heads, t, d].
fn case(dtype: DType) -> Case {
    let t = |shape: &[usize], seed| randn(shape, seed).to_dtype(dtype).unwrap();
    let spans = vec![(0, 7), (7, 4), (11, 6)];
    Case {
        q: t(&[1, 17, 6, 8], 1).transpose(1, 2).unwrap(),
        k: t(&[1, 17, 2, 8], 2).transpose(1, 2).unwrap(),
        v: t(&[1, 17, 2, 8], 3).transpose(1, 2).unwrap(),
        grad: t(&[1, 17, 48], 4),
        biases: spans.iter().map(|&(_, l)| causal(l)).collect(),
        spans,
    }
}

fn groups(c: &Case) -> Vec<Group<'_>> {
    c.spans
        .iter()
        .zip(&c.biases)
        .map(|(&(start, len), bias)| Group { start, len, bias })
        .collect()
}

#[test]
fn groups_in_one_call_equal_each_group_alone() {
    let c = case(DType::F64);
    for kn in PATHS {
        let (out, probs) =
            ops::grouped_attention_forward(kn, &c.q, &c.k, &c.v, &groups(&c), DType::F64).unwrap();
        let (dq, dk, dv) =
            ops::grouped_attention_backward(kn, &c.q, &c.k, &c.v, &groups(&c), &probs, &c.grad)
                .unwrap();
        for (&(start, len), bias) in c.spans.iter().zip(&c.biases) {
            let part = |x: &Tensor| x.narrow(2, start, len).unwrap().contiguous().unwrap();
            let (q, k, v) = (part(&c.q), part(&c.k), part(&c.v));
            let (o, p) = ops::attention_forward(kn, &q, &k, &v, bias, DType::F64).unwrap();
            let g = c.grad.narrow(1, start, len).unwrap();
            let (gq, gk, gv) = ops::attention_backward(kn, &q, &k, &v, &p, &g).unwrap();
            let f32_of = |x: &Tensor| x.to_dtype(DType::F32).unwrap();
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let d = max_abs_diff(&f32_of(a), &f32_of(b));
                assert!(d < 1e-6, "{kn}, group at {start}: {what} differs by {d}");
            };
            close(&out.narrow(1, start, len).unwrap(), &o, "output");
            close(&dq.narrow(2, start, len).unwrap(), &gq, "dq");
            close(&dk.narrow(2, start, len).unwrap(), &gk, "dk");
            close(&dv.narrow(2, start, len).unwrap(), &gv, "dv");
        }
    }
}

/// Output and gradients of grouped attention on `c` run by `kernels` in `dtype`.
fn run(kernels: Kernels, c: &Case, dtype: DType) -> [Tensor; 4] {
    let (o, p) =
        ops::grouped_attention_forward(kernels, &c.q, &c.k, &c.v, &groups(c), dtype).unwrap();
    let (dq, dk, dv) =
        ops::grouped_attention_backward(kernels, &c.q, &c.k, &c.v, &groups(c), &p, &c.grad)
            .unwrap();
    [o, dq, dk, dv]
}

#[test]
fn the_cpu_kernel_and_the_generic_path_agree() {
    // f32: the same arithmetic in another order (tolerance 1e-5 of the largest value); bf16
    // (generic only) against the f32 kernel: bf16's 8-bit mantissa (3e-2).
    let (c32, c16) = (case(DType::F32), case(DType::BF16));
    let kernel = run(Kernels::Auto, &c32, DType::F32);
    let generic = run(Kernels::Generic, &c32, DType::F32);
    let bf16 = run(Kernels::Auto, &c16, DType::BF16);
    let rel = |a: &Tensor, b: &Tensor| {
        let b = b.to_dtype(DType::F32).unwrap();
        let scale = a
            .abs()
            .unwrap()
            .max_keepdim(D::Minus1)
            .unwrap()
            .max_all()
            .unwrap();
        max_abs_diff(a, &b) / scale.to_scalar::<f32>().unwrap()
    };
    for (i, name) in ["output", "dq", "dk", "dv"].iter().enumerate() {
        let r = rel(&kernel[i], &generic[i]);
        assert!(r < 1e-5, "generic f32 {name}: {r} of the largest value");
        let r = rel(&kernel[i], &bf16[i]);
        assert!(r < 3e-2, "bf16 {name}: {r} of the largest value");
    }
}

#[test]
fn groups_must_tile_the_sequence() {
    let c = case(DType::F32);
    let mut gs = groups(&c);
    gs[1].start = 8;
    for kn in PATHS {
        let err =
            ops::grouped_attention_forward(kn, &c.q, &c.k, &c.v, &gs, DType::F32).unwrap_err();
        assert!(err.to_string().contains("tile"), "{kn}: {err}");
    }
}

#[test]
fn mismatched_shapes_are_refused_before_the_kernels_run() {
    let c = case(DType::F32);
    let short = c.k.narrow(2, 0, 10).unwrap();
    for kn in PATHS {
        let err = ops::grouped_attention_forward(kn, &c.q, &short, &c.v, &groups(&c), DType::F32);
        assert!(
            err.is_err(),
            "{kn}: k of 10 positions for q of 17 was accepted"
        );
    }
}
