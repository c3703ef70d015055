//! psflow's kernels against values TensorFlow computed.
//!
//! `fixtures/tf_kernels.json` holds cases that `tools/tf/gen_kernel_fixtures.py`
//! ran through `tf.raw_ops` (CPU, Eigen kernels); its header names the
//! TensorFlow version. Every case of an op is replayed here; a test lists the
//! names of all the cases that failed, not only the first.
//!
//! Tolerance: an output element passes when
//! `|psflow - tf| <= ATOL + RTOL * |tf|` with `ATOL = RTOL = 1e-5`. TensorFlow's
//! own float32 results stay within 1.7e-6 of its float64 ones on these inputs
//! (the header's `tf_f32_vs_f64_max_abs_err`), so the tolerance leaves room
//! for a different but sound summation order and nothing more. Integer and
//! shape mismatches are never tolerated.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Once, OnceLock};

use psflow_kernels::ops::{activation, batchnorm, conv, depthwise, pool, softmax};
use psflow_kernels::{BatchNormParams, Conv2dParams, Padding, PoolParams, Tensor};
use serde_json::Value;

const ATOL: f64 = 1e-5;
const RTOL: f64 = 1e-5;

fn fixtures() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tf_kernels.json"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
    })
}

/// One fixture case; the accessors return `Err` with a message when the
/// fixture itself is malformed, so the case fails with its name.
struct Case<'a> {
    name: &'a str,
    v: &'a Value,
}

type Check = Result<(), String>;

impl<'a> Case<'a> {
    fn attr(&self, key: &str) -> Result<&'a Value, String> {
        self.v["attrs"]
            .get(key)
            .ok_or_else(|| format!("fixture has no attr {key:?}"))
    }

    fn usize_list<const N: usize>(&self, key: &str) -> Result<[usize; N], String> {
        let list: Vec<usize> = self
            .attr(key)?
            .as_array()
            .ok_or_else(|| format!("attr {key} is not a list"))?
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("attr {key} is not a list of sizes"))?;
        list.try_into()
            .map_err(|l: Vec<usize>| format!("attr {key} has {} elements, not {N}", l.len()))
    }

    fn f32_attr(&self, key: &str) -> Result<f32, String> {
        self.attr(key)?
            .as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| format!("attr {key} is not a number"))
    }

    fn bool_attr(&self, key: &str) -> Result<bool, String> {
        self.attr(key)?
            .as_bool()
            .ok_or_else(|| format!("attr {key} is not a bool"))
    }

    fn padding(&self) -> Result<Padding, String> {
        let s = self.attr("padding")?.as_str().unwrap_or("");
        Padding::parse("tf_fixtures", s).map_err(|e| e.to_string())
    }

    fn conv_params(&self) -> Result<Conv2dParams, String> {
        Ok(Conv2dParams {
            strides: self.usize_list("strides")?,
            padding: self.padding()?,
        })
    }

    fn pool_params(&self) -> Result<PoolParams, String> {
        Ok(PoolParams {
            ksize: self.usize_list("ksize")?,
            strides: self.usize_list("strides")?,
            padding: self.padding()?,
        })
    }

    fn input(&self, key: &str) -> Result<Tensor, String> {
        let t = self.v["inputs"]
            .get(key)
            .ok_or_else(|| format!("fixture has no input {key:?}"))?;
        to_tensor(t).map_err(|e| format!("input {key}: {e}"))
    }

    /// Compares `got` with the expected output `key`.
    fn expect(&self, key: &str, got: &Tensor) -> Check {
        let want = self.v["outputs"]
            .get(key)
            .ok_or_else(|| format!("fixture has no output {key:?}"))?;
        compare(key, got, want)
    }

    /// Like `expect`, but an output the fixture leaves out (undefined in
    /// TensorFlow) is not checked.
    fn expect_if_defined(&self, key: &str, got: &Tensor) -> Check {
        match self.v["outputs"].get(key) {
            Some(_) => self.expect(key, got),
            None => Ok(()),
        }
    }
}

