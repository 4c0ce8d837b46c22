//! Targets for models that are not classifiers (binary, segmentation, similarity): how each
//! resolves its class, scores a row and seeds the backward pass.

use gradcam_core::{CamError, Classes, Region, Target, TargetScore};
use ndarray::{array, Array1, Array2};
use proptest::prelude::*;

/// Central differences of `target.scores` at `logits`, in f64 steps on the f32 outputs.
fn numeric_seed(target: &Target, logits: &Array2<f32>, classes: &[usize]) -> Array2<f32> {
    let step = 1e-2f32;
    let mut out = Array2::zeros(logits.raw_dim());
    for idx in ndarray::indices(logits.raw_dim()) {
        let (mut up, mut down) = (logits.clone(), logits.clone());
        up[idx] += step;
        down[idx] -= step;
        let (hi, lo) =
            (target.scores(up.view(), classes).unwrap(), target.scores(down.view(), classes).unwrap());
        out[idx] = (hi[idx.0] - lo[idx.0]) / (2.0 * step);
    }
    out
}

fn assert_seed_is_gradient(target: &Target, logits: &Array2<f32>, shape: &[usize]) {
    let (bound, classes) = target.bind(logits.view(), shape).unwrap();
    assert_eq!(bound.resolve_output(logits.view(), shape).unwrap(), classes, "a bound target resolves alike");
    let seed = bound.seed_for(logits.view(), &classes);
    let numeric = numeric_seed(&bound, logits, &classes);
    for (a, b) in seed.iter().zip(numeric.iter()) {
        assert!((a - b).abs() <= 2e-3 * (1.0 + b.abs()), "seed {a} vs numeric {b}\n{seed}\n{numeric}");
    }
}

