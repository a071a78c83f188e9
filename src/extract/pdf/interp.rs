//! The content stream interpreter: runs the graphics and text operators of a page (and the
//! forms it draws) and records every shown glyph with its position on the displayed page.

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;

use lopdf::{Dictionary, Document, Object, ObjectId};

use super::font::Font;
use super::geometry::Matrix;
use super::lexer::{Lexer, Token};
use super::objects::{self, StreamError};
use super::text::{Glyph, PageGlyphs, TextState};

/// Nesting of form XObjects we follow; real files stay in single digits.
const MAX_FORM_DEPTH: usize = 12;
/// `q` nesting we track; deeper saves are counted but not stored.
const MAX_SAVE_DEPTH: usize = 256;
/// Operands kept before an operator; more is garbage.
const MAX_OPERANDS: usize = 64;
/// Operators run on one page; the rest of a page past this is skipped (a drawing that
/// fans out through forms), and the next page starts afresh.
const MAX_PAGE_OPERATORS: u64 = 4_000_000;
/// What drawing a form costs against the budget, in operators: it does far more work than
/// a path operator (state saved, resources looked up, a new stream lexed).
const FORM_COST: u64 = 10;
/// Decoded forms kept for reuse across a document.
const MAX_FORM_CACHE: usize = 64 << 20;

/// Work left for a document: bounds time on hostile files (deep form fan-out, huge streams).
#[derive(Debug)]
pub(super) struct Budget {
    pub operators: u64,
    pub glyphs: u64,
    /// Bytes one content stream or form may decode to.
    pub max_stream: usize,
    /// Set when a stream decoded to more than `max_stream`: the document cannot be read whole.
    pub oversized_stream: bool,
}

/// What persists across the pages of one document.
#[derive(Default)]
pub(super) struct DocCache {
    fonts: HashMap<usize, Rc<Font>>,
    forms: HashMap<ObjectId, Rc<Vec<u8>>>,
    form_bytes: usize,
}

