//! Page furniture: running heads, footers and page numbers, recognised as lines that repeat
//! (numbers aside) at the top or bottom of many pages, and dropped so they do not interrupt
//! the text a page break falls into.

use std::collections::HashMap;

use super::layout::Line;

/// Documents shorter than this have too few pages to tell furniture from content.
const MIN_PAGES: usize = 3;
/// How many lines at each edge of a page are candidates.
const EDGE_LINES: usize = 2;
/// Candidates must also lie in this fraction of the page height from its edge.
const EDGE_ZONE: f32 = 0.2;
/// A line is furniture when it appears on at least this share of the pages between its
/// first and last appearance: running heads that alternate between odd and even pages
/// still reach one half.
const MIN_DENSITY: f32 = 0.4;
/// …and on at least this many pages.
const MIN_REPEATS: usize = 3;
/// Furniture is set no larger than the body text; a larger repeated line at the top is a
/// title (the same slide title on consecutive slides), which is content.
const MAX_SIZE_RATIO: f32 = 1.15;
/// Page numbers on pages this far apart are compared.
const NUMBER_WINDOW: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Edge {
    Top,
    Bottom,
}

/// A line at a page edge that may be furniture.
struct Candidate {
    line: usize,
    edge: Edge,
    key: String,
    /// The line's number when it is nothing but a number (with punctuation): a page number.
    number: Option<i64>,
}

/// Removes furniture lines from `pages` (lines per page, in reading order); `heights` are the
/// page heights in the same units as the lines' spans.
pub(super) fn strip(pages: &mut [Vec<Line>], heights: &[f32]) {
    if pages.len() < MIN_PAGES {
        return;
    }
    let candidates: Vec<Vec<Candidate>> = pages.iter().zip(heights).map(|(lines, &h)| edge_lines(lines, h)).collect();
    let mut seen: HashMap<(Edge, &str), Vec<usize>> = HashMap::new();
    for (page, cands) in candidates.iter().enumerate() {
        for c in cands.iter().filter(|c| c.number.is_none()) {
            let pages_with = seen.entry((c.edge, c.key.as_str())).or_default();
            if pages_with.last() != Some(&page) {
                pages_with.push(page);
            }
        }
    }
    for (page, cands) in candidates.iter().enumerate() {
        let mut drop: Vec<usize> = cands
            .iter()
            .filter(|c| match c.number {
                Some(n) => is_page_number(&candidates, page, c.edge, n),
                None => seen.get(&(c.edge, c.key.as_str())).is_some_and(|p| repeats(p)),
            })
            .map(|c| c.line)
            .collect();
        drop.sort_unstable();
        drop.dedup();
        for &i in drop.iter().rev() {
            pages[page].remove(i);
        }
    }
}

fn repeats(pages_with: &[usize]) -> bool {
    let (Some(first), Some(last)) = (pages_with.first(), pages_with.last()) else {
        return false;
    };
    let span = (last - first + 1) as f32;
    pages_with.len() >= MIN_REPEATS && pages_with.len() as f32 >= MIN_DENSITY * span
}

/// A bare number is a page number when a nearby page has one at the same edge that counts
/// along with the pages (so a chart's axis label "10" at the bottom of one slide is kept).
fn is_page_number(candidates: &[Vec<Candidate>], page: usize, edge: Edge, n: i64) -> bool {
    let lo = page.saturating_sub(NUMBER_WINDOW);
    let hi = (page + NUMBER_WINDOW).min(candidates.len() - 1);
    (lo..=hi).filter(|&q| q != page).any(|q| {
        let expected = n + q as i64 - page as i64;
        candidates[q].iter().any(|c| c.edge == edge && c.number == Some(expected))
    })
}

