//! Autoregressive decoding: prefill the prompt, then one token per forward pass.

use super::{
    check_budget, row_rng, Decoder, Finish, GenOptions, Generation, RowOutput, SlotTrace, StepTrace,
};
use crate::config::ObjectiveKind;
use crate::model::{Backend, Session, Transformer};
use anyhow::Result;
use std::time::Instant;

pub struct ArDecoder;

impl Decoder for ArDecoder {
    fn name(&self) -> &'static str {
        "ar"
    }

    fn fits(&self, objective: ObjectiveKind) -> bool {
        matches!(objective, ObjectiveKind::Arm | ObjectiveKind::Card)
    }

    fn generate(
        &self,
        model: &Transformer,
        prompts: &[Vec<u32>],
        opts: &GenOptions,
        on_step: &mut dyn FnMut(&StepTrace),
    ) -> Result<Generation> {
        check_budget(model, prompts, opts.max_new_tokens)?;
        let start = Instant::now();
        let b = prompts.len();
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        let backend = Backend::for_model(model);
        let mut stepper = Session::new(
            model,
            backend,
            b,
            longest + opts.max_new_tokens,
            longest + 1,
            opts.eos_id,
        )?;
        let mut rngs: Vec<_> = (0..b).map(|r| row_rng(opts.seed, r)).collect();
        let mut rows: Vec<RowOutput> = (0..b)
            .map(|_| RowOutput {
                tokens: Vec::with_capacity(opts.max_new_tokens),
                forward_passes: 0,
                finish: Finish::Length,
            })
            .collect();
        let mut done = vec![opts.max_new_tokens == 0; b];
        let mut inputs: Vec<Vec<u32>> = prompts.to_vec();
        let mut forwards = 0;
        // One trace buffer for every step: the loop allocates nothing of its own per token.
        let mut trace = StepTrace {
            row: 0,
            forward: 0,
            step: 1,
            slots: Vec::with_capacity(1),
            committed: Vec::with_capacity(1),
        };
        while done.iter().any(|d| !d) {
            stepper.forward(&inputs)?;
            forwards += 1;
            for r in 0..b {
                if done[r] {
                    continue;
                }
                let row = &mut rows[r];
                row.forward_passes += 1;
                let l = stepper.logits(r, inputs[r].len() - 1);
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
                if tok == opts.eos_id {
                    (done[r], row.finish) = (true, Finish::Eos);
                } else {
                    row.tokens.push(tok);
                    if opts.stop.is_some_and(|s| s(r, &row.tokens)) {
                        (done[r], row.finish) = (true, Finish::Stop);
                    } else if row.tokens.len() >= opts.max_new_tokens {
                        done[r] = true;
                    }
                }
                inputs[r].clear();
                inputs[r].push(tok);
            }
            for r in 0..b {
                if done[r] {
                    inputs[r].clear();
                }
            }
        }
        Ok(Generation {
            rows,
            forward_passes: forwards,
            elapsed_s: start.elapsed().as_secs_f64(),
        })
    }
}
