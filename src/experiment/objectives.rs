//! ARM vs CARD vs MDLM vs BD3LM at the same model size and token budget.

use super::runner::Runner;
use super::stats::{fmt_mean_sd, mean_sd};
use super::variants::{
    col, header, heldout_cells, heldout_patterns, lambada, lambada_bpb, of, run_variants,
    write_comparison, zs,
};
use super::write_up::{Report, Table};
use crate::config::{Choice, ObjectiveKind};
use anyhow::Result;

pub fn run(runner: &mut Runner) -> Result<()> {
    let kinds: Vec<ObjectiveKind> = ObjectiveKind::ALL.iter().map(|c| c.0).collect();
    let variants: Vec<(String, Vec<String>)> = kinds
        .iter()
        .map(|k| {
            (
                k.name().to_string(),
                vec![format!("train.objective=\"{}\"", k.name())],
            )
        })
        .collect();
    let results = run_variants(runner, &variants, 600)?;
    let names: Vec<String> = variants.iter().map(|v| v.0.clone()).collect();
    let card_tps = mean_sd(&col(&of(&results, "card"), |r| r.tokens_per_s)).0;
    let patterns = heldout_patterns(&results);
    let rows = names
        .iter()
        .map(|v| {
            let runs = of(&results, v);
            let tps = mean_sd(&col(&runs, |r| r.tokens_per_s)).0;
            let mut row = vec![v.clone(), fmt_mean_sd(&col(&runs, |r| r.bits_per_byte), 4)];
            row.extend(heldout_cells(&runs, &patterns));
            row.extend([
                zs(&runs),
                lambada(&runs),
                lambada_bpb(&runs),
                format!("{tps:.0}"),
                format!("{:.2}", tps / card_tps),
            ]);
            row
        })
        .collect();
    let report = Report {
        title: "ARM vs CARD (vs MDLM vs BD3LM) at the same model size and token budget".into(),
        intro: vec!["Every objective trains the same backbone with the same trainer, data, steps and batch. Validation bits per byte is the exact likelihood for ARM and CARD and an upper bound (the NELBO) for MDLM and BD3LM, so a diffusion baseline's true likelihood can only be better than its column says; the same holds on the held-out sources. Every score is of the weight average (EMA; the raw weights' validation score is in results.csv). For MDLM and BD3LM the multiple-choice scores use the ELBO and LAMBADA accuracy is not defined (–). The paper: CARD close to ARM in quality (PPL 21.54 vs 21.12), better than MDLM/BD3LM, and ~3× faster to train than BD3LM.".into()],
        tables: vec![Table {
            caption: "Quality and training throughput".into(),
            header: header("objective", &patterns, &["zero-shot avg ↑", "LAMBADA acc ↑", "LAMBADA target bits/byte ↓", "train tokens/s (median)", "throughput vs CARD"]),
            rows,
        }],
        plots: Vec::new(),
        findings: Vec::new(),
        config: String::new(),
    };
    write_comparison(
        runner,
        &results,
        &names,
        "card",
        "Objectives: validation loss",
        report,
    )
}
