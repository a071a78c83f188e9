//! Tables: side-by-side blocks whose lines share baselines one for one, at least one of them
//! narrow (codes, numbers, labels, page numbers in a table of contents), are rows of a
//! table. Read them row by row ("03-7FA81.03 Clutch valve fault") instead of column by
//! column, which is what the column-aware order would otherwise do.
//!
//! Text columns never qualify: their lines are wide, and two columns rarely keep the same
//! line count with every baseline aligned.

use super::blocks::Block;

/// A column of a table has lines narrower than this many font sizes on average.
const NARROW: f32 = 10.0;
/// Share of the shorter block's lines that must find a partner on the same baseline…
const MIN_MATCHED: f32 = 0.8;
/// …and share of the longer block's (a caption or heading may sit on top of one column).
const MIN_MATCHED_LONGER: f32 = 0.5;
/// Beyond this many blocks the pairwise search is skipped (and the page read by columns).
const MAX_BLOCKS: usize = 300;

/// Merges table columns into row-ordered blocks.
pub(super) fn merge(blocks: &mut Vec<Block>) {
    if blocks.len() > MAX_BLOCKS {
        return;
    }
    // Each merge removes a block, so this ends.
    while let Some((a, b)) = find_pair(blocks) {
        let right = blocks.remove(b);
        let left = if b < a { a - 1 } else { a };
        blocks[left].absorb_columns(right);
    }
}

fn find_pair(blocks: &[Block]) -> Option<(usize, usize)> {
    (0..blocks.len()).find_map(|a| {
        (0..blocks.len())
            .filter(|&b| b != a && is_row_partner(&blocks[a], &blocks[b]))
            .min_by(|&x, &y| blocks[x].x0.total_cmp(&blocks[y].x0))
            .map(|b| (a, b))
    })
}

/// Whether `right` continues the rows of `left`.
fn is_row_partner(left: &Block, right: &Block) -> bool {
    let size = left.size().min(right.size());
    let (nl, nr) = (left.lines.len(), right.lines.len());
    if right.x0 < left.x1 - 0.2 * size || nl < 2 || nr < 2 {
        return false;
    }
    let vertical = left.bottom.min(right.bottom) - left.top.max(right.top);
    if vertical <= 0.0 {
        return false;
    }
    let narrow = left.mean_width() < NARROW * size || right.mean_width() < NARROW * size;
    if !narrow {
        return false;
    }
    let matched = shared_baselines(left, right, 0.3 * size) as f32;
    matched >= MIN_MATCHED * nl.min(nr) as f32 && matched >= MIN_MATCHED_LONGER * nl.max(nr) as f32
}

/// How many lines of `a` have a line of `b` within `tolerance` of their baseline. Both
/// blocks keep their lines sorted top to bottom, so one merge-like pass does.
fn shared_baselines(a: &Block, b: &Block, tolerance: f32) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while let (Some(x), Some(y)) = (a.lines.get(i), b.lines.get(j)) {
        if (x.y - y.y).abs() < tolerance {
            n += 1;
            i += 1;
        } else if x.y < y.y {
            i += 1;
        } else {
            j += 1;
        }
    }
    n
}
