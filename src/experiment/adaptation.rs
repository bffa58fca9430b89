//! AR → CARD adaptation of a pretrained model: continue training SmolLM2-135M (or `--from`
//! any ARM/CARD checkpoint) with the CARD objective on our corpus, then compare it with the
//! model it started from: held-out bits per byte under AR scoring, and AR, threshold decoding
//! and the lossless verifier side by side. Every stage is kept and reused when rerun: the
//! corpus re-tokenized for the model, the base's evaluation, the run (which resumes), and
//! each model's benchmark.

use super::bench_cache::{bench_once, csv_rows, find, pareto, table, tag, CSV_HEADER};
use super::plot::{plot, Series};
use super::runner::{RunSpec, Runner};
use super::runs::RunResult;
use super::write_up::{write, Report, Table};
use crate::bench::decode::DecodeBench;
use crate::bench::{DecodePlan, Lengths};
use crate::checkpoint::{self, Precision};
use crate::data::{self, Prepared, TextTokenizer};
use crate::decode::{CardDecoder, DecoderSpec, VerifyDecoder};
use crate::eval::report::{evaluate, EvalOptions};
use crate::runtime::device as default_device;
use crate::runtime::fsutil::write_atomic;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Training steps on a CPU: 200 × 4 × 256 = 204,800 tokens.
const STEPS: usize = 200;

/// The recipe's settings; `--set` comes after them, so a GPU run can raise the batch.
const RECIPE: [&str; 5] = [
    "train.objective=\"card\"",
    "train.batch_size=4",
    // WeDLM's auxiliary AR loss: a quarter of each batch stays clean (t = 0).
    "noise.ar_fraction=0.25",
    // A short run from good weights: an EMA would mostly hold the base model.
    "train.ema=false",
    "train.eval_batches=8",
];

pub const NO_BASE: &str =
    "no pretrained model: run `card data fetch --model smollm2` first, or give --from CHECKPOINT";

/// The model to adapt: `--from`, else the fetched SmolLM2; refused unless a causal LM.
pub fn base(opts: &super::options::ExpOptions) -> Result<PathBuf> {
    let base = match &opts.from {
        Some(p) => p.clone(),
        None => super::runner::external_judge().ok_or_else(|| anyhow!(NO_BASE))?,
    };
    let objective = checkpoint::saved_config(&base)?.train.objective;
    if !objective.is_causal() {
        bail!(
            "adaptation starts from a causal LM (ARM or CARD); {} is {}",
            base.display(),
            objective.name()
        );
    }
    Ok(base)
}

/// Where the fetched corpus is cleaned (`card data fetch`).
const FETCHED: &str = "data/clean";

/// The measured decoders: threshold decoding at three τ, the verifier at K = 1 and 2.
fn decoders() -> Vec<DecoderSpec> {
    let card = |tau| {
        DecoderSpec::Card(CardDecoder {
            block_size: 4,
            step_limit: 4,
            threshold: tau,
            ..CardDecoder::default()
        })
    };
    vec![
        card(0.9),
        card(0.7),
        card(0.5),
        DecoderSpec::Verify(VerifyDecoder::masks(1)),
        DecoderSpec::Verify(VerifyDecoder::masks(2)),
    ]
}

/// The base model's held-out score, kept with the checkpoint and corpus it measured.
#[derive(Serialize, Deserialize)]
struct BaseEval {
    model: String,
    val_loss: f64,
    bits_per_byte: f64,
}

pub fn run(runner: &mut Runner) -> Result<()> {
    runner.opts.seeds.truncate(1);
    let base = base(&runner.opts)?;
    // Only its tokenizer is needed here (to re-tokenize the corpus), not its weights.
    let tokenizer = TextTokenizer::from_file(&checkpoint::resolve(&base)?.join("tokenizer.json"))?;
    runner.opts.preset = base.display().to_string();
    let out = runner.opts.out.clone();
    let user_data = runner.opts.sets.iter().any(|s| s.starts_with("data.path"));
    let corpus = if user_data {
        None
    } else {
        corpus_for(&tokenizer, &out.join("data"))?
    };
    let mut sets: Vec<String> = RECIPE.iter().map(|s| s.to_string()).collect();
    if let Some(dir) = &corpus {
        sets.push(format!("data.path={:?}", dir.display().to_string()));
    }
    sets.extend(runner.opts.sets.iter().cloned());
    let spec = RunSpec {
        variant: "card".into(),
        sets,
        seed: runner.opts.seeds()[0],
        steps: runner.opts.steps(STEPS),
        init: Some(base.clone()),
        zero_shot: false,
    };
    let cfg = runner.config(&spec)?;
    let data_path = (!cfg.data.path.is_empty()).then(|| PathBuf::from(&cfg.data.path));
    let base_eval = base_eval(runner, &base, data_path.as_deref())?;
    let adapted = runner.run(&spec)?;
    let judge = super::runner::external_judge().unwrap_or_else(|| base.clone());
    let smoke = runner.opts.smoke;
    let plan = |model: &Path| DecodePlan {
        // Both models as f32 matrices, so tokens/s compare across them.
        precision: Precision::F32,
        judge: Some(judge.clone()),
        sets: ["prose", "probes"].map(String::from).to_vec(),
        lengths: Lengths {
            tokens: vec![if smoke { 8 } else { 64 }],
            at_most_half_context: true,
            fit: true,
        },
        batches: vec![1],
        decoders: decoders(),
        rounds: 1,
        ..DecodePlan::new(model.to_path_buf())
    };
    let before = bench_once(&out.join("bench-base.json"), &plan(&base))?;
    let adapted_dir = PathBuf::from(&adapted.checkpoint);
    let after = bench_once(&out.join("bench-adapted.json"), &plan(&adapted_dir))?;
    let corpus_words = match &data_path {
        Some(p) => format!("the prepared corpus {}", p.display()),
        None => {
            "the embedded corpus (Alice in Wonderland; run `card data fetch` for the larger one)"
                .into()
        }
    };
    report(
        runner,
        &Inputs {
            base: &base,
            judge: &judge,
            corpus: corpus_words,
            base_eval: &base_eval,
            adapted: &adapted,
            cfg: &cfg,
            before: &before,
            after: &after,
        },
    )
}

