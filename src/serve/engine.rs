//! The decoding engine behind `card serve`: a bounded queue of jobs and worker threads that
//! own no async runtime. A worker takes the oldest waiting job plus every other waiting job
//! with the same decoder settings (up to `max_batch` rows) and decodes them in one batched
//! `generate` call, so concurrent requests share forward passes instead of waiting in line.
//!
//! The decoders take one stop hook for the whole batch, called right after the trace of the
//! row it is about (`on_step` for row r, then the stop checks of row r's accepted tokens). The
//! engine uses that order to give every row its own stop strings, token budget and
//! cancellation flag; a row whose request is gone (client disconnected) stops at its next
//! commit, and the worker skips jobs cancelled while they wait.

use crate::data::TextTokenizer;
use crate::decode::{
    ArDecoder, CardDecoder, Decoder, Finish, GenOptions, Generation, Sampling, StepTrace,
};
use crate::model::Transformer;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Which decoder a request runs, with its knobs.
#[derive(Debug, Clone, PartialEq)]
pub enum DecoderChoice {
    Ar,
    Card(CardDecoder),
}

impl DecoderChoice {
    pub fn name(&self) -> &'static str {
        match self {
            DecoderChoice::Ar => "ar",
            DecoderChoice::Card(_) => "card",
        }
    }
}

/// Requests batch together only when these are equal.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeSettings {
    pub decoder: DecoderChoice,
    pub sampling: Sampling,
    /// Keep generating past `<|endoftext|>` (vLLM's `ignore_eos`): fixed-length benchmarks.
    pub ignore_eos: bool,
}

/// One request, already validated and tokenized: one row per (prompt, choice).
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub prompts: Vec<Vec<u32>>,
    pub max_tokens: usize,
    pub stops: Vec<String>,
    pub settings: DecodeSettings,
    /// A sampled request with a seed runs alone, so its draws do not depend on neighbours.
    pub seed: Option<u64>,
    /// Send `Event::Delta` as text is committed.
    pub stream: bool,
    /// Send `Event::Step` for every decoding step (the playground).
    pub trace: bool,
}

impl JobSpec {
    fn rows(&self) -> usize {
        self.prompts.len()
    }

    fn alone(&self) -> bool {
        self.seed.is_some() && !self.settings.sampling.is_greedy()
    }
}

/// One slot of a traced step, with its text.
#[derive(Debug, Clone, Serialize)]
pub struct SlotView {
    pub pos: usize,
    pub token: u32,
    pub text: String,
    pub confidence: f32,
    pub masked: bool,
}

/// A decoding step of one row, as the playground shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub row: usize,
    pub forward: usize,
    pub step: usize,
    /// Forward passes this row has taken part in so far.
    pub row_forwards: usize,
    pub slots: Vec<SlotView>,
    pub committed: Vec<SlotView>,
    /// The left-contiguous committed text so far and its token count.
    pub text: String,
    pub tokens: usize,
    pub elapsed_s: f64,
    /// Rows decoded together in this batch (other requests included).
    pub batch_rows: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RowResult {
    pub text: String,
    pub tokens: usize,
    pub forward_passes: usize,
    /// "stop" (end of text or a stop string) or "length".
    pub finish: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    pub rows: Vec<RowResult>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Batched forward passes this request needed (the most any of its rows took part in).
    pub forward_passes: usize,
    /// Mean over the request's rows of generated tokens per forward pass.
    pub tokens_per_forward: f64,
    pub elapsed_s: f64,
    pub batch_rows: usize,
    pub decoder: &'static str,
}

#[derive(Debug)]
pub enum Event {
    /// Newly committed text of the request's row `row`.
    Delta {
        row: usize,
        text: String,
    },
    Step(Box<StepView>),
    Done(JobResult),
    /// The job ended without a result; `cancelled` when the server shut it down.
    Failed {
        message: String,
        cancelled: bool,
    },
}

/// Counters read by `/health` (and the tests).
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub forward_passes: AtomicU64,
    pub batches: AtomicU64,
    pub active_rows: AtomicUsize,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub max_batch_rows: AtomicUsize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

/// Sets the request's cancellation flag when dropped: the HTTP side holds it for as long as
/// someone waits for the answer.
pub struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

pub struct Ticket {
    pub events: UnboundedReceiver<Event>,
    pub guard: CancelOnDrop,
}

/// Frees a queue place when the job is finished (or dropped unrun).
struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Queued {
    spec: JobSpec,
    tx: UnboundedSender<Event>,
    cancel: Arc<AtomicBool>,
    _permit: Permit,
}

