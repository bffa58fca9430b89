//! Pure text-cleaning functions: byte decoding, plain-text normalisation and Brown-corpus
//! detokenisation. No I/O here.

/// Decode bytes as UTF-8 (a leading BOM is dropped), falling back to Latin-1 (ISO-8859-1) when
/// the bytes are not valid UTF-8. Returns the text and whether the fallback was used.
pub fn decode_bytes(bytes: &[u8]) -> (String, bool) {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), false),
        Err(_) => (bytes.iter().map(|&b| b as char).collect(), true),
    }
}

/// Whether `bytes` look like binary data: any NUL byte, or more than 10% control characters
/// (other than tab, newline, carriage return and form feed) after decoding.
pub fn looks_binary(bytes: &[u8]) -> bool {
    if bytes.contains(&0) {
        return true;
    }
    let (text, _) = decode_bytes(bytes);
    let mut total = 0usize;
    let mut control = 0usize;
    for c in text.chars() {
        total += 1;
        if c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c') {
            control += 1;
        }
    }
    total > 0 && control * 10 > total
}

/// Normalise plain text: CRLF/CR line endings to LF, trailing whitespace removed from every
/// line, leading/trailing blank lines removed, a single final newline (empty input stays empty).
pub fn normalize_text(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(text.len() + 1);
    for line in text.trim_matches('\n').lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if out.trim().is_empty() {
        String::new()
    } else {
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
        out
    }
}

/// Strip the POS tag from a Brown `word/tag` token: the tag follows the LAST '/', so
/// `1-1/2/cd` gives `1-1/2`. A token without '/' is returned unchanged.
pub fn strip_tag(token: &str) -> &str {
    match token.rfind('/') {
        Some(i) => &token[..i],
        None => token,
    }
}

/// Turn one file of the tagged Brown corpus into plain text. Paragraphs start after a blank
/// line or at a tab-indented line, and a headline line (all tags `-hl`) is a paragraph of its
/// own; paragraphs are joined by a blank line in the output. Inside a paragraph the sentences
/// (one per line) are joined with spaces, tags are stripped, `` and '' become `"`, and
/// punctuation is re-attached (see [`detokenize`]).
pub fn clean_brown(raw: &str) -> String {
    let raw = raw.replace("\r\n", "\n");
    let mut paragraphs: Vec<String> = Vec::new();
    let mut words: Vec<&str> = Vec::new();
    let flush = |words: &mut Vec<&str>, paragraphs: &mut Vec<String>| {
        if !words.is_empty() {
            paragraphs.push(detokenize(words));
            words.clear();
        }
    };
    for line in raw.lines() {
        if line.trim().is_empty() || line.starts_with('\t') {
            flush(&mut words, &mut paragraphs);
        }
        let headline = is_headline(line);
        if headline {
            flush(&mut words, &mut paragraphs);
        }
        for token in line.split_whitespace() {
            let word = strip_tag(token);
            if !word.is_empty() {
                words.push(word);
            }
        }
        if headline {
            flush(&mut words, &mut paragraphs);
        }
    }
    flush(&mut words, &mut paragraphs);
    if paragraphs.is_empty() {
        return String::new();
    }
    let mut out = paragraphs.join("\n\n");
    out.push('\n');
    out
}

/// A headline line: every token's tag ends in `-hl` (Brown headlines are not followed by a blank
/// line, so they are made paragraphs of their own).
fn is_headline(line: &str) -> bool {
    let mut tokens = line.split_whitespace().peekable();
    tokens.peek().is_some()
        && tokens.all(|t| t.rfind('/').is_some_and(|i| t[i + 1..].ends_with("-hl")))
}

/// Tokens that attach to the previous token (no space before them).
fn attaches_left(word: &str) -> bool {
    const CLOSERS: &[&str] = &[
        ",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "...", "n't", "'s", "'re", "'ve", "'ll",
        "'d", "'m",
    ];
    CLOSERS.iter().any(|c| c.eq_ignore_ascii_case(word))
}

/// Tokens after which no space is written.
fn attaches_right(word: &str) -> bool {
    matches!(word, "(" | "[" | "{")
}

