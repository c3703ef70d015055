//! MobileNet GraphDefs that TensorFlow wrote (tests/fixtures/README.md says
//! how) load, validate and run here, and agree with TensorFlow's outputs.

mod common;

use std::path::PathBuf;

use common::max_rel_err_floor;
use psflow_graph::format::npy;
use psflow_graph::{Graph, Session, Shape, TensorName};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn check(graph: &str, expected: &str) {
    let g = Graph::load(fixture(graph)).unwrap();
    let s = Session::new(g).unwrap();
    let input = TensorName::parse("input:0").unwrap();
    let output = TensorName::parse("Identity:0").unwrap();
    assert_eq!(
        s.tensor_info(&input).unwrap().shape,
        Shape::Known(vec![-1, 32, 32, 3])
    );
    let x = npy::read(fixture("input.npy")).unwrap();
    let want = npy::read(fixture(expected)).unwrap();
    let got = s
        .run(
            &[(input.clone(), x.clone())],
            std::slice::from_ref(&output),
            &[],
        )
        .unwrap();
    assert_eq!(got[0].shape(), want.shape());
    let err = max_rel_err_floor(&got[0], &want, 1e-12);
    eprintln!("{graph}: max relative error vs TensorFlow {err:.2e}");
    assert!(
        err < 1e-4,
        "{graph}: max relative error {err:e} vs TensorFlow"
    );

    // The batch dimension is dynamic: one image alone gives its own row.
    let one = x.reshape(vec![2, 32 * 32 * 3]).unwrap();
    let first: Vec<f32> = one.f32s("test").unwrap()[..32 * 32 * 3].to_vec();
    let first = psflow_graph::Tensor::new(vec![1, 32, 32, 3], first).unwrap();
    let got1 = s.run(&[(input, first)], &[output], &[]).unwrap();
    let want_row =
        psflow_graph::Tensor::new(vec![1, 10], want.f32s("test").unwrap()[..10].to_vec()).unwrap();
    let err = max_rel_err_floor(&got1[0], &want_row, 1e-12);
    assert!(err < 1e-4, "{graph}, batch 1: max relative error {err:e}");
}

#[test]
fn keras3_mobilenet_matches_tensorflow() {
    check("mobilenet_keras3_a025.pb", "expected_keras3.npy");
}

#[test]
fn fused_batch_norm_mobilenet_matches_tensorflow() {
    check("mobilenet_fusedbn_a025.pb", "expected_fusedbn.npy");
}

#[test]
fn graph_def_round_trips_through_psflow() {
    for name in ["mobilenet_keras3_a025.pb", "mobilenet_fusedbn_a025.pb"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let g = Graph::from_graph_def_bytes(&bytes).unwrap();
        let again = g.to_graph_def_bytes();
        let g2 = Graph::from_graph_def_bytes(&again).unwrap();
        assert_eq!(g2, g);
        assert_eq!(g2.to_graph_def_bytes(), again);
    }
}
