//! The decode benchmark as a plan: which checkpoint (beside its f32 reference when asked),
//! judge, prompt sets, lengths, batch sizes, decoders and rounds. `card bench decode` and
//! every experiment that benchmarks decoding build one; it is opened (the checkpoint,
//! checked), prepared (judge, reference, prompt sets: every input checked) and measured into
//! a [`DecodeReport`], whose `Display` is the table the CLI prints.

use super::decode::{bench_decode, prompt_set, DecodeBench, DecodeBenchConfig, PromptSet};
use crate::checkpoint::{self, Opened, Precision};
use crate::config::ObjectiveKind;
use crate::data::{load_data, TextTokenizer};
use crate::decode::{Decoder, DecoderSpec, GenOptions};
use crate::eval::quality::decoded_scores;
use crate::model::Transformer;
use crate::runtime::device as default_device;
use anyhow::{bail, Result};
use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// What to measure.
#[derive(Debug, Clone)]
pub struct DecodePlan {
    /// A run or checkpoint directory (a CARD or ARM model).
    pub checkpoint: PathBuf,
    /// The EMA weights where the checkpoint kept them.
    pub use_ema: bool,
    /// How the model holds its weights while decoding (the judge is always f32).
    pub precision: Precision,
    /// A quantized model is measured beside its f32 reference, and their greedy text compared.
    pub beside_f32: bool,
    /// Also decode with the weight matrices rounded to bf16, beside the f32 model.
    pub bf16: bool,
    /// Scores the generated text; None: the model itself.
    pub judge: Option<PathBuf>,
    /// Prompt sets (`decode::PROMPT_SETS`); empty: prose (builtin when the checkpoint's
    /// corpus cannot be loaded) and probes.
    pub sets: Vec<String>,
    pub lengths: Lengths,
    pub batches: Vec<usize>,
    /// Measured against AR, which always runs first.
    pub decoders: Vec<DecoderSpec>,
    /// Timed rounds per setting (medians are reported).
    pub rounds: usize,
}

/// New tokens per prompt.
#[derive(Debug, Clone)]
pub struct Lengths {
    pub tokens: Vec<usize>,
    /// Each capped at half the model's context first (plans sized for any model).
    pub at_most_half_context: bool,
    /// Shrink a length that does not fit after a set's longest prompt to what does, instead
    /// of skipping it (lengths the user asked for).
    pub fit: bool,
}

impl DecodePlan {
    /// `checkpoint`'s EMA weights as stored, judged by the model itself, on the default prompt
    /// sets at 128 tokens (shrunk to fit), batch 1, one round, AR alone.
    pub fn new(checkpoint: PathBuf) -> Self {
        Self {
            checkpoint,
            use_ema: true,
            precision: Precision::Stored,
            beside_f32: false,
            bf16: false,
            judge: None,
            sets: Vec::new(),
            lengths: Lengths {
                tokens: vec![128],
                at_most_half_context: false,
                fit: true,
            },
            batches: vec![1],
            decoders: Vec::new(),
            rounds: 1,
        }
    }

    /// Open, prepare and measure, `progress` told what runs.
    pub fn run(&self, progress: impl Fn(&str)) -> Result<DecodeReport> {
        self.open()?.prepare()?.measure(progress)
    }

    /// The checkpoint, opened and checked: a CARD or ARM model.
    pub fn open(&self) -> Result<OpenPlan<'_>> {
        let device = default_device()?;
        let ckpt = checkpoint::open_as(&self.checkpoint, &device, self.use_ema, self.precision)?;
        if !ckpt.objective().is_causal() {
            bail!(
                "bench decode needs a CARD or ARM checkpoint (this one is {})",
                ckpt.objective().name()
            );
        }
        Ok(OpenPlan {
            plan: self,
            device,
            ckpt,
        })
    }

    /// The prompt set names to measure, given whether the checkpoint's corpus loaded.
    fn set_names(&self, corpus: bool) -> Vec<String> {
        if self.sets.is_empty() {
            let prose = if corpus { "prose" } else { "builtin" };
            vec![prose.into(), "probes".into()]
        } else {
            self.sets.iter().map(|s| s.trim().to_string()).collect()
        }
    }

    /// Whether a prompt set needs the checkpoint's corpus (its validation split).
    fn needs_corpus(&self) -> bool {
        self.sets.is_empty()
            || self
                .sets
                .iter()
                .any(|s| matches!(s.trim(), "prose" | "own"))
    }
}

/// A plan with its checkpoint open.
pub struct OpenPlan<'p> {
    plan: &'p DecodePlan,
    device: Device,
    pub ckpt: Opened,
}

