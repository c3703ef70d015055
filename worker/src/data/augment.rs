//! Image augmentation for training and the fixed preprocessing for both
//! splits, in TensorFlow's `tf.image` semantics.
//!
//! One image goes: pad + random crop and random flip (on the `u8` pixels),
//! scale to [0, 1], resize (bilinear, half-pixel centres) to the model's
//! resolution, random brightness, random contrast, clip to [0, 1],
//! per-image standardization, and, for grayscale data feeding an RGB model,
//! replication to three channels.
//!
//! Clipping is our one addition to TF's CIFAR tutorial: without it a
//! brightness shift is undone exactly by the standardization that follows
//! (and contrast almost so); with it, both act through saturation as they
//! do on real photographs. Set `clip: false` for the tutorial's behaviour.

use serde::{Deserialize, Serialize};

use super::rng::Rng;
use super::{DataError, Result};

/// Which augmentations and preprocessing steps run. `Default` is the
/// MobileNet-on-CIFAR training recipe; [`for_eval`](Self::for_eval) keeps
/// only the deterministic steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Zero-pad each side by this many pixels, then crop a window of the
    /// original size at a uniformly random offset. Recipe: `Some(4)`.
    pub pad_crop: Option<usize>,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
    /// Add a delta uniform in `[-d, d)` to the [0, 1]-scaled pixels
    /// (`tf.image.random_brightness`). Recipe: `Some(63/255)`.
    pub brightness: Option<f32>,
    /// Per channel, `(x - mean) * f + mean` with `f` uniform in
    /// `[lo, hi)` (`tf.image.random_contrast`). Recipe: `Some((0.2, 1.8))`.
    pub contrast: Option<(f32, f32)>,
    /// Clip to [0, 1] after brightness and contrast.
    pub clip: bool,
    /// Resize to `(height, width)` (bilinear, TF2 half-pixel centres): the
    /// resolution multiplier, e.g. 32 -> 24.
    pub resize: Option<(usize, usize)>,
    /// `tf.image.per_image_standardization`; otherwise pixels stay in [0, 1].
    pub standardize: bool,
    /// Replicate a single channel three times (Fashion-MNIST into an RGB
    /// model). Ignored for images that already have three channels.
    pub grayscale_to_rgb: bool,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig::cifar_train()
    }
}

impl AugmentConfig {
    /// The MobileNet-on-CIFAR training recipe: pad 4 + crop, flip,
    /// brightness ±63/255, contrast ×[0.2, 1.8), clip, standardize.
    pub fn cifar_train() -> Self {
        AugmentConfig {
            pad_crop: Some(4),
            flip: true,
            brightness: Some(63.0 / 255.0),
            contrast: Some((0.2, 1.8)),
            clip: true,
            resize: None,
            standardize: true,
            grayscale_to_rgb: false,
        }
    }

    /// Evaluation preprocessing: per-image standardization only.
    pub fn eval() -> Self {
        AugmentConfig {
            pad_crop: None,
            flip: false,
            brightness: None,
            contrast: None,
            clip: true,
            resize: None,
            standardize: true,
            grayscale_to_rgb: false,
        }
    }

    /// Nothing at all: pixels scaled to [0, 1].
    pub fn none() -> Self {
        AugmentConfig {
            standardize: false,
            ..AugmentConfig::eval()
        }
    }

    /// The same preprocessing without the random parts: what the test split
    /// of a model trained with `self` gets.
    pub fn for_eval(&self) -> Self {
        AugmentConfig {
            pad_crop: None,
            flip: false,
            brightness: None,
            contrast: None,
            ..self.clone()
        }
    }

    /// Sets the output resolution (`None` keeps the input's).
    pub fn with_resize(mut self, resize: Option<(usize, usize)>) -> Self {
        self.resize = resize;
        self
    }

    pub fn with_grayscale_to_rgb(mut self, on: bool) -> Self {
        self.grayscale_to_rgb = on;
        self
    }

    /// Whether any step draws random numbers.
    pub fn is_random(&self) -> bool {
        self.pad_crop.is_some_and(|p| p > 0)
            || self.flip
            || self.brightness.is_some()
            || self.contrast.is_some()
    }

