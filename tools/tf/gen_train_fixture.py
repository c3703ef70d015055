"""Three RMSProp training steps of a small conv net in TensorFlow, the
reference for graph/tests/train_steps.rs.

Run: /opt/tfvenv/bin/python tools/tf/gen_train_fixture.py
Writes graph/tests/fixtures/train3/ (see the README written there).

The net (NHWC, float32, TF-slim names under `net/`):
  conv0   Conv2D 3x3 stride 2 SAME, 3 -> 8      (weights decayed)
          FusedBatchNormV3 training, eps 1e-3, exponential_avg_factor 0.01
          Relu6
  dw      DepthwiseConv2dNative 3x3 stride 1 SAME, multiplier 1 (not decayed)
          FusedBatchNormV3 training, Relu6
  pw      Conv2D 1x1, 8 -> 16                   (weights decayed)
          FusedBatchNormV3 training, Relu6
  pool    Mean over H, W (keep_dims)
  logits  Conv2D 1x1, 16 -> 5 (weights decayed) + BiasAdd, Squeeze [1, 2]
loss = mean(SparseSoftmaxCrossEntropyWithLogits) + 4e-5 * sum(L2Loss(w))
optimizer: tf.compat.v1.train.RMSPropOptimizer(lr, decay=0.9,
momentum=0.9, epsilon=1.0) (ms slots start at ones), global_step
incremented, BN moving statistics assigned in the same step.
"""
import os

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1
tf1.disable_eager_execution()

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "graph", "tests", "fixtures", "train3")
BATCH, RES, CLASSES = 4, 8, 5
LR = 0.05
WEIGHT_DECAY = 4e-5
STEPS = 3

rng = np.random.RandomState(1234)


def normal(shape, scale):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# (name, shape, initial value, regularize)
VARS = []


def add_var(name, value, regularize=False, trainable=True):
    VARS.append((name, value, regularize, trainable))


def bn_vars(scope, c):
    add_var(f"{scope}/BatchNorm/gamma", (1.0 + normal([c], 0.1)).astype(np.float32))
    add_var(f"{scope}/BatchNorm/beta", normal([c], 0.1))
    add_var(f"{scope}/BatchNorm/moving_mean", normal([c], 0.1), trainable=False)
    add_var(
        f"{scope}/BatchNorm/moving_variance",
        (1.0 + np.abs(normal([c], 0.2))).astype(np.float32),
        trainable=False,
    )


add_var("net/conv0/weights", normal([3, 3, 3, 8], 0.3), regularize=True)
bn_vars("net/conv0", 8)
add_var("net/dw/depthwise_weights", normal([3, 3, 8, 1], 0.3))
bn_vars("net/dw", 8)
add_var("net/pw/weights", normal([1, 1, 8, 16], 0.3), regularize=True)
bn_vars("net/pw", 16)
add_var("net/logits/weights", normal([1, 1, 16, CLASSES], 0.3), regularize=True)
add_var("net/logits/biases", normal([CLASSES], 0.1))

images = rng.uniform(-1.0, 1.0, size=[BATCH, RES, RES, 3]).astype(np.float32)
labels = rng.randint(0, CLASSES, size=[BATCH]).astype(np.int32)