pub struct EngineConfig {
    pub capacity: usize,
    pub max_batch: usize,
    pub workers: usize,
    pub step_delay: Duration,
}

pub struct Engine {
    model: Arc<Transformer>,
    tok: TextTokenizer,
    cfg: EngineConfig,
    queue: Mutex<VecDeque<Queued>>,
    ready: Condvar,
    admitted: Arc<AtomicUsize>,
    closed: AtomicBool,
    cancel_all: AtomicBool,
    pub stats: Stats,
}

impl Engine {
    pub fn new(model: Transformer, tok: TextTokenizer, cfg: EngineConfig) -> Arc<Self> {
        Arc::new(Self {
            model: Arc::new(model),
            tok,
            cfg,
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            admitted: Arc::new(AtomicUsize::new(0)),
            closed: AtomicBool::new(false),
            cancel_all: AtomicBool::new(false),
            stats: Stats::default(),
        })
    }

    /// Start the worker threads.
    pub fn start(self: &Arc<Self>) -> Vec<std::thread::JoinHandle<()>> {
        (0..self.cfg.workers.max(1))
            .map(|i| {
                let me = Arc::clone(self);
                std::thread::Builder::new()
                    .name(format!("card-worker-{i}"))
                    .spawn(move || me.work())
                    .expect("spawning a worker thread")
            })
            .collect()
    }

    /// Requests admitted and not finished (waiting or decoding).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }

    pub fn capacity(&self) -> usize {
        self.cfg.capacity
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Queue a job, or refuse at once when the queue is full or the server is stopping.
    pub fn submit(&self, spec: JobSpec) -> Result<Ticket, SubmitError> {
        if self.is_closed() {
            return Err(SubmitError::ShuttingDown);
        }
        let cap = self.cfg.capacity;
        let admitted = self
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(SubmitError::QueueFull);
        }
        let permit = Permit(Arc::clone(&self.admitted));
        let (tx, rx) = unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.push_back(Queued {
            spec,
            tx,
            cancel: Arc::clone(&cancel),
            _permit: permit,
        });
        drop(q);
        self.ready.notify_one();
        Ok(Ticket {
            events: rx,
            guard: CancelOnDrop(cancel),
        })
    }

    /// Stop admitting requests; the workers finish what is queued, then exit.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }

    /// Cancel everything queued or decoding (the end of a shutdown's grace period).
    pub fn cancel_everything(&self) {
        self.cancel_all.store(true, Ordering::SeqCst);
        self.close();
    }

    fn work(&self) {
        while let Some(batch) = self.next_batch() {
            self.run_batch(batch);
        }
    }

    /// The oldest live job and every compatible waiting job that fits, or None when closed.
    fn next_batch(&self) -> Option<Vec<Queued>> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            while let Some(first) = q.pop_front() {
                if self.is_cancelled(&first) {
                    self.send_cancelled(&first);
                    continue;
                }
                let mut batch = vec![first];
                if !batch[0].spec.alone() {
                    let ctx = self.model.cfg.max_seq_len;
                    let mut i = 0;
                    while i < q.len() {
                        if self.joins(&batch, &q[i], ctx) {
                            batch.push(q.remove(i).expect("index in range"));
                        } else {
                            i += 1;
                        }
                    }
                }
                return Some(batch);
            }
            if self.is_closed() {
                return None;
            }
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn joins(&self, batch: &[Queued], job: &Queued, ctx: usize) -> bool {
        let first = &batch[0].spec;
        if job.spec.alone() || job.spec.settings != first.settings || self.is_cancelled(job) {
            return false;
        }
        let rows: usize = batch.iter().map(|j| j.spec.rows()).sum();
        if rows + job.spec.rows() > self.cfg.max_batch {
            return false;
        }
        // Every prompt must leave room for the batch's largest budget.
        let all = || batch.iter().chain(std::iter::once(job));
        let budget = all().map(|j| j.spec.max_tokens).max().unwrap_or(0);
        all().all(|j| j.spec.prompts.iter().all(|p| p.len() + budget <= ctx))
    }

    fn is_cancelled(&self, job: &Queued) -> bool {
        job.cancel.load(Ordering::SeqCst) || self.cancel_all.load(Ordering::SeqCst)
    }

    fn send_cancelled(&self, job: &Queued) {
        self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
        let _ = job.tx.send(Event::Failed {
            message: "the request was cancelled".into(),
            cancelled: true,
        });
    }

