//! Cutting narration text into TTS chunks: at sentence ends, under a
//! character budget, never inside a word.
//!
//! Sentences are packed greedily into chunks of at most `max_chars`
//! characters (Unicode scalar values). A sentence longer than the budget is
//! cut at word boundaries, preferring a clause break (after `,` `;` `:` or a
//! dash) in the second half of the piece, where a reader would pause
//! anyway. A single word longer than the budget (a URL, say) becomes a chunk
//! of its own rather than being cut. Whitespace runs collapse to one space;
//! a blank line ends a sentence even without punctuation.

/// Characters that end a sentence when followed by whitespace or the end.
const TERMINALS: &[char] = &['.', '!', '?', '…', '。', '！', '？'];

/// Characters that may follow a terminal and still belong to the sentence.
const CLOSERS: &[char] = &['"', '\'', ')', ']', '}', '”', '’', '»'];

/// Words after which a period does not end the sentence.
const ABBREVIATIONS: &[&str] =
    &["mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "no", "fig", "approx"];

/// Splits `text` into chunks of at most `max_chars` characters (see the
/// module docs). Returns no chunks for blank text.
pub fn split_text(text: &str, max_chars: usize) -> Vec<String> {
    let max_chars = max_chars.max(1);
    let mut units = Vec::new();
    for sentence in sentences(text) {
        if char_len(&sentence) <= max_chars {
            units.push(sentence);
        } else {
            units.extend(split_long(&sentence, max_chars));
        }
    }
    pack(units, max_chars)
}

fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// The sentences of `text`, whitespace-normalised and trimmed.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for paragraph in paragraphs(text) {
        let words: Vec<&str> = paragraph.split_whitespace().collect();
        let mut current: Vec<&str> = Vec::new();
        for word in words {
            current.push(word);
            if ends_sentence(word) {
                out.push(current.join(" "));
                current.clear();
            }
        }
        if !current.is_empty() {
            out.push(current.join(" "));
        }
    }
    out
}

/// Splits at blank lines (a line holding only whitespace).
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.trim().is_empty() {
                out.push(std::mem::take(&mut current));
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Whether a whitespace-delimited word closes its sentence.
fn ends_sentence(word: &str) -> bool {
    let core = word.trim_end_matches(CLOSERS);
    let Some(last) = core.chars().last() else {
        return false;
    };
    if !TERMINALS.contains(&last) {
        return false;
    }
    if last == '.' {
        let stem = core.trim_end_matches('.').trim_start_matches(['"', '\'', '(', '[', '“', '‘', '«']);
        // "Dr." and "e.g." are not sentence ends, and neither is an
        // initial like the "J." in "J. Smith".
        if ABBREVIATIONS.contains(&stem.to_lowercase().as_str()) {
            return false;
        }
        let mut chars = stem.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            if c.is_uppercase() {
                return false;
            }
        }
    }
    true
}

/// Cuts one over-long sentence at word boundaries.
fn split_long(sentence: &str, max_chars: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut piece: Vec<&str> = Vec::new();
    let mut len = 0;
    for word in sentence.split(' ') {
        let wlen = char_len(word);
        let added = if piece.is_empty() { wlen } else { len + 1 + wlen };
        if added <= max_chars || piece.is_empty() {
            piece.push(word);
            len = added;
            continue;
        }
        // Over budget: close the piece, at a clause break in its second
        // half if there is one.
        let cut = clause_cut(&piece, max_chars).unwrap_or(piece.len());
        out.push(piece[..cut].join(" "));
        let carried: Vec<&str> = piece[cut..].to_vec();
        piece = carried;
        piece.push(word);
        len = piece.iter().map(|w| char_len(w)).sum::<usize>() + piece.len() - 1;
        // The carried words plus this one may still exceed the budget.
        while len > max_chars && piece.len() > 1 {
            let cut = clause_cut(&piece[..piece.len() - 1], max_chars).unwrap_or(piece.len() - 1);
            out.push(piece[..cut].join(" "));
            piece.drain(..cut);
            len = piece.iter().map(|w| char_len(w)).sum::<usize>() + piece.len() - 1;
        }
    }
    if !piece.is_empty() {
        out.push(piece.join(" "));
    }
    out
}

