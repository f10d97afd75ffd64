//! Row primitives of the CPU kernels (max, sums, exp, the softmax backward, SwiGLU), written as
//! independent lanes so that they vectorise, and compiled once more for AVX-512 and for AVX2
//! with the best picked at run time: a portable build otherwise only gets 4-wide SSE2 code,
//! and the chained sums of a plain loop run at one add per four cycles.
//!
//! The f32 exp is Cephes' `expf` polynomial (within 2 ulp of libm on the range used, and 0 below
//! e^-87), branch-free so that it vectorises. The bodies are generic: f64 (the gradient checks)
//! runs the same code with the std exp.

use super::Real;
use num_traits::Float;
use std::mem::MaybeUninit;

const LANES: usize = 16;

/// The element operations the kernels need. The provided methods are the portable bodies;
/// f32 overrides them with the versions compiled for the CPU's vector width.
pub trait RowOps: Real {
    /// `e^x`.
    fn exp_lane(x: Self) -> Self;
    /// `(max, sum)` of `xs`.
    fn max_sum(xs: &[Self]) -> (Self, Self) {
        max_sum_body(xs)
    }
    /// Adds `bias` to `xs` in place and returns the new max.
    fn add_max(xs: &mut [Self], bias: &[Self]) -> Self {
        add_max_body(xs, bias)
    }
    /// `xs[i] = exp(xs[i] − shift)` in place; returns the sum.
    fn exp_shifted(xs: &mut [Self], shift: Self) -> Self {
        exp_shifted_body(xs, shift)
    }
    /// [`RowOps::exp_shifted`], also returning `Σ e·(x − shift)` and `Σ e²` of the new
    /// values `e` (a row's entropy and `Σ p²`, in the same sweep).
    fn exp_shifted_moments(xs: &mut [Self], shift: Self) -> Moments<Self> {
        exp_shifted_moments_body(xs, shift)
    }
    /// `xs[i] *= s`.
    fn scale(xs: &mut [Self], s: Self) {
        scale_body(xs, s)
    }
    /// The softmax backward of a row: `dp[i] = p[i]·(dp[i] − Σ dp·p)·scale`.
    fn softmax_grad(dp: &mut [Self], p: &[Self], scale: Self) {
        softmax_grad_body(dp, p, scale)
    }
    /// `out[i] = silu(g[i])·u[i]`.
    fn swiglu(out: &mut [MaybeUninit<Self>], g: &[Self], u: &[Self]) {
        swiglu_body(out, g, u)
    }
    /// SwiGLU's backward: `dg[i]`, `du[i]` for the output gradient `d[i]`.
    fn swiglu_grad(
        dg: &mut [MaybeUninit<Self>],
        du: &mut [MaybeUninit<Self>],
        g: &[Self],
        u: &[Self],
        d: &[Self],
    ) {
        swiglu_grad_body(dg, du, g, u, d)
    }
}

