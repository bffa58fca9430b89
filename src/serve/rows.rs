//! What one batched `generate` call owes each request: every row's committed text streamed
//! as it becomes final, the playground's per-step views, each row's own stop strings and
//! budget inside the shared batch, and the final per-request result. The scheduler runs the
//! batch; this module turns its steps into events.

use super::job::{Event, JobResult, JobSpec, RowResult, SlotView, StepView};
use crate::data::TextTokenizer;
use crate::decode::text::{cut_at_stop, StopScan, TextStream};
use crate::decode::{Finish, Generation, SlotTrace, StepTrace};
use tokio::sync::mpsc::UnboundedSender;

/// The request a batch row belongs to, as the row assembly needs it.
pub(crate) struct JobView<'a> {
    pub spec: &'a JobSpec,
    pub tx: &'a UnboundedSender<Event>,
    pub cancelled: bool,
}

/// One batch row: its request, its place there, and its text so far.
pub(crate) struct RowState {
    pub job: usize,
    /// Row index within its job.
    pub jrow: usize,
    pub max: usize,
    text: TextStream,
    scan: StopScan,
    forwards: usize,
}

impl RowState {
    pub fn new(job: usize, jrow: usize, max: usize) -> Self {
        Self {
            job,
            jrow,
            max,
            text: TextStream::new(max),
            scan: StopScan::default(),
            forwards: 0,
        }
    }

    /// Whether this row is finished by its request's own rules after `gen`: cancelled, its
    /// budget, or one of its stop strings.
    pub fn stops(&mut self, job: &JobView, tok: &TextTokenizer, gen: &[u32]) -> bool {
        if job.cancelled || gen.len() >= self.max {
            return true;
        }
        self.scan.hit(tok, gen, &job.spec.stops)
    }

    /// A decoding step of this row: record what it committed, stream new final text, and
    /// send the playground's view of the step.
    pub fn on_step(
        &mut self,
        job: &JobView,
        tok: &TextTokenizer,
        step: &StepTrace,
        elapsed_s: f64,
        batch_rows: usize,
    ) {
        self.forwards += 1;
        self.text.commit(&step.committed);
        if job.cancelled {
            return;
        }
        if job.spec.stream {
            if let Some(text) = self.text.delta(tok, &job.spec.stops) {
                let _ = job.tx.send(Event::Delta {
                    row: self.jrow,
                    text,
                });
            }
        }
        if job.spec.trace {
            let view = |s: &SlotTrace| SlotView {
                pos: s.pos,
                token: s.token,
                text: tok.decode(&[s.token]).unwrap_or_default(),
                confidence: s.confidence,
                masked: s.masked,
                source: s.source.map(|d| d.name()),
                branch: s.branch,
            };
            let prefix = self.text.prefix(tok.eot_id());
            let _ = job.tx.send(Event::Step(Box::new(StepView {
                row: self.jrow,
                forward: step.forward,
                step: step.step,
                row_forwards: self.forwards,
                slots: step.slots.iter().map(view).collect(),
                committed: step.committed.iter().map(view).collect(),
                rejected: step.rejected.iter().map(view).collect(),
                text: self.text.text().to_string(),
                tokens: prefix.len(),
                elapsed_s,
                batch_rows,
            })));
        }
    }
}

/// Request `j`'s result from the batch's generation.
pub(crate) fn job_result(
    j: usize,
    job: &JobSpec,
    g: &Generation,
    rows: &[RowState],
    tok: &TextTokenizer,
    batch_rows: usize,
    decoder: &'static str,
) -> JobResult {
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate().filter(|(_, r)| r.job == j) {
        let gen = &g.rows[i];
        let tokens = &gen.tokens[..gen.tokens.len().min(row.max)];
        let full = tok.decode(tokens).unwrap_or_default();
        let (text, stopped) = cut_at_stop(&full, &job.stops);
        let finish = match gen.finish {
            Finish::Eos => "stop",
            _ if stopped => "stop",
            _ => "length",
        };
        out.push(RowResult {
            text: text.to_string(),
            tokens: tokens.len(),
            forward_passes: gen.forward_passes,
            finish,
        });
    }
    let n = out.len().max(1) as f64;
    JobResult {
        prompt_tokens: job.prompts.iter().map(|p| p.len()).sum(),
        completion_tokens: out.iter().map(|r| r.tokens).sum(),
        forward_passes: out.iter().map(|r| r.forward_passes).max().unwrap_or(0),
        tokens_per_forward: out
            .iter()
            .map(|r| r.tokens as f64 / r.forward_passes.max(1) as f64)
            .sum::<f64>()
            / n,
        elapsed_s: g.elapsed_s,
        batch_rows,
        decoder,
        rows: out,
    }
}
