//! One evaluation of a checkpoint: held-out likelihood, loss vs noise level, zero-shot tasks,
//! LAMBADA and generation quality — what `card eval` prints and the experiments record.

use super::quality::{continuation_nll, distinct_n, repeated_ngram_rate, unigram_entropy};
use super::zero_shot::{
    load_task, score_lambada, score_mc, ElboScorer, ExactScorer, LambadaResult, McResult, Scorer,
};
use super::{held_out, loss_vs_t, BoundBudget, NoisePoint};
use crate::checkpoint::{Opened, WeightsChoice};
use crate::config::ObjectiveKind;
use crate::data::{eval_files, eval_windows, load_data, TextTokenizer, PROMPTS};
use crate::decode::{Decoder, DecoderSpec, GenOptions, Sampling};
use crate::model::Transformer;
use crate::objective::{self, HeldOut};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub data: Option<PathBuf>,
    /// Windows scored per split (validation and each held-out source group).
    pub max_windows: Option<usize>,
    /// Also score the held-out source groups of the corpus.
    pub heldout: bool,
    /// Loss at these noise levels (CARD checkpoints).
    pub noise_levels: Vec<f64>,
    /// Zero-shot tasks to run (names from `eval_files::TASKS`, LAMBADA separately).
    pub tasks: Vec<String>,
    pub lambada: bool,
    /// Documents per task (None = all).
    pub limit: Option<usize>,
    /// Where `card data fetch --eval` put the task files.
    pub data_dir: PathBuf,
    pub generation: Option<GenerationEval>,
    /// MDLM/BD3LM: how many noise draws the NELBO bound may take.
    pub bound_budget: BoundBudget,
    /// MDLM/BD3LM: noise draws per zero-shot choice and LAMBADA passage.
    pub elbo_samples: usize,
    /// Seed of the bound's noise draws.
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            data: None,
            max_windows: None,
            heldout: true,
            noise_levels: (0..10).map(|i| i as f64 / 10.0).collect(),
            tasks: Vec::new(),
            lambada: false,
            limit: None,
            data_dir: PathBuf::from("data"),
            generation: None,
            bound_budget: BoundBudget::default(),
            elbo_samples: 8,
            seed: 0,
        }
    }
}

/// Sample with a decoder from the fixed prompt set and measure the samples.
#[derive(Debug, Clone)]
pub struct GenerationEval {
    pub decoder: DecoderSpec,
    pub samples: usize,
    pub length: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Reference checkpoint for generative perplexity (default: the evaluated model).
    pub judge: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ZeroShot {
    pub tasks: Vec<McResult>,
    pub average_acc: f64,
    pub average_acc_norm: f64,
    pub average_chance: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationReport {
    pub decoder: String,
    pub samples: usize,
    /// exp(mean NLL per token) of the samples under the judge.
    pub generative_perplexity: f64,
    pub judge: String,
    pub unigram_entropy: f64,
    pub repeated_4gram_rate: f64,
    pub distinct_1: f64,
    pub distinct_2: f64,
    pub mean_length: f64,
    pub tokens_per_forward: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub objective: &'static str,
    pub step: usize,
    pub weights: WeightsChoice,
    pub tokens: u64,
    /// "exact" (autoregressive likelihood) or "nelbo" (the diffusion bound).
    pub estimator: &'static str,
    /// True when val_loss, perplexity and bits_per_byte are upper bounds.
    pub bound: bool,
    pub val_loss: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
    /// Monte Carlo standard errors of a bound.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss_se: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity_se: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t_samples: Option<usize>,
    /// The same score on each held-out source group of the corpus (`data prepare --holdout`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heldout: Vec<HeldoutScore>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loss_vs_t: Vec<NoisePoint>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_shot: Option<ZeroShot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambada: Option<LambadaResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationReport>,
}

/// The held-out score on one group of sources the model never trained on.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct HeldoutScore {
    pub pattern: String,
    /// Tokens scored (the first `max_windows` windows of the group).
    pub tokens: u64,
    pub loss: f64,
    pub bits_per_byte: f64,
}

pub fn evaluate(ckpt: &Opened, opts: &EvalOptions) -> Result<EvalReport> {
    let mut cfg = ckpt.config.clone();
    if let Some(d) = &opts.data {
        cfg.data.path = d.display().to_string();
    }
    let (model, tok) = (&ckpt.model, &ckpt.tokenizer);
    let data = load_data(&cfg, Some(tok.clone()))?;
    let windows = eval_windows(&data.val, cfg.train.seq_len, opts.max_windows);
    if windows.is_empty() {
        bail!("the validation split is empty");
    }
    let batch = cfg.train.batch_size;
    let objective = ckpt.objective();
    let obj = objective::build(&cfg, tok.mask_id());
    if matches!(obj.held_out(), HeldOut::Bound(_)) && opts.bound_budget.max_samples == 0 {
        bail!("the bound needs at least one noise draw per window");
    }
    let score_on = |windows: &[&[u32]]| {
        held_out(
            model,
            obj.as_ref(),
            windows,
            batch,
            opts.bound_budget,
            opts.seed,
        )
    };
    let score = score_on(&windows)?;
    let (tokens, mean) = (score.tokens, score.nats_per_token);
    let bound = score.bound.map(|b| (b.se, b.t_samples));
    let mut heldout = Vec::new();
    let groups = if opts.heldout {
        data.heldout_groups()
    } else {
        Vec::new()
    };
    for (pattern, ids, bytes) in groups {
        let windows = eval_windows(ids, cfg.train.seq_len, opts.max_windows);
        let s = score_on(&windows)?;
        heldout.push(HeldoutScore {
            pattern: pattern.to_string(),
            tokens: s.tokens,
            loss: s.nats_per_token,
            bits_per_byte: super::bits_per_byte(s.nats_per_token, ids.len() as u64, bytes),
        });
    }

    let loss_vs_t = if objective == ObjectiveKind::Card && !opts.noise_levels.is_empty() {
        let subset = &windows[..windows.len().min(4 * batch)];
        loss_vs_t(model, obj.as_ref(), subset, &opts.noise_levels, batch, 0)?
    } else {
        Vec::new()
    };
    // Exact likelihood for ARM/CARD; for MDLM/BD3LM the ELBO (a lower bound).
    let scorer: Box<dyn Scorer + '_> = match obj.held_out() {
        HeldOut::Exact => Box::new(ExactScorer(model)),
        HeldOut::Bound(bound) => Box::new(ElboScorer {
            model,
            bound,
            samples: opts.elbo_samples,
            seed: opts.seed,
        }),
    };
    let scorer = scorer.as_ref();
    let zero_shot = if opts.tasks.is_empty() {
        None
    } else {
        let mut tasks = Vec::new();
        for t in &opts.tasks {
            let mut docs = load_task(&eval_files::task_file(&opts.data_dir, t)?)?;
            docs.truncate(opts.limit.unwrap_or(usize::MAX));
            tasks.push(score_mc(scorer, tok, t, &docs)?);
        }
        let n = tasks.len() as f64;
        Some(ZeroShot {
            average_acc: tasks.iter().map(|t| t.acc).sum::<f64>() / n,
            average_acc_norm: tasks.iter().map(|t| t.acc_norm).sum::<f64>() / n,
            average_chance: tasks.iter().map(|t| t.chance).sum::<f64>() / n,
            tasks,
        })
    };
    let lambada = if opts.lambada {
        let mut docs = load_task(&eval_files::task_file(&opts.data_dir, "lambada")?)?;
        docs.truncate(opts.limit.unwrap_or(usize::MAX));
        Some(score_lambada(scorer, tok, &docs)?)
    } else {
        None
    };
    let generation = match &opts.generation {
        Some(g) => Some(generation_quality(model, tok, objective, g)?),
        None => None,
    };
    Ok(EvalReport {
        checkpoint: ckpt.dir.display().to_string(),
        objective: objective.name(),
        step: ckpt.state.step,
        weights: ckpt.weights,
        tokens,
        estimator: if bound.is_some() { "nelbo" } else { "exact" },
        bound: bound.is_some(),
        val_loss: mean,
        perplexity: mean.exp(),
        bits_per_byte: super::val_bits_per_byte(mean, &data),
        val_loss_se: bound.map(|b| b.0),
        perplexity_se: bound.map(|b| b.0 * mean.exp()),
        t_samples: bound.map(|b| b.1),
        heldout,
        loss_vs_t,
        zero_shot,
        lambada,
        generation,
    })
}

