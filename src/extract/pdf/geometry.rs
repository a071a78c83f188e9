//! Affine matrices and the page frame: where user-space points land on the displayed page.

/// A PDF affine matrix `[a b c d e f]`, mapping `(x, y)` to `(a·x + c·y + e, b·x + d·y + f)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Matrix {
    pub a: f32,
    pub b: f32,
    pub c: f32,
    pub d: f32,
    pub e: f32,
    pub f: f32,
}

impl Matrix {
    pub const IDENTITY: Matrix = Matrix { a: 1.0, b: 0.0, c: 0.0, d: 1.0, e: 0.0, f: 0.0 };

    /// Builds a matrix from six operands; `None` when any is missing or not finite, so a
    /// malformed `cm`/`Tm` is ignored rather than poisoning every later coordinate.
    pub fn from_slice(v: &[f32]) -> Option<Matrix> {
        let [a, b, c, d, e, f] = *v else { return None };
        let m = Matrix { a, b, c, d, e, f };
        [a, b, c, d, e, f].iter().all(|x| x.is_finite()).then_some(m)
    }

    /// A translation by `(tx, ty)`.
    pub fn translate(tx: f32, ty: f32) -> Matrix {
        Matrix { e: tx, f: ty, ..Matrix::IDENTITY }
    }

    /// `self` applied first, then `other` (PDF's `self × other`).
    pub fn then(&self, o: &Matrix) -> Matrix {
        Matrix {
            a: self.a * o.a + self.b * o.c,
            b: self.a * o.b + self.b * o.d,
            c: self.c * o.a + self.d * o.c,
            d: self.c * o.b + self.d * o.d,
            e: self.e * o.a + self.f * o.c + o.e,
            f: self.e * o.b + self.f * o.d + o.f,
        }
    }

    /// Maps a point.
    pub fn apply(&self, x: f32, y: f32) -> (f32, f32) {
        (self.a * x + self.c * y + self.e, self.b * x + self.d * y + self.f)
    }

    /// Maps a direction vector (no translation).
    pub fn apply_vector(&self, x: f32, y: f32) -> (f32, f32) {
        (self.a * x + self.c * y, self.b * x + self.d * y)
    }
}

/// The visible page: its crop box seen through `/Rotate`, with the origin at the top left and
/// `y` growing downwards, as a reader sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct PageFrame {
    /// User space to display space.
    pub to_display: Matrix,
    pub width: f32,
    pub height: f32,
}

impl PageFrame {
    /// `crop` is `[x0, y0, x1, y1]` in user space; `rotate` is the page's `/Rotate` in degrees.
    pub fn new(crop: [f32; 4], rotate: i64) -> PageFrame {
        let [x0, y0, x1, y1] = crop;
        let (w, h) = ((x1 - x0).abs().max(1.0), (y1 - y0).abs().max(1.0));
        let (lx, ly) = (x0.min(x1), y0.min(y1));
        // Move the crop box to the origin, flip y so it grows downwards, then turn clockwise
        // by /Rotate: the display frame of a rotated page.
        let flip = Matrix { d: -1.0, f: h, ..Matrix::translate(-lx, 0.0) };
        let base = Matrix::translate(0.0, -ly).then(&flip);
        let (turn, width, height) = match rotate.rem_euclid(360) {
            90 => (rotation(0.0, 1.0, h), h, w),
            180 => (rotation(-1.0, 0.0, 0.0).then(&Matrix::translate(w, h)), w, h),
            270 => (rotation(0.0, -1.0, 0.0).then(&Matrix::translate(0.0, w)), h, w),
            _ => (Matrix::IDENTITY, w, h),
        };
        PageFrame { to_display: base.then(&turn), width, height }
    }
}

/// A clockwise turn in a y-down frame given `cos`/`sin`, then a shift right by `dx`.
fn rotation(cos: f32, sin: f32, dx: f32) -> Matrix {
    Matrix { a: cos, b: sin, c: -sin, d: cos, e: dx, f: 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(p: (f32, f32), q: (f32, f32)) -> bool {
        (p.0 - q.0).abs() < 1e-3 && (p.1 - q.1).abs() < 1e-3
    }

    #[test]
    fn unrotated_page_puts_top_left_at_origin() {
        let f = PageFrame::new([10.0, 20.0, 110.0, 220.0], 0);
        assert!(close(f.to_display.apply(10.0, 220.0), (0.0, 0.0)));
        assert!(close(f.to_display.apply(110.0, 20.0), (100.0, 200.0)));
    }

    #[test]
    fn page_rotated_clockwise_shows_its_left_edge_on_top() {
        let f = PageFrame::new([0.0, 0.0, 100.0, 200.0], 90);
        assert_eq!((f.width, f.height), (200.0, 100.0));
        // The user-space bottom-left corner becomes the display top-left.
        assert!(close(f.to_display.apply(0.0, 0.0), (0.0, 0.0)));
        assert!(close(f.to_display.apply(0.0, 200.0), (200.0, 0.0)));
        assert!(close(f.to_display.apply(100.0, 0.0), (0.0, 100.0)));
    }

    #[test]
    fn half_and_three_quarter_turns_stay_inside_the_frame() {
        for rot in [180, 270, -90] {
            let f = PageFrame::new([0.0, 0.0, 100.0, 200.0], rot);
            for (x, y) in [(0.0, 0.0), (100.0, 0.0), (0.0, 200.0), (100.0, 200.0)] {
                let (dx, dy) = f.to_display.apply(x, y);
                assert!(dx > -1e-3 && dx < f.width + 1e-3, "{rot}: {dx}");
                assert!(dy > -1e-3 && dy < f.height + 1e-3, "{rot}: {dy}");
            }
        }
    }

    #[test]
    fn composition_applies_left_operand_first() {
        let scale = Matrix { a: 2.0, d: 2.0, ..Matrix::IDENTITY };
        let m = scale.then(&Matrix::translate(5.0, 0.0));
        assert!(close(m.apply(1.0, 1.0), (7.0, 2.0)));
    }
}
