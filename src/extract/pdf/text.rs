//! Text state (ISO 32000-1, 9.3 and 9.4.4): where each shown glyph lands and how far the
//! pen moves; and the glyph record the layout works from.

use std::rc::Rc;

use super::font::{Code, Font};
use super::geometry::Matrix;

/// One shown glyph in display space (origin top left, y down).
#[derive(Clone, Copy, Debug)]
pub(super) struct Glyph {
    /// Origin (on the baseline).
    pub x: f32,
    pub y: f32,
    /// Advance vector: where the next glyph would start.
    pub dx: f32,
    pub dy: f32,
    /// Font size as drawn.
    pub size: f32,
    /// An explicit space (or other blank) preceded this glyph in the content stream.
    pub space_before: bool,
    /// Byte range of its text in [`PageGlyphs::text`].
    pub start: u32,
    pub end: u32,
}

/// Every glyph of a page, with their text in one buffer.
#[derive(Debug, Default)]
pub(super) struct PageGlyphs {
    pub glyphs: Vec<Glyph>,
    pub text: String,
}

impl PageGlyphs {
    /// Records a glyph and its text.
    pub fn push(&mut self, mut g: Glyph, text: &str) {
        g.start = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        self.text.push_str(text);
        g.end = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        self.glyphs.push(g);
    }

    /// The text of one glyph.
    pub fn text_of(&self, g: &Glyph) -> &str {
        self.text.get(g.start as usize..g.end as usize).unwrap_or("")
    }
}

/// Text state parameters plus the text and line matrices.
#[derive(Clone, Debug)]
pub(super) struct TextState {
    font: Option<Rc<Font>>,
    size: f32,
    char_space: f32,
    word_space: f32,
    hscale: f32,
    leading: f32,
    rise: f32,
    tm: Matrix,
    tlm: Matrix,
    pending_space: bool,
}

impl Default for TextState {
    fn default() -> TextState {
        TextState {
            font: None,
            size: 0.0,
            char_space: 0.0,
            word_space: 0.0,
            hscale: 1.0,
            leading: 0.0,
            rise: 0.0,
            tm: Matrix::IDENTITY,
            tlm: Matrix::IDENTITY,
            pending_space: false,
        }
    }
}

impl TextState {
    /// `BT`.
    pub fn begin(&mut self) {
        self.tm = Matrix::IDENTITY;
        self.tlm = Matrix::IDENTITY;
    }

    /// `Tf`.
    pub fn set_font(&mut self, font: Option<Rc<Font>>, size: f32) {
        self.font = font;
        self.size = if size.is_finite() { size } else { 0.0 };
    }

    /// The current font, or a stand-in when none was set (text still shows in broken files).
    pub fn font(&mut self) -> Rc<Font> {
        Rc::clone(self.font.get_or_insert_with(|| Rc::new(Font::fallback())))
    }

    /// `Tc`, `Tw`, `Tz`, `TL`, `Ts`.
    pub fn set_param(&mut self, op: &[u8], v: f32) {
        match op {
            b"Tc" => self.char_space = v,
            b"Tw" => self.word_space = v,
            b"Tz" => self.hscale = v / 100.0,
            b"TL" => self.leading = v,
            b"Ts" => self.rise = v,
            _ => {}
        }
    }

    /// `Td` (and `TD`, which also sets the leading).
    pub fn move_line(&mut self, tx: f32, ty: f32, set_leading: bool) {
        if set_leading {
            self.leading = -ty;
        }
        self.tlm = Matrix::translate(tx, ty).then(&self.tlm);
        self.tm = self.tlm;
    }

    /// `T*`.
    pub fn next_line(&mut self) {
        self.move_line(0.0, -self.leading, false);
    }

    /// `Tm`.
    pub fn set_matrix(&mut self, m: Matrix) {
        self.tm = m;
        self.tlm = m;
    }

    /// The text and line matrices, which `Q` must not restore.
    pub fn matrices(&self) -> (Matrix, Matrix) {
        (self.tm, self.tlm)
    }

    /// Puts back matrices saved with [`TextState::matrices`].
    pub fn set_matrices(&mut self, (tm, tlm): (Matrix, Matrix)) {
        self.tm = tm;
        self.tlm = tlm;
    }

    /// A number in a `TJ` array: moves the pen back by `n` thousandths of the font size.
    pub fn kern(&mut self, n: f32) {
        let shift = -n / 1000.0 * self.size;
        let vertical = self.font.as_ref().is_some_and(|f| f.vertical);
        let m = if vertical { Matrix::translate(0.0, shift) } else { Matrix::translate(shift * self.hscale, 0.0) };
        self.tm = m.then(&self.tm);
    }

    /// Places one code at the pen and advances the pen past it. Blank codes only move the
    /// pen and mark a word break; everything else becomes a [`Glyph`].
    pub fn advance(&mut self, code: &Code<'_>, font: &Font, ctm: &Matrix) -> Option<Glyph> {
        let trm = self.tm.then(ctm);
        let (x, y) = trm.apply(0.0, self.rise);
        let spacing = self.char_space + if code.word_space { self.word_space } else { 0.0 };
        let (tx, ty, across) = if font.vertical {
            (0.0, -code.width * self.size + spacing, (self.size, 0.0))
        } else {
            ((code.width * self.size + spacing) * self.hscale, 0.0, (0.0, self.size))
        };
        let (dx, dy) = trm.apply_vector(tx, ty);
        let (ax, ay) = trm.apply_vector(across.0, across.1);
        self.tm = Matrix::translate(tx, ty).then(&self.tm);
        if !code.text.is_empty() && code.text.chars().all(char::is_whitespace) {
            self.pending_space = true;
            return None;
        }
        let size = ax.hypot(ay) * font.size_scale;
        let finite = [x, y, dx, dy, size].iter().all(|v| v.is_finite());
        finite.then(|| Glyph {
            x,
            y,
            dx,
            dy,
            size,
            space_before: std::mem::take(&mut self.pending_space),
            start: 0,
            end: 0,
        })
    }
}