    fn run_batch(&self, jobs: Vec<Queued>) {
        let mut rows = Vec::new();
        let mut prompts = Vec::new();
        for (j, job) in jobs.iter().enumerate() {
            for (r, p) in job.spec.prompts.iter().enumerate() {
                rows.push(RowState::new(j, r, job.spec.max_tokens));
                prompts.push(p.clone());
            }
        }
        let n_rows = rows.len();
        self.stats.batches.fetch_add(1, Ordering::SeqCst);
        self.stats.active_rows.fetch_add(n_rows, Ordering::SeqCst);
        self.stats
            .max_batch_rows
            .fetch_max(n_rows, Ordering::SeqCst);
        let spec = &jobs[0].spec;
        let decoder: Box<dyn Decoder> = match &spec.settings.decoder {
            DecoderChoice::Ar => Box::new(ArDecoder),
            DecoderChoice::Card(c) => Box::new(c.clone()),
        };
        let budget = jobs.iter().map(|j| j.spec.max_tokens).max().unwrap_or(1);
        let seed = spec
            .seed
            .unwrap_or_else(|| self.stats.batches.load(Ordering::SeqCst) ^ 0x5eed_0000_0000_0000);
        let state = RefCell::new(BatchState {
            rows,
            last_forward: 0,
            start: std::time::Instant::now(),
        });
        let stop = |r: usize, gen: &[u32]| -> bool { self.stop_row(&state, &jobs, r, gen) };
        let opts = GenOptions {
            max_new_tokens: budget,
            // An id no token has: EOS never ends a row.
            eos_id: if spec.settings.ignore_eos {
                u32::MAX
            } else {
                self.tok.eot_id()
            },
            mask_id: self.tok.mask_id(),
            sampling: spec.settings.sampling.clone(),
            seed,
            stop: Some(&stop),
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decoder.generate(&self.model, &prompts, &opts, &mut |step: &StepTrace| {
                self.on_step(&state, &jobs, step, n_rows)
            })
        }));
        self.stats.active_rows.fetch_sub(n_rows, Ordering::SeqCst);
        let outcome = match result {
            Ok(Ok(g)) => Ok(g),
            Ok(Err(e)) => Err(format!("decoding failed: {e:#}")),
            Err(_) => Err("decoding failed: internal error in the decoder".to_string()),
        };
        let state = state.into_inner();
        for (j, job) in jobs.iter().enumerate() {
            if self.is_cancelled(job) {
                self.send_cancelled(job);
                continue;
            }
            match &outcome {
                Ok(g) => {
                    let res = self.job_result(j, job, g, &state, n_rows, decoder.name());
                    self.stats.completed.fetch_add(1, Ordering::SeqCst);
                    let _ = job.tx.send(Event::Done(res));
                }
                Err(message) => {
                    let _ = job.tx.send(Event::Failed {
                        message: message.clone(),
                        cancelled: false,
                    });
                }
            }
        }
    }

    /// The stop hook: called for the row whose step was traced last.
    fn stop_row(
        &self,
        state: &RefCell<BatchState>,
        jobs: &[Queued],
        r: usize,
        gen: &[u32],
    ) -> bool {
        let st = state.borrow();
        let row = &st.rows[r];
        let job = &jobs[row.job];
        if self.is_cancelled(job) || gen.len() >= row.max {
            return true;
        }
        let stops = &job.spec.stops;
        !stops.is_empty() && {
            let text = self.tok.decode(gen).unwrap_or_default();
            stops.iter().any(|s| text.contains(s.as_str()))
        }
    }

    fn on_step(
        &self,
        state: &RefCell<BatchState>,
        jobs: &[Queued],
        step: &StepTrace,
        batch_rows: usize,
    ) {
        let mut st = state.borrow_mut();
        if step.forward != st.last_forward {
            st.last_forward = step.forward;
            self.stats.forward_passes.fetch_add(1, Ordering::SeqCst);
            if !self.cfg.step_delay.is_zero() {
                std::thread::sleep(self.cfg.step_delay);
            }
        }
        let elapsed_s = st.start.elapsed().as_secs_f64();
        let Some(row) = st.rows.get_mut(step.row) else {
            return;
        };
        let job = &jobs[row.job];
        row.forwards += 1;
        for c in &step.committed {
            if c.pos >= row.committed.len() {
                row.committed.resize(c.pos + 1, None);
            }
            row.committed[c.pos] = Some(c.token);
        }
        if !(job.spec.stream || job.spec.trace) || self.is_cancelled(job) {
            return;
        }
        let eot = self.tok.eot_id();
        let prefix: Vec<u32> = row
            .committed
            .iter()
            .map_while(|t| *t)
            .take_while(|&t| t != eot)
            .take(row.max)
            .collect();
        if job.spec.stream && !row.stopped && prefix.len() > row.streamed_tokens {
            row.streamed_tokens = prefix.len();
            let text = self.tok.decode(&prefix).unwrap_or_default();
            let (safe, stopped) = safe_text(text.trim_end_matches('\u{FFFD}'), &job.spec.stops);
            row.stopped = stopped;
            if let Some(new) = safe.strip_prefix(row.sent.as_str()) {
                if !new.is_empty() {
                    let _ = job.tx.send(Event::Delta {
                        row: row.jrow,
                        text: new.to_string(),
                    });
                    row.sent = safe.to_string();
                }
            }
        }
        if job.spec.trace {
            let view = |s: &crate::decode::SlotTrace| SlotView {
                pos: s.pos,
                token: s.token,
                text: self.tok.decode(&[s.token]).unwrap_or_default(),
                confidence: s.confidence,
                masked: s.masked,
            };
            let text = self.tok.decode(&prefix).unwrap_or_default();
            let _ = job.tx.send(Event::Step(Box::new(StepView {
                row: row.jrow,
                forward: step.forward,
                step: step.step,
                row_forwards: row.forwards,
                slots: step.slots.iter().map(view).collect(),
                committed: step.committed.iter().map(view).collect(),
                text,
                tokens: prefix.len(),
                elapsed_s,
                batch_rows,
            })));
        }
    }

    fn job_result(
        &self,
        j: usize,
        job: &Queued,
        g: &Generation,
        state: &BatchState,
        batch_rows: usize,
        decoder: &'static str,
    ) -> JobResult {
        let mut rows = Vec::new();
        for (i, row) in state.rows.iter().enumerate().filter(|(_, r)| r.job == j) {
            let out = &g.rows[i];
            let tokens = &out.tokens[..out.tokens.len().min(row.max)];
            let full = self.tok.decode(tokens).unwrap_or_default();
            let (text, stopped) = cut_at_stop(&full, &job.spec.stops);
            let finish = match out.finish {
                Finish::Eos => "stop",
                _ if stopped => "stop",
                _ => "length",
            };
            rows.push(RowResult {
                text: text.to_string(),
                tokens: tokens.len(),
                forward_passes: out.forward_passes,
                finish,
            });
        }
        let n = rows.len().max(1) as f64;
        JobResult {
            prompt_tokens: job.spec.prompts.iter().map(|p| p.len()).sum(),
            completion_tokens: rows.iter().map(|r| r.tokens).sum(),
            forward_passes: rows.iter().map(|r| r.forward_passes).max().unwrap_or(0),
            tokens_per_forward: rows
                .iter()
                .map(|r| r.tokens as f64 / r.forward_passes.max(1) as f64)
                .sum::<f64>()
                / n,
            elapsed_s: g.elapsed_s,
            batch_rows,
            decoder,
            rows,
        }
    }
}