impl<'p> OpenPlan<'p> {
    /// The judge, the f32 reference or the bf16 copy, and the prompt sets: every input
    /// checked, nothing measured yet.
    pub fn prepare(self) -> Result<ReadyPlan<'p>> {
        let (plan, ckpt) = (self.plan, self.ckpt);
        let judge = match &plan.judge {
            Some(p) => Some(checkpoint::open_as(p, &self.device, true, Precision::F32)?),
            None => None,
        };
        let (reference, rounded) = match (ckpt.model.is_quantized(), plan.bf16) {
            (true, true) => {
                bail!("--bf16 rounds f32 weights; this checkpoint is already quantized")
            }
            (true, false) if plan.beside_f32 => (Some(ckpt.model.dequantized()?), None),
            (false, true) => (None, Some(ckpt.model.to_bf16()?)),
            _ => (None, None),
        };
        let (tok, model) = (&ckpt.tokenizer, rounded.as_ref().unwrap_or(&ckpt.model));
        let data = if plan.needs_corpus() {
            load_data(&ckpt.config, Some(tok.clone())).ok()
        } else {
            None
        };
        let sets = plan
            .set_names(data.is_some())
            .iter()
            .map(|n| prompt_set(n, model, tok, data.as_ref()))
            .collect::<Result<Vec<PromptSet>>>()?;
        let ctx = ckpt.model.cfg.max_seq_len;
        let lengths = &plan.lengths;
        let bench = DecodeBenchConfig {
            lengths: lengths
                .tokens
                .iter()
                .map(|&l| match lengths.at_most_half_context {
                    true => l.min(ctx / 2),
                    false => l,
                })
                .collect(),
            fit_lengths: lengths.fit,
            batches: plan.batches.clone(),
            decoders: plan.decoders.clone(),
            sets,
            rounds: plan.rounds,
        };
        Ok(ReadyPlan {
            plan,
            ckpt,
            judge,
            reference,
            rounded,
            bench,
        })
    }
}

/// A plan ready to measure.
pub struct ReadyPlan<'p> {
    plan: &'p DecodePlan,
    ckpt: Opened,
    judge: Option<Opened>,
    /// The f32 reference of a quantized model.
    reference: Option<Transformer>,
    /// The model's weight matrices rounded to bf16.
    rounded: Option<Transformer>,
    bench: DecodeBenchConfig,
}

impl ReadyPlan<'_> {
    /// Every setting on the model (after its f32 reference, where there is one) and the
    /// greedy text of the two compared.
    pub fn measure(&self, progress: impl Fn(&str)) -> Result<DecodeReport> {
        let ckpt = &self.ckpt;
        let (tok, model) = (
            &ckpt.tokenizer,
            self.rounded.as_ref().unwrap_or(&ckpt.model),
        );
        // A quantized (or rounded) model is measured beside its f32 reference.
        let reference = self
            .reference
            .as_ref()
            .or(self.rounded.as_ref().map(|_| &ckpt.model));
        let judged = self.judge.as_ref().map(|j| (&j.model, &j.tokenizer));
        let mut rows = Vec::new();
        let mut bandwidth = 0.0;
        for m in reference.into_iter().chain([model]) {
            let (r, bw) = bench_decode(m, tok, judged, &self.bench, &progress)?;
            rows.extend(r);
            bandwidth = bw;
        }
        // On the first set, at the first length (at most half the context).
        let first = self.bench.lengths.first().copied().unwrap_or(0);
        let compared_tokens = first.min(model.cfg.max_seq_len / 2);
        let compared_set = self.bench.sets.first();
        let precision = match (reference, compared_set) {
            (Some(r), Some(set)) => {
                progress("comparing quantized and f32 greedy decoding");
                Some(compare_precision(
                    r,
                    model,
                    tok,
                    &set.prompts,
                    compared_tokens,
                )?)
            }
            _ => None,
        };
        Ok(DecodeReport {
            checkpoint: ckpt.dir.clone(),
            params: model.cfg.n_params(),
            dtype: format!("{:?}", model.dtype()).to_lowercase(),
            bandwidth,
            rounds: self.plan.rounds,
            judge: self.judge.as_ref().map(|j| j.dir.clone()),
            arm: ckpt.objective() == ObjectiveKind::Arm,
            rows,
            precision,
            compared_tokens,
            compared_set: compared_set.map_or(String::new(), |s| s.name.clone()),
        })
    }
}

/// What a plan measured.
pub struct DecodeReport {
    pub checkpoint: PathBuf,
    pub params: usize,
    /// The model's activations ("f32").
    pub dtype: String,
    /// Copy bandwidth (bytes/s) the model's rows were measured against.
    pub bandwidth: f64,
    pub rounds: usize,
    /// The judge's checkpoint; None: the model itself.
    pub judge: Option<PathBuf>,
    /// An ARM checkpoint (it never saw [MASK]).
    pub arm: bool,
    /// The f32 reference's rows first, where there is one.
    pub rows: Vec<DecodeBench>,
    pub precision: Option<PrecisionComparison>,
    /// Tokens per row and the prompt set of the precision comparison.
    pub compared_tokens: usize,
    pub compared_set: String,
}

impl DecodeReport {
    /// `{"rows": [...], "precision": ...}`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"rows": self.rows, "precision": self.precision})
    }
}