fn shape_of(t: &Value) -> Result<Vec<usize>, String> {
    t["shape"]
        .as_array()
        .and_then(|s| s.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
        .ok_or_else(|| "bad shape".to_string())
}

fn values_of(t: &Value) -> Result<&Vec<Value>, String> {
    t["values"]
        .as_array()
        .ok_or_else(|| "bad values".to_string())
}

fn to_tensor(t: &Value) -> Result<Tensor, String> {
    let shape = shape_of(t)?;
    let vals = values_of(t)?;
    let bad = || "non-numeric value".to_string();
    let tensor = match t["dtype"].as_str() {
        Some("float32") => Tensor::new(
            shape,
            vals.iter()
                .map(|v| v.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(bad)?,
        ),
        Some("int32") => Tensor::new(
            shape,
            vals.iter()
                .map(|v| v.as_i64().map(|x| x as i32))
                .collect::<Option<Vec<i32>>>()
                .ok_or_else(bad)?,
        ),
        Some("int64") => Tensor::new(
            shape,
            vals.iter()
                .map(|v| v.as_i64())
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(bad)?,
        ),
        other => return Err(format!("unknown dtype {other:?}")),
    };
    tensor.map_err(|e| e.to_string())
}

fn compare(key: &str, got: &Tensor, want: &Value) -> Check {
    let shape = shape_of(want)?;
    if got.shape() != shape.as_slice() {
        return Err(format!(
            "{key}: shape {:?}, TensorFlow's is {shape:?}",
            got.shape()
        ));
    }
    if want["dtype"].as_str() != Some(got.dtype().name()) {
        return Err(format!(
            "{key}: dtype {}, TensorFlow's is {}",
            got.dtype().name(),
            want["dtype"]
        ));
    }
    let want: Vec<f64> = values_of(want)?
        .iter()
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    let got = got.to_f64_vec();
    let mut worst: Option<(usize, f64)> = None;
    let mut bad = 0usize;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let err = (g - w).abs();
        let within = err <= ATOL + RTOL * w.abs();
        // A NaN on either side fails (`within` is false for NaN).
        if !within {
            bad += 1;
            if worst.is_none_or(|(_, e)| err > e || err.is_nan()) {
                worst = Some((i, err));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, err)) => Err(format!(
            "{key}: {bad} of {} elements differ; worst at flat index {i}: psflow {} vs TensorFlow {} (|diff| {err:.3e})",
            got.len(),
            got[i],
            want[i]
        )),
    }
}

thread_local! {
    /// Set while a case runs: its panics are caught and reported with the
    /// case's name, so the panic hook only notes where they happened.
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    static PANIC_AT: RefCell<String> = const { RefCell::new(String::new()) };
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                let at = info.location().map(|l| l.to_string()).unwrap_or_default();
                PANIC_AT.with(|p| *p.borrow_mut() = at);
            } else {
                default(info);
            }
        }));
    });
}

/// Runs `check` on every case whose op is `op` and fails listing each case
/// that errs, panics (e.g. an unimplemented kernel) or mismatches.
fn run_cases(op: &str, check: impl Fn(&Case) -> Check) {
    let cases = fixtures()["cases"]
        .as_array()
        .expect("fixture has no cases");
    let mut ran = 0;
    let mut failures = Vec::new();
    for v in cases.iter().filter(|c| c["op"] == op) {
        let case = Case {
            name: v["name"].as_str().unwrap_or("<unnamed>"),
            v,
        };
        ran += 1;
        install_panic_hook();
        IN_CASE.with(|f| f.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&case)));
        IN_CASE.with(|f| f.set(false));
        let msg = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(m)) => m,
            Err(p) => {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let at = PANIC_AT.with(|p| p.borrow().clone());
                format!("panicked at {at}: {what}")
            }
        };
        failures.push(format!("  {}: {msg}", case.name));
    }
    assert!(ran > 0, "no fixture case for op {op}");
    assert!(
        failures.is_empty(),
        "{} of {ran} {op} cases differ from TensorFlow (tolerance {ATOL:e} + {RTOL:e}·|tf|):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn err(e: psflow_kernels::Error) -> String {
    format!("returned an error: {e}")
}

