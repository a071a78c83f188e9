//! Greedy packing of units into chunk cores, shared by every strategy.
//!
//! Units are added to the open core while the core's exact token count stays within the
//! budget. A unit that alone exceeds the budget is cut at the next finer level, and its first
//! pieces may still fill the open core. Packing restarts at sync points: content-defined units
//! (see [`is_sync_unit`]) and, for Markdown, section starts. Because a sync point depends only
//! on the unit's own text, an edit can move chunk boundaries only up to the next sync point.

use std::ops::Range;

use super::Strategy;
use super::counter::DocTokens;
use super::offsets::trim;
use super::units::{Level, Unit, cuts, units_from_cuts};

/// Budgets for one chunking run (settings plus per-call overrides, already clamped).
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Strategy being run.
    pub strategy: Strategy,
    /// Hard ceiling per chunk, overlap included.
    pub max_tokens: usize,
    /// Tokens of the previous core repeated at the start of a chunk.
    pub overlap_tokens: usize,
    /// Trailing cores below this are merged or balanced.
    pub min_tokens: usize,
    /// Average tokens between sync points (0 = none).
    pub resync_tokens: usize,
}

impl Params {
    /// Budget for a core: the overlap is reserved so that core plus overlap fits `max_tokens`.
    pub(crate) fn core_budget(&self) -> usize {
        self.max_tokens - self.overlap_tokens
    }
}

/// A run of whole units that becomes one chunk (before overlap is added).
#[derive(Debug, Clone)]
pub(crate) struct Core {
    /// Byte range from the first unit's start to the last unit's end (untrimmed).
    pub range: Range<usize>,
    /// Starts of the units inside, where the core may be cut when balancing.
    pub cuts: Vec<usize>,
    /// First core after a sync point: no overlap or merging across it.
    pub group_start: bool,
}

/// Whether a unit starts a sync point: a hash of its text, uniform in `0..resync_tokens`,
/// falls below its token count. So sync points come every `resync_tokens` tokens on average
/// whatever the unit size, and a unit of `resync_tokens` tokens or more always is one.
fn is_sync_unit(text: &str, tokens: usize, resync_tokens: usize) -> bool {
    if resync_tokens == 0 {
        return false;
    }
    let bucket = stable_hash(text.as_bytes()) % resync_tokens as u64;
    bucket < tokens as u64
}

/// FNV-1a with a final avalanche: stable across platforms and releases, unlike `std`'s hasher.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Packs units into cores; see the module comment.
pub(crate) struct Packer<'p, 'a> {
    doc: &'p mut DocTokens<'a>,
    params: &'p Params,
    /// The level to cut an oversized unit of a given level at.
    child: fn(Level) -> Level,
    cores: Vec<Core>,
    open: Option<Core>,
    pending_group_start: bool,
}

impl<'p, 'a> Packer<'p, 'a> {
    /// A packer whose first core starts a group.
    pub(crate) fn new(doc: &'p mut DocTokens<'a>, params: &'p Params, child: fn(Level) -> Level) -> Self {
        Self { doc, params, child, cores: Vec::new(), open: None, pending_group_start: true }
    }

    /// Packs the whole document from `level` down, as one span.
    pub(crate) fn pack_document(mut self, level: Level) -> Vec<Core> {
        let len = self.doc.text().len();
        self.pack_span(0..len, level);
        self.finish()
    }

    /// Cuts `span` at `level` and returns the ranges between sync units, for strategies that
    /// pack across the units themselves (`fixed`).
    pub(crate) fn sync_groups(&mut self, span: Range<usize>, level: Level) -> Vec<Range<usize>> {
        let positions = cuts(self.doc, level, span.clone());
        let units = units_from_cuts(span.clone(), &positions, level);
        let next_sync = self.next_sync(&units, level);
        let mut starts = vec![span.start];
        starts.extend((1..units.len()).filter(|&k| next_sync[k - 1] == k).map(|k| units[k].range.start));
        starts.push(span.end);
        starts.windows(2).map(|w| w[0]..w[1]).collect()
    }

    /// Closes the open core; the next core starts a new group.
    pub(crate) fn sync(&mut self) {
        self.close();
        self.pending_group_start = true;
    }

    /// Cuts `span` at `level` and packs the units.
    pub(crate) fn pack_span(&mut self, span: Range<usize>, level: Level) {
        let positions = cuts(self.doc, level, span.clone());
        let units = units_from_cuts(span, &positions, (self.child)(level));
        self.pack_units(&units, level);
    }

    /// Packs `units` (all at `level`) after whatever is open.
    pub(crate) fn pack_units(&mut self, units: &[Unit], level: Level) {
        let next_sync = self.next_sync(units, level);
        let mut i = 0;
        while i < units.len() {
            if i > 0 && next_sync[i - 1] == i {
                self.sync();
            }
            let start = self.open.as_ref().map_or(units[i].range.start, |c| c.range.start);
            if let Some(j) = self.fit(start, units, i, next_sync[i]) {
                self.extend(units, i, j);
                i = j + 1;
                continue;
            }
            // Unit i does not fit after the open core (or alone, if nothing is open).
            if self.open.is_some() && self.fits(units[i].range.start, units[i].range.end) {
                self.close();
                continue;
            }
            if level == Level::Char {
                // A scalar needs at most 4 tokens and the budget is at least that.
                self.extend(units, i, i);
            } else {
                // Too big alone: cut it finer; its first pieces may still fill the open core.
                self.pack_span(units[i].range.clone(), units[i].child);
            }
            i += 1;
        }
    }

