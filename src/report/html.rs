//! The page: inline CSS and SVG only, so it opens offline and prints as it shows.

use super::plot::{escape, line_chart, number};
use super::{stage_plots, warnings, Run, StageRun};
use std::fmt::Write;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1180px;margin:1.5em auto;\
padding:0 1em;color:#222}h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}\
.plots{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;break-inside:avoid}\
figcaption{font-size:.9em;font-weight:600}table{border-collapse:collapse;font-size:.9em}\
td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f3f3f3}\
td:first-child,th:first-child{text-align:left}.warning{color:#8a3b00}\
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}\
@media print{.plots{display:block}figure{display:inline-block}}";

pub fn page(run: &Run) -> String {
    let mut h = String::new();
    let title = format!("lora-dpo run {}", run.dir.display());
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body><h1>{}</h1>",
        escape(&title),
        escape(&title)
    );
    for stage in &run.stages {
        section(&mut h, stage);
    }
    if let Some(config) = &run.config {
        let _ = write!(
            h,
            "<h2>Config</h2><pre id=\"config\">{}</pre>",
            escape(config)
        );
    }
    h.push_str("</body></html>\n");
    h
}

fn section(h: &mut String, stage: &StageRun) {
    let _ = write!(
        h,
        "<section class=\"stage\" data-stage=\"{0}\"><h2>{0}</h2>",
        escape(&stage.name)
    );
    let found = warnings::check(stage);
    if found.is_empty() {
        h.push_str("<p class=\"no-warnings\">No warnings.</p>");
    } else {
        h.push_str("<ul class=\"warnings\">");
        for w in &found {
            let _ = write!(
                h,
                "<li class=\"warning\" data-warning=\"{}\">{}</li>",
                w.kind,
                escape(&w.message)
            );
        }
        h.push_str("</ul>");
    }
    h.push_str("<div class=\"plots\">");
    for (title, series) in stage_plots(stage) {
        if let Some(svg) = line_chart(&title, &series) {
            let _ = write!(
                h,
                "<figure><figcaption>{}</figcaption>{svg}</figure>",
                escape(&title)
            );
        }
    }
    h.push_str("</div>");
    eval_table(h, stage);
    h.push_str("<h3>Checkpoints</h3><ul class=\"checkpoints\">");
    for c in &stage.checkpoints {
        let _ = write!(h, "<li>{}</li>", escape(c));
    }
    if stage.has_adapter {
        h.push_str("<li>adapter (final)</li>");
    }
    if stage.checkpoints.is_empty() && !stage.has_adapter {
        h.push_str("<li>none</li>");
    }
    h.push_str("</ul></section>");
}

/// The last evaluation of the stage, against the first (the baseline before any update).
fn eval_table(h: &mut String, stage: &StageRun) {
    let evals: Vec<_> = stage.records.iter().filter(|r| !r.is_train()).collect();
    let (Some(first), Some(last)) = (evals.first(), evals.last()) else {
        return;
    };
    let _ = write!(
        h,
        "<h3>Final evaluation</h3><table class=\"eval\"><tr><th>metric</th>\
         <th>step {}</th><th>step {}</th></tr>",
        first.step, last.step
    );
    for (k, v) in &last.values {
        let cell = |v: Option<f64>| v.map_or("NaN/inf".to_string(), number);
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(k),
            first.values.get(k).map_or("".into(), |b| cell(*b)),
            cell(*v)
        );
    }
    h.push_str("</table>");
}
