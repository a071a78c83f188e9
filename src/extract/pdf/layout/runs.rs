//! Glyphs → runs: pieces of words, joined in content order, with accents put on their
//! letters.

use super::super::text::Glyph;
use super::{Direction, WORD_GAP};

/// A run: glyphs that follow each other on one baseline in content order, within a word.
#[derive(Clone, Debug)]
pub(super) struct Run {
    pub x0: f32,
    pub x1: f32,
    /// Baseline.
    pub y: f32,
    pub size: f32,
    pub text: String,
    /// Byte ranges in `text` of glyphs whose text is more than one character (ligatures,
    /// whole words from odd `/ToUnicode` maps): right-to-left reordering keeps them whole.
    pub multi: Vec<(usize, usize)>,
    pub space_before: bool,
}

impl Run {
    fn push_glyph(&mut self, text: &str) {
        if text.chars().nth(1).is_some() {
            self.multi.push((self.text.len(), self.text.len() + text.len()));
        }
        self.text.push_str(text);
    }

    pub fn top(&self) -> f32 {
        self.y - 0.8 * self.size
    }

    pub fn bottom(&self) -> f32 {
        self.y + 0.2 * self.size
    }
}

/// A spacing accent waiting for the letter it is drawn over.
struct Pending {
    dir: Direction,
    glyph: Glyph,
    text: String,
    mark: char,
    center: f32,
    y: f32,
}

/// Joins glyphs into runs as they arrive in content order.
#[derive(Default)]
pub(super) struct RunBuilder {
    /// Direction and index of the run the last glyph went to, and where that glyph starts.
    current: Option<(Direction, usize, f32)>,
    pending: Option<Pending>,
}

impl RunBuilder {
    /// Adds a glyph to the runs of its direction.
    ///
    /// TeX and other typesetters draw accents as separate glyphs over the letter, before or
    /// after it in the content (`na¨ıve`). Such an accent becomes the combining mark of the
    /// letter it overlaps, so the text reads "naïve".
    pub fn add(&mut self, dir: Direction, g: &Glyph, text: &str, runs: &mut Vec<Run>) {
        if text.is_empty() {
            // A glyph without text (the font does not say what it is) adds nothing, and
            // would only stretch its run over the gap after it.
            return;
        }
        let (x, y) = dir.turn(g.x, g.y);
        let advance = g.dx.hypot(g.dy);
        if let Some(mark) = combining_accent(text) {
            let center = x + advance / 2.0;
            if self.attach_to_previous(dir, mark, center, y, runs) {
                return;
            }
            self.flush_pending(runs);
            let (glyph, text) = (*g, text.to_owned());
            self.pending = Some(Pending { dir, glyph, text, mark, center, y });
            return;
        }
        if let Some(p) = self.pending.take() {
            let over = p.dir == dir && x <= p.center && p.center <= x + advance;
            if over && (p.y - y).abs() < 2.0 * g.size {
                return self.place(dir, g, &with_accent(text, p.mark), runs);
            }
            self.place(p.dir, &p.glyph, &p.text, runs);
        }
        self.place(dir, g, text, runs);
    }

    /// Emits an accent still waiting at the end of the page, as it was.
    pub fn finish(&mut self, groups: &mut [(Direction, Vec<Run>)]) {
        if let Some(p) = self.pending.take()
            && let Some((_, runs)) = groups.iter_mut().find(|(d, _)| *d == p.dir)
        {
            self.place(p.dir, &p.glyph, &p.text, runs);
        }
    }

    fn flush_pending(&mut self, runs: &mut Vec<Run>) {
        if let Some(p) = self.pending.take() {
            self.place(p.dir, &p.glyph, &p.text, runs);
        }
    }

    /// An accent drawn after its letter: over the last glyph of the current run.
    fn attach_to_previous(&mut self, dir: Direction, mark: char, center: f32, y: f32, runs: &mut [Run]) -> bool {
        let Some((d, i, last_x0)) = self.current else {
            return false;
        };
        let Some(run) = runs.get_mut(i).filter(|_| d == dir) else {
            return false;
        };
        let over = last_x0 <= center && center <= run.x1 && (run.y - y).abs() < 2.0 * run.size;
        if over {
            let base = run.text.pop();
            run.text.push_str(&with_accent(&base.map(String::from).unwrap_or_default(), mark));
        }
        over
    }