g = tf.Graph()
with g.as_default():
    v = {}
    for name, value, _, trainable in VARS:
        v[name] = tf1.get_variable(
            name,
            initializer=tf1.constant_initializer(value),
            shape=value.shape,
            dtype=tf.float32,
            use_resource=True,
            trainable=trainable,
        )
    x = tf1.placeholder(tf.float32, [None, RES, RES, 3], name="input")
    y = tf1.placeholder(tf.int32, [None], name="labels")
    lr = tf1.placeholder(tf.float32, [], name="learning_rate")
    updates = []

    def bn(scope, h):
        out = tf.raw_ops.FusedBatchNormV3(
            x=h,
            scale=v[f"{scope}/BatchNorm/gamma"],
            offset=v[f"{scope}/BatchNorm/beta"],
            mean=v[f"{scope}/BatchNorm/moving_mean"].read_value(),
            variance=v[f"{scope}/BatchNorm/moving_variance"].read_value(),
            epsilon=0.001,
            exponential_avg_factor=0.01,
            data_format="NHWC",
            is_training=True,
        )
        updates.append(v[f"{scope}/BatchNorm/moving_mean"].assign(out[1]))
        updates.append(v[f"{scope}/BatchNorm/moving_variance"].assign(out[2]))
        return tf.nn.relu6(out[0])

    h = tf.nn.conv2d(x, v["net/conv0/weights"], [1, 2, 2, 1], "SAME")
    h = bn("net/conv0", h)
    h = tf.nn.depthwise_conv2d(h, v["net/dw/depthwise_weights"], [1, 1, 1, 1], "SAME")
    h = bn("net/dw", h)
    h = tf.nn.conv2d(h, v["net/pw/weights"], [1, 1, 1, 1], "SAME")
    h = bn("net/pw", h)
    h = tf.reduce_mean(h, [1, 2], keepdims=True)
    h = tf.nn.conv2d(h, v["net/logits/weights"], [1, 1, 1, 1], "SAME")
    h = tf.nn.bias_add(h, v["net/logits/biases"])
    logits = tf.squeeze(h, [1, 2])
    xent = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    )
    reg = tf.add_n(
        [WEIGHT_DECAY * tf.nn.l2_loss(v[name]) for name, _, r, _ in VARS if r]
    )
    total = xent + reg
    gs = tf1.train.get_or_create_global_step()
    opt = tf1.train.RMSPropOptimizer(LR, decay=0.9, momentum=0.9, epsilon=1.0)
    with tf.control_dependencies(updates):
        train = opt.minimize(total, global_step=gs, var_list=[v[n] for n, _, _, t in VARS if t])

    slots = []
    for name, _, _, trainable in VARS:
        if trainable:
            slots.append((f"{name}/RMSProp", opt.get_slot(v[name], "rms")))
            slots.append((f"{name}/RMSProp_1", opt.get_slot(v[name], "momentum")))

    os.makedirs(OUT, exist_ok=True)

    def fname(name):
        return name.replace("/", "__") + ".npy"

    with tf1.Session(graph=g) as sess:
        sess.run(tf1.global_variables_initializer())
        feed = {x: images, y: labels, lr: LR}
        losses = []

        def dump(step):
            d = os.path.join(OUT, f"step{step}")
            os.makedirs(d, exist_ok=True)
            for name, _, _, _ in VARS:
                np.save(os.path.join(d, fname(name)), sess.run(v[name]))
            for name, s in slots:
                np.save(os.path.join(d, fname(name)), sess.run(s))
            np.save(os.path.join(d, "global_step.npy"), np.array(sess.run(gs), np.int64))

        dump(0)
        for step in range(1, STEPS + 1):
            l, xe, rg, _ = sess.run([total, xent, reg, train], feed)
            losses.append([l, xe, rg])
            dump(step)

    np.save(os.path.join(OUT, "input.npy"), images)
    np.save(os.path.join(OUT, "labels.npy"), labels)
    np.save(os.path.join(OUT, "learning_rate.npy"), np.array(LR, np.float32))
    # total, cross-entropy, regularization loss of each step (before its update).
    np.save(os.path.join(OUT, "losses.npy"), np.array(losses, np.float32))
    with open(os.path.join(OUT, "variables.txt"), "w") as f:
        for name, value, r, t in VARS:
            kind = "regularized" if r else ("trained" if t else "statistic")
            f.write(f"{name} {kind} {','.join(str(d) for d in value.shape)}\n")

    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(
            f"""# train3: three RMSProp steps of a small conv net in TensorFlow {tf.__version__}

Generated by `tools/tf/gen_train_fixture.py` (run it with /opt/tfvenv/bin/python;
the net, loss and optimizer are described at its top). Checked by
`graph/tests/train_steps.rs`.

- `input.npy` float32 [{BATCH}, {RES}, {RES}, 3], `labels.npy` int32 [{BATCH}]: the fixed batch.
- `learning_rate.npy`: the learning rate fed at every step ({LR}).
- `variables.txt`: each model variable, its role (regularized weights,
  trained, or BN statistic) and shape, in creation order.
- `step0/`: initial values; `step1/` … `step{STEPS}/`: values after each step.
  One `.npy` per variable, its name with `/` written `__`: model variables,
  RMSProp slots `V/RMSProp` (mean square, starts at ones) and
  `V/RMSProp_1` (momentum), BN moving statistics, and `global_step.npy`.
- `losses.npy` float32 [{STEPS}, 3]: total, cross-entropy and
  regularization loss computed in each step (before its update).

Weight decay {WEIGHT_DECAY} on conv/pointwise/logits weights only;
RMSProp decay 0.9, momentum 0.9, epsilon 1.0; batch norm eps 0.001,
exponential_avg_factor 0.01 (decay 0.99).
"""
        )
print("wrote", os.path.abspath(OUT))