/// The topmost and bottommost lines of a page, when set no larger than its body text.
fn edge_lines(lines: &[Line], height: f32) -> Vec<Candidate> {
    let body = body_size(lines);
    let mut placed: Vec<(usize, f32, f32)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.size <= body * MAX_SIZE_RATIO)
        .filter_map(|(i, l)| l.span.map(|(top, bottom)| (i, top, bottom)))
        .collect();
    placed.sort_by(|a, b| a.1.total_cmp(&b.1));
    let top = placed.iter().take(EDGE_LINES).filter(|p| p.1 < EDGE_ZONE * height).map(|p| (p.0, Edge::Top));
    let bottom =
        placed.iter().rev().take(EDGE_LINES).filter(|p| p.2 > (1.0 - EDGE_ZONE) * height).map(|p| (p.0, Edge::Bottom));
    top.chain(bottom)
        .filter_map(|(line, edge)| {
            let text = &lines.get(line)?.text;
            Some(Candidate { line, edge, key: key(text)?, number: bare_number(text) })
        })
        .collect()
}

/// The font size that most of the page's text is set in.
fn body_size(lines: &[Line]) -> f32 {
    let mut chars_by_size: HashMap<i32, usize> = HashMap::new();
    for l in lines {
        *chars_by_size.entry((l.size * 2.0).round() as i32).or_default() += l.text.len();
    }
    let best = chars_by_size.into_iter().max_by_key(|&(size, n)| (n, size));
    best.map_or(f32::MAX, |(size, _)| size as f32 / 2.0)
}

/// Case, spacing and numbers aside, so "Page 3 of 9" and "Page 4 of 9" match.
fn key(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        let masked = word.chars().map(|c| if c.is_numeric() { '#' } else { c });
        out.extend(masked.flat_map(char::to_lowercase));
    }
    (!out.is_empty()).then_some(out)
}

/// The number of a line that holds one number and punctuation only ("12", "- 12 -").
fn bare_number(text: &str) -> Option<i64> {
    if text.chars().any(char::is_alphabetic) {
        return None;
    }
    let digits: Vec<&str> = text.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).collect();
    match digits[..] {
        [one] if one.len() <= 6 => one.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, top: f32) -> Line {
        Line { text: text.to_owned(), span: Some((top, top + 10.0)), size: 10.0, para_start: false }
    }

    fn page(n: usize) -> Vec<Line> {
        let head = if n.is_multiple_of(2) { "FREE CULTURE" } else { "PIRACY" };
        vec![
            line(&format!("{head}  {}", n + 10), 20.0),
            line(&format!("Body text of page {n}."), 300.0),
            line("The same sentence on every page, mid-page.", 400.0),
            line(&format!("- {} -", n + 1), 770.0),
        ]
    }

    fn texts(p: &[Line]) -> Vec<&str> {
        p.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn alternating_heads_and_page_numbers_are_dropped() {
        let mut pages: Vec<Vec<Line>> = (0..6).map(page).collect();
        strip(&mut pages, &[792.0; 6]);
        for (n, p) in pages.iter().enumerate() {
            let body = format!("Body text of page {n}.");
            assert_eq!(texts(p), vec![body.as_str(), "The same sentence on every page, mid-page."]);
        }
    }

    #[test]
    fn large_repeated_titles_and_stray_numbers_are_kept() {
        let mut pages: Vec<Vec<Line>> = (0..4)
            .map(|n| {
                let mut title = line("Sparse data", 20.0);
                title.size = 24.0;
                let axis = if n == 2 { "10" } else { "x" };
                vec![title, line("body", 300.0), line("more body", 320.0), line(axis, 700.0)]
            })
            .collect();
        strip(&mut pages, &[792.0; 4]);
        assert_eq!(texts(&pages[2]), vec!["Sparse data", "body", "more body", "10"]);
    }

    #[test]
    fn short_documents_are_kept_and_keys_ignore_numbers() {
        let mut pages: Vec<Vec<Line>> = (0..2).map(page).collect();
        strip(&mut pages, &[792.0; 2]);
        assert_eq!(pages[0].len(), 4);
        assert_eq!(key("Page 3 of 9").as_deref(), Some("page # of #"));
        assert_eq!(bare_number("- 12 -"), Some(12));
        assert_eq!(bare_number("3 of 9"), None);
    }
}
