//! The loss plot: well-formed SVG with every series, legend, ticks and
//! labels; degenerate inputs still give a readable picture. (Look at it:
//! `cargo test -p psflow-worker --test run_plot -- --ignored` writes
//! target/loss-example.svg.)

use psflow_worker::run::{LossPlot, RunDir};

fn example() -> LossPlot {
    let steps = 1..=1500u32;
    let total: Vec<(f64, f64)> = steps
        .clone()
        .map(|s| {
            let s = s as f64;
            let noise = ((s * 12.9898).sin() * 43758.5453).fract() * 0.15;
            (s, 2.3 * (-s / 300.0).exp() + 0.35 + noise + 0.08)
        })
        .collect();
    let xent: Vec<(f64, f64)> = total
        .iter()
        .map(|&(s, t)| (s, t - 0.08 + s * 1e-5))
        .collect();
    let reg: Vec<(f64, f64)> = total.iter().map(|&(s, _)| (s, 0.08 - s * 1e-5)).collect();
    LossPlot::new("MobileNet v1 0.50 @32 - fashion-mnist")
        .with_series("total", total)
        .with_series("cross entropy", xent)
        .with_series("regularization", reg)
}

fn is_well_formed(svg: &str) {
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    // Every opened element closes (self-closing or paired).
    for tag in ["g", "text", "svg", "clipPath"] {
        let open =
            svg.matches(&format!("<{tag} ")).count() + svg.matches(&format!("<{tag}>")).count();
        let close = svg.matches(&format!("</{tag}>")).count();
        assert_eq!(open, close, "<{tag}>");
    }
    assert!(
        !svg.contains("NaN") && !svg.contains("inf"),
        "non-finite coordinates"
    );
}

#[test]
fn plot_has_series_legend_ticks_and_labels() {
    let svg = example().to_svg();
    is_well_formed(&svg);
    assert_eq!(svg.matches("<polyline").count(), 3);
    for name in [
        "total",
        "cross entropy",
        "regularization",
        "step",
        "loss",
        "fashion-mnist",
    ] {
        assert!(
            svg.contains(&format!(">{name}")) || svg.contains(name),
            "{name}"
        );
    }
    // x ticks at round steps, y from 0.
    for tick in [
        ">250<", ">500<", ">1000<", ">1500<", ">0.0<", ">0.5<", ">2.5<",
    ] {
        assert!(svg.contains(tick), "tick {tick}");
    }
    // 1500 points fit: nothing thinned.
    let first = svg.split("<polyline").nth(1).unwrap();
    let points = first
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(points.split(' ').count(), 1500);
}

#[test]
fn long_series_are_thinned_and_names_escaped() {
    let pts: Vec<(f64, f64)> = (0..200_000)
        .map(|s| (s as f64, 1.0 / (1.0 + s as f64)))
        .collect();
    let svg = LossPlot::new("a <b> & \"c\"")
        .with_series("x<y", pts)
        .to_svg();
    is_well_formed(&svg);
    assert!(svg.len() < 200_000, "{} bytes", svg.len());
    assert!(svg.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
    assert!(svg.contains("x&lt;y"));
    assert!(svg.contains(">150k<"), "x ticks in thousands");
}

#[test]
fn degenerate_inputs_still_plot() {
    // No series, no points, a single point, a flat line, NaN in the middle.
    let svg = LossPlot::new("empty").to_svg();
    is_well_formed(&svg);
    assert!(svg.contains("no data"));
    let svg = LossPlot::new("one")
        .with_series("a", vec![(5.0, 2.0)])
        .with_series("b", vec![])
        .to_svg();
    is_well_formed(&svg);
    assert!(svg.contains("<circle"));
    let svg = LossPlot::new("flat")
        .with_series("a", vec![(1.0, 3.0), (2.0, 3.0)])
        .to_svg();
    is_well_formed(&svg);
    let svg = LossPlot::new("diverged")
        .with_series(
            "a",
            vec![
                (1.0, 2.0),
                (2.0, 1.0),
                (3.0, f64::NAN),
                (4.0, f64::INFINITY),
                (5.0, 1.5),
                (6.0, 1.2),
            ],
        )
        .to_svg();
    is_well_formed(&svg);
    assert_eq!(svg.matches("<polyline").count(), 2, "NaN splits the line");
}

#[test]
fn writes_loss_svg_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunDir::create(dir.path()).unwrap();
    example().write(&run.loss_plot()).unwrap();
    let svg = std::fs::read_to_string(run.loss_plot()).unwrap();
    is_well_formed(&svg);
}

#[test]
#[ignore = "writes target/loss-example.svg to look at"]
fn write_example_for_viewing() {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/loss-example.svg");
    example().write(&out).unwrap();
    eprintln!("wrote {}", out.display());
}
