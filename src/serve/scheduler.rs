//! The scheduler behind `card serve`: a bounded queue of jobs and worker threads that own
//! no async runtime. A worker takes the oldest waiting job plus every other waiting job
//! with the same decoder settings (up to `max_batch` rows) and decodes them in one batched
//! `generate` call, so concurrent requests share forward passes instead of waiting in line.
//!
//! The decoders take one stop hook for the whole batch, called right after the trace of the
//! row it is about (`on_step` for row r, then the stop checks of row r's accepted tokens). The
//! scheduler uses that order to give every row its own stop strings, token budget and
//! cancellation flag (`rows`); a row whose request is gone (client disconnected) stops at its
//! next commit, and the worker skips jobs cancelled while they wait.

use super::job::{Event, JobSpec};
use super::rows::{job_result, JobView, RowState};
use crate::data::TextTokenizer;
use crate::decode::{Decoder, GenOptions, StepTrace};
use crate::model::Transformer;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

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

/// A queue place, taken before a request is tokenized (so tokenizing is bounded by the
/// queue's capacity) and freed when the job is finished or dropped unrun.
pub struct Permit(Arc<AtomicUsize>);

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

pub struct SchedulerConfig {
    pub capacity: usize,
    pub max_batch: usize,
    pub workers: usize,
    pub step_delay: Duration,
}

pub struct Scheduler {
    model: Arc<Transformer>,
    tok: TextTokenizer,
    cfg: SchedulerConfig,
    queue: Mutex<VecDeque<Queued>>,
    ready: Condvar,
    admitted: Arc<AtomicUsize>,
    closed: AtomicBool,
    cancel_all: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Fault injection for the tests (`CARD_SERVE_PANIC_AT_FORWARD`): panic in the decoder
    /// at this batched forward pass.
    panic_at: Option<u64>,
    pub stats: Stats,
}

impl Scheduler {
    pub fn new(model: Transformer, tok: TextTokenizer, cfg: SchedulerConfig) -> Arc<Self> {
        Arc::new(Self {
            model: Arc::new(model),
            tok,
            cfg,
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            admitted: Arc::new(AtomicUsize::new(0)),
            closed: AtomicBool::new(false),
            cancel_all: AtomicBool::new(false),
            failure: Mutex::new(None),
            panic_at: std::env::var("CARD_SERVE_PANIC_AT_FORWARD")
                .ok()
                .and_then(|v| v.parse().ok()),
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
                    .spawn(move || {
                        let work = std::panic::AssertUnwindSafe(|| me.work());
                        if std::panic::catch_unwind(work).is_err() {
                            me.fail("a decoding worker panicked outside a batch".into());
                        }
                    })
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

    /// Take a queue place, or refuse at once when the queue is full or the server is
    /// stopping.
    pub fn reserve(&self) -> Result<Permit, SubmitError> {
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
        Ok(Permit(Arc::clone(&self.admitted)))
    }

    /// Queue a job in the place `permit` holds.
    pub fn submit(&self, spec: JobSpec, permit: Permit) -> Result<Ticket, SubmitError> {
        if self.is_closed() {
            return Err(SubmitError::ShuttingDown);
        }
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

    /// Why decoding stopped working (a worker panicked or exited), if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A failure is final: a panic may leave shared state (candle's thread pool lock among
    /// it) poisoned, so the server stops admitting, and `card serve` exits non-zero for a
    /// supervisor to restart it, instead of answering every later request with a 500.
    fn fail(&self, why: String) {
        eprintln!("card serve: {why}; no more requests are admitted and the server stops");
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(why);
        drop(f);
        self.close();
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
        let decoder = &spec.settings.decoder;
        let budget = jobs.iter().map(|j| j.spec.max_tokens).max().unwrap_or(1);
        let seed = spec
            .seed
            .unwrap_or_else(|| self.stats.batches.load(Ordering::SeqCst) ^ 0x5eed_0000_0000_0000);
        let state = RefCell::new(BatchState {
            rows,
            last_forward: 0,
            start: std::time::Instant::now(),
        });
        let stop = |r: usize, gen: &[u32]| -> bool {
            let mut st = state.borrow_mut();
            let row = &mut st.rows[r];
            let job = self.view(&jobs[row.job]);
            row.stops(&job, &self.tok, gen)
        };
        let opts = GenOptions {
            // An id no token has: EOS never ends a row.
            eos_id: if spec.settings.ignore_eos {
                u32::MAX
            } else {
                self.tok.eot_id()
            },
            sampling: spec.settings.sampling.clone(),
            seed,
            stop: Some(&stop),
            ..GenOptions::new(budget, &self.tok)
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decoder.generate(&self.model, &prompts, &opts, &mut |step: &StepTrace| {
                self.on_step(&state, &jobs, step, n_rows)
            })
        }));
        self.stats.active_rows.fetch_sub(n_rows, Ordering::SeqCst);
        // The details go to the server's log, not to clients.
        let outcome = match result {
            Ok(Ok(g)) => Ok(g),
            Ok(Err(e)) => {
                eprintln!("card serve: decoding a batch of {n_rows} row(s) failed: {e:#}");
                Err("decoding failed (an internal error; the server log has the details)")
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                self.fail(format!("a decoding worker panicked: {what}"));
                Err("decoding failed (an internal error; the server log has the details)")
            }
        };
        let state = state.into_inner();
        for (j, job) in jobs.iter().enumerate() {
            if self.is_cancelled(job) {
                self.send_cancelled(job);
                continue;
            }
            match &outcome {
                Ok(g) => {
                    let res = job_result(
                        j,
                        &job.spec,
                        g,
                        &state.rows,
                        &self.tok,
                        n_rows,
                        decoder.name(),
                    );
                    self.stats.completed.fetch_add(1, Ordering::SeqCst);
                    let _ = job.tx.send(Event::Done(res));
                }
                Err(message) => {
                    let _ = job.tx.send(Event::Failed {
                        message: message.to_string(),
                        cancelled: false,
                    });
                }
            }
        }
    }

    fn view<'a>(&self, job: &'a Queued) -> JobView<'a> {
        JobView {
            spec: &job.spec,
            tx: &job.tx,
            cancelled: self.is_cancelled(job),
        }
    }

    /// One row's step: count the batch's forward passes (and pause in slow motion), then the
    /// row's own text and trace.
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
            let n = self.stats.forward_passes.fetch_add(1, Ordering::SeqCst) + 1;
            if self.panic_at == Some(n) {
                panic!("fault injected at forward pass {n} (CARD_SERVE_PANIC_AT_FORWARD)");
            }
            if !self.cfg.step_delay.is_zero() {
                std::thread::sleep(self.cfg.step_delay);
            }
        }
        let elapsed_s = st.start.elapsed().as_secs_f64();
        if let Some(row) = st.rows.get_mut(step.row) {
            let job = self.view(&jobs[row.job]);
            row.on_step(&job, &self.tok, step, elapsed_s, batch_rows);
        }
    }
}

struct BatchState {
    rows: Vec<RowState>,
    last_forward: usize,
    start: std::time::Instant,
}
