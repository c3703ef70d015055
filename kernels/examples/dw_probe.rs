// Temporary probe: dw_probe OP HW C STRIDE BATCH REPS -> min wall ms per ISA
use psflow_kernels::ops::depthwise::*;
use psflow_kernels::{Conv2dParams, Padding, Tensor};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let op = a[1].as_str();
    let hw: usize = a[2].parse().unwrap();
    let c: usize = a[3].parse().unwrap();
    let s: usize = a[4].parse().unwrap();
    let n: usize = a[5].parse().unwrap();
    let reps: usize = a[6].parse().unwrap();
    let p = Conv2dParams { strides: [s, s], padding: Padding::Same };
    let o = hw.div_ceil(s);
    let x = Tensor::full(vec![n, hw, hw, c], 0.25f32);
    let f = Tensor::full(vec![3, 3, c, 1], 0.5f32);
    let dy = Tensor::full(vec![n, o, o, c], 0.75f32);
    let isas = [Isa::Scalar, Isa::Avx2, Isa::Avx512];
    let mut best = [f64::MAX; 3];
    for _ in 0..reps {
        for (k, &isa) in isas.iter().enumerate().filter(|(k, _)| std::env::var("ONLY").map_or(true, |v| v == k.to_string())) {
            let t = std::time::Instant::now();
            match op {
                "f" => drop(depthwise_conv2d_isa(&x, &f, &p, isa).unwrap()),
                "i" => drop(depthwise_conv2d_backprop_input_isa([n, hw, hw, c], &f, &dy, &p, isa).unwrap()),
                _ => drop(depthwise_conv2d_backprop_filter_isa(&x, [3, 3, c, 1], &dy, &p, isa).unwrap()),
            }
            best[k] = best[k].min(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!("{op} {hw}x{hw}x{c} s{s} n{n}: scalar {:.3} avx2 {:.3} avx512 {:.3} ms (min)", best[0], best[1], best[2]);
}
