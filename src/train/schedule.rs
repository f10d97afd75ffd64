//! Learning-rate schedules, identical to transformers' `get_scheduler`.

/// `lr_scheduler_type`, with transformers' names.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Schedule {
    #[default]
    Linear,
    Cosine,
    Constant,
    ConstantWithWarmup,
}

impl crate::choice::Choice for Schedule {
    const CHOICES: &'static [(Self, &'static [&'static str])] = &[
        (Schedule::Linear, &["linear"]),
        (Schedule::Cosine, &["cosine"]),
        (Schedule::Constant, &["constant"]),
        (Schedule::ConstantWithWarmup, &["constant_with_warmup"]),
    ];
}
crate::choice::choice_impls!(Schedule);

/// The multiplier of the base learning rate at optimizer step `step` (0-based), as
/// transformers' `LambdaLR` computes it.
pub fn lr_factor(schedule: Schedule, step: usize, warmup: usize, total: usize) -> f64 {
    let (step, warmup, total) = (step as f64, warmup as f64, total as f64);
    let warming = step < warmup;
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::ConstantWithWarmup if warming => step / warmup.max(1.0),
        Schedule::ConstantWithWarmup => 1.0,
        Schedule::Linear if warming => step / warmup.max(1.0),
        Schedule::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
        Schedule::Cosine if warming => step / warmup.max(1.0),
        Schedule::Cosine => {
            let progress = (step - warmup) / (total - warmup).max(1.0);
            // num_cycles = 0.5: one half-cosine from 1 to 0.
            (0.5 * (1.0 + (std::f64::consts::PI * 2.0 * 0.5 * progress).cos())).max(0.0)
        }
    }
}

/// Warm-up steps: `warmup_steps` when set, else `ceil(warmup_ratio · total)` (transformers).
pub fn warmup_steps(warmup_steps: usize, warmup_ratio: f64, total: usize) -> usize {
    if warmup_steps > 0 {
        warmup_steps
    } else {
        (warmup_ratio * total as f64).ceil() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by transformers 5.23 `get_scheduler(name, opt, num_warmup_steps=3,
    /// num_training_steps=10)` for steps 0..=10 (`scheduler.get_last_lr()` with lr 1).
    #[test]
    fn matches_transformers() {
        let expect: [(Schedule, [f64; 11]); 4] = [
            (
                Schedule::Linear,
                [
                    0.0,
                    1. / 3.,
                    2. / 3.,
                    1.0,
                    6. / 7.,
                    5. / 7.,
                    4. / 7.,
                    3. / 7.,
                    2. / 7.,
                    1. / 7.,
                    0.0,
                ],
            ),
            (
                Schedule::Cosine,
                [
                    0.0,
                    1. / 3.,
                    2. / 3.,
                    1.0,
                    0.9504844339512095,
                    0.8117449009293668,
                    0.6112604669781572,
                    0.38873953302184283,
                    0.18825509907063326,
                    0.04951556604879048,
                    0.0,
                ],
            ),
            (Schedule::Constant, [1.0; 11]),
            (
                Schedule::ConstantWithWarmup,
                [
                    0.0,
                    1. / 3.,
                    2. / 3.,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                ],
            ),
        ];
        for (s, values) in expect {
            for (step, v) in values.iter().enumerate() {
                let ours = lr_factor(s, step, 3, 10);
                assert!((ours - v).abs() < 1e-12, "{s:?} step {step}: {ours} vs {v}");
            }
        }
    }
}