#[test]
fn fixture_file_is_complete() {
    let doc = fixtures();
    let header = &doc["header"];
    assert!(
        header["tensorflow"].is_string(),
        "header names no TF version"
    );
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(header["num_cases"].as_u64(), Some(cases.len() as u64));
    for op in [
        "Conv2D",
        "Conv2DBackpropInput",
        "Conv2DBackpropFilter",
        "DepthwiseConv2dNative",
        "DepthwiseConv2dNativeBackpropInput",
        "DepthwiseConv2dNativeBackpropFilter",
        "FusedBatchNormV3",
        "FusedBatchNormGradV3",
        "FusedBatchNormV3+Relu6",
        "Relu6Grad+FusedBatchNormGradV3",
        "AvgPool",
        "AvgPoolGrad",
        "MaxPool",
        "MaxPoolGrad",
        "Relu6Grad",
        "SparseSoftmaxCrossEntropyWithLogits",
    ] {
        assert!(
            cases.iter().any(|c| c["op"] == op),
            "no fixture case for {op}"
        );
    }
    // Every tensor parses and its value count matches its shape.
    for c in cases {
        for part in ["inputs", "outputs"] {
            for (k, t) in c[part].as_object().unwrap() {
                to_tensor(t).unwrap_or_else(|e| panic!("{} {part} {k}: {e}", c["name"]));
            }
        }
    }
}

#[test]
fn conv2d_matches_tensorflow() {
    run_cases("Conv2D", |c| {
        let y = conv::conv2d(&c.input("input")?, &c.input("filter")?, &c.conv_params()?)
            .map_err(err)?;
        c.expect("output", &y)
    });
}

#[test]
fn conv2d_backprop_input_matches_tensorflow() {
    run_cases("Conv2DBackpropInput", |c| {
        let dx = conv::conv2d_backprop_input(
            c.usize_list("input_sizes")?,
            &c.input("filter")?,
            &c.input("out_backprop")?,
            &c.conv_params()?,
        )
        .map_err(err)?;
        c.expect("output", &dx)
    });
}

#[test]
fn conv2d_backprop_filter_matches_tensorflow() {
    run_cases("Conv2DBackpropFilter", |c| {
        let df = conv::conv2d_backprop_filter(
            &c.input("input")?,
            c.usize_list("filter_sizes")?,
            &c.input("out_backprop")?,
            &c.conv_params()?,
        )
        .map_err(err)?;
        c.expect("output", &df)
    });
}

#[test]
fn depthwise_conv2d_matches_tensorflow() {
    run_cases("DepthwiseConv2dNative", |c| {
        let y =
            depthwise::depthwise_conv2d(&c.input("input")?, &c.input("filter")?, &c.conv_params()?)
                .map_err(err)?;
        c.expect("output", &y)
    });
}

#[test]
fn depthwise_backprop_input_matches_tensorflow() {
    run_cases("DepthwiseConv2dNativeBackpropInput", |c| {
        let dx = depthwise::depthwise_conv2d_backprop_input(
            c.usize_list("input_sizes")?,
            &c.input("filter")?,
            &c.input("out_backprop")?,
            &c.conv_params()?,
        )
        .map_err(err)?;
        c.expect("output", &dx)
    });
}

#[test]
fn depthwise_backprop_filter_matches_tensorflow() {
    run_cases("DepthwiseConv2dNativeBackpropFilter", |c| {
        let df = depthwise::depthwise_conv2d_backprop_filter(
            &c.input("input")?,
            c.usize_list("filter_sizes")?,
            &c.input("out_backprop")?,
            &c.conv_params()?,
        )
        .map_err(err)?;
        c.expect("output", &df)
    });
}

fn bn_params(c: &Case) -> Result<BatchNormParams, String> {
    Ok(BatchNormParams {
        epsilon: c.f32_attr("epsilon")?,
        exponential_avg_factor: c.f32_attr("exponential_avg_factor")?,
        is_training: c.bool_attr("is_training")?,
    })
}

/// All six outputs. TensorFlow leaves reserve_space_1/2 undefined in
/// inference mode (the fixture omits them there); its CPU kernel returns
/// reserve_space_3 as a scalar 0.
fn expect_bn_outputs(c: &Case, out: &batchnorm::BatchNormOutput) -> Check {
    c.expect("y", &out.y)?;
    c.expect("batch_mean", &out.batch_mean)?;
    c.expect("batch_variance", &out.batch_variance)?;
    c.expect_if_defined("reserve_space_1", &out.reserve_space_1)?;
    c.expect_if_defined("reserve_space_2", &out.reserve_space_2)?;
    c.expect("reserve_space_3", &out.reserve_space_3)
}

