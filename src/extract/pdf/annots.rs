//! Annotation appearances that carry text: filled-in form fields, free-text notes and
//! stamps are part of what a reader sees on the page, so they are drawn like the page's
//! own content (as viewers and pdftotext do).

use lopdf::{Dictionary, Document, Object};

use super::geometry::Matrix;
use super::interp::{Interpreter, form_matrix};
use super::objects;

/// Annotations beyond this many on one page are ignored (real forms have hundreds).
const MAX_ANNOTATIONS: usize = 5_000;
/// `/F` flags: hidden, and not to be displayed (ISO 32000-1, 12.5.3).
const HIDDEN: i64 = 1 << 1;
const NO_VIEW: i64 = 1 << 5;

/// Draws the normal appearance of the page's text-bearing annotations.
pub(super) fn draw<'a>(interp: &mut Interpreter<'a>, doc: &'a Document, page: &'a Dictionary) {
    let Some(annots) = objects::array(doc, page, b"Annots") else {
        return;
    };
    for annot in annots.iter().take(MAX_ANNOTATIONS) {
        let Ok(dict) = objects::resolve(doc, annot).as_dict() else {
            continue;
        };
        if let Some((id, form, at)) = appearance(doc, dict) {
            interp.run_form(id, form, at.then(&interp.page_matrix()), None);
        }
    }
}

/// The appearance stream of a visible text-bearing annotation, with the matrix that puts
/// it in its `/Rect` (ISO 32000-1, 12.5.5).
fn appearance<'a>(doc: &'a Document, annot: &'a Dictionary) -> Option<(lopdf::ObjectId, &'a lopdf::Stream, Matrix)> {
    let subtype = objects::name(doc, annot, b"Subtype")?;
    if !matches!(subtype, b"Widget" | b"FreeText" | b"Stamp") {
        return None;
    }
    let flags = objects::number(doc, annot, b"F").unwrap_or(0.0) as i64;
    if flags & (HIDDEN | NO_VIEW) != 0 {
        return None;
    }
    let normal = objects::dict(doc, annot, b"AP")?.get(b"N").ok()?;
    // `/N` is a stream, or a dictionary of streams by state (`/AS` picks one).
    let reference = match objects::resolve(doc, normal) {
        Object::Dictionary(states) => {
            let state = objects::name(doc, annot, b"AS")?;
            states.get(state).ok()?
        }
        _ => normal,
    };
    let id = objects::reference(reference)?;
    let form = doc.get_object(id).ok()?.as_stream().ok()?;
    let target = rect(doc, annot, b"Rect")?;
    let bbox = rect(doc, &form.dict, b"BBox")?;
    Some((id, form, fit(bbox, form_matrix(doc, &form.dict), target)))
}

fn rect(doc: &Document, dict: &Dictionary, key: &[u8]) -> Option<[f32; 4]> {
    let v: Vec<f32> = objects::numbers(doc, objects::array(doc, dict, key)?).into_iter().collect::<Option<_>>()?;
    let [a, b, c, d] = v[..] else { return None };
    Some([a.min(c), b.min(d), a.max(c), b.max(d)])
}

/// The matrix mapping the form's box (as transformed by its own matrix) onto `rect`.
/// `run_form` applies the form matrix itself, so it is not part of the result.
fn fit(bbox: [f32; 4], matrix: Matrix, rect: [f32; 4]) -> Matrix {
    let corners = [(bbox[0], bbox[1]), (bbox[2], bbox[1]), (bbox[0], bbox[3]), (bbox[2], bbox[3])];
    let pts: Vec<(f32, f32)> = corners.iter().map(|&(x, y)| matrix.apply(x, y)).collect();
    let min_x = pts.iter().map(|p| p.0).fold(f32::MAX, f32::min);
    let max_x = pts.iter().map(|p| p.0).fold(f32::MIN, f32::max);
    let min_y = pts.iter().map(|p| p.1).fold(f32::MAX, f32::min);
    let max_y = pts.iter().map(|p| p.1).fold(f32::MIN, f32::max);
    let sx = if max_x - min_x > 1e-3 { (rect[2] - rect[0]) / (max_x - min_x) } else { 1.0 };
    let sy = if max_y - min_y > 1e-3 { (rect[3] - rect[1]) / (max_y - min_y) } else { 1.0 };
    Matrix { a: sx, b: 0.0, c: 0.0, d: sy, e: rect[0] - min_x * sx, f: rect[1] - min_y * sy }
}