/// Index just after the last clause-ending word that lies in the second
/// half of the budget, if any.
fn clause_cut(piece: &[&str], max_chars: usize) -> Option<usize> {
    let mut pos = 0;
    let mut best = None;
    for (i, w) in piece.iter().enumerate() {
        pos += char_len(w) + usize::from(i > 0);
        if i + 1 < piece.len() && pos * 2 >= max_chars && w.ends_with([',', ';', ':', '—', '–']) {
            best = Some(i + 1);
        }
    }
    best
}

/// Greedily joins units into chunks within the budget.
fn pack(units: Vec<String>, max_chars: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut len = 0;
    for unit in units {
        let ulen = char_len(&unit);
        if current.is_empty() {
            current = unit;
            len = ulen;
        } else if len + 1 + ulen <= max_chars {
            current.push(' ');
            current.push_str(&unit);
            len += 1 + ulen;
        } else {
            out.push(std::mem::replace(&mut current, unit));
            len = ulen;
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, max: usize, expected: &[&str]) {
        let got = split_text(text, max);
        assert_eq!(got, expected, "split_text({text:?}, {max})");
        // Whatever the case, no word is ever cut and nothing is lost.
        let words_in: Vec<&str> = text.split_whitespace().collect();
        let joined = got.join(" ");
        let words_out: Vec<&str> = joined.split_whitespace().collect();
        assert_eq!(words_in, words_out, "words changed for {text:?}");
        for chunk in &got {
            let single_word = !chunk.contains(' ');
            assert!(char_len(chunk) <= max || single_word, "{chunk:?} exceeds {max}");
        }
    }

    #[test]
    fn splits_at_sentence_ends_within_the_budget() {
        check("", 50, &[]);
        check("   \n\t ", 50, &[]);
        check("One sentence only.", 50, &["One sentence only."]);
        check("First one. Second one. Third one.", 25, &["First one. Second one.", "Third one."]);
        check("First one. Second one. Third one.", 10, &["First one.", "Second", "one.", "Third one."]);
        check("Is it? Yes! It is.", 100, &["Is it? Yes! It is."]);
        check("Is it? Yes! It is.", 8, &["Is it?", "Yes!", "It is."]);
        check("He said \"stop.\" Then left.", 16, &["He said \"stop.\"", "Then left."]);
        check("Pi is 3.14 exactly. Yes.", 20, &["Pi is 3.14 exactly.", "Yes."]);
        check("Ask Dr. Smith now. Then go.", 18, &["Ask Dr. Smith now.", "Then go."]);
        check("J. R. R. Tolkien wrote it. Read it.", 26, &["J. R. R. Tolkien wrote it.", "Read it."]);
        check("Wait… what? Fine.", 11, &["Wait… what?", "Fine."]);
        check("第一句。第二句。", 4, &["第一句。第二句。"]);
    }

    #[test]
    fn blank_lines_end_sentences_and_whitespace_collapses() {
        check("A heading\n\nThen   the\ttext\nwraps here.", 20, &["A heading", "Then the text wraps", "here."]);
        check("Title\n\nBody.", 50, &["Title Body."]);
    }

    #[test]
    fn long_sentences_split_at_words_preferring_clauses() {
        check(
            "This sentence is rather long, and it keeps going well past the budget.",
            40,
            &["This sentence is rather long,", "and it keeps going well past the budget."],
        );
        check("alpha beta gamma delta epsilon", 11, &["alpha beta", "gamma delta", "epsilon"]);
        // A clause break in the first half is not worth a short chunk.
        check("Yes, this continues for a good while longer", 30, &["Yes, this continues for a good", "while longer"]);
    }

    #[test]
    fn an_overlong_word_stands_alone_uncut() {
        let url = "https://example.com/a/very/long/path/that/cannot/be/split";
        check(&format!("See {url} for more."), 20, &["See", url, "for more."]);
        check("ünïcödé wörds çount as çhars.", 13, &["ünïcödé wörds", "çount as", "çhars."]);
    }
}