    /// `(height, width, channels)` of the output for inputs of the given
    /// size.
    pub fn output_shape(&self, h: usize, w: usize, c: usize) -> (usize, usize, usize) {
        let (oh, ow) = self.resize.unwrap_or((h, w));
        let oc = if self.grayscale_to_rgb && c == 1 {
            3
        } else {
            c
        };
        (oh, ow, oc)
    }

    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<()> {
        if let Some((h, w)) = self.resize {
            if h == 0 || w == 0 {
                return Err(DataError::config(format!("augment: resize to {h}x{w}")));
            }
        }
        if let Some(d) = self.brightness {
            if !(d.is_finite() && d >= 0.0) {
                return Err(DataError::config(format!(
                    "augment: brightness max delta {d} must be finite and >= 0"
                )));
            }
        }
        if let Some((lo, hi)) = self.contrast {
            if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi) {
                return Err(DataError::config(format!(
                    "augment: contrast range [{lo}, {hi}) must satisfy 0 <= lo <= hi"
                )));
            }
        }
        Ok(())
    }
}

/// Applies an [`AugmentConfig`] to images of one size, reusing its buffers
/// (one per thread: nothing is allocated per image).
#[derive(Clone, Debug)]
pub struct Augmenter {
    config: AugmentConfig,
    h: usize,
    w: usize,
    c: usize,
    oh: usize,
    ow: usize,
    oc: usize,
    ys: ResizeAxis,
    xs: ResizeAxis,
    geo: Vec<u8>,
    full: Vec<f32>,
    small: Vec<f32>,
}

impl Augmenter {
    pub fn new(config: &AugmentConfig, h: usize, w: usize, c: usize) -> Result<Augmenter> {
        config.validate()?;
        if h == 0 || w == 0 || c == 0 {
            return Err(DataError::config(format!(
                "augment: input image {h}x{w}x{c}"
            )));
        }
        let (oh, ow, oc) = config.output_shape(h, w, c);
        Ok(Augmenter {
            config: config.clone(),
            h,
            w,
            c,
            oh,
            ow,
            oc,
            ys: ResizeAxis::new(h, oh),
            xs: ResizeAxis::new(w, ow),
            geo: vec![0; h * w * c],
            full: vec![0.0; h * w * c],
            small: vec![0.0; oh * ow * c],
        })
    }

    pub fn config(&self) -> &AugmentConfig {
        &self.config
    }

    /// `(height, width, channels)` of what [`apply`](Self::apply) writes.
    pub fn output_shape(&self) -> (usize, usize, usize) {
        (self.oh, self.ow, self.oc)
    }

    /// Floats per output image.
    pub fn output_len(&self) -> usize {
        self.oh * self.ow * self.oc
    }

    /// Preprocesses one HWC `u8` image into `out` (`output_len()` floats),
    /// drawing the random choices from `rng` in a fixed order: crop offsets
    /// (y, then x), flip, brightness delta, contrast factor.
    pub fn apply(&mut self, image: &[u8], rng: &mut Rng, out: &mut [f32]) -> Result<()> {
        let (h, w, c) = (self.h, self.w, self.c);
        if image.len() != h * w * c || out.len() != self.output_len() {
            return Err(DataError::config(format!(
                "augment: built for {h}x{w}x{c} images ({} bytes) into {} floats, got {} bytes \
                 into {} floats",
                h * w * c,
                self.output_len(),
                image.len(),
                out.len()
            )));
        }
        let cfg = &self.config;

        // Geometry on the bytes.
        match cfg.pad_crop {
            Some(pad) if pad > 0 => {
                let oy = rng.below(2 * pad as u64 + 1) as usize;
                let ox = rng.below(2 * pad as u64 + 1) as usize;
                pad_and_crop(image, h, w, c, pad, oy, ox, &mut self.geo);
            }
            _ => self.geo.copy_from_slice(image),
        }
        if cfg.flip && rng.coin() {
            flip_left_right(&mut self.geo, h, w, c);
        }
        // As tf.image.convert_image_dtype: times 1/255, not divided by 255.
        for (f, &b) in self.full.iter_mut().zip(&self.geo) {
            *f = b as f32 * (1.0 / 255.0);
        }

        // Resolution.
        let (oh, ow) = (self.oh, self.ow);
        let img: &mut [f32] = if (oh, ow) != (h, w) {
            resize_with(&self.full, w, c, &self.ys, &self.xs, &mut self.small);
            &mut self.small
        } else {
            &mut self.full
        };

        // Colour.
        if let Some(max_delta) = cfg.brightness {
            let delta = rng.range(-max_delta, max_delta);
            adjust_brightness(img, delta);
        }
        if let Some((lo, hi)) = cfg.contrast {
            let factor = rng.range(lo, hi);
            adjust_contrast(img, c, factor);
        }
        if cfg.clip && (cfg.brightness.is_some() || cfg.contrast.is_some()) {
            for v in img.iter_mut() {
                *v = v.clamp(0.0, 1.0);
            }
        }
        if cfg.standardize {
            per_image_standardization(img);
        }

        if self.oc != c {
            // Grayscale to RGB.
            for (o, &v) in out.chunks_exact_mut(3).zip(img.iter()) {
                o.fill(v);
            }
        } else {
            out.copy_from_slice(img);
        }
        Ok(())
    }
}