/// Generates a function that runs `$body` (an `#[inline(always)]` function of f32) compiled for
/// AVX-512, AVX2+FMA or the build's baseline, whichever the CPU has.
macro_rules! dispatch {
    ($name:ident, $body:expr, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn wide($($arg: $ty),*) -> $ret {
                    ($body)($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn narrow($($arg: $ty),*) -> $ret {
                    ($body)($($arg),*)
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
            ($body)($($arg),*)
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
fn max_sum_body<T: RowOps>(xs: &[T]) -> (T, T) {
    let (mut max, mut sum) = ([T::neg_infinity(); LANES], [T::zero(); LANES]);
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            max[i] = if c[i] > max[i] { c[i] } else { max[i] };
            sum[i] += c[i];
        }
    }
    let (mut m, mut s) = (T::neg_infinity(), T::zero());
    for i in 0..LANES {
        m = Float::max(m, max[i]);
        s += sum[i];
    }
    for &x in rest {
        m = Float::max(m, x);
        s += x;
    }
    (m, s)
}

#[inline(always)]
fn add_max_body<T: RowOps>(xs: &mut [T], bias: &[T]) -> T {
    let mut max = [T::neg_infinity(); LANES];
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
    let mut m = max.iter().fold(T::neg_infinity(), |a, &b| Float::max(a, b));
    for (x, &b) in xs[split..].iter_mut().zip(&bias[split..]) {
        *x += b;
        m = Float::max(m, *x);
    }
    m
}

/// What [`RowOps::exp_shifted_moments`] sums over a row: `Σ e`, `Σ e·(x − shift)`, `Σ e²`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments<T> {
    pub sum: T,
    pub weighted_shift: T,
    pub sum_sq: T,
}

#[inline(always)]
fn exp_shifted_moments_body<T: RowOps>(xs: &mut [T], shift: T) -> Moments<T> {
    let (mut sum, mut first, mut sq) = ([T::zero(); LANES], [T::zero(); LANES], [T::zero(); LANES]);
    let split = xs.len() - xs.len() % LANES;
    for c in xs[..split].chunks_exact_mut(LANES) {
        for i in 0..LANES {
            let d = c[i] - shift;
            let e = T::exp_lane(d);
            c[i] = e;
            sum[i] += e;
            first[i] += e * d;
            sq[i] += e * e;
        }
    }
    let fold = |v: [T; LANES]| v.iter().fold(T::zero(), |a, &b| a + b);
    let mut out = Moments {
        sum: fold(sum),
        weighted_shift: fold(first),
        sum_sq: fold(sq),
    };
    for x in &mut xs[split..] {
        let d = *x - shift;
        let e = T::exp_lane(d);
        *x = e;
        out.sum += e;
        out.weighted_shift += e * d;
        out.sum_sq += e * e;
    }
    out
}

#[inline(always)]
fn exp_shifted_body<T: RowOps>(xs: &mut [T], shift: T) -> T {
    let mut sum = [T::zero(); LANES];
    let split = xs.len() - xs.len() % LANES;
    for c in xs[..split].chunks_exact_mut(LANES) {
        for i in 0..LANES {
            c[i] = T::exp_lane(c[i] - shift);
            sum[i] += c[i];
        }
    }
    let mut s = sum.iter().fold(T::zero(), |a, &b| a + b);
    for x in &mut xs[split..] {
        *x = T::exp_lane(*x - shift);
        s += *x;
    }
    s
}

#[inline(always)]
fn scale_body<T: RowOps>(xs: &mut [T], s: T) {
    for x in xs.iter_mut() {
        *x *= s;
    }
}

/// `Σ a[i]·b[i]`.
#[inline(always)]
fn dot_body<T: RowOps>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::zero(); LANES];
    let split = n - n % LANES;
    for (x, y) in a[..split]
        .chunks_exact(LANES)
        .zip(b[..split].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().fold(T::zero(), |a, &b| a + b);
    for (&x, &y) in a[split..].iter().zip(&b[split..]) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn softmax_grad_body<T: RowOps>(dp: &mut [T], p: &[T], scale: T) {
    let dot = dot_body(dp, p);
    for (x, &p) in dp.iter_mut().zip(p) {
        *x = p * (*x - dot) * scale;
    }
}

#[inline(always)]
fn sigmoid<T: RowOps>(g: T) -> T {
    T::one() / (T::one() + T::exp_lane(-g))
}

#[inline(always)]
fn swiglu_body<T: RowOps>(out: &mut [MaybeUninit<T>], g: &[T], u: &[T]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        o.write(g * sigmoid(g) * u);
    }
}

#[inline(always)]
fn swiglu_grad_body<T: RowOps>(
    dg: &mut [MaybeUninit<T>],
    du: &mut [MaybeUninit<T>],
    g: &[T],
    u: &[T],
    d: &[T],
) {
    for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(d) {
        let s = sigmoid(g);
        dg.write(d * u * s * (T::one() + g * (T::one() - s)));
        du.write(d * g * s);
    }
}

/// `out[r·m + i] = w_r · x_i` for the rows `w_r` of a block of `w` (each `k` long) and the `m`
/// rows of `x`: each row of `w` is read once for all of `x`'s rows.
#[inline(always)]
fn dots_body(x: &[f32], m: usize, w: &[f32], out: &mut [MaybeUninit<f32>]) {
    let k = x.len() / m;
    for (r, wr) in w.chunks_exact(k).enumerate() {
        for (i, xi) in x.chunks_exact(k).enumerate() {
            out[r * m + i].write(dot_body(xi, wr));
        }
    }
}

dispatch!(
    dots_f32,
    dots_body,
    (x: &[f32], m: usize, w: &[f32], out: &mut [MaybeUninit<f32>]) -> ()
);

/// [`dots_body`] compiled for the CPU's vector width.
pub fn dots(x: &[f32], m: usize, w: &[f32], out: &mut [MaybeUninit<f32>]) {
    dots_f32(x, m, w, out)
}

dispatch!(max_sum_f32, max_sum_body::<f32>, (xs: &[f32]) -> (f32, f32));
dispatch!(add_max_f32, add_max_body::<f32>, (xs: &mut [f32], bias: &[f32]) -> f32);
dispatch!(exp_shifted_f32, exp_shifted_body::<f32>, (xs: &mut [f32], shift: f32) -> f32);
dispatch!(
    exp_shifted_moments_f32,
    exp_shifted_moments_body::<f32>,
    (xs: &mut [f32], shift: f32) -> Moments<f32>
);
dispatch!(scale_f32, scale_body::<f32>, (xs: &mut [f32], s: f32) -> ());
dispatch!(
    softmax_grad_f32,
    softmax_grad_body::<f32>,
    (dp: &mut [f32], p: &[f32], scale: f32) -> ()
);
dispatch!(
    swiglu_f32,
    swiglu_body::<f32>,
    (out: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32]) -> ()
);
dispatch!(
    swiglu_grad_f32,
    swiglu_grad_body::<f32>,
    (
        dg: &mut [MaybeUninit<f32>],
        du: &mut [MaybeUninit<f32>],
        g: &[f32],
        u: &[f32],
        d: &[f32]
    ) -> ()
);

