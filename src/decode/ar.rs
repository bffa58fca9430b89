//! Autoregressive decoding: prefill the prompt, then one token per forward pass.

use super::window::{Batch, RowState};
use super::{Decoder, GenOptions, Generation, SlotTrace, StepTrace};
use crate::config::ObjectiveKind;
use crate::model::Transformer;
use anyhow::Result;

pub struct ArDecoder;

impl Decoder for ArDecoder {
    fn name(&self) -> &'static str {
        "ar"
    }

    fn fits(&self, objective: ObjectiveKind) -> bool {
        objective.is_causal()
    }

    fn generate(
        &self,
        model: &Transformer,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        on_step: &mut dyn FnMut(&StepTrace),
    ) -> Result<Generation> {
        let (mut batch, mut rngs) = Batch::start(model, prompts, opts, 1)?;
        // A row feeds its last token (the prompt at first) and has no window.
        let mut rows: Vec<RowState<u32>> =
            prompts.iter().map(|p| RowState::new(p, opts, 0)).collect();
        // One trace buffer for every step: the loop allocates nothing of its own per token.
        let mut trace = StepTrace::reused(1);
        while rows.iter().any(|r| !r.progress.done) {
            batch.pass(rows.iter_mut().map(|row| (row, 0)), opts.mask_id)?;
            for (r, row) in rows.iter_mut().enumerate() {
                if row.progress.done {
                    continue;
                }
                let l = batch
                    .logits(r)
                    .predicting(0)
                    .expect("a live row feeds its last token");
                let context = [prompts[r].as_slice(), row.progress.tokens.as_slice()];
                let (tok, conf) = opts
                    .sampling
                    .pick(l, &context, &[opts.mask_id], &mut rngs[r]);
                let slot = SlotTrace::new(row.first(), tok, conf, false);
                trace.start(r, batch.forwards(), 1);
                trace.slots.push(slot.clone());
                trace.committed.push(slot);
                on_step(&trace);
                row.commit(r, &[tok], 0, opts);
            }
        }
        let rows = rows.into_iter().map(|r| r.progress).collect();
        Ok(batch.finish(rows, prompts))
    }
}