fn bn_inputs(c: &Case) -> Result<[Tensor; 5], String> {
    Ok([
        c.input("x")?,
        c.input("scale")?,
        c.input("offset")?,
        c.input("mean")?,
        c.input("variance")?,
    ])
}

#[test]
fn fused_batch_norm_matches_tensorflow() {
    run_cases("FusedBatchNormV3", |c| {
        let [x, scale, offset, mean, var] = bn_inputs(c)?;
        let out = batchnorm::fused_batch_norm(&x, &scale, &offset, &mean, &var, &bn_params(c)?)
            .map_err(err)?;
        expect_bn_outputs(c, &out)
    });
}

#[test]
fn fused_batch_norm_relu6_matches_tensorflow() {
    run_cases("FusedBatchNormV3+Relu6", |c| {
        let [x, scale, offset, mean, var] = bn_inputs(c)?;
        let out =
            batchnorm::fused_batch_norm_relu6(&x, &scale, &offset, &mean, &var, &bn_params(c)?)
                .map_err(err)?;
        expect_bn_outputs(c, &out)
    });
}

fn expect_bn_grad(c: &Case, g: &batchnorm::BatchNormGrad) -> Check {
    c.expect("x_backprop", &g.dx)?;
    c.expect("scale_backprop", &g.dscale)?;
    c.expect("offset_backprop", &g.doffset)
}

#[test]
fn fused_batch_norm_grad_matches_tensorflow() {
    run_cases("FusedBatchNormGradV3", |c| {
        let g = batchnorm::fused_batch_norm_grad(
            &c.input("y_backprop")?,
            &c.input("x")?,
            &c.input("scale")?,
            &c.input("reserve_space_1")?,
            &c.input("reserve_space_2")?,
            c.f32_attr("epsilon")?,
            c.bool_attr("is_training")?,
        )
        .map_err(err)?;
        expect_bn_grad(c, &g)
    });
}

#[test]
fn fused_batch_norm_relu6_grad_matches_tensorflow() {
    run_cases("Relu6Grad+FusedBatchNormGradV3", |c| {
        let g = batchnorm::fused_batch_norm_relu6_grad(
            &c.input("y_backprop")?,
            &c.input("y")?,
            &c.input("x")?,
            &c.input("scale")?,
            &c.input("reserve_space_1")?,
            &c.input("reserve_space_2")?,
            c.f32_attr("epsilon")?,
            c.bool_attr("is_training")?,
        )
        .map_err(err)?;
        expect_bn_grad(c, &g)
    });
}

#[test]
fn avg_pool_matches_tensorflow() {
    run_cases("AvgPool", |c| {
        let y = pool::avg_pool(&c.input("value")?, &c.pool_params()?).map_err(err)?;
        c.expect("output", &y)
    });
}

#[test]
fn avg_pool_grad_matches_tensorflow() {
    run_cases("AvgPoolGrad", |c| {
        let dx = pool::avg_pool_grad(
            c.usize_list("orig_input_shape")?,
            &c.input("grad")?,
            &c.pool_params()?,
        )
        .map_err(err)?;
        c.expect("output", &dx)
    });
}

#[test]
fn max_pool_matches_tensorflow() {
    run_cases("MaxPool", |c| {
        let y = pool::max_pool(&c.input("input")?, &c.pool_params()?).map_err(err)?;
        c.expect("output", &y)
    });
}

#[test]
fn max_pool_grad_matches_tensorflow() {
    run_cases("MaxPoolGrad", |c| {
        let dx = pool::max_pool_grad(
            &c.input("orig_input")?,
            &c.input("orig_output")?,
            &c.input("grad")?,
            &c.pool_params()?,
        )
        .map_err(err)?;
        c.expect("output", &dx)
    });
}

#[test]
fn relu6_grad_matches_tensorflow() {
    run_cases("Relu6Grad", |c| {
        let dx =
            activation::relu6_grad(&c.input("gradients")?, &c.input("features")?).map_err(err)?;
        c.expect("backprops", &dx)
    });
}

#[test]
fn sparse_softmax_cross_entropy_matches_tensorflow() {
    run_cases("SparseSoftmaxCrossEntropyWithLogits", |c| {
        let (loss, backprop) =
            softmax::sparse_softmax_cross_entropy(&c.input("features")?, &c.input("labels")?)
                .map_err(err)?;
        c.expect("loss", &loss)?;
        c.expect("backprop", &backprop)
    });
}