    /// `next_sync[i]`: index of the first sync unit after unit `i` (or `units.len()`), so a
    /// core never reaches across one. Only levels that can sync pay for the token counts.
    fn next_sync(&mut self, units: &[Unit], level: Level) -> Vec<usize> {
        let mut next = vec![units.len(); units.len()];
        if !level.can_sync() || self.params.resync_tokens == 0 {
            return next;
        }
        let text = self.doc.text();
        let sync: Vec<bool> = units
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let range = trim(text, u.range.clone());
                let tokens = self.doc.exact(range.clone());
                i > 0 && is_sync_unit(&text[range], tokens, self.params.resync_tokens)
            })
            .collect();
        for k in (0..units.len().saturating_sub(1)).rev() {
            next[k] = if sync[k + 1] { k + 1 } else { next[k + 1] };
        }
        next
    }

    /// The largest `j` in `i..limit` such that the core `start..units[j].end` fits the budget:
    /// guessed from estimates, then settled with exact counts (galloping, then bisecting).
    fn fit(&mut self, start: usize, units: &[Unit], i: usize, limit: usize) -> Option<usize> {
        let budget = self.params.core_budget();
        let mut j = i;
        while j + 1 < limit && self.doc.estimate(start..units[j + 1].range.end) <= budget {
            j += 1;
        }
        let (mut lo, mut hi);
        if self.fits(start, units[j].range.end) {
            lo = j;
            hi = limit;
            let mut step = 1;
            while lo + step < limit {
                if self.fits(start, units[lo + step].range.end) {
                    lo += step;
                    step *= 2;
                } else {
                    hi = lo + step;
                    break;
                }
            }
        } else {
            if j == i || !self.fits(start, units[i].range.end) {
                return None;
            }
            lo = i;
            hi = j;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.fits(start, units[mid].range.end) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    fn fits(&mut self, start: usize, end: usize) -> bool {
        let range = trim(self.doc.text(), start..end);
        self.doc.exact(range) <= self.params.core_budget()
    }

    /// Adds units `i..=j` to the open core, opening one if needed.
    fn extend(&mut self, units: &[Unit], i: usize, j: usize) {
        let end = units[j].range.end;
        let core = self.open.get_or_insert_with(|| Core {
            range: units[i].range.start..units[i].range.start,
            cuts: Vec::new(),
            group_start: false,
        });
        for unit in &units[i..=j] {
            if unit.range.start > core.range.start {
                core.cuts.push(unit.range.start);
            }
        }
        core.range.end = end;
    }

    fn close(&mut self) {
        let Some(mut core) = self.open.take() else {
            return;
        };
        if trim(self.doc.text(), core.range.clone()).is_empty() {
            return;
        }
        core.group_start = std::mem::take(&mut self.pending_group_start);
        self.cores.push(core);
    }

    /// Closes the last core and settles each group's tiny trailing core.
    pub(crate) fn finish(mut self) -> Vec<Core> {
        self.close();
        let mut k = self.cores.len();
        // Walk groups from the back so removing a merged core leaves earlier indices valid.
        while k > 0 {
            let first = (0..k).rev().find(|&i| self.cores[i].group_start).unwrap_or(0);
            if k - first >= 2 {
                self.settle_tail(k - 2);
            }
            k = first;
        }
        self.cores
    }

    /// Merges the tiny core after `p` into `p` if the result fits `max_tokens`; otherwise
    /// moves `p`'s last units over until both reach `min_tokens` within the core budget.
    fn settle_tail(&mut self, p: usize) {
        let text = self.doc.text();
        let (prev, tail) = (self.cores[p].range.clone(), self.cores[p + 1].range.clone());
        let min = self.params.min_tokens;
        if self.doc.exact(trim(text, tail.clone())) >= min {
            return;
        }
        if self.doc.exact(trim(text, prev.start..tail.end)) <= self.params.max_tokens {
            let tail_core = self.cores.remove(p + 1);
            let core = &mut self.cores[p];
            core.cuts.push(tail_core.range.start);
            core.cuts.extend(tail_core.cuts);
            core.range.end = tail_core.range.end;
            return;
        }
        let candidates: Vec<usize> = self.cores[p].cuts.iter().rev().copied().collect();
        for cut in candidates {
            let moved = self.doc.exact(trim(text, cut..tail.end));
            if moved > self.params.core_budget() {
                return;
            }
            if moved >= min && self.doc.exact(trim(text, prev.start..cut)) >= min {
                let keep = self.cores[p].cuts.partition_point(|&c| c < cut);
                let mut moved_cuts = self.cores[p].cuts.split_off(keep);
                moved_cuts.remove(0);
                moved_cuts.push(tail.start);
                moved_cuts.append(&mut self.cores[p + 1].cuts);
                moved_cuts.sort_unstable();
                self.cores[p].range.end = cut;
                self.cores[p + 1].range.start = cut;
                self.cores[p + 1].cuts = moved_cuts;
                return;
            }
        }
    }
}