fn generation_quality(
    model: &Transformer,
    tok: &TextTokenizer,
    objective: ObjectiveKind,
    g: &GenerationEval,
) -> Result<GenerationReport> {
    let decoder = &g.decoder;
    decoder.check_fits(objective)?;
    let prompts: Vec<Vec<u32>> = (0..g.samples)
        .map(|i| tok.encode_prompt(PROMPTS[i % PROMPTS.len()]))
        .collect::<Result<_>>()?;
    // Shorten the samples on small-context models so every prompt fits.
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let length = g.length.min(model.cfg.max_seq_len.saturating_sub(longest));
    if length == 0 {
        bail!(
            "the model's context of {} tokens leaves no room to generate",
            model.cfg.max_seq_len
        );
    }
    let opts = GenOptions {
        sampling: g.sampling.clone(),
        seed: g.seed,
        ..GenOptions::new(length, tok)
    };
    let out = decoder.generate(model, &prompts, &opts, &mut |_| {})?;
    // The judge reads the samples as text, so its tokenizer may differ.
    let judge = match &g.judge {
        Some(p) => Some(crate::checkpoint::open_as(
            p,
            model.device(),
            true,
            crate::checkpoint::Precision::F32,
        )?),
        None => None,
    };
    let (judge_model, judge_tok, judge_name) = match &judge {
        Some(j) => (&j.model, &j.tokenizer, j.dir.display().to_string()),
        None => (model, tok, "self".to_string()),
    };
    let n = out.rows.len().max(1) as f64;
    let (mut nll, mut nll_n) = (0.0, 0.0);
    let (mut ent, mut rep, mut d1, mut d2, mut len) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, row) in out.rows.iter().enumerate() {
        let text = tok.decode(&row.tokens)?;
        let p = judge_tok.encode_prompt(PROMPTS[i % PROMPTS.len()])?;
        let c = judge_tok.encode(&text)?;
        let x = continuation_nll(judge_model, &p, &c)?;
        if x.is_finite() {
            nll += x * c.len() as f64;
            nll_n += c.len() as f64;
        }
        ent += unigram_entropy(&row.tokens);
        rep += repeated_ngram_rate(&row.tokens, 4);
        d1 += distinct_n(&row.tokens, 1);
        d2 += distinct_n(&row.tokens, 2);
        len += row.tokens.len() as f64;
    }
    Ok(GenerationReport {
        decoder: decoder.name().to_string(),
        samples: out.rows.len(),
        generative_perplexity: (nll / nll_n.max(1.0)).exp(),
        judge: judge_name,
        unigram_entropy: ent / n,
        repeated_4gram_rate: rep / n,
        distinct_1: d1 / n,
        distinct_2: d2 / n,
        mean_length: len / n,
        tokens_per_forward: out.tokens_per_forward(),
    })
}
