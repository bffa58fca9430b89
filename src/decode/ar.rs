//! Autoregressive decoding: prefill the prompt, then one token per forward pass.

use super::{Decoder, GenOptions, Generation, Progress, SlotTrace, Start, StepTrace};
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
        let begin = Start::new(model, prompts, opts)?;
        let b = prompts.len();
        let mut session = begin.session(model, opts, b, 1)?;
        let Start {
            clock: start,
            mut rngs,
            ..
        } = begin;
        let mut rows: Vec<Progress> = (0..b).map(|_| Progress::new(opts)).collect();
        let mut inputs: Vec<Vec<u32>> = prompts.to_vec();
        let mut forwards = 0;
        // One trace buffer for every step: the loop allocates nothing of its own per token.
        let mut trace = StepTrace {
            row: 0,
            forward: 0,
            step: 1,
            slots: Vec::with_capacity(1),
            committed: Vec::with_capacity(1),
            rejected: Vec::new(),
        };
        while rows.iter().any(|r| !r.done) {
            session.forward(&inputs)?;
            forwards += 1;
            for (r, row) in rows.iter_mut().enumerate() {
                if row.done {
                    inputs[r].clear();
                    continue;
                }
                row.forwards += 1;
                let l = session.logits(r, inputs[r].len() - 1);
                let context = [prompts[r].as_slice(), row.tokens.as_slice()];
                let (tok, conf) = opts
                    .sampling
                    .pick(l, &context, &[opts.mask_id], &mut rngs[r]);
                let slot = SlotTrace {
                    pos: row.tokens.len(),
                    token: tok,
                    confidence: conf,
                    masked: false,
                };
                (trace.row, trace.forward) = (r, forwards);
                trace.slots.clear();
                trace.slots.push(slot.clone());
                trace.committed.clear();
                trace.committed.push(slot);
                on_step(&trace);
                row.push(r, tok, opts);
                inputs[r].clear();
                if !row.done {
                    inputs[r].push(tok);
                }
            }
        }
        Ok(Generation::from_rows(
            rows,
            forwards,
            session.fed(),
            prompts,
            start,
        ))
    }
}
