//! Autoregressive decoding: prefill the prompt, then one token per forward pass.

use super::{
    check_budget, forward_rows, logits_at, new_cache, row_rng, Decoder, Finish, GenOptions,
    Generation, RowOutput, SlotTrace, StepTrace,
};
use crate::config::ObjectiveKind;
use crate::model::Transformer;
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
        let mut cache = new_cache(model, b, longest + 1)?;
        let mut rngs: Vec<_> = (0..b).map(|r| row_rng(opts.seed, r)).collect();
        let mut rows: Vec<RowOutput> = (0..b)
            .map(|_| RowOutput {
                tokens: Vec::new(),
                forward_passes: 0,
                finish: Finish::Length,
            })
            .collect();
        let mut done = vec![opts.max_new_tokens == 0; b];
        let mut inputs: Vec<Vec<u32>> = prompts.to_vec();
        let mut forwards = 0;
        while done.iter().any(|d| !d) {
            let logits = forward_rows(model, &mut cache, &inputs, opts.eos_id)?;
            forwards += 1;
            for r in 0..b {
                if done[r] {
                    continue;
                }
                let row = &mut rows[r];
                row.forward_passes += 1;
                let l = logits_at(&logits, r, inputs[r].len() - 1)?;
                let context = [prompts[r].as_slice(), row.tokens.as_slice()];
                let (tok, conf) = opts
                    .sampling
                    .pick(&l, &context, &[opts.mask_id], &mut rngs[r]);
                let slot = SlotTrace {
                    pos: row.tokens.len(),
                    token: tok,
                    confidence: conf,
                    masked: false,
                };
                on_step(&StepTrace {
                    row: r,
                    forward: forwards,
                    step: 1,
                    slots: vec![slot.clone()],
                    committed: vec![slot],
                });
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
