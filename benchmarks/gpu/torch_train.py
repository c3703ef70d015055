#!/usr/bin/env python3
"""Times PyTorch training MobileNet v1 on a CUDA GPU on random tensors: the
peer of `psflow bench train --device cuda:0`. Prints one JSON object with
--json (schema below), else a line for people.

The recipe, the same as psflow's training graph and benchmarks/peers/tf_train.py:

- MobileNet v1 in plain torch.nn, TF-slim's layer plan: a 3x3 stride-2
  convolution to 32*alpha channels, then 13 depthwise-separable blocks
  (3x3 depthwise + batch norm + ReLU6, 1x1 pointwise + batch norm + ReLU6)
  with (channels, stride) (64,1) (128,2) (128,1) (256,2) (256,1) (512,2)
  (512,1)x5 (1024,2) (1024,1), global average pooling, dropout 1e-3 and a
  linear classifier; no biases before batch norm; batch norm epsilon 1e-3,
  training mode (batch statistics);
- sparse softmax cross-entropy plus 4e-5 L2 weight decay on the convolution,
  pointwise and classifier weights (not the depthwise filters, biases or
  batch norm: psflow's rule), given to the optimizer as weight_decay
  (PyTorch adds wd * w to the gradient: the gradient of wd * ||w||^2 / 2,
  TensorFlow's l2_loss);
- torch.optim.RMSprop(lr=0.01, alpha=0.9, momentum=0.9, eps=1.0). NOTE:
  PyTorch adds eps OUTSIDE the square root (g / (sqrt(ms) + eps)) where
  TensorFlow adds it inside (g / sqrt(ms + eps)); with eps = 1.0 the two
  steps differ in size. The work per step is the same; the trajectories
  are not. run.sh's summary repeats this;
- batch 128 (--batch-size) of random tensors resident on the GPU, 32x32x3
  input (--resolution), 10 classes (--classes);
- channels_last memory format, cudnn.benchmark = True, TF32 allowed for
  matmuls and cuDNN convolutions (psflow's pointwise GEMM is TF32 too;
  --no-tf32 turns it off).

The first --warmup steps are untimed (cuDNN's autotuning happens there);
then each of --steps steps is timed on its own with CUDA events around it
and a synchronization after it. Reported: the median step time and the
images/s it gives, with min and max.

Output (--json):

    {"torch": version, "cuda": version, "cudnn": version, "device": name,
     "alpha", "resolution", "batch", "classes", "tf32", "warmup", "steps",
     "rmsprop_eps_outside_sqrt": true,
     "step_ms": {"median", "min", "max"}, "images_per_sec_median",
     "images_per_sec_min", "images_per_sec_max", "final_loss"}

Needs PyTorch with CUDA; without it exits 2 with a one-line error. Never
installs anything.
"""

import argparse
import json
import statistics
import sys

# (pointwise output channels, depthwise stride) of TF-slim's MobileNet v1.
BLOCKS = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]
WEIGHT_DECAY = 4e-5
BN_EPS = 1e-3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--no-tf32", dest="tf32", action="store_false")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    for name in ("batch_size", "steps", "classes", "resolution"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if a.warmup < 0 or a.alpha <= 0:
        p.error("--warmup must be >= 0 and --alpha > 0")
    return a


def channels(c, alpha):
    return max(8, int(c * alpha))


def build_model(torch, alpha, classes):
    nn = torch.nn

    def bn(c):
        # PyTorch's momentum is 1 - TensorFlow's decay; only the moving
        # statistics see it, not the training step's cost.
        return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.003)

    layers = []
    c_in = channels(32, alpha)
    layers += [nn.Conv2d(3, c_in, 3, stride=2, padding=1, bias=False), bn(c_in), nn.ReLU6(inplace=True)]
    for c, stride in BLOCKS:
        c_out = channels(c, alpha)
        layers += [
            nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            bn(c_in),
            nn.ReLU6(inplace=True),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            bn(c_out),
            nn.ReLU6(inplace=True),
        ]
        c_in = c_out
    layers += [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(p=1e-3),
        nn.Linear(c_in, classes),
    ]
    return nn.Sequential(*layers)


def param_groups(torch, model):
    """Weight decay on full and pointwise convolution weights and the
    classifier's weight; none on depthwise filters, biases, batch norm."""
    decay, no_decay = [], []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            (no_decay if m.groups > 1 else decay).append(m.weight)
        elif isinstance(m, torch.nn.Linear):
            decay.append(m.weight)
            no_decay.append(m.bias)
        elif isinstance(m, torch.nn.BatchNorm2d):
            no_decay += [m.weight, m.bias]
    return [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def main(argv=None):
    args = parse_args(argv)
    try:
        import torch
    except ImportError as e:
        print(f"torch_train.py: PyTorch is not available ({e}); nothing was run", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch_train.py: PyTorch reports no CUDA device (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32

    model = build_model(torch, args.alpha, args.classes).to(dev).to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.RMSprop(param_groups(torch, model), lr=0.01, alpha=0.9, momentum=0.9, eps=1.0)
    loss_fn = torch.nn.CrossEntropyLoss()
    r, b = args.resolution, args.batch_size
    x = torch.randn(b, 3, r, r, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (b,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize(dev)
    times = []
    loss = None
    for _ in range(args.steps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    final_loss = float(loss.item())
    med = statistics.median(times)
    out = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(dev),
        "alpha": args.alpha,
        "resolution": r,
        "batch": b,
        "classes": args.classes,
        "tf32": args.tf32,
        "warmup": args.warmup,
        "steps": args.steps,
        "rmsprop_eps_outside_sqrt": True,
        "step_ms": {"median": med, "min": min(times), "max": max(times)},
        "images_per_sec_median": b / (med / 1e3),
        "images_per_sec_min": b / (max(times) / 1e3),
        "images_per_sec_max": b / (min(times) / 1e3),
        "final_loss": final_loss,
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"PyTorch {out['torch']} on {out['device']}: MobileNet v1 alpha {args.alpha}, "
              f"{r}x{r}, batch {b}: median {med:.2f} ms/step, "
              f"{out['images_per_sec_median']:.0f} images/s (loss {final_loss:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
