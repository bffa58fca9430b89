//! Prompt lookup: drafts copied from the text so far. The last few tokens are looked up
//! earlier in the prompt and the committed text, and what followed their latest earlier
//! occurrence is guessed to follow again (llama.cpp's lookup decoding, `transformers`'
//! `prompt_lookup_num_tokens`). Free to make and model-agnostic, strong where text repeats:
//! copying a passage, lists, code.

/// The longest suffix looked up, in tokens.
pub const NGRAM_MAX: usize = 3;
/// The shortest: a single repeated token predicts too little to pay for its positions.
pub const NGRAM_MIN: usize = 2;

/// Up to `max` tokens that followed the latest earlier occurrence of the text's last n tokens
/// (n from `NGRAM_MAX` down to `NGRAM_MIN`, the longest that occurs), the text being the
/// `parts` joined; empty when none occurs. A copy that reaches the end of the text goes on
/// through its own drafts: text that loops with period p drafts the loop, not p tokens.
pub fn continuation(parts: &[&[u32]], max: usize) -> Vec<u32> {
    continuations(parts, max, 1).pop().unwrap_or_default()
}

/// Up to `count` continuations as [`continuation`] gives the first, each starting with a
/// token none before it starts with: the next occurrences, latest and longest match first
/// (the alternatives of a draft tree).
pub fn continuations(parts: &[&[u32]], max: usize, count: usize) -> Vec<Vec<u32>> {
    // The parts are read in place: this runs before every pass of every row.
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let at = |mut i: usize| {
        for p in parts {
            if i < p.len() {
                return p[i];
            }
            i -= p.len();
        }
        unreachable!("index {i} past the text")
    };
    let mut found: Vec<Vec<u32>> = Vec::new();
    if max == 0 || count == 0 {
        return found;
    }
    for n in (NGRAM_MIN..=NGRAM_MAX.min(len.saturating_sub(1))).rev() {
        let occurs = |i: usize| (0..n).all(|j| at(i + j) == at(len - n + j));
        // Latest first: recent text predicts the next tokens best. The match must end before
        // the suffix starts over itself, so it has at least one following token.
        for start in (0..len - n).rev().filter(|&i| occurs(i)) {
            let from = start + n;
            if found.iter().any(|f| f[0] == at(from)) {
                continue;
            }
            let mut out: Vec<u32> = (from..len.min(from + max)).map(at).collect();
            for j in out.len()..max {
                out.push(out[j - (len - from)]);
            }
            found.push(out);
            if found.len() == count {
                return found;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_longest_match_gives_what_followed_it() {
        // "1 2 3 4 5 … 1 2 3" continues "4 5"; the later "9 2 3 7" matches only 2 tokens.
        let prompt = [1, 2, 3, 4, 5, 6, 9, 2, 3, 7];
        assert_eq!(continuation(&[&prompt, &[1, 2, 3]], 2), vec![4, 5]);
        // With 2 tokens the latest occurrence wins: "2 3" → "7 8 2".
        assert_eq!(continuation(&[&prompt, &[8, 2, 3]], 3), vec![7, 8, 2]);
        // A match that runs into the end goes on through its own drafts.
        assert_eq!(
            continuation(&[&[5, 6, 7, 5, 6]], 7),
            vec![7, 5, 6, 7, 5, 6, 7]
        );
    }

    #[test]
    fn no_draft_without_a_repeated_ngram() {
        assert!(continuation(&[&[1, 2, 3, 4]], 4).is_empty());
        // A single repeated token is below NGRAM_MIN.
        assert!(continuation(&[&[1, 2, 3, 1]], 4).is_empty());
        assert!(continuation(&[&[], &[7]], 4).is_empty());
        assert!(continuation(&[&[1, 2, 1, 2]], 0).is_empty());
    }

    #[test]
    fn a_repeating_text_drafts_its_period() {
        // "a b c a b c a b" → "c a b c …".
        let t = [10, 11, 12, 10, 11, 12, 10, 11];
        assert_eq!(continuation(&[&t], 5), vec![12, 10, 11, 12, 10]);
        // A run of one token drafts the run.
        assert_eq!(continuation(&[&[4], &[9, 9, 9]], 4), vec![9; 4]);
    }

    #[test]
    fn continuations_differ_in_their_first_token() {
        // "2 3" was followed by 4, then 7, then 4 again (latest): 4 first, then 7.
        let t = [1, 2, 3, 7, 9, 2, 3, 4, 5, 2, 3, 4, 6, 2, 3];
        assert_eq!(continuations(&[&t], 2, 3), vec![vec![4, 6], vec![7, 9]]);
        assert_eq!(continuations(&[&t], 2, 1), vec![continuation(&[&t], 2)]);
        assert!(continuations(&[&t], 2, 0).is_empty());
    }
}