struct RowState {
    job: usize,
    /// Row index within its job.
    jrow: usize,
    max: usize,
    committed: Vec<Option<u32>>,
    forwards: usize,
    streamed_tokens: usize,
    sent: String,
    stopped: bool,
}

impl RowState {
    fn new(job: usize, jrow: usize, max: usize) -> Self {
        Self {
            job,
            jrow,
            max,
            committed: Vec::new(),
            forwards: 0,
            streamed_tokens: 0,
            sent: String::new(),
            stopped: false,
        }
    }
}

struct BatchState {
    rows: Vec<RowState>,
    last_forward: usize,
    start: std::time::Instant,
}

/// Text cut before the first stop string, and whether one was found.
pub fn cut_at_stop<'a>(text: &'a str, stops: &[String]) -> (&'a str, bool) {
    match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(cut) => (&text[..cut], true),
        None => (text, false),
    }
}

/// The part of `text` that can be sent now: cut before a stop string, and holding back a
/// tail that could still grow into one.
pub fn safe_text<'a>(text: &'a str, stops: &[String]) -> (&'a str, bool) {
    let (text, stopped) = cut_at_stop(text, stops);
    if stopped {
        return (text, true);
    }
    let mut hold = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                hold = hold.max(i);
            }
        }
    }
    (&text[..text.len() - hold], false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_text_holds_back_a_possible_stop() {
        let stops = vec!["\nUser:".to_string()];
        assert_eq!(safe_text("hi there\nUs", &stops), ("hi there", false));
        assert_eq!(safe_text("hi\nUser: x", &stops), ("hi", true));
        assert_eq!(safe_text("plain", &stops), ("plain", false));
        assert_eq!(safe_text("plain", &[]), ("plain", false));
    }
}
