//! What every request handler shares: the scheduler, the tokenizer, the model's
//! description and the server's limits; and the clock the responses are stamped with.

use super::api::ModelInfo;
use super::scheduler::Scheduler;
use crate::data::TextTokenizer;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) struct App {
    pub scheduler: Arc<Scheduler>,
    pub tok: TextTokenizer,
    pub info: ModelInfo,
    pub max_body_bytes: usize,
    pub created: u64,
    pub objective: &'static str,
    pub max_batch: usize,
    pub workers: usize,
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    /// Requests tokenized at once (the rest wait, already holding a queue place).
    pub parsing: tokio::sync::Semaphore,
}

pub(crate) fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
