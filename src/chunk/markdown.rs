//! `markdown`: blocks (headings, list items, code blocks, tables, paragraphs) packed within
//! their section, so every chunk has one heading path. A block is cut only when it alone
//! exceeds the budget: code, tables and HTML at lines, prose at sentences. A heading is packed
//! with the block after it. A section that is only a heading is packed with the next section
//! (unless that one is higher in the outline), and one whose text is below `min_tokens` with
//! its first subsection, instead of standing alone.

use std::ops::Range;

use pulldown_cmark::{Event, Options, Parser, Tag};

use super::counter::DocTokens;
use super::offsets::{is_grapheme_boundary, trim};
use super::packer::{Core, Packer, Params};
use super::units::{Level, Unit};

/// A heading and the text up to the next one.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    /// Byte offset of the heading (0 for the text before the first heading).
    pub start: usize,
    /// Heading level 1–6; 0 for the text before the first heading.
    pub level: u8,
    /// Heading titles from the top, joined with " > "; `None` before the first heading.
    pub path: Option<String>,
    /// Nothing but the heading before the next heading.
    pub bare: bool,
}

/// The sections of a Markdown document, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outline {
    sections: Vec<Section>,
}

impl Outline {
    /// The heading path in effect at byte `pos`.
    pub(crate) fn path_at(&self, pos: usize) -> Option<&str> {
        let idx = self.sections.partition_point(|s| s.start <= pos);
        self.sections.get(idx.checked_sub(1)?)?.path.as_deref()
    }
}

/// Where a block starts and the level to cut it at if it alone exceeds the budget.
struct Block {
    start: usize,
    child: Level,
    heading: bool,
}

/// Cores of the whole document and its outline (for heading paths).
pub(crate) fn cores(doc: &mut DocTokens<'_>, params: &Params) -> (Vec<Core>, Outline) {
    let text = doc.text();
    let (blocks, outline) = parse(text);
    let groups = groups(doc, &outline, params.min_tokens);
    let mut packer = Packer::new(doc, params, child);
    let mut next_block = 0;
    for group in groups {
        packer.sync();
        let mut units: Vec<Unit> = Vec::new();
        let mut start = group.start;
        let mut child = Level::Sentence;
        while next_block < blocks.len() && blocks[next_block].start < group.end {
            let block = &blocks[next_block];
            if block.start > start {
                units.push(Unit { range: start..block.start, child });
                start = block.start;
            }
            child = block.child;
            next_block += 1;
        }
        units.push(Unit { range: start..group.end, child });
        packer.pack_units(&units, Level::Block);
    }
    (packer.finish(), outline)
}

/// Line → word → grapheme → char (code); sentence → line → word → grapheme → char (prose).
fn child(level: Level) -> Level {
    match level {
        Level::Paragraph | Level::Block => Level::Sentence,
        Level::Sentence => Level::Line,
        Level::Line => Level::Word,
        Level::Word | Level::Piece => Level::Grapheme,
        Level::Grapheme | Level::Char => Level::Char,
    }
}

/// Section ranges to pack independently; tiny sections join their first subsection.
fn groups(doc: &mut DocTokens<'_>, outline: &Outline, min_tokens: usize) -> Vec<Range<usize>> {
    let text = doc.text();
    let sections = &outline.sections;
    let mut groups = Vec::new();
    let mut group_start = 0;
    for (i, section) in sections.iter().enumerate() {
        let end = sections.get(i + 1).map_or(text.len(), |s| s.start);
        let joins_next = sections.get(i + 1).is_some_and(|next| {
            (section.bare && next.level >= section.level)
                || (next.level > section.level && doc.exact(trim(text, section.start..end)) < min_tokens)
        });
        if !joins_next {
            groups.push(group_start..end);
            group_start = end;
        }
    }
    if group_start < text.len() || groups.is_empty() {
        groups.push(group_start..text.len());
    }
    groups
}

/// Top-level block starts and the section outline. Lists and definition lists contribute
/// their items (terms) instead of one block, so long lists can be packed item by item.
fn parse(text: &str) -> (Vec<Block>, Outline) {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_HEADING_ATTRIBUTES
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS
        | Options::ENABLE_DEFINITION_LIST;
    let mut blocks = Vec::new();
    let mut headings = Vec::new();
    let mut depth = 0usize;
    let mut in_list = false;
    let mut title: Option<(usize, u8, String)> = None;
    for (event, range) in Parser::new_ext(text, options).into_offset_iter() {
        match event {
            Event::Start(tag) => {
                if depth == 0 {
                    in_list = matches!(tag, Tag::List(_) | Tag::DefinitionList);
                    let heading = matches!(tag, Tag::Heading { .. });
                    if let Tag::Heading { level, .. } = tag {
                        title = Some((range.start, level as u8, String::new()));
                    }
                    if !in_list {
                        blocks.push(Block { start: range.start, child: block_child(&tag), heading });
                    }
                } else if depth == 1 && in_list && matches!(tag, Tag::Item | Tag::DefinitionListTitle) {
                    blocks.push(Block { start: range.start, child: Level::Sentence, heading: false });
                }
                depth += 1;
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 0
                    && let Some(heading) = title.take()
                {
                    headings.push(heading);
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some((_, _, title)) = title.as_mut() {
                    title.push_str(&t);
                }
            }
            Event::Rule if depth == 0 => {
                blocks.push(Block { start: range.start, child: Level::Sentence, heading: false });
            }
            _ => {}
        }
    }
    blocks.retain(|b| is_grapheme_boundary(text, b.start));
    blocks.dedup_by_key(|b| b.start);
    let bare: Vec<usize> = blocks.windows(2).filter(|w| w[0].heading && w[1].heading).map(|w| w[0].start).collect();
    (fuse_headings(blocks), outline(headings, &bare))
}

/// Joins every heading to the block after it, so a heading never ends a chunk or stands alone.
/// The joined unit is cut like the block (a heading line is short).
fn fuse_headings(blocks: Vec<Block>) -> Vec<Block> {
    let mut fused: Vec<Block> = Vec::with_capacity(blocks.len());
    for block in blocks {
        match fused.last_mut() {
            Some(last) if last.heading => {
                last.child = block.child;
                last.heading = block.heading;
            }
            _ => fused.push(block),
        }
    }
    fused
}

/// Code, tables, HTML and front matter are cut at lines; everything else at sentences.
fn block_child(tag: &Tag<'_>) -> Level {
    match tag {
        Tag::CodeBlock(_) | Tag::Table(_) | Tag::HtmlBlock | Tag::MetadataBlock(_) => Level::Line,
        _ => Level::Sentence,
    }
}

/// Sections with heading paths from `(offset, level, title)` of every top-level heading;
/// `bare` lists the offsets of headings followed directly by another heading.
fn outline(headings: Vec<(usize, u8, String)>, bare: &[usize]) -> Outline {
    let mut sections = vec![Section { start: 0, level: 0, path: None, bare: false }];
    let mut stack: Vec<(u8, String)> = Vec::new();
    for (start, level, title) in headings {
        while stack.last().is_some_and(|(l, _)| *l >= level) {
            stack.pop();
        }
        let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
        stack.push((level, title));
        let path = stack.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join(" > ");
        if start == 0 {
            sections.clear();
        }
        let bare = bare.binary_search(&start).is_ok();
        sections.push(Section { start, level, path: Some(path), bare });
    }
    Outline { sections }
}