    fn place(&mut self, dir: Direction, g: &Glyph, text: &str, runs: &mut Vec<Run>) {
        let (x, y) = dir.turn(g.x, g.y);
        let advance = g.dx.hypot(g.dy);
        let size = g.size.max(0.01);
        let is_mark = text.chars().all(unicode_normalization::char::is_combining_mark);
        let current = match self.current {
            Some((d, i, _)) if d == dir => runs.get_mut(i),
            _ => None,
        };
        if let Some(run) = current {
            let gap = x - run.x1;
            let same_line = (y - run.y).abs() <= 0.25 * size.max(run.size);
            let similar = size <= run.size * 1.6 && run.size <= size * 1.6;
            // A combining mark belongs to the glyph before it in content order, wherever the
            // font placed it.
            let attach = is_mark && same_line && gap.abs() < 1.5 * size;
            let continues = same_line && similar && !g.space_before && gap > -0.3 * size && gap < WORD_GAP * size;
            if attach || continues {
                run.x1 = run.x1.max(x + advance);
                run.size = run.size.max(size);
                run.push_glyph(text);
                if let Some(c) = self.current.as_mut() {
                    c.2 = x;
                }
                return;
            }
        }
        let mut run = Run {
            x0: x,
            x1: x + advance,
            y,
            size,
            text: String::new(),
            multi: Vec::new(),
            space_before: g.space_before,
        };
        run.push_glyph(text);
        runs.push(run);
        self.current = Some((dir, runs.len() - 1, x));
    }
}

/// The combining form of a spacing accent (`¨` → U+0308), for a glyph that is just one.
fn combining_accent(text: &str) -> Option<char> {
    let mut chars = text.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    let mark = match c {
        '\u{a8}' => '\u{308}',
        '\u{b4}' => '\u{301}',
        '`' => '\u{300}',
        '\u{2c6}' => '\u{302}',
        '\u{2dc}' => '\u{303}',
        '\u{af}' => '\u{304}',
        '\u{2d8}' => '\u{306}',
        '\u{2d9}' => '\u{307}',
        '\u{2da}' => '\u{30a}',
        '\u{b8}' => '\u{327}',
        '\u{2db}' => '\u{328}',
        '\u{2c7}' => '\u{30c}',
        '\u{2dd}' => '\u{30b}',
        _ => return None,
    };
    Some(mark)
}

/// `base` with `mark` after it; a dotless i or j takes its dot back, since the accent
/// replaces it (TeX sets "ï" as dotless i under a diaeresis).
fn with_accent(base: &str, mark: char) -> String {
    let mut out: String = base
        .chars()
        .map(|c| match c {
            '\u{131}' => 'i',
            '\u{237}' => 'j',
            c => c,
        })
        .collect();
    out.push(mark);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glyph(x: f32, dx: f32) -> Glyph {
        Glyph { x, y: 100.0, dx, dy: 0.0, size: 10.0, space_before: false, start: 0, end: 0 }
    }

    fn build(glyphs: &[(f32, f32, &str)]) -> String {
        let mut runs = Vec::new();
        let mut b = RunBuilder::default();
        for &(x, dx, t) in glyphs {
            b.add(Direction::Right, &glyph(x, dx), t, &mut runs);
        }
        let mut groups = vec![(Direction::Right, runs)];
        b.finish(&mut groups);
        groups[0].1.iter().map(|r| r.text.as_str()).collect::<Vec<_>>().join("|")
    }

    #[test]
    fn accents_before_or_after_their_letter_become_combining_marks() {
        // TeX: "na", accent over the dotless i, then "ve".
        let naive = build(&[
            (0.0, 5.0, "n"),
            (5.0, 5.0, "a"),
            (10.5, 5.0, "\u{a8}"),
            (10.0, 3.0, "\u{131}"),
            (13.0, 5.0, "v"),
            (18.0, 5.0, "e"),
        ]);
        assert_eq!(naive, "nai\u{308}ve");
        // Accent drawn after the letter, moved back over it.
        assert_eq!(build(&[(0.0, 5.0, "e"), (0.0, 5.0, "\u{b4}")]), "e\u{301}");
    }

    #[test]
    fn a_lone_accent_stays_as_it_is() {
        assert_eq!(build(&[(0.0, 5.0, "a"), (40.0, 5.0, "\u{b4}")]), "a|\u{b4}");
    }
}
