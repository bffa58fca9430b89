//! One row's progress, shared by every decoder: the tokens it kept, the passes it took part
//! in, and the end-of-text / stop-condition / budget rules that finish it.

use super::{Finish, GenOptions, RowOutput};

#[derive(Debug, Clone)]
pub struct Progress {
    /// Generated tokens (end-of-text excluded).
    pub tokens: Vec<u32>,
    pub done: bool,
    pub finish: Finish,
    /// Forward passes this row took part in while still generating.
    pub forwards: usize,
}

impl Progress {
    pub fn new(opts: &GenOptions) -> Self {
        Self {
            tokens: Vec::with_capacity(opts.max_new_tokens),
            done: opts.max_new_tokens == 0,
            finish: Finish::Length,
            forwards: 0,
        }
    }

    /// Row `row` commits its next token: end-of-text finishes the row without keeping it; a
    /// stop condition or the budget finishes it after keeping it. Returns whether the token
    /// was kept.
    pub fn push(&mut self, row: usize, tok: u32, opts: &GenOptions) -> bool {
        if tok == opts.eos_id {
            (self.done, self.finish) = (true, Finish::Eos);
            return false;
        }
        self.tokens.push(tok);
        if opts.stop.is_some_and(|s| s(row, &self.tokens)) {
            (self.done, self.finish) = (true, Finish::Stop);
        } else if self.tokens.len() >= opts.max_new_tokens {
            self.done = true;
        }
        true
    }

    pub fn output(self) -> RowOutput {
        RowOutput {
            tokens: self.tokens,
            forward_passes: self.forwards,
            finish: self.finish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Sampling;

    fn opts<'a>(max: usize, stop: Option<super::super::StopFn<'a>>) -> GenOptions<'a> {
        GenOptions {
            max_new_tokens: max,
            eos_id: 0,
            mask_id: 1,
            sampling: Sampling::default(),
            seed: 0,
            stop,
            backend: None,
        }
    }

    #[test]
    fn eos_stop_and_budget_finish_a_row() {
        let o = opts(3, None);
        let mut p = Progress::new(&o);
        assert!(p.push(0, 5, &o) && p.push(0, 6, &o) && !p.done);
        assert!(p.push(0, 7, &o) && p.done && p.finish == Finish::Length);
        let mut p = Progress::new(&o);
        assert!(!p.push(0, 0, &o) && p.done && p.finish == Finish::Eos && p.tokens.is_empty());
        let stop = |_: usize, t: &[u32]| t.ends_with(&[9]);
        let o = opts(10, Some(&stop));
        let mut p = Progress::new(&o);
        assert!(p.push(0, 8, &o) && !p.done);
        assert!(p.push(0, 9, &o) && p.finish == Finish::Stop && p.tokens == [8, 9]);
        assert!(Progress::new(&opts(0, None)).done);
    }
}
