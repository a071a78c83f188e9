//! Runs → line segments: the runs on one baseline, split where the gap between them is wide
//! enough to be a column gutter, and their text.

use super::runs::Run;
use super::{WORD_GAP, bidi};

/// A gap wider than this many font sizes splits a line into segments. Justified text
/// stretches word gaps to about 0.7 em; column gutters are two to three.
const COLUMN_GAP: f32 = 1.2;

/// Runs on one baseline that read as one piece of a line.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub x0: f32,
    pub x1: f32,
    /// Baseline and size of the dominant run (the one with the most text).
    pub y: f32,
    pub size: f32,
    pub top: f32,
    pub bottom: f32,
    /// Sorted left to right.
    runs: Vec<Run>,
}

impl Segment {
    fn new(runs: Vec<Run>) -> Option<Segment> {
        let main = runs.iter().max_by_key(|r| r.text.len())?;
        let (y, size) = (main.y, main.size);
        let fold = |init: f32, f: fn(f32, f32) -> f32, g: fn(&Run) -> f32| runs.iter().map(g).fold(init, f);
        Some(Segment {
            x0: fold(f32::MAX, f32::min, |r| r.x0),
            x1: fold(f32::MIN, f32::max, |r| r.x1),
            top: fold(f32::MAX, f32::min, Run::top),
            bottom: fold(f32::MIN, f32::max, Run::bottom),
            y,
            size,
            runs,
        })
    }

    /// Appends a segment of the same line further right.
    pub fn extend(&mut self, other: Segment) {
        self.x0 = self.x0.min(other.x0);
        self.x1 = self.x1.max(other.x1);
        self.top = self.top.min(other.top);
        self.bottom = self.bottom.max(other.bottom);
        self.runs.extend(other.runs);
    }

    /// The segment's text: runs joined with a space where the gap or the content stream
    /// says so, right-to-left scripts put back in logical order.
    pub fn text(&self) -> String {
        let rtl = self.runs.iter().any(|r| r.text.chars().any(bidi::is_rtl));
        let mut s = String::new();
        let mut multi = Vec::new();
        let mut prev: Option<&Run> = None;
        for run in self.runs.iter().filter(|r| !r.text.is_empty()) {
            if let Some(p) = prev {
                let gap = run.x0 - p.x1;
                let size = p.size.max(run.size);
                // In right-to-left text the content order runs against the page, so an
                // explicit space is on the other side of the run: trust only the gap.
                let flagged = run.space_before && !rtl && gap > -0.3 * size;
                // Chinese and Japanese put no spaces between words; only a wide gap is one.
                let ideographic = ends_ideographic(&s) && starts_ideographic(&run.text);
                let word_gap = if ideographic { 1.0 } else { WORD_GAP };
                if gap > word_gap * size || (flagged && !ideographic) {
                    s.push(' ');
                }
            }
            multi.extend(run.multi.iter().map(|(a, b)| (a + s.len(), b + s.len())));
            s.push_str(&run.text);
            prev = Some(run);
        }
        if rtl { bidi::visual_to_logical(&s, &multi) } else { s }
    }
}

fn is_ideographic(c: char) -> bool {
    matches!(c as u32, 0x3000..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xf900..=0xfaff | 0xff00..=0xffef)
}

fn ends_ideographic(s: &str) -> bool {
    s.chars().next_back().is_some_and(is_ideographic)
}

fn starts_ideographic(s: &str) -> bool {
    s.chars().next().is_some_and(is_ideographic)
}

/// Groups runs into rows by baseline, then splits rows at column gaps.
pub(super) fn segments(mut runs: Vec<Run>) -> Vec<Segment> {
    runs.sort_by(|a, b| a.y.total_cmp(&b.y).then(a.x0.total_cmp(&b.x0)));
    let mut out = Vec::new();
    let mut row: Vec<Run> = Vec::new();
    // Baseline and size of the row's largest run: sub- and superscripts join around it.
    let mut anchor = (0.0f32, 0.0f32);
    for run in runs {
        let tolerance = 0.45 * anchor.1.max(run.size);
        if !row.is_empty() && (run.y - anchor.0).abs() > tolerance {
            split_row(std::mem::take(&mut row), &mut out);
        }
        if row.is_empty() || run.size > anchor.1 {
            anchor = (run.y, run.size);
        }
        row.push(run);
    }
    split_row(row, &mut out);
    out
}

fn split_row(mut row: Vec<Run>, out: &mut Vec<Segment>) {
    row.sort_by(|a, b| a.x0.total_cmp(&b.x0));
    let mut piece: Vec<Run> = Vec::new();
    let mut right = f32::MIN;
    for run in row {
        if is_duplicate(&piece, &run) {
            continue;
        }
        let size = run.size.max(piece.last().map_or(0.0, |r| r.size));
        let gutter = run.x0 - right > COLUMN_GAP * size;
        // Overlapping an earlier run at another baseline: two short lines stacked (labels in
        // a figure) that fell into one row next to taller text.
        let stacked = run.x0 < right - 0.1 * run.size
            && piece.iter().rev().take(8).any(|p| p.x1 > run.x0 && (p.y - run.y).abs() > 0.3 * run.size.min(p.size));
        if !piece.is_empty() && (gutter || stacked) {
            out.extend(Segment::new(std::mem::take(&mut piece)));
        }
        right = if piece.is_empty() { run.x1 } else { right.max(run.x1) };
        piece.push(run);
    }
    out.extend(Segment::new(piece));
}

/// Text drawn twice at almost the same place (fake bold, shadows) reads once.
fn is_duplicate(piece: &[Run], run: &Run) -> bool {
    piece
        .iter()
        .rev()
        .take(4)
        .any(|p| p.text == run.text && (p.x0 - run.x0).abs() < 0.3 * run.size && (p.y - run.y).abs() < 0.3 * run.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(x0: f32, x1: f32, y: f32, text: &str) -> Run {
        Run { x0, x1, y, size: 10.0, text: text.to_owned(), multi: Vec::new(), space_before: false }
    }

    #[test]
    fn rows_split_at_gutters_and_join_words_by_gaps() {
        let segs = segments(vec![
            run(200.0, 230.0, 100.0, "right"),
            run(10.0, 40.0, 100.0, "left"),
            run(41.0, 50.0, 100.0, "ish"),
            run(54.0, 80.0, 101.0, "words"),
        ]);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].text(), "leftish words");
        assert_eq!(segs[1].text(), "right");
    }

    #[test]
    fn superscripts_stay_on_their_line_and_duplicates_drop() {
        let mut sup = run(41.0, 45.0, 96.0, "2");
        sup.size = 6.0;
        let segs = segments(vec![
            run(10.0, 40.0, 100.0, "E=mc"),
            sup,
            run(10.5, 40.5, 100.2, "E=mc"),
            run(10.0, 40.0, 112.0, "next"),
        ]);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[0].text(), "E=mc2");
    }

    #[test]
    fn stacked_labels_next_to_taller_text_stay_apart() {
        let small = |x0, x1, y, t| Run { size: 5.0, ..run(x0, x1, y, t) };
        let segs = segments(vec![
            small(405.0, 427.0, 216.0, "Interpret"),
            run(54.0, 293.0, 219.4, "body text of the left column"),
            small(403.8, 428.0, 222.1, "Bytecodes"),
        ]);
        let texts: Vec<String> = segs.iter().map(Segment::text).collect();
        assert_eq!(texts, vec!["body text of the left column", "Bytecodes", "Interpret"]);
    }
}
