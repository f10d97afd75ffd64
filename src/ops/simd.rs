//! Row primitives of the CPU kernels (max, sums, exp, the softmax backward, SwiGLU), written as
//! independent lanes so that they vectorise, and compiled once more for AVX-512 and for AVX2
//! with the best picked at run time: a portable build otherwise only gets 4-wide SSE2 code,
//! and the chained sums of a plain loop run at one add per four cycles.
//!
//! The f32 exp is Cephes' `expf` polynomial (within 2 ulp of libm on the range used, and 0 below
//! e^-87), branch-free so that it vectorises; f64 (gradient checks only) uses the std exp.

use super::cpu::Real;
use std::mem::MaybeUninit;

const LANES: usize = 16;

/// The element operations the kernels need, per type.
pub trait RowOps: Real {
    /// `(max, sum)` of `xs`.
    fn max_sum(xs: &[Self]) -> (Self, Self);
    /// Adds `bias` to `xs` in place and returns the new max.
    fn add_max(xs: &mut [Self], bias: &[Self]) -> Self;
    /// `xs[i] = exp(xs[i] − shift)` in place; returns the sum.
    fn exp_shifted(xs: &mut [Self], shift: Self) -> Self;
    /// `xs[i] *= s`.
    fn scale(xs: &mut [Self], s: Self);
    /// `Σ a[i]·b[i]`.
    fn dot(a: &[Self], b: &[Self]) -> Self;
    /// The softmax backward of a row: `dp[i] = p[i]·(dp[i] − Σ dp·p)·scale`.
    fn softmax_grad(dp: &mut [Self], p: &[Self], scale: Self);
    /// `out[i] = silu(g[i])·u[i]`.
    fn swiglu(out: &mut [MaybeUninit<Self>], g: &[Self], u: &[Self]);
    /// SwiGLU's backward: `dg[i]`, `du[i]` for the output gradient `d[i]`.
    fn swiglu_grad(
        dg: &mut [MaybeUninit<Self>],
        du: &mut [MaybeUninit<Self>],
        g: &[Self],
        u: &[Self],
        d: &[Self],
    );
}