/// The fetched corpus re-tokenized for the model in `dir` (kept; redone only for another
/// tokenizer), or None when there is no fetched corpus (the embedded one is used).
fn corpus_for(tok: &TextTokenizer, dir: &Path) -> Result<Option<PathBuf>> {
    if data::prepare::is_prepared_dir(dir) {
        if let Ok(p) = Prepared::load(dir) {
            if p.tokenizer.hash() == tok.hash() {
                return Ok(Some(dir.to_path_buf()));
            }
        }
    }
    let clean = Path::new(FETCHED);
    if !clean.is_dir() {
        return Ok(None);
    }
    eprintln!(
        "  tokenizing {} for the model -> {} ...",
        clean.display(),
        dir.display()
    );
    let docs = data::read_documents(&[clean.to_path_buf()])?;
    // The split of `card data prepare`'s defaults, so the held-out documents are the same.
    let prepared = data::prepare(docs, Some(tok.clone()), tok.vocab_size(), 0.05, 0)
        .context("cannot prepare the corpus")?;
    prepared.save(dir)?;
    Ok(Some(dir.to_path_buf()))
}

/// The base model's held-out score on the run's corpus, measured once.
fn base_eval(runner: &Runner, base: &Path, data: Option<&Path>) -> Result<BaseEval> {
    let path = runner.opts.out.join("base-eval.json");
    let dir = checkpoint::resolve(base)?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let model = format!("{} on {:?}", dir.display(), data);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(saved) = serde_json::from_str::<BaseEval>(&text) {
            if saved.model == model {
                eprintln!("  base evaluation: done earlier");
                return Ok(saved);
            }
        }
    }
    eprintln!("  evaluating {} ...", base.display());
    let ckpt = checkpoint::open_as(base, &default_device()?, true, Precision::F32)?;
    let opts = EvalOptions {
        data: data.map(Path::to_path_buf),
        max_windows: runner.opts.smoke.then_some(4),
        noise_levels: Vec::new(),
        ..EvalOptions::default()
    };
    let r = evaluate(&ckpt, &opts)?;
    let saved = BaseEval {
        model,
        val_loss: r.val_loss,
        bits_per_byte: r.bits_per_byte,
    };
    write_atomic(&path, serde_json::to_string_pretty(&saved)?.as_bytes())?;
    Ok(saved)
}

struct Inputs<'a> {
    base: &'a Path,
    judge: &'a Path,
    corpus: String,
    base_eval: &'a BaseEval,
    adapted: &'a RunResult,
    cfg: &'a crate::config::Config,
    before: &'a [DecodeBench],
    after: &'a [DecodeBench],
}

