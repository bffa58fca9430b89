//! Text as decoding commits it, for streaming (the CLI's `--stream` and the server): a row's
//! left-contiguous committed prefix, released only when it is final — cut before a stop
//! string, holding back a tail that could still become one and a partial UTF-8 character.
//! Also the text around a decode: a prompt's tokens within the context, a step's trace with
//! its tokens' text.

use super::{SlotTrace, StepTrace};
use crate::data::TextTokenizer;
use anyhow::{bail, Result};

/// The committed text of one row.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Committed tokens by position (None: not committed yet).
    committed: Vec<Option<u32>>,
    /// At most this many tokens count (a request's own budget inside a larger batch).
    max: usize,
    /// Tokens of the prefix already turned into text, and that text.
    streamed: usize,
    detok: Detok,
    sent: String,
    stopped: bool,
}

impl TextStream {
    pub fn new(max_tokens: usize) -> Self {
        Self {
            max: max_tokens,
            ..Self::default()
        }
    }

    /// Record the slots a step committed.
    pub fn commit(&mut self, slots: &[SlotTrace]) {
        for c in slots {
            if c.pos >= self.committed.len() {
                self.committed.resize(c.pos + 1, None);
            }
            self.committed[c.pos] = Some(c.token);
        }
    }

    /// The left-contiguous committed tokens before end-of-text, within the budget.
    pub fn prefix(&self, eot: u32) -> Vec<u32> {
        self.committed
            .iter()
            .map_while(|t| *t)
            .take_while(|&t| t != eot)
            .take(self.max)
            .collect()
    }

    /// Text that became final since the last call (None when there is none).
    pub fn delta(&mut self, tok: &TextTokenizer, stops: &[String]) -> Option<String> {
        let prefix = self.prefix(tok.eot_id());
        if self.stopped || prefix.len() <= self.streamed {
            return None;
        }
        self.streamed = prefix.len();
        let text = self.detok.update(tok, &prefix).to_string();
        self.release(&text, stops)
    }

    /// The committed prefix's text so far (a trailing incomplete character held back).
    pub fn text(&self) -> &str {
        &self.detok.text
    }

    /// The rest of the text once the row is finished with `tokens`.
    pub fn finish(
        &mut self,
        tok: &TextTokenizer,
        tokens: &[u32],
        stops: &[String],
    ) -> Option<String> {
        if self.stopped {
            return None;
        }
        let text = tok.decode(tokens).unwrap_or_default();
        let (text, _) = cut_at_stop(&text, stops);
        self.emit(text)
    }

    fn release(&mut self, text: &str, stops: &[String]) -> Option<String> {
        let (safe, stopped) = safe_text(text.trim_end_matches('\u{FFFD}'), stops);
        self.stopped = stopped;
        self.emit(safe)
    }

    fn emit(&mut self, text: &str) -> Option<String> {
        let new = text.strip_prefix(self.sent.as_str())?;
        if new.is_empty() {
            return None;
        }
        let new = new.to_string();
        self.sent = text.to_string();
        Some(new)
    }
}

/// A row's text decoded incrementally. Each call decodes only the tokens added since the
/// last complete character, with the previous call's tokens as context (a tokenizer may
/// render a token differently at the start of a text), so a row of n tokens costs O(n)
/// decoding instead of the O(n²) of decoding it whole at every commit.
#[derive(Debug, Default, Clone)]
pub struct Detok {
    text: String,
    /// `tokens[prefix..read]` is the context decoded again beside the new tokens.
    prefix: usize,
    read: usize,
}

impl Detok {
    /// The text of `tokens`, which extend the tokens of the previous call (a shorter list
    /// starts over), with a trailing incomplete UTF-8 character held back.
    pub fn update(&mut self, tok: &TextTokenizer, tokens: &[u32]) -> &str {
        if tokens.len() < self.read {
            *self = Self::default();
        }
        if tokens.len() > self.read {
            let before = tok
                .decode(&tokens[self.prefix..self.read])
                .unwrap_or_default();
            let now = tok.decode(&tokens[self.prefix..]).unwrap_or_default();
            if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
                match now.strip_prefix(before.as_str()) {
                    Some(new) => self.text.push_str(new),
                    // The new tokens changed how the context reads: decode it all once.
                    None => self.text = tok.decode(tokens).unwrap_or_default(),
                }
                (self.prefix, self.read) = (self.read, tokens.len());
            }
        }
        &self.text
    }
}