/// Generates a function that runs `$body` (an `#[inline(always)]` function) compiled for
/// AVX-512, AVX2+FMA or the build's baseline, whichever the CPU has.
macro_rules! dispatch {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn wide($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn narrow($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { wide($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { narrow($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let underflow = x < -87.3;
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = n.mul_add(-C2, n.mul_add(-C1, x));
    // Horner with fused multiply-adds (one instruction each on the AVX2/AVX-512 paths; the
    // portable fallback for CPUs without FMA calls libm for them: slower, same result).
    let p = 1.987_569_1e-4f32.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let p = (p * r).mul_add(r, r) + 1.0;
    // SAFETY: `n` is an integer in [-126, 127] (x clamped above), so the cast is exact; the
    // unchecked cast vectorises where `as` (saturating) does not.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let pow2 = f32::from_bits(((n + 127) as u32) << 23);
    if underflow {
        0.0
    } else {
        p * pow2
    }
}

#[inline(always)]
fn max_sum_body(xs: &[f32]) -> (f32, f32) {
    let (mut max, mut sum) = ([f32::NEG_INFINITY; LANES], [0f32; LANES]);
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            max[i] = if c[i] > max[i] { c[i] } else { max[i] };
            sum[i] += c[i];
        }
    }
    let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
    for i in 0..LANES {
        m = m.max(max[i]);
        s += sum[i];
    }
    for &x in rest {
        m = m.max(x);
        s += x;
    }
    (m, s)
}

#[inline(always)]
fn add_max_body(xs: &mut [f32], bias: &[f32]) -> f32 {
    let mut max = [f32::NEG_INFINITY; LANES];
    let n = xs.len().min(bias.len());
    let (xs, bias) = (&mut xs[..n], &bias[..n]);
    let split = n - n % LANES;
    for (c, b) in xs[..split]
        .chunks_exact_mut(LANES)
        .zip(bias[..split].chunks_exact(LANES))
    {
        for i in 0..LANES {
            c[i] += b[i];
            max[i] = if c[i] > max[i] { c[i] } else { max[i] };
        }
    }
    let mut m = max.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for (x, b) in xs[split..].iter_mut().zip(&bias[split..]) {
        *x += b;
        m = m.max(*x);
    }
    m
}

#[inline(always)]
fn exp_shifted_body(xs: &mut [f32], shift: f32) -> f32 {
    let mut sum = [0f32; LANES];
    let split = xs.len() - xs.len() % LANES;
    for c in xs[..split].chunks_exact_mut(LANES) {
        for i in 0..LANES {
            c[i] = exp_f32(c[i] - shift);
            sum[i] += c[i];
        }
    }
    let mut s: f32 = sum.iter().sum();
    for x in &mut xs[split..] {
        *x = exp_f32(*x - shift);
        s += *x;
    }
    s
}

#[inline(always)]
fn scale_body(xs: &mut [f32], s: f32) {
    for x in xs.iter_mut() {
        *x *= s;
    }
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let split = n - n % LANES;
    for (x, y) in a[..split]
        .chunks_exact(LANES)
        .zip(b[..split].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in a[split..].iter().zip(&b[split..]) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn softmax_grad_body(dp: &mut [f32], p: &[f32], scale: f32) {
    let dot = dot_body(dp, p);
    for (x, p) in dp.iter_mut().zip(p) {
        *x = p * (*x - dot) * scale;
    }
}

#[inline(always)]
fn sigmoid_f32(g: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-g))
}

#[inline(always)]
fn swiglu_body(out: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        o.write(g * sigmoid_f32(g) * u);
    }
}

#[inline(always)]
fn swiglu_grad_body(
    dg: &mut [MaybeUninit<f32>],
    du: &mut [MaybeUninit<f32>],
    g: &[f32],
    u: &[f32],
    d: &[f32],
) {
    for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(d) {
        let s = sigmoid_f32(g);
        dg.write(d * u * s * (1.0 + g * (1.0 - s)));
        du.write(d * g * s);
    }
}

dispatch!(max_sum_f32, max_sum_body, (xs: &[f32]) -> (f32, f32));
dispatch!(add_max_f32, add_max_body, (xs: &mut [f32], bias: &[f32]) -> f32);
dispatch!(exp_shifted_f32, exp_shifted_body, (xs: &mut [f32], shift: f32) -> f32);
dispatch!(scale_f32, scale_body, (xs: &mut [f32], s: f32) -> ());
dispatch!(dot_f32, dot_body, (a: &[f32], b: &[f32]) -> f32);
dispatch!(softmax_grad_f32, softmax_grad_body, (dp: &mut [f32], p: &[f32], scale: f32) -> ());
dispatch!(swiglu_f32, swiglu_body, (out: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) -> ());
dispatch!(
    swiglu_grad_f32,
    swiglu_grad_body,
    (
        dg: &mut [MaybeUninit<f32>],
        du: &mut [MaybeUninit<f32>],
        g: &[f32],
        u: &[f32],
        d: &[f32]
    ) -> ()
);

impl RowOps for f32 {
    fn max_sum(xs: &[f32]) -> (f32, f32) {
        max_sum_f32(xs)
    }
    fn add_max(xs: &mut [f32], bias: &[f32]) -> f32 {
        add_max_f32(xs, bias)
    }
    fn exp_shifted(xs: &mut [f32], shift: f32) -> f32 {
        exp_shifted_f32(xs, shift)
    }
    fn scale(xs: &mut [f32], s: f32) {
        scale_f32(xs, s)
    }
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        dot_f32(a, b)
    }
    fn softmax_grad(dp: &mut [f32], p: &[f32], scale: f32) {
        softmax_grad_f32(dp, p, scale)
    }
    fn swiglu(out: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) {
        swiglu_f32(out, g, u)
    }
    fn swiglu_grad(
        dg: &mut [MaybeUninit<f32>],
        du: &mut [MaybeUninit<f32>],
        g: &[f32],
        u: &[f32],
        d: &[f32],
    ) {
        swiglu_grad_f32(dg, du, g, u, d)
    }
}

/// Plain loops with the std exp: the f64 path of the gradient checks.
impl RowOps for f64 {
    fn max_sum(xs: &[f64]) -> (f64, f64) {
        xs.iter()
            .fold((f64::NEG_INFINITY, 0.0), |(m, s), &x| (m.max(x), s + x))
    }
    fn add_max(xs: &mut [f64], bias: &[f64]) -> f64 {
        let mut m = f64::NEG_INFINITY;
        for (x, b) in xs.iter_mut().zip(bias) {
            *x += b;
            m = m.max(*x);
        }
        m
    }
    fn exp_shifted(xs: &mut [f64], shift: f64) -> f64 {
        let mut s = 0.0;
        for x in xs.iter_mut() {
            *x = (*x - shift).exp();
            s += *x;
        }
        s
    }
    fn scale(xs: &mut [f64], s: f64) {
        xs.iter_mut().for_each(|x| *x *= s);
    }
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }
    fn softmax_grad(dp: &mut [f64], p: &[f64], scale: f64) {
        let dot = Self::dot(dp, p);
        for (x, p) in dp.iter_mut().zip(p) {
            *x = p * (*x - dot) * scale;
        }
    }
    fn swiglu(out: &mut [MaybeUninit<f64>], g: &[f64], u: &[f64]) {
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            o.write(g / (1.0 + (-g).exp()) * u);
        }
    }
    fn swiglu_grad(
        dg: &mut [MaybeUninit<f64>],
        du: &mut [MaybeUninit<f64>],
        g: &[f64],
        u: &[f64],
        d: &[f64],
    ) {
        for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(d) {
            let s = 1.0 / (1.0 + (-g).exp());
            dg.write(d * u * s * (1.0 + g * (1.0 - s)));
            du.write(d * g * s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_2_ulp_of_std_and_zero_below_the_range() {
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (87.0 + 88.0) / 200_000.0;
            let (ours, std) = (exp_f32(x), x.exp());
            worst = worst.max(((ours - std) / std).abs());
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(-1e30), 0.0);
        assert_eq!(exp_f32(f32::MIN), 0.0);
    }

    #[test]
    fn f32_rows_match_the_f64_loops() {
        let xs: Vec<f32> = (0..1037)
            .map(|i| ((i * 7919) % 113) as f32 * 0.05 - 2.0)
            .collect();
        let wide: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        let close = |a: f32, b: f64| ((a as f64 - b) / b.abs().max(1.0)).abs() < 1e-5;
        let ((m32, s32), (m64, s64)) = (f32::max_sum(&xs), f64::max_sum(&wide));
        assert!(close(m32, m64) && close(s32, s64));
        let (mut e32, mut e64) = (xs.clone(), wide.clone());
        assert!(close(
            f32::exp_shifted(&mut e32, 1.5),
            f64::exp_shifted(&mut e64, 1.5)
        ));
        assert!(e32.iter().zip(&e64).all(|(a, b)| close(*a, *b)));
        assert!(close(f32::dot(&xs, &e32), f64::dot(&wide, &e64)));
        let mut o32 = vec![MaybeUninit::<f32>::uninit(); xs.len()];
        let mut o64 = vec![MaybeUninit::<f64>::uninit(); xs.len()];
        f32::swiglu(&mut o32, &xs, &e32);
        f64::swiglu(&mut o64, &wide, &e64);
        // SAFETY: swiglu wrote every element.
        let both = unsafe {
            o32.iter()
                .zip(&o64)
                .map(|(a, b)| (a.assume_init(), b.assume_init()))
        };
        assert!(both.collect::<Vec<_>>().iter().all(|(a, b)| close(*a, *b)));
    }
}