fn report(runner: &Runner, x: &Inputs) -> Result<()> {
    let out = &runner.opts.out;
    if x.before.is_empty() || x.after.is_empty() {
        bail!("the benchmark measured nothing (no prompt set fits the model's context)");
    }
    let a = x.adapted;
    let change = a.bits_per_byte / x.base_eval.bits_per_byte - 1.0;
    let quality = Table {
        caption: "Held-out text, AR scoring (exact likelihood, every validation window)".into(),
        header: [
            "model",
            "tokens trained",
            "nats/token",
            "bits/byte",
            "change",
        ]
        .map(String::from)
        .to_vec(),
        rows: vec![
            vec![
                "base".into(),
                "0".into(),
                format!("{:.4}", x.base_eval.val_loss),
                format!("{:.4}", x.base_eval.bits_per_byte),
                "-".into(),
            ],
            vec![
                "adapted".into(),
                a.tokens_seen.to_string(),
                format!("{:.4}", a.val_loss),
                format!("{:.4}", a.bits_per_byte),
                format!("{:+.2}%", 100.0 * change),
            ],
        ],
    };
    let tagged = tag([("base", x.before), ("adapted", x.after)]);
    let mut sets: Vec<String> = x.before.iter().map(|r| r.prompt_set.clone()).collect();
    sets.dedup();
    let mut tables = vec![quality];
    tables.extend(sets.iter().map(|set| table(&tagged, set, 1)));
    // The held-out curve: the base at step 0, then every validation of the run.
    let bpb: Vec<(f64, f64)> = a
        .bpb_curve
        .iter()
        .map(|&(s, b)| ((s * x.cfg.tokens_per_step()) as f64, b))
        .collect();
    plot(
        &out.join("adaptation.svg"),
        "Held-out bits per byte during adaptation (AR scoring)",
        "tokens trained",
        "bits per byte (validation windows of the run)",
        &[Series {
            name: "CARD adaptation".into(),
            points: bpb,
        }],
        true,
        None,
    )?;
    pareto(
        &out.join("pareto.svg"),
        &sets[0],
        [("base", x.before), ("adapted", x.after)],
    )?;
    let csv = csv_rows(&tagged);
    let report = Report {
        title: "AR → CARD adaptation of a pretrained model".into(),
        intro: vec![
            format!(
                "Base: {}. Continued with the CARD objective from its weights on {} for {} steps of {} tokens ({} tokens; a share {} of each batch clean, WeDLM's AR mix; peak learning rate {} after {} warm-up steps), {:.0} s of training and validation at a median {:.0} tokens/s.",
                x.base.display(), x.corpus, a.steps, x.cfg.tokens_per_step(), a.tokens_seen,
                x.cfg.noise.ar_fraction, x.cfg.train.lr, x.cfg.train.warmup_steps, a.elapsed_s, a.tokens_per_s
            ),
            format!(
                "Decoding: both models as f32 matrices, greedy, EOS ignored, batch 1, one round, AR measured first in the same process as the baseline. Threshold decoding with K = T_max = 4 at τ = 0.9, 0.7, 0.5; the lossless verifier (drafts from K [MASK] slots, kept only where they equal the model's own next-token choice, so the output is AR's) at K = 1 and 2. `= AR`: share of rows whose output equals AR's. Judge of every output: {}. The base never saw [MASK] inputs, so its threshold and verifier rows show what adaptation adds.",
                x.judge.display()
            ),
        ],
        tables,
        plots: vec![
            ("adaptation.svg".into(), "Held-out bits per byte (AR scoring) against tokens trained; step 0 is the base model".into()),
            ("pareto.svg".into(), "Speed relative to AR against the judge's NLL of the output, first prompt set, batch 1".into()),
        ],
        findings: findings(x, change, &sets),
        config: a.config.clone(),
    };
    write(&runner.opts, &report, &CSV_HEADER, &csv)
}

/// What the numbers say: AR quality kept or lost, and the best decoding at equal quality.
fn findings(x: &Inputs, change: f64, sets: &[String]) -> Vec<String> {
    let mut out = vec![format!(
        "AR quality: held-out bits per byte {:.4} → {:.4} ({:+.2}%) after {} tokens of CARD training.",
        x.base_eval.bits_per_byte, x.adapted.bits_per_byte, 100.0 * change, x.adapted.tokens_seen
    )];
    for set in sets {
        let best = |rows: &[DecodeBench], decoder: &str, quality: &dyn Fn(&DecodeBench) -> bool| {
            rows.iter()
                .filter(|r| &r.prompt_set == set && r.decoder == decoder && quality(r))
                .max_by(|a, b| a.ratio_to_ar.total_cmp(&b.ratio_to_ar))
                .cloned()
        };
        let lossless = |r: &DecodeBench| r.same_as_ar == 1.0;
        for (model, rows) in [("base", x.before), ("adapted", x.after)] {
            if let Some(r) = best(rows, "verify", &lossless) {
                out.push(format!(
                    "Lossless mode, {set}, {model}: best {} at {:.2} tokens/forward, {:.2}× AR tokens/s (output identical to AR's).",
                    r.setting, r.tokens_per_forward, r.ratio_to_ar
                ));
            }
        }
        // Equal output quality: within 5% of AR's judge NLL and no more repetition.
        if let Some(ar) = find(x.after, set, 1, "-", "ar") {
            let equal = |r: &DecodeBench| {
                r.judge_nll <= ar.judge_nll * 1.05
                    && r.repeated_4gram_rate <= ar.repeated_4gram_rate
            };
            out.push(match best(x.after, "card", &equal) {
                Some(r) => format!(
                    "Threshold mode, {set}, adapted: the fastest setting within 5% of AR's judge NLL ({:.3}) with no more repeated 4-grams is {} at {:.2} tokens/forward, {:.2}× AR tokens/s.",
                    ar.judge_nll, r.setting, r.tokens_per_forward, r.ratio_to_ar
                ),
                None => format!(
                    "Threshold mode, {set}, adapted: no setting stayed within 5% of AR's judge NLL ({:.3}) with no more repetition.",
                    ar.judge_nll
                ),
            });
        }
    }
    out
}
