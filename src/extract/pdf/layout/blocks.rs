//! Segments → blocks (stacks of lines that read as one text) → reading order.
//!
//! Order follows Breuel's rules ("High Performance Document Layout Analysis", 2003): block
//! `a` comes before `b` when they share some width and `a` is above, or when `a` lies wholly
//! left of `b` and nothing between them vertically spans both. A title across two columns
//! so comes first, and a left column is read to its end before the right one starts.

use super::Line;
use super::lines::Segment;

/// A line joins the block above it when its baseline is at most this many font sizes
/// below the block's last one: single to one-and-a-half spacing, not paragraph gaps.
const LINE_PITCH: f32 = 1.6;
/// Pages with more segments than this skip block building, which compares each segment
/// with the blocks still open and could go quadratic.
const MAX_SEGMENTS: usize = 20_000;
/// Lines narrower than this many font sizes count as short.
const SHORT_LINE: f32 = 10.0;
/// Largest baseline distance, in font sizes, between short left-aligned lines of one block.
const STACKED_PITCH: f32 = 3.0;
/// Beyond this many blocks, Breuel's cubic ordering costs too much; read top to bottom.
const MAX_ORDERED_BLOCKS: usize = 150;

/// A stack of line segments read as one text.
pub(super) struct Block {
    pub lines: Vec<Segment>,
    /// Paragraph starts inside the block (first-line indents), by line index.
    para_starts: Vec<usize>,
    pub x0: f32,
    pub x1: f32,
    pub top: f32,
    pub bottom: f32,
}

impl Block {
    fn new(seg: Segment) -> Block {
        Block { x0: seg.x0, x1: seg.x1, top: seg.top, bottom: seg.bottom, lines: vec![seg], para_starts: Vec::new() }
    }

    fn last(&self) -> Option<&Segment> {
        self.lines.last()
    }

    /// Font size of the first line.
    pub fn size(&self) -> f32 {
        self.lines.first().map_or(1.0, |l| l.size)
    }

    /// Mean width of the lines.
    pub fn mean_width(&self) -> f32 {
        let total: f32 = self.lines.iter().map(|l| l.x1 - l.x0).sum();
        total / self.lines.len().max(1) as f32
    }

    /// Takes in the column to the right of this one: lines on a shared baseline become one
    /// table row, the rest keep their place top to bottom.
    pub fn absorb_columns(&mut self, right: Block) {
        for seg in right.lines {
            let tolerance = 0.3 * seg.size;
            match self.lines.iter_mut().find(|l| (l.y - seg.y).abs() < tolerance) {
                Some(row) => row.extend(seg),
                None => self.lines.push(seg),
            }
        }
        self.lines.sort_by(|a, b| a.y.total_cmp(&b.y));
        self.para_starts.clear();
        self.x0 = self.x0.min(right.x0);
        self.x1 = self.x1.max(right.x1);
        self.top = self.top.min(right.top);
        self.bottom = self.bottom.max(right.bottom);
    }

    /// How well `seg` continues this block: `Some(distance)` when it does.
    fn fit(&self, seg: &Segment) -> Option<f32> {
        let last = self.last()?;
        let size = last.size.max(seg.size);
        let dy = seg.y - last.y;
        let same_size = seg.size <= last.size * 1.3 && last.size <= seg.size * 1.3;
        let overlap = seg.x1.min(last.x1) - seg.x0.max(last.x0);
        // Short left-aligned lines (list entries, table cells, a table of contents) stack
        // into one block across wider spacing, so their columns can be read as a table.
        let short = |s: &Segment| s.x1 - s.x0 < SHORT_LINE * s.size;
        let stacked = short(seg) && short(last) && (seg.x0 - last.x0).abs() < size;
        let pitch = if stacked { STACKED_PITCH } else { LINE_PITCH };
        let below = dy > 0.3 * size && dy <= pitch * size && overlap > 0.0;
        (below && same_size).then_some(dy)
    }

    /// Whether `seg` is the rest of the last line: same baseline, inside the block's width
    /// (so the gap before it is not a gutter).
    fn continues_line(&self, seg: &Segment) -> bool {
        self.last().is_some_and(|last| {
            (seg.y - last.y).abs() < 0.3 * last.size
                && seg.x0 >= last.x1
                && seg.x1 <= self.x1 + 0.5 * last.size
                && self.lines.len() > 1
        })
    }

