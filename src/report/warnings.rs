//! What a practitioner wants flagged in a run's curves.

use super::{Record, StageRun};

/// A flagged pattern: a stable `kind` (for tests and styling) and what was seen.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub kind: &'static str,
    pub message: String,
}

/// Logged steps the ln 2 plateau check looks at.
pub const PLATEAU_RECORDS: usize = 5;
/// How close to ln 2 a loss counts as "at ln 2".
pub const PLATEAU_TOLERANCE: f64 = 2e-3;
/// How far (nats per sequence) both log-probs must fall to count as displacement.
pub const DISPLACEMENT_NATS: f64 = 0.5;
/// Share of the run in which train accuracy pinned at 1.0 counts as "early".
pub const EARLY_SHARE: f64 = 0.25;

pub fn check(stage: &StageRun) -> Vec<Warning> {
    let train: Vec<&Record> = stage.records.iter().filter(|r| r.is_train()).collect();
    let mut out = Vec::new();
    non_finite(stage, &mut out);
    ln2_plateau(&train, &mut out);
    likelihood_displacement(&train, &mut out);
    accuracy_pinned(&train, &mut out);
    out
}

fn non_finite(stage: &StageRun, out: &mut Vec<Warning>) {
    let bad: Vec<String> = stage
        .records
        .iter()
        .flat_map(|r| {
            r.values
                .iter()
                .filter(|(_, v)| !v.is_some_and(f64::is_finite))
                .map(move |(k, _)| format!("{k} at step {}", r.step))
        })
        .collect();
    if let Some(first) = bad.first() {
        out.push(Warning {
            kind: "non-finite",
            message: format!(
                "NaN or infinite values ({} in all), first {first}: the run diverged or a \
                 metric had nothing to average",
                bad.len()
            ),
        });
    }
}

fn ln2_plateau(train: &[&Record], out: &mut Vec<Warning>) {
    let losses: Vec<f64> = train
        .iter()
        .filter(|r| r.get("rewards/accuracies").is_some() || r.get("kl").is_some())
        .filter_map(|r| r.get("loss"))
        .take(PLATEAU_RECORDS)
        .collect();
    let ln2 = std::f64::consts::LN_2;
    if losses.len() == PLATEAU_RECORDS
        && losses.iter().all(|l| (l - ln2).abs() <= PLATEAU_TOLERANCE)
    {
        out.push(Warning {
            kind: "ln2-plateau",
            message: format!(
                "the loss stayed at ln 2 = 0.6931 (±{PLATEAU_TOLERANCE}) for the first \
                 {PLATEAU_RECORDS} logged steps: the policy is not moving away from the \
                 reference (learning rate too low, adapter not trained, or beta tiny)"
            ),
        });
    }
}

fn likelihood_displacement(train: &[&Record], out: &mut Vec<Warning>) {
    let series = |key: &str| -> Vec<f64> { train.iter().filter_map(|r| r.get(key)).collect() };
    let (chosen, rejected) = (series("logps/chosen"), series("logps/rejected"));
    let (Some(c0), Some(c1), Some(r0), Some(r1)) = (
        chosen.first(),
        chosen.last(),
        rejected.first(),
        rejected.last(),
    ) else {
        return;
    };
    if c0 - c1 >= DISPLACEMENT_NATS && r0 - r1 >= DISPLACEMENT_NATS {
        out.push(Warning {
            kind: "likelihood-displacement",
            message: format!(
                "log-probs of chosen ({c0:.2} → {c1:.2}) and rejected ({r0:.2} → {r1:.2}) both \
                 fell: the margin grows by pushing both down (likelihood displacement); an SFT \
                 term (loss_type = [\"sigmoid\", \"sft\"]) or a lower learning rate counters it"
            ),
        });
    }
}

fn accuracy_pinned(train: &[&Record], out: &mut Vec<Warning>) {
    let acc: Vec<(usize, f64)> = train
        .iter()
        .filter_map(|r| r.get("rewards/accuracies").map(|a| (r.step, a)))
        .collect();
    let Some(&(last_step, _)) = acc.last() else {
        return;
    };
    let early_end = (last_step as f64 * EARLY_SHARE).ceil() as usize;
    let early: Vec<f64> = acc
        .iter()
        .filter(|(s, _)| *s <= early_end)
        .map(|(_, a)| *a)
        .collect();
    if early.len() >= 2 && early.iter().all(|a| *a >= 1.0) {
        out.push(Warning {
            kind: "accuracy-pinned",
            message: format!(
                "train rewards/accuracies was 1.0 at every logged step up to step {early_end} \
                 (the first {:.0}% of the run): the pairs are too easy or the model memorises \
                 them; check the data and the eval curve",
                EARLY_SHARE * 100.0
            ),
        });
    }
}
