//! Text as decoding commits it, for streaming (the CLI's `--stream` and the server): a row's
//! left-contiguous committed prefix, released only when it is final — cut before a stop
//! string, holding back a tail that could still become one and a partial UTF-8 character.

use super::SlotTrace;
use crate::data::TextTokenizer;

/// The committed text of one row.
#[derive(Debug, Default)]
pub struct TextStream {
    /// Committed tokens by position (None: not committed yet).
    committed: Vec<Option<u32>>,
    /// At most this many tokens count (a request's own budget inside a larger batch).
    max: usize,
    /// Tokens of the prefix already turned into text.
    streamed: usize,
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
        self.release(&tok.decode(&prefix).unwrap_or_default(), stops)
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

    #[test]
    fn the_stream_releases_the_left_contiguous_prefix_once() {
        let tok = TextTokenizer::train(&crate::data::embedded_documents(), 300).unwrap();
        let ids = tok.encode("Alice was here").unwrap();
        let slot = |pos: usize| SlotTrace {
            pos,
            token: ids[pos],
            confidence: 1.0,
            masked: false,
        };
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