    fn push(&mut self, seg: Segment) {
        let Some(last) = self.lines.last() else {
            self.lines.push(seg);
            return;
        };
        let em = seg.size;
        // A first-line indent (one to five ems, the line still running to the right edge),
        // after a line that is flush left but ends short, starts a paragraph. Centred lines
        // stop short of the right edge; the second line of a list item (a hanging indent)
        // follows a full line.
        let indent = seg.x0 - self.x0;
        let indented = indent > 0.8 * em && indent < 5.0 * em && seg.x1 > self.x1 - 2.0 * em;
        let after_end = last.x0 < self.x0 + 0.3 * em && last.x1 < self.x1 - 1.5 * em;
        if indented && after_end {
            self.para_starts.push(self.lines.len());
        }
        self.x0 = self.x0.min(seg.x0);
        self.x1 = self.x1.max(seg.x1);
        self.top = self.top.min(seg.top);
        self.bottom = self.bottom.max(seg.bottom);
        self.lines.push(seg);
    }
}

/// Appends the lines of `segments` to `out` in reading order.
pub(super) fn read(mut segments: Vec<Segment>, out: &mut Vec<Line>) {
    segments.sort_by(|a, b| a.top.total_cmp(&b.top).then(a.x0.total_cmp(&b.x0)));
    let mut blocks = if segments.len() > MAX_SEGMENTS {
        // Not prose (a scatter of labels, say): one block per segment, read top down.
        segments.into_iter().map(Block::new).collect()
    } else {
        build(segments)
    };
    super::tables::merge(&mut blocks);
    for (n, block) in order(&blocks).into_iter().filter_map(|i| blocks.get(i)).enumerate() {
        for (i, seg) in block.lines.iter().enumerate() {
            let text = seg.text();
            if text.trim().is_empty() {
                continue;
            }
            out.push(Line {
                text,
                span: Some((seg.top, seg.bottom)),
                size: seg.size,
                para_start: (i == 0 && n > 0) || block.para_starts.contains(&i),
            });
        }
    }
}

fn build(segments: Vec<Segment>) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    // Blocks whose last line is still near enough to take more.
    let mut open: Vec<usize> = Vec::new();
    for seg in segments {
        open.retain(|&i| {
            blocks.get(i).and_then(Block::last).is_some_and(|l| seg.y - l.y <= LINE_PITCH * l.size.max(seg.size) * 1.5)
        });
        if let Some(&i) = open.iter().find(|&&i| blocks[i].continues_line(&seg)) {
            if let Some(last) = blocks[i].lines.last_mut() {
                last.extend(seg);
            }
            continue;
        }
        let best = open.iter().filter_map(|&i| blocks[i].fit(&seg).map(|d| (i, d))).min_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((i, _)) => blocks[i].push(seg),
            None => {
                open.push(blocks.len());
                blocks.push(Block::new(seg));
            }
        }
    }
    blocks
}

/// Indices of `blocks` in reading order.
fn order(blocks: &[Block]) -> Vec<usize> {
    let n = blocks.len();
    if n > MAX_ORDERED_BLOCKS {
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&a, &b| blocks[a].top.total_cmp(&blocks[b].top));
        return idx;
    }
    let after: Vec<Vec<usize>> = (0..n).map(|a| (0..n).filter(|&b| a != b && before(blocks, a, b)).collect()).collect();
    let mut preds = vec![0usize; n];
    for &b in after.iter().flatten() {
        preds[b] += 1;
    }
    topological(blocks, &after, preds)
}

fn x_overlap(a: &Block, b: &Block) -> f32 {
    a.x1.min(b.x1) - a.x0.max(b.x0)
}

fn before(blocks: &[Block], a: usize, b: usize) -> bool {
    let (ba, bb) = (&blocks[a], &blocks[b]);
    let size = ba.lines[0].size.min(bb.lines[0].size);
    if x_overlap(ba, bb) > 0.25 * size {
        return ba.top < bb.top;
    }
    if ba.x1 > bb.x0 {
        return false;
    }
    // `a` is left of `b`: it comes first unless a block between them spans both.
    let (lo, hi) = (ba.top.min(bb.top), ba.top.max(bb.top));
    !blocks.iter().any(|c| c.top > lo && c.top < hi && x_overlap(c, ba) > 0.0 && x_overlap(c, bb) > 0.0)
}

/// Kahn's algorithm, taking the topmost (then leftmost) ready block; a cycle, which
/// skewed layouts can make, is broken by taking the topmost remaining block.
fn topological(blocks: &[Block], after: &[Vec<usize>], mut preds: Vec<usize>) -> Vec<usize> {
    let n = blocks.len();
    let mut done = vec![false; n];
    let mut out = Vec::with_capacity(n);
    let key = |i: usize| (blocks[i].top, blocks[i].x0);
    while out.len() < n {
        let pick = |ready_only: bool| {
            (0..n)
                .filter(|&i| !done[i] && (!ready_only || preds[i] == 0))
                .min_by(|&a, &b| key(a).0.total_cmp(&key(b).0).then(key(a).1.total_cmp(&key(b).1)))
        };
        let Some(i) = pick(true).or_else(|| pick(false)) else {
            break;
        };
        done[i] = true;
        out.push(i);
        for &j in &after[i] {
            preds[j] = preds[j].saturating_sub(1);
        }
    }
    out
}
