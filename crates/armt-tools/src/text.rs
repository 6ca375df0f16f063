//! Text segmentation for the instruction validators: cleaning, paragraphs, sentences, words.

use std::sync::OnceLock;

use regex::Regex;

/// Strips every line and the whole text (the paper's `_clean_text`).
pub(crate) fn clean_text(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// Non-empty blocks separated by a blank line (`\n\s*\n`), trimmed.
pub(crate) fn paragraphs(text: &str) -> Vec<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"\n\s*\n").expect("valid regex"));
    re.split(text)
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// Whitespace-separated words.
pub(crate) fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Lowercased, trimmed, leading/trailing runs of `.`/`…` removed (the paper's
/// `normalize_text_for_matching`), for begin/end checks.
pub(crate) fn normalize_for_matching(text: &str) -> String {
    let t = text.trim().to_lowercase();
    t.trim_start_matches(['.', '…'])
        .trim_end_matches(['.', '…'])
        .trim()
        .to_string()
}

/// Abbreviations after which a period does not end a sentence (lowercase, without the final
/// period). Covers titles, Latin abbreviations and common short forms; single letters
/// (initials such as "J. Smith", "U.S.") are handled separately.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "cf", "al", "approx",
    "fig", "figs", "eq", "eqs", "no", "nos", "vol", "vols", "pp", "p", "ch", "sec", "inc", "ltd", "co",
    "corp", "dept", "est", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov",
    "dec", "u.s", "u.k", "a.m", "p.m", "ph.d", "gen", "gov", "rev", "capt", "lt", "col", "sgt",
];

/// Splits text into sentences without nltk's punkt model (the paper uses
/// `nltk.sent_tokenize`). Rules, chosen to agree with punkt on ordinary prose:
///
/// * blank lines are hard boundaries (a heading without a period is its own sentence, where
///   punkt would glue it to the next sentence);
/// * a sentence ends after a run of `.`, `!`, `?`, `…` (plus closing quotes/brackets) that is
///   followed by whitespace or the end of the text;
/// * except after a known abbreviation (`Dr.`, `e.g.`, …) or a single-letter initial
///   (`J. Smith`), or when the next word starts with a lowercase letter or a digit (punkt's
///   orthographic heuristic: "approx. 5 km", "etc. and");
/// * CJK terminators `。！？` always end a sentence (no space follows them);
/// * decimals (`3.14`) and dotted names (`example.com`) never split, having no space after the dot.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for para in paragraphs(&format!("\n{text}\n")) {
        split_paragraph(&para, &mut out);
    }
    out
}

fn split_paragraph(p: &str, out: &mut Vec<String>) {
    let chars: Vec<(usize, char)> = p.char_indices().collect();
    let mut start = 0usize; // byte offset of the current sentence
    let mut i = 0usize;
    while i < chars.len() {
        let c = chars[i].1;
        if matches!(c, '。' | '！' | '？') {
            let mut j = i + 1;
            while j < chars.len() && is_closer(chars[j].1) {
                j += 1;
            }
            let end = chars.get(j).map_or(p.len(), |x| x.0);
            push(out, &p[start..end]);
            start = end;
            i = j;
            continue;
        }
        if matches!(c, '.' | '!' | '?' | '…') {
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j].1, '.' | '!' | '?' | '…') {
                j += 1;
            }
            while j < chars.len() && is_closer(chars[j].1) {
                j += 1;
            }
            let at_end = j == chars.len();
            if at_end || chars[j].1.is_whitespace() {
                let end = chars.get(j).map_or(p.len(), |x| x.0);
                let next = chars[j..].iter().map(|x| x.1).find(|c| !c.is_whitespace());
                let only_period = chars[i..j].iter().all(|x| x.1 == '.' || is_closer(x.1)) && c == '.';
                let keep_going = !at_end
                    && (next.is_some_and(|n| n.is_lowercase() || n.is_ascii_digit())
                        || (only_period && is_abbreviation(&p[start..chars[i].0])));
                if !keep_going {
                    push(out, &p[start..end]);
                    start = end;
                }
            }
            i = j;
            continue;
        }
        i += 1;
    }
    push(out, &p[start..]);
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | '”' | '’' | ')' | ']' | '»' | '」' | '』')
}

/// Whether the word just before a period (`before` ends right before it) is an abbreviation
/// or an initial.
fn is_abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(' || c == '"')
        .next()
        .unwrap_or("");
    let w = word.to_lowercase();
    if w.is_empty() {
        return false;
    }
    let single_letter = w.chars().count() == 1 && w.chars().all(char::is_alphabetic);
    single_letter || ABBREVIATIONS.contains(&w.as_str())
}

fn push(out: &mut Vec<String>, s: &str) {
    let s = s.trim();
    if !s.is_empty() {
        out.push(s.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences() {
        assert_eq!(
            split_sentences("Hello world. How are you? Fine!"),
            vec!["Hello world.", "How are you?", "Fine!"]
        );
        assert_eq!(
            split_sentences("Dr. Smith paid $3.50 at example.com. Then he left."),
            vec!["Dr. Smith paid $3.50 at example.com.", "Then he left."]
        );
        assert_eq!(
            split_sentences("J. R. R. Tolkien wrote it. Yes."),
            vec!["J. R. R. Tolkien wrote it.", "Yes."]
        );
        assert_eq!(
            split_sentences("Use tools, e.g. a hammer. Done."),
            vec!["Use tools, e.g. a hammer.", "Done."]
        );
        assert_eq!(
            split_sentences("He said \"Stop.\" Then silence..."),
            vec!["He said \"Stop.\"", "Then silence..."]
        );
        assert_eq!(
            split_sentences("Title\n\nBody text here. More"),
            vec!["Title", "Body text here.", "More"]
        );
        assert_eq!(
            split_sentences("第一句。第二句！第三句"),
            vec!["第一句。", "第二句！", "第三句"]
        );
        assert_eq!(split_sentences("Wait... what? Ok."), vec!["Wait... what?", "Ok."]);
        assert!(split_sentences("  \n ").is_empty());
    }

    #[test]
    fn cleaning_and_paragraphs() {
        assert_eq!(clean_text("  a  \n   b \n\n  c  "), "a\nb\n\nc");
        assert_eq!(paragraphs("a\nb\n \n\nc\n\n"), vec!["a\nb", "c"]);
        assert_eq!(word_count(" a b\tc\nd "), 4);
        assert_eq!(normalize_for_matching(" ...Hello World… "), "hello world");
    }
}