/// One content-stream operand.
#[derive(Debug)]
enum Operand<'a> {
    Num(f32),
    Name(Cow<'a, [u8]>),
    Str(Cow<'a, [u8]>),
    Array(Vec<Operand<'a>>),
    Other,
}

#[derive(Clone)]
struct GState {
    ctm: Matrix,
    text: TextState,
}

/// Runs the content of one page.
pub(super) struct Interpreter<'a> {
    doc: &'a Document,
    cache: &'a mut DocCache,
    budget: &'a mut Budget,
    out: PageGlyphs,
    gs: GState,
    saved: Vec<GState>,
    unsaved: usize,
    forms: Vec<ObjectId>,
    base: Matrix,
    page_operators: u64,
}

impl<'a> Interpreter<'a> {
    /// An interpreter whose device space is the display frame given by `to_display`.
    pub fn new(
        doc: &'a Document,
        cache: &'a mut DocCache,
        budget: &'a mut Budget,
        to_display: Matrix,
    ) -> Interpreter<'a> {
        Interpreter {
            doc,
            cache,
            budget,
            out: PageGlyphs::default(),
            gs: GState { ctm: to_display, text: TextState::default() },
            saved: Vec::new(),
            unsaved: 0,
            forms: Vec::new(),
            base: to_display,
            page_operators: MAX_PAGE_OPERATORS,
        }
    }

    /// The device matrix the page started with (user space to display).
    pub fn page_matrix(&self) -> Matrix {
        self.base
    }

    /// The glyphs shown so far.
    pub fn finish(self) -> PageGlyphs {
        self.out
    }

    /// Runs one content stream with its resources.
    pub fn run(&mut self, content: &[u8], resources: Option<&'a Dictionary>) {
        let mut lexer = Lexer::new(content);
        let mut operands: Vec<Operand<'_>> = Vec::new();
        let mut arrays: Vec<Vec<Operand<'_>>> = Vec::new();
        while let Some(token) = lexer.next() {
            let operand = match token {
                Token::Number(n) => Operand::Num(n),
                Token::Name(n) => Operand::Name(n),
                Token::Str(s) => Operand::Str(s),
                Token::ArrayStart if arrays.len() < 4 => {
                    arrays.push(Vec::new());
                    continue;
                }
                Token::ArrayEnd => match arrays.pop() {
                    Some(a) => Operand::Array(a),
                    None => continue,
                },
                Token::ArrayStart | Token::DictStart | Token::DictEnd => Operand::Other,
                // Some producers put operators inside a `TJ` array; readers skip them.
                Token::Keyword(_) if !arrays.is_empty() => continue,
                Token::Keyword(op) => {
                    if op == b"BI" {
                        skip_inline_image(&mut lexer);
                    } else if !self.operator(op, &operands, resources) {
                        return;
                    }
                    operands.clear();
                    continue;
                }
            };
            match arrays.last_mut() {
                Some(a) if a.len() < 4096 => a.push(operand),
                Some(_) => {}
                None if operands.len() < MAX_OPERANDS => operands.push(operand),
                None => operands.clear(),
            }
        }
    }

    /// Executes one operator; false when the page's or the document's budget is spent.
    fn operator(&mut self, op: &[u8], args: &[Operand<'_>], res: Option<&'a Dictionary>) -> bool {
        if self.budget.operators == 0
            || self.budget.glyphs == 0
            || self.page_operators == 0
            || self.budget.oversized_stream
        {
            return false;
        }
        let cost = if op == b"Do" { FORM_COST } else { 1 };
        self.budget.operators = self.budget.operators.saturating_sub(cost);
        self.page_operators = self.page_operators.saturating_sub(cost);
        match op {
            b"q" => self.save(),
            b"Q" => self.restore(),
            b"cm" => {
                if let Some(m) = Matrix::from_slice(&numbers(args)) {
                    self.gs.ctm = m.then(&self.gs.ctm);
                }
            }
            b"Tf" => self.set_font(args, res),
            b"Tj" | b"'" | b"\"" => {
                if op != b"Tj" {
                    if let [aw, ac, ..] = numbers(args)[..] {
                        self.gs.text.set_param(b"Tw", aw);
                        self.gs.text.set_param(b"Tc", ac);
                    }
                    self.gs.text.next_line();
                }
                if let Some(Operand::Str(s)) = args.last() {
                    self.show(s);
                }
            }
            b"TJ" => {
                if let Some(Operand::Array(items)) = args.last() {
                    self.show_array(items);
                }
            }
            b"Do" => {
                if let Some(Operand::Name(n)) = args.last() {
                    self.draw_xobject(n, res);
                }
            }
            _ => self.text_state_operator(op, args),
        }
        true
    }

    /// The operators that only move the pen or set text parameters.
    fn text_state_operator(&mut self, op: &[u8], args: &[Operand<'_>]) {
        let text = &mut self.gs.text;
        match op {
            b"BT" => text.begin(),
            b"Tc" | b"Tw" | b"Tz" | b"TL" | b"Ts" => {
                if let Some(&v) = numbers(args).last() {
                    text.set_param(op, v);
                }
            }
            b"Td" | b"TD" => {
                if let [tx, ty] = numbers(args)[..] {
                    text.move_line(tx, ty, op == b"TD");
                }
            }
            b"Tm" => {
                if let Some(m) = Matrix::from_slice(&numbers(args)) {
                    text.set_matrix(m);
                }
            }
            b"T*" => text.next_line(),
            _ => {}
        }
    }

    fn save(&mut self) {
        if self.saved.len() < MAX_SAVE_DEPTH {
            self.saved.push(self.gs.clone());
        } else {
            self.unsaved += 1;
        }
    }

    fn restore(&mut self) {
        if self.unsaved > 0 {
            self.unsaved -= 1;
        } else if let Some(gs) = self.saved.pop() {
            // The text matrix is not part of the graphics state; keep it across `Q`.
            let tm = self.gs.text.matrices();
            self.gs = gs;
            self.gs.text.set_matrices(tm);
        }
    }

    fn set_font(&mut self, args: &[Operand<'_>], res: Option<&'a Dictionary>) {
        let (Some(Operand::Name(name)), Some(Operand::Num(size))) = (args.first(), args.get(1)) else {
            return;
        };
        let font = res
            .and_then(|r| objects::dict(self.doc, r, b"Font"))
            .and_then(|fonts| fonts.get(name).ok())
            .map(|obj| self.font(obj));
        self.gs.text.set_font(font, *size);
    }

    /// The font an object refers to, loaded once per document.
    fn font(&mut self, obj: &'a Object) -> Rc<Font> {
        let target = objects::resolve(self.doc, obj);
        // Key by the resolved object's address: the document is immutable while we run, and
        // direct dictionaries have no id to key by.
        let key = std::ptr::from_ref(target) as usize;
        let doc = self.doc;
        let loaded = self.cache.fonts.entry(key).or_insert_with(|| match target {
            Object::Dictionary(d) => Rc::new(Font::load(doc, d)),
            _ => Rc::new(Font::fallback()),
        });
        Rc::clone(loaded)
    }

    fn show_array(&mut self, items: &[Operand<'_>]) {
        for item in items {
            match item {
                Operand::Str(s) => self.show(s),
                Operand::Num(n) => self.gs.text.kern(*n),
                _ => {}
            }
        }
    }

    fn show(&mut self, bytes: &[u8]) {
        let GState { ctm, text } = &mut self.gs;
        let font = text.font();
        let mut shown = 0u64;
        let out = &mut self.out;
        let mut scratch = String::new();
        font.each_code(bytes, &mut scratch, |code| {
            let glyph: Option<Glyph> = text.advance(&code, &font, ctm);
            if let Some(g) = glyph {
                out.push(g, code.text);
                shown += 1;
            }
        });
        self.budget.glyphs = self.budget.glyphs.saturating_sub(shown);
    }

    fn draw_xobject(&mut self, name: &[u8], res: Option<&'a Dictionary>) {
        let doc = self.doc;
        let Some(obj) = res.and_then(|r| objects::dict(doc, r, b"XObject")).and_then(|x| x.get(name).ok()) else {
            return;
        };
        let Some(id) = objects::reference(obj) else {
            return;
        };
        let Ok(Object::Stream(form)) = doc.get_object(id) else {
            return;
        };
        if objects::name(doc, &form.dict, b"Subtype") == Some(b"Form") {
            self.run_form(id, form, self.gs.ctm, res);
        }
    }

    /// Runs a form XObject (or an annotation's appearance) drawn with `ctm`, its own
    /// `/Matrix` applied; the graphics state is restored afterwards.
    pub fn run_form(&mut self, id: ObjectId, form: &'a lopdf::Stream, ctm: Matrix, res: Option<&'a Dictionary>) {
        let doc = self.doc;
        if self.forms.len() >= MAX_FORM_DEPTH || self.forms.contains(&id) {
            return;
        }
        let Some(content) = self.form_content(id, form) else {
            return;
        };
        let form_res = objects::dict(doc, &form.dict, b"Resources").or(res);
        let outer = (self.gs.clone(), self.saved.len(), self.unsaved);
        self.gs.ctm = form_matrix(doc, &form.dict).then(&ctm);
        self.forms.push(id);
        self.run(&content, form_res);
        self.forms.pop();
        self.saved.truncate(outer.1);
        (self.gs, self.unsaved) = (outer.0, outer.2);
    }

    /// A form's decoded content, decoded once per document while the cache has room.
    fn form_content(&mut self, id: ObjectId, form: &lopdf::Stream) -> Option<Rc<Vec<u8>>> {
        if let Some(bytes) = self.cache.forms.get(&id) {
            return Some(Rc::clone(bytes));
        }
        let bytes = match objects::decode(form, self.budget.max_stream) {
            Ok(bytes) => Rc::new(bytes),
            Err(StreamError::TooLarge) => {
                self.budget.oversized_stream = true;
                return None;
            }
            Err(StreamError::Unreadable) => return None,
        };
        // Decoding costs time too: charge it against the operator budget, so a large form
        // drawn many times (when the cache is full) cannot run for long.
        let cost = u64::try_from(bytes.len() / 64).unwrap_or(u64::MAX);
        self.budget.operators = self.budget.operators.saturating_sub(cost);
        if self.cache.form_bytes + bytes.len() <= MAX_FORM_CACHE {
            self.cache.form_bytes += bytes.len();
            self.cache.forms.insert(id, Rc::clone(&bytes));
        }
        Some(bytes)
    }
}

/// A form's `/Matrix`, identity when missing or malformed.
pub(super) fn form_matrix(doc: &Document, form: &Dictionary) -> Matrix {
    objects::array(doc, form, b"Matrix")
        .map(|a| objects::numbers(doc, a).into_iter().flatten().collect::<Vec<_>>())
        .and_then(|m| Matrix::from_slice(&m))
        .unwrap_or(Matrix::IDENTITY)
}

/// The numeric operands, in order.
fn numbers(args: &[Operand<'_>]) -> Vec<f32> {
    args.iter()
        .filter_map(|a| match a {
            Operand::Num(n) => Some(*n),
            _ => None,
        })
        .collect()
}

/// Skips an inline image: its parameters up to `ID`, then its data up to `EI`.
fn skip_inline_image(lexer: &mut Lexer<'_>) {
    for _ in 0..256 {
        match lexer.next() {
            Some(Token::Keyword(b"ID")) => {
                lexer.skip_inline_image_data();
                return;
            }
            Some(_) => {}
            None => return,
        }
    }
}
