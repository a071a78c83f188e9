//! Layout: from positioned glyphs to lines of text in reading order.
//!
//! Glyphs are grouped by writing direction, each group turned so its text runs left to
//! right, then: glyphs → runs (pieces of words in content order) → line segments (split
//! at column gaps) → blocks (paragraph-like stacks of segments) → reading order.

// Explicit paths, for the fuzz target's `#[path]` build (see `pdf.rs`).
#[path = "layout/bidi.rs"]
mod bidi;
#[path = "layout/blocks.rs"]
mod blocks;
#[path = "layout/lines.rs"]
mod lines;
#[path = "layout/runs.rs"]
mod runs;
#[path = "layout/tables.rs"]
mod tables;

use super::text::{Glyph, PageGlyphs};
use runs::{Run, RunBuilder};

/// A gap wider than this fraction of the font size between glyphs is a word break.
const WORD_GAP: f32 = 0.15;

/// A line of output text with where it sat on the page.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Line {
    pub text: String,
    /// Top and bottom in display space; `None` for text that does not run left to right,
    /// which never counts as a page header or footer.
    pub span: Option<(f32, f32)>,
    /// Font size of the line's main text.
    pub size: f32,
    /// A blank line goes before this one: it starts a paragraph.
    pub para_start: bool,
}

/// Writing directions, by where the pen moves on the displayed page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    Right,
    Down,
    Left,
    Up,
}

impl Direction {
    fn of(dx: f32, dy: f32) -> Option<Direction> {
        if dx.abs() < 1e-6 && dy.abs() < 1e-6 {
            return None;
        }
        Some(if dx.abs() >= dy.abs() {
            if dx > 0.0 { Direction::Right } else { Direction::Left }
        } else if dy > 0.0 {
            Direction::Down
        } else {
            Direction::Up
        })
    }

    /// Turns a display point so that text in this direction runs left to right.
    fn turn(self, x: f32, y: f32) -> (f32, f32) {
        match self {
            Direction::Right => (x, y),
            Direction::Down => (y, -x),
            Direction::Left => (-x, -y),
            Direction::Up => (-y, x),
        }
    }
}

/// The lines of one page in reading order.
pub(super) fn page_lines(page: &PageGlyphs, width: f32, height: f32) -> Vec<Line> {
    let mut groups: Vec<(Direction, Vec<Run>)> = Vec::new();
    let mut builder = RunBuilder::default();
    let mut last_dir = Direction::Right;
    for g in page.glyphs.iter().filter(|g| visible(g, width, height)) {
        let dir = Direction::of(g.dx, g.dy).unwrap_or(last_dir);
        last_dir = dir;
        let i = match groups.iter().position(|(d, _)| *d == dir) {
            Some(i) => i,
            None => {
                groups.push((dir, Vec::new()));
                groups.len() - 1
            }
        };
        builder.add(dir, g, page.text_of(g), &mut groups[i].1);
    }
    builder.finish(&mut groups);
    // The main direction first, then text set at an angle (margins, figure labels).
    groups.sort_by_key(|(d, runs)| {
        let chars: usize = runs.iter().map(|r| r.text.len()).sum();
        (std::cmp::Reverse(chars), *d)
    });
    let mut out = Vec::new();
    for (dir, runs) in groups {
        let segments = lines::segments(runs);
        let start = out.len();
        blocks::read(segments, &mut out);
        if dir != Direction::Right {
            out[start..].iter_mut().for_each(|l| l.span = None);
        }
        if let Some(first) = out.get_mut(start) {
            first.para_start = start > 0;
        }
    }
    out
}

/// Whether the glyph's middle lies on the displayed page (text in the crop margins of a
/// print-ready file, such as printer's marks and line numbers, is not part of the page).
fn visible(g: &Glyph, width: f32, height: f32) -> bool {
    let (cx, cy) = (g.x + g.dx / 2.0, g.y + g.dy / 2.0);
    let m = 1.0;
    cx >= -m && cx <= width + m && cy >= -m && cy <= height + m
}