impl RowOps for f32 {
    fn exp_lane(x: f32) -> f32 {
        exp_f32(x)
    }
    fn max_sum(xs: &[f32]) -> (f32, f32) {
        max_sum_f32(xs)
    }
    fn add_max(xs: &mut [f32], bias: &[f32]) -> f32 {
        add_max_f32(xs, bias)
    }
    fn exp_shifted(xs: &mut [f32], shift: f32) -> f32 {
        exp_shifted_f32(xs, shift)
    }
    fn exp_shifted_moments(xs: &mut [f32], shift: f32) -> Moments<f32> {
        exp_shifted_moments_f32(xs, shift)
    }
    fn scale(xs: &mut [f32], s: f32) {
        scale_f32(xs, s)
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

/// The portable bodies with the std exp: the path of the f64 gradient checks.
impl RowOps for f64 {
    fn exp_lane(x: f64) -> f64 {
        x.exp()
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
        assert!(close(dot_body(&xs, &e32), dot_body(&wide, &e64)));
        let (mut m32, mut m64) = (xs.clone(), wide.clone());
        let (a, b) = (
            f32::exp_shifted_moments(&mut m32, 1.5),
            f64::exp_shifted_moments(&mut m64, 1.5),
        );
        assert_eq!(m32, e32);
        let naive = |f: fn(f64) -> f64| wide.iter().map(|&x| f(x)).sum::<f64>();
        assert!(close(a.sum, naive(|x| (x - 1.5).exp())) && close(a.sum, b.sum));
        assert!(close(
            a.weighted_shift,
            naive(|x| (x - 1.5).exp() * (x - 1.5))
        ));
        assert!(close(a.sum_sq, naive(|x| (2.0 * (x - 1.5)).exp())));
        assert!(close(a.sum_sq, b.sum_sq));
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