// The slice-level ops below panic on inconsistent sizes, like slice
// indexing: they are the building blocks `Augmenter` calls with sizes it
// checked.

/// Crops an `h x w` window at offset `(oy, ox)` (each in `0..=2*pad`) out of
/// the image zero-padded by `pad` on every side (TF:
/// `resize_with_crop_or_pad` to `h+2pad`, then `random_crop`).
#[allow(clippy::too_many_arguments)]
pub fn pad_and_crop(
    src: &[u8],
    h: usize,
    w: usize,
    c: usize,
    pad: usize,
    oy: usize,
    ox: usize,
    out: &mut [u8],
) {
    assert!(
        oy <= 2 * pad && ox <= 2 * pad,
        "pad_and_crop: offset outside the padding"
    );
    for y in 0..h {
        let row = &mut out[y * w * c..(y + 1) * w * c];
        // Source row y + oy - pad.
        let sy = (y + oy).wrapping_sub(pad);
        if sy >= h {
            row.fill(0);
            continue;
        }
        // Output x maps to source x + ox - pad; valid for x in [x0, x1).
        let x0 = pad.saturating_sub(ox);
        let x1 = (w + pad).saturating_sub(ox).min(w);
        row[..x0 * c].fill(0);
        if x1 > x0 {
            let s0 = (x0 + ox - pad) * c;
            let len = (x1 - x0) * c;
            row[x0 * c..x1 * c].copy_from_slice(&src[sy * w * c + s0..sy * w * c + s0 + len]);
        }
        row[x1.max(x0) * c..].fill(0);
    }
}

/// Mirrors an HWC image left-right in place.
pub fn flip_left_right<T: Copy>(img: &mut [T], h: usize, w: usize, c: usize) {
    for row in img.chunks_exact_mut(w * c).take(h) {
        for x in 0..w / 2 {
            let (a, b) = (x * c, (w - 1 - x) * c);
            for k in 0..c {
                row.swap(a + k, b + k);
            }
        }
    }
}

/// `tf.image.adjust_brightness`: adds `delta` to every element.
pub fn adjust_brightness(img: &mut [f32], delta: f32) {
    for v in img.iter_mut() {
        *v += delta;
    }
}

/// `tf.image.adjust_contrast`: per channel of an HWC image,
/// `(x - mean) * factor + mean` with the mean over all pixels.
pub fn adjust_contrast(img: &mut [f32], c: usize, factor: f32) {
    let pixels = img.len() / c;
    if pixels == 0 {
        return;
    }
    for k in 0..c {
        let sum: f64 = img[k..].iter().step_by(c).map(|&v| v as f64).sum();
        let mean = (sum / pixels as f64) as f32;
        for v in img[k..].iter_mut().step_by(c) {
            *v = (*v - mean) * factor + mean;
        }
    }
}

/// `tf.image.per_image_standardization`: `(x - mean) / max(stddev,
/// 1/sqrt(n))` over all `n` elements of the image (statistics in f64).
pub fn per_image_standardization(img: &mut [f32]) {
    let n = img.len();
    if n == 0 {
        return;
    }
    let (mut s, mut s2) = (0f64, 0f64);
    for &v in img.iter() {
        s += v as f64;
        s2 += v as f64 * v as f64;
    }
    let mean = s / n as f64;
    let var = (s2 / n as f64 - mean * mean).max(0.0);
    let scale = var.sqrt().max(1.0 / (n as f64).sqrt());
    let inv = 1.0 / scale;
    for v in img.iter_mut() {
        *v = ((*v as f64 - mean) * inv) as f32;
    }
}

/// Interpolation weights along one axis: for each output coordinate the
/// lower and upper input index and the fraction of the upper one.
#[derive(Clone, Debug, PartialEq)]
pub struct ResizeAxis {
    taps: Vec<(usize, usize, f32)>,
}