/// Join pre-tokenized words into running text: no space before `, . ; : ! ? ) ] } %` and
/// clitics (`n't 's 're 've 'll 'd 'm`), no space after opening brackets and opening quotes.
/// `` opens and '' closes a double quote (both written `"`); a bare `"` or `'` alternates
/// between opening and closing within the call. A `.` right after an abbreviation ending in
/// `.` (`Jr.`) is dropped.
pub fn detokenize(words: &[&str]) -> String {
    let mut out = String::new();
    let mut glue_next = true; // no space before the next token
    let mut double_open = false;
    let mut single_open = false;
    let mut prev = "";
    for &word in words {
        // `Jr.` followed by the sentence's `.` is written once.
        let abbreviation = prev.len() > 1 && prev.ends_with('.');
        prev = word;
        if word == "." && abbreviation {
            continue;
        }
        let (text, left, right) = match word {
            "``" => {
                double_open = true;
                ("\"", false, true)
            }
            "''" => {
                double_open = false;
                ("\"", true, false)
            }
            "\"" => {
                double_open = !double_open;
                ("\"", !double_open, double_open)
            }
            "'" => {
                single_open = !single_open;
                ("'", !single_open, single_open)
            }
            w => (w, attaches_left(w), attaches_right(w)),
        };
        if !(glue_next || left) {
            out.push(' ');
        }
        out.push_str(text);
        glue_next = right;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_utf8_and_latin1() {
        assert_eq!(
            decode_bytes("caf\u{e9}".as_bytes()),
            ("café".to_string(), false)
        );
        assert_eq!(decode_bytes(b"caf\xe9"), ("café".to_string(), true));
        assert_eq!(decode_bytes(b"\xEF\xBB\xBFhi"), ("hi".to_string(), false));
    }

    #[test]
    fn binary_detection() {
        assert!(looks_binary(b"abc\0def"));
        assert!(looks_binary(&[1, 2, 3, 4, 5, 6, 7, 8, b'a']));
        assert!(!looks_binary(b"plain text\twith tabs\r\nand lines\n"));
        assert!(!looks_binary(b"caf\xe9 au lait"));
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_text("\r\n\na  \r\nb\rc\n\n\n"), "a\nb\nc\n");
        assert_eq!(normalize_text(" \n \n"), "");
        assert_eq!(normalize_text("x\n\n\ny"), "x\n\n\ny\n");
    }

    #[test]
    fn tags_are_stripped_after_last_slash() {
        assert_eq!(strip_tag("The/at"), "The");
        assert_eq!(strip_tag("1-1/2/cd"), "1-1/2");
        assert_eq!(strip_tag("didn't/dod*"), "didn't");
        assert_eq!(strip_tag("plain"), "plain");
    }

    #[test]
    fn brown_snippet() {
        let raw = "\n\n\tThe/at jury/nn said/vbd ,/, ``/`` it/pps is/bez n't/* (/( really/rb )/) \
                   done/vbn ''/'' ./.\nWas/bedz it/pps ?/. ?/.\n\n\n\nHeadline/nn-hl here/rb-hl \n\
                   He/pps said/vbd ,/, '/' Don't/do* worry/vb '/' ''/'' ;/. John's/np$ 50/cd %/nn !/.\n";
        let expected = "The jury said, \"it isn't (really) done\". Was it??\n\n\
                        Headline here\n\n\
                        He said, 'Don't worry'\"; John's 50%!\n";
        assert_eq!(clean_brown(raw), expected);
    }

    #[test]
    fn brown_paragraph_breaks_and_empty_input() {
        let raw = "\tA/at b/nn ./.\nC/nn d/nn ./.\n\n\n\tE/nn ./.\n";
        assert_eq!(clean_brown(raw), "A b. C d.\n\nE.\n");
        assert_eq!(clean_brown("\n \n\t\n"), "");
    }

    #[test]
    fn detokenize_quotes_and_brackets() {
        assert_eq!(
            detokenize(&["He", "said", "\"", "hi", "\"", "[", "x", "]", "'s", "end"]),
            "He said \"hi\" [x]'s end"
        );
        assert_eq!(detokenize(&["``", "Yes", "''", "."]), "\"Yes\".");
        assert_eq!(detokenize(&["Allen", "Jr.", ".", "Next"]), "Allen Jr. Next");
        assert_eq!(detokenize(&["wait", ".", ".", "."]), "wait...");
    }
}