/// Whether a row's text contains one of its stop strings, searching only the text that is
/// new since the last call (plus a stop string's length of overlap).
#[derive(Debug, Default, Clone)]
pub struct StopScan {
    detok: Detok,
    checked: usize,
}

impl StopScan {
    pub fn hit(&mut self, tok: &TextTokenizer, tokens: &[u32], stops: &[String]) -> bool {
        if stops.is_empty() {
            return false;
        }
        let text = self.detok.update(tok, tokens);
        let overlap = stops.iter().map(|s| s.len()).max().unwrap_or(1) - 1;
        let mut from = if text.len() < self.checked {
            0
        } else {
            self.checked.saturating_sub(overlap)
        };
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        self.checked = text.len();
        stops.iter().any(|s| text[from..].contains(s.as_str()))
    }
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

/// A prompt's tokens, leaving room for `max_new` new ones in a context of `ctx`: `<|endoftext|>`
/// for an empty prompt; one too long keeps its end when `keep_end`, else is refused.
pub fn prompt_tokens(
    tok: &TextTokenizer,
    text: &str,
    max_new: usize,
    ctx: usize,
    keep_end: bool,
) -> Result<Vec<u32>> {
    let mut ids = tok.encode_prompt(text)?;
    if ids.len() + max_new > ctx {
        if !keep_end {
            bail!(
                "the prompt has {} tokens; with --max-new-tokens {max_new} that exceeds the model's context of {ctx} (shorten it, or pass --truncate-prompt left)",
                ids.len()
            );
        }
        ids.drain(..ids.len() + max_new - ctx);
    }
    Ok(ids)
}

/// One decoding step as a JSON trace line: each slot, committed and rejected token with its
/// text beside its id.
pub fn step_json(step: &StepTrace, tok: &TextTokenizer) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(step)?;
    for key in ["slots", "committed", "rejected"] {
        if let Some(arr) = v[key].as_array_mut() {
            for s in arr {
                let id = s["token"].as_u64().unwrap_or(0) as u32;
                s["text"] = serde_json::Value::String(tok.decode(&[id]).unwrap_or_default());
            }
        }
    }
    Ok(v)
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

    #[test]
    fn incremental_text_and_stop_scan_match_a_whole_decode() {
        use rand::{Rng, SeedableRng};
        let tok = TextTokenizer::train(&crate::data::embedded_documents(), 300).unwrap();
        let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
        let text = "Alice was beginning to get very tired; café, naïve, 東京 — fin.";
        let real = tok.encode(text).unwrap();
        for case in 0..40 {
            // Real text, then random ids (byte tokens that split characters included).
            let ids: Vec<u32> = if case == 0 {
                real.clone()
            } else {
                (0..60)
                    .map(|_| rng.random_range(0..tok.vocab_size() as u32))
                    .collect()
            };
            let (mut d, mut scan) = (Detok::default(), StopScan::default());
            let stops = vec!["e t".to_string(), "\u{FFFD}x".to_string()];
            let mut stopped = false;
            for n in 1..=ids.len() {
                let full = tok.decode(&ids[..n]).unwrap();
                let inc = d.update(&tok, &ids[..n]).to_string();
                assert!(full.starts_with(&inc), "{case}/{n}: {inc:?} vs {full:?}");
                if !full.ends_with('\u{FFFD}') {
                    assert_eq!(inc, full, "{case}/{n}");
                }
                if !stopped {
                    let want = stops.iter().any(|s| inc.contains(s.as_str()));
                    assert_eq!(scan.hit(&tok, &ids[..n], &stops), want, "{case}/{n}");
                    stopped = want;
                }
            }
            if case == 0 {
                assert_eq!(d.update(&tok, &ids), text);
            }
        }
    }

    #[test]
    fn the_stream_releases_the_left_contiguous_prefix_once() {
        let tok = TextTokenizer::train(&crate::data::embedded_documents(), 300).unwrap();
        let ids = tok.encode("Alice was here").unwrap();
        let slot = |pos: usize| SlotTrace::new(pos, ids[pos], 1.0, false);
        let mut s = TextStream::new(ids.len());
        // A later slot first: nothing is contiguous yet.
        s.commit(&[slot(1)]);
        assert_eq!(s.delta(&tok, &[]), None);
        s.commit(&[slot(0)]);
        let first = s.delta(&tok, &[]).unwrap();
        assert_eq!(first, tok.decode(&ids[..2]).unwrap());
        assert_eq!(s.delta(&tok, &[]), None, "nothing new");
        let rest = s.finish(&tok, &ids, &[]).unwrap();
        assert_eq!(first + &rest, "Alice was here");
    }
}