fn rows(batch: usize, width: usize) -> impl Strategy<Value = Array2<f32>> {
    prop::collection::vec(-3.0f32..3.0, batch * width)
        .prop_map(move |v| Array2::from_shape_vec((batch, width), v).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn binary_seed_is_the_gradient(logits in rows(3, 1), class in 0usize..2) {
        assert_seed_is_gradient(&Target::binary(Classes::Same(class)), &logits, &[1]);
        assert_seed_is_gradient(&Target::binary(Classes::TopOne), &logits, &[1]);
    }

    #[test]
    fn segmentation_seed_is_the_gradient(logits in rows(2, 3 * 2 * 4), class in 0usize..3, bits in prop::collection::vec(0u8..3, 8)) {
        let mask = Array2::from_shape_vec((2, 4), bits.iter().map(|&b| b as f32 * 0.5).collect()).unwrap();
        assert_seed_is_gradient(&Target::segmentation(class, Some(mask)), &logits, &[3, 2, 4]);
        assert_seed_is_gradient(&Target::segmentation(class, None), &logits, &[3, 2, 4]);
    }

    #[test]
    fn similarity_seed_is_the_gradient(logits in rows(2, 5), concept in prop::collection::vec(-2.0f32..2.0, 5)) {
        prop_assume!(logits.rows().into_iter().all(|r| r.dot(&r) > 0.5));
        prop_assume!(concept.iter().map(|v| v * v).sum::<f32>() > 0.5);
        assert_seed_is_gradient(&Target::similarity(Array1::from(concept)), &logits, &[5]);
    }

    #[test]
    fn softmax_seed_is_the_gradient(logits in rows(2, 4), class in 0usize..4) {
        assert_seed_is_gradient(&Target::class(class).softmax(), &logits, &[4]);
    }
}

#[test]
fn binary_classes_are_the_prediction_and_its_opposite() {
    let logits = array![[1.5f32], [-0.5], [0.0]];
    let binary = |classes| Target::binary(classes).resolve_output(logits.view(), &[1]);
    assert_eq!(binary(Classes::TopOne).unwrap(), vec![1, 0, 0]);
    assert_eq!(binary(Classes::Rank(1)).unwrap(), vec![0, 1, 1]);
    assert!(matches!(binary(Classes::Rank(2)), Err(CamError::RankOutOfRange { rank: 2, num_classes: 2 })));
    assert!(matches!(binary(Classes::Same(2)), Err(CamError::ClassOutOfRange { class: 2, num_classes: 2 })));
    let scores = Target::binary(Classes::TopOne).scores(logits.view(), &[1, 0, 0]).unwrap();
    assert_eq!(scores, vec![1.5, 0.5, 0.0]);
    let two = array![[1.0f32, 2.0]];
    let err = Target::binary(Classes::TopOne).resolve_output(two.view(), &[2]).unwrap_err();
    assert!(err.to_string().contains("one logit"), "{err}");
}

#[test]
fn segmentation_sums_the_class_plane_over_the_region() {
    // (C=2, H=1, W=3): class 0 wins pixels 0 and 2, class 1 pixel 1.
    let logits = array![[5.0f32, 1.0, 4.0, 2.0, 3.0, 0.0]];
    let argmax = Target::segmentation(0, None).bind(logits.view(), &[2, 1, 3]).unwrap().0;
    assert_eq!(argmax.scores(logits.view(), &[0]).unwrap(), vec![9.0]);
    let TargetScore::Segmentation(Region::PerImage(masks)) = &argmax.score else { panic!("{argmax:?}") };
    assert_eq!(masks.row(0).to_vec(), vec![1.0, 0.0, 1.0]);
    let class1 = Target::segmentation(1, None).bind(logits.view(), &[2, 1, 3]).unwrap().0;
    assert_eq!(class1.scores(logits.view(), &[1]).unwrap(), vec![3.0]);
    let masked = Target::segmentation(1, Some(array![[1.0f32, 1.0, 0.0]]));
    assert_eq!(masked.scores(logits.view(), &[1]).unwrap(), vec![5.0]);
    // The mirrored input's region is the mirrored region.
    let mirrored = argmax.mirrored(3);
    let flipped_logits = array![[4.0f32, 1.0, 5.0, 0.0, 3.0, 2.0]];
    assert_eq!(mirrored.scores(flipped_logits.view(), &[0]).unwrap(), vec![9.0]);
    let TargetScore::Segmentation(Region::Mask(m)) = masked.mirrored(3).score else { panic!() };
    assert_eq!(m.iter().copied().collect::<Vec<_>>(), vec![0.0, 1.0, 1.0]);
}

#[test]
fn segmentation_refuses_what_it_cannot_read() {
    let logits = Array2::<f32>::zeros((1, 2 * 2 * 3));
    let shape = [2, 2, 3];
    let err = |t: Target| t.resolve_output(logits.view(), &shape).unwrap_err().to_string();
    assert!(err(Target { classes: Classes::TopOne, ..Target::segmentation(0, None) }).contains("--class"));
    assert!(err(Target::segmentation(2, None)).contains("class 2 is out of range"));
    let wrong_mask = Target::segmentation(0, Some(Array2::zeros((3, 2))));
    assert!(err(wrong_mask).contains("the mask is 2x3"), "size named as width x height");
    assert!(err(Target::top_one()).contains("segmentation target"), "a classifier target names the fix");
    let flat = Array2::<f32>::zeros((1, 4));
    assert!(Target::segmentation(0, None)
        .resolve_output(flat.view(), &[4])
        .unwrap_err()
        .to_string()
        .contains("(C, H, W)"));
}

#[test]
fn similarity_of_the_concept_to_itself_is_one() {
    let concept = array![3.0f32, 4.0, 0.0];
    let target = Target::similarity(concept.clone());
    let logits = array![[3.0f32, 4.0, 0.0], [-3.0, -4.0, 0.0], [0.0, 0.0, 2.0]];
    assert_eq!(target.resolve_output(logits.view(), &[3]).unwrap(), vec![0, 0, 0]);
    let scores = target.scores(logits.view(), &[0, 0, 0]).unwrap();
    assert!((scores[0] - 1.0).abs() < 1e-6 && (scores[1] + 1.0).abs() < 1e-6 && scores[2].abs() < 1e-6);
    let long = Array2::<f32>::zeros((1, 4));
    assert!(target.resolve_output(long.view(), &[4]).unwrap_err().to_string().contains("3 values"));
    let with_class = Target { classes: Classes::Same(1), ..target };
    assert!(with_class.resolve_output(logits.view(), &[3]).unwrap_err().to_string().contains("no class"));
}