impl fmt::Display for DecodeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bench decode: {} ({} params, {}), {} threads, copy bandwidth {:.1} GB/s, greedy, EOS ignored, median of {} rounds; judge: {}",
            self.checkpoint.display(),
            self.params,
            self.dtype,
            candle_core::utils::get_num_threads(),
            self.bandwidth / 1e9,
            self.rounds,
            self.judge.as_ref().map_or("the model itself".into(), |j| j.display().to_string())
        )?;
        if self.arm {
            writeln!(f, "note: an ARM checkpoint never saw [MASK]: its card and verify rows measure what such a model commits untrained")?;
        }
        write!(f, "set      weights     batch  len  decoder  setting           tokens/s   xAR   tok/fwd  acc/pass  kept   =AR   judge-NLL  rep4   dist2  bw%   allocs/tok  acceptance by slot")?;
        for r in &self.rows {
            let slots: Vec<String> = r
                .acceptance_by_slot
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect();
            write!(
                f,
                "\n{:<8} {:<10} {:>5} {:>4}  {:<7}  {:<16} {:>9.1}  {:>5.2}  {:>7.2}  {:>8}  {:>5.2}  {:>4.2}  {:>9.3}  {:>5.3}  {:>5.3}  {:>4.1}  {:>10.0}  {}",
                r.prompt_set,
                r.weights,
                r.batch,
                r.max_new_tokens,
                r.decoder,
                r.setting,
                r.tokens_per_s,
                r.ratio_to_ar,
                r.tokens_per_forward,
                r.drafts_accepted_per_pass.map_or("-".into(), |x| format!("{x:.2}")),
                r.kept_fraction,
                r.same_as_ar,
                r.judge_nll,
                r.repeated_4gram_rate,
                r.distinct_2,
                100.0 * r.bandwidth_fraction,
                r.allocs_per_token,
                slots.join(" ")
            )?;
        }
        if let Some(c) = &self.precision {
            write!(
                f,
                "\n{} vs f32, greedy AR, {} tokens on {} {} prompts: {}/{} rows identical, {:.1}% of tokens agree up to each row's first difference, {:.1}% given the f32 prefix; NLL of the f32 text: f32 {:.4}, {} {:.4} (Δ {:+.4} nats/token)",
                c.weights,
                self.compared_tokens,
                c.rows,
                self.compared_set,
                c.same_rows,
                c.rows,
                100.0 * c.prefix_agreement,
                100.0 * c.token_agreement,
                c.nll_reference,
                c.weights,
                c.nll_quantized,
                c.nll_quantized - c.nll_reference
            )?;
        }
        Ok(())
    }
}

/// Quantized decoding against its f32 reference on the same prompts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrecisionComparison {
    pub weights: String,
    pub rows: usize,
    /// Rows whose greedy AR tokens equal the reference's.
    pub same_rows: usize,
    /// Share of generated positions where the two agree, up to each row's first difference.
    pub prefix_agreement: f64,
    /// Share of the reference's greedy tokens the quantized model also picks, given the same
    /// prefix (teacher-forced: one near-tie does not end the count).
    #[serde(default)]
    pub token_agreement: f64,
    /// Mean NLL (nats/token) of the reference's greedy text under each model, on the path
    /// each decodes with.
    pub nll_reference: f64,
    pub nll_quantized: f64,
}

/// Greedy AR continuations (`len` tokens, EOS ignored) of `prompts` from both models, and the
/// NLL of the reference's under both.
pub fn compare_precision(
    reference: &Transformer,
    quantized: &Transformer,
    tok: &TextTokenizer,
    prompts: &[Vec<u32>],
    len: usize,
) -> Result<PrecisionComparison> {
    let opts = GenOptions {
        eos_id: u32::MAX,
        ..GenOptions::new(len, tok)
    };
    let a = DecoderSpec::Ar.generate(reference, prompts, &opts, &mut |_| {})?;
    let b = DecoderSpec::Ar.generate(quantized, prompts, &opts, &mut |_| {})?;
    let (mut same, mut agree, mut total, mut picked) = (0, 0, 0, 0);
    let (mut nll_a, mut nll_b) = (0.0, 0.0);
    for ((p, ra), rb) in prompts.iter().zip(&a.rows).zip(&b.rows) {
        same += usize::from(ra.tokens == rb.tokens);
        agree += ra
            .tokens
            .iter()
            .zip(&rb.tokens)
            .take_while(|(x, y)| x == y)
            .count();
        total += ra.tokens.len();
        nll_a += decoded_scores(reference, p, &ra.tokens)?.0;
        let (nll, picks) = decoded_scores(quantized, p, &ra.tokens)?;
        nll_b += nll;
        picked += picks;
    }
    let n = prompts.len().max(1) as f64;
    Ok(PrecisionComparison {
        weights: quantized.weights_label(),
        rows: prompts.len(),
        same_rows: same,
        prefix_agreement: agree as f64 / total.max(1) as f64,
        token_agreement: picked as f64 / total.max(1) as f64,
        nll_reference: nll_a / n,
        nll_quantized: nll_b / n,
    })
}
