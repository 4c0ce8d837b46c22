//! Running a model exported with a fixed batch size (what `torch.onnx.export` writes by default)
//! on any number of images: consecutive parts of that size, the last one padded.

use ndarray::{concatenate, Array, ArrayD, ArrayView, Axis, Dimension, RemoveAxis};

/// One part of a batch: images `start..start + len`, run as `size` images (the model's fixed
/// batch; the rows after `len` repeat the last image and their results are dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub start: usize,
    pub len: usize,
    pub size: usize,
}

/// The parts a batch of `batch` images runs in: one part when the batch is dynamic (`fixed` is
/// `None`) or already the fixed size.
pub(crate) fn parts(batch: usize, fixed: Option<usize>) -> Vec<Part> {
    match fixed.filter(|&f| f > 0 && f != batch) {
        None => vec![Part { start: 0, len: batch, size: batch }],
        Some(f) => {
            (0..batch).step_by(f).map(|start| Part { start, len: f.min(batch - start), size: f }).collect()
        }
    }
}

/// Rows `part.start..part.start + part.len` of `x` (batch first), padded to `part.size` rows with
/// copies of the last one (`pad` = `None`) or with `pad`.
pub(crate) fn rows<D: Dimension + RemoveAxis>(
    x: ArrayView<f32, D>,
    part: Part,
    pad: Option<f32>,
) -> Array<f32, D> {
    let taken = x.slice_axis(Axis(0), (part.start..part.start + part.len).into());
    if part.len == part.size {
        return taken.to_owned();
    }
    let mut shape = taken.raw_dim();
    shape[0] = part.size;
    let mut out = Array::zeros(shape);
    out.slice_axis_mut(Axis(0), (0..part.len).into()).assign(&taken);
    for i in part.len..part.size {
        let mut row = out.index_axis_mut(Axis(0), i);
        match pad {
            Some(v) => row.fill(v),
            None => row.assign(&taken.index_axis(Axis(0), part.len.saturating_sub(1))),
        }
    }
    out
}

/// The real rows of each part's result, joined along the batch axis.
/// A result without one row per image of its part (a scalar from a broken model, a layer's
/// windows) is a shape error, not a panic, nor rows taken for images they are not.
pub(crate) fn join(results: &[(ArrayD<f32>, Part)]) -> Result<ArrayD<f32>, ndarray::ShapeError> {
    let views = results
        .iter()
        .map(|(a, p)| match a.ndim() {
            0 => Err(ndarray::ShapeError::from_kind(ndarray::ErrorKind::IncompatibleShape)),
            _ if a.len_of(Axis(0)) != p.size => {
                Err(ndarray::ShapeError::from_kind(ndarray::ErrorKind::IncompatibleShape))
            }
            _ => Ok(a.slice_axis(Axis(0), (0..p.len).into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    concatenate(Axis(0), &views)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_batch_in_fixed_sizes() {
        assert_eq!(parts(5, None), [Part { start: 0, len: 5, size: 5 }]);
        assert_eq!(parts(2, Some(2)), [Part { start: 0, len: 2, size: 2 }]);
        assert_eq!(
            parts(5, Some(2)),
            [
                Part { start: 0, len: 2, size: 2 },
                Part { start: 2, len: 2, size: 2 },
                Part { start: 4, len: 1, size: 2 }
            ]
        );
        assert_eq!(parts(1, Some(4)), [Part { start: 0, len: 1, size: 4 }]);
    }

    #[test]
    fn padded_rows_repeat_the_last_image_and_join_drops_them() {
        let x = ndarray::Array2::from_shape_fn((3, 2), |(i, j)| (i * 2 + j) as f32);
        let p = parts(3, Some(2));
        let last = rows(x.view(), p[1], None);
        assert_eq!(last, ndarray::array![[4., 5.], [4., 5.]]);
        assert_eq!(rows(x.view(), p[1], Some(0.0)), ndarray::array![[4., 5.], [0., 0.]]);
        let joined = join(&[(rows(x.view(), p[0], None).into_dyn(), p[0]), (last.into_dyn(), p[1])]).unwrap();
        assert_eq!(joined, x.into_dyn());
    }

    #[test]
    fn a_result_without_a_batch_axis_is_an_error() {
        // Fuzz seed 213: a mutated model whose output is a scalar.
        let scalar = ndarray::arr0(1.0f32).into_dyn();
        assert!(join(&[(scalar, Part { start: 0, len: 1, size: 1 })]).is_err());
    }
}