impl ResizeAxis {
    /// TF2 `tf.image.resize` bilinear (half-pixel centres): output `i`
    /// samples the input at `(i + 0.5) * in/out - 0.5`, computed in f32 as
    /// TF does, neighbours clamped to the edge.
    pub fn new(in_size: usize, out_size: usize) -> ResizeAxis {
        let scale = in_size as f32 / out_size as f32;
        let taps = (0..out_size)
            .map(|i| {
                let x = (i as f32 + 0.5) * scale - 0.5;
                let xf = x.floor();
                let lower = (xf as i64).max(0) as usize;
                let upper = (x.ceil() as i64).min(in_size as i64 - 1).max(0) as usize;
                (lower, upper, x - xf)
            })
            .collect();
        ResizeAxis { taps }
    }
}

/// Bilinear resize of an HWC image, as TF2's `tf.image.resize` (and TF1's
/// with `half_pixel_centers=True`); see [`ResizeAxis`].
pub fn resize_bilinear(
    src: &[f32],
    h: usize,
    w: usize,
    c: usize,
    out: &mut [f32],
    oh: usize,
    ow: usize,
) {
    resize_with(
        src,
        w,
        c,
        &ResizeAxis::new(h, oh),
        &ResizeAxis::new(w, ow),
        out,
    );
}

fn resize_with(src: &[f32], w: usize, c: usize, ys: &ResizeAxis, xs: &ResizeAxis, out: &mut [f32]) {
    let ow = xs.taps.len();
    assert_eq!(
        out.len(),
        ys.taps.len() * ow * c,
        "resize_bilinear: output size"
    );
    assert!(
        ys.taps.iter().all(|t| (t.1 + 1) * w * c <= src.len()),
        "resize_bilinear: input size"
    );
    for (y, &(y0, y1, ly)) in ys.taps.iter().enumerate() {
        let top_row = &src[y0 * w * c..(y0 + 1) * w * c];
        let bottom_row = &src[y1 * w * c..(y1 + 1) * w * c];
        let out_row = &mut out[y * ow * c..(y + 1) * ow * c];
        for (o, &(x0, x1, lx)) in out_row.chunks_exact_mut(c).zip(&xs.taps) {
            for (k, v) in o.iter_mut().enumerate() {
                let (tl, tr) = (top_row[x0 * c + k], top_row[x1 * c + k]);
                let (bl, br) = (bottom_row[x0 * c + k], bottom_row[x1 * c + k]);
                let top = tl + (tr - tl) * lx;
                let bottom = bl + (br - bl) * lx;
                *v = top + (bottom - top) * ly;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A straightforward reference of pad-then-crop.
    fn pad_crop_ref(
        src: &[u8],
        h: usize,
        w: usize,
        c: usize,
        pad: usize,
        oy: usize,
        ox: usize,
    ) -> Vec<u8> {
        let (ph, pw) = (h + 2 * pad, w + 2 * pad);
        let mut padded = vec![0u8; ph * pw * c];
        for y in 0..h {
            for x in 0..w {
                for k in 0..c {
                    padded[((y + pad) * pw + x + pad) * c + k] = src[(y * w + x) * c + k];
                }
            }
        }
        let mut out = vec![0u8; h * w * c];
        for y in 0..h {
            for x in 0..w {
                for k in 0..c {
                    out[(y * w + x) * c + k] = padded[((y + oy) * pw + x + ox) * c + k];
                }
            }
        }
        out
    }

    #[test]
    fn pad_and_crop_matches_reference_at_every_offset() {
        for &(h, w, c, pad) in &[
            (5, 3, 2, 2),
            (4, 4, 3, 4),
            (1, 1, 1, 1),
            (3, 7, 1, 5),
            (6, 2, 3, 0),
        ] {
            let src: Vec<u8> = (0..h * w * c).map(|i| (i * 7 % 251 + 1) as u8).collect();
            let mut out = vec![0u8; h * w * c];
            for oy in 0..=2 * pad {
                for ox in 0..=2 * pad {
                    pad_and_crop(&src, h, w, c, pad, oy, ox, &mut out);
                    assert_eq!(
                        out,
                        pad_crop_ref(&src, h, w, c, pad, oy, ox),
                        "{h}x{w}x{c} pad {pad} at ({oy},{ox})"
                    );
                }
            }
        }
    }
}
