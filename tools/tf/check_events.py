#!/usr/bin/env python3
"""Checks that TensorFlow and TensorBoard read a psflow event file.

Write the file, then check it (needs TensorFlow, e.g. /opt/tfvenv; not run
in CI, which has no TensorFlow):

    cargo test -p psflow-worker --test run_tensorboard -- --ignored
    /opt/tfvenv/bin/python tools/tf/check_events.py target/tf-events

Two independent readers, both must agree with what the Rust test wrote:
  1. tf.compat.v1.train.summary_iterator: TensorFlow's own TFRecord reader
     (C++, checks both masked CRCs of every record) and Event proto parser.
  2. TensorBoard's EventAccumulator, what `tensorboard --logdir` uses, which
     turns `simple_value` summaries into its Scalars data.
"""
import glob
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXPECTED = {}
for step in range(1, 6):
    EXPECTED[("loss/total", step)] = 2.0 / step
    EXPECTED[("loss/cross_entropy", step)] = 1.5 / step
    EXPECTED[("learning_rate", step)] = 0.01
EXPECTED[("accuracy/top1", 5)] = 0.875


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-6)


def main(path):
    files = sorted(glob.glob(os.path.join(path, "*tfevents*"))) if os.path.isdir(path) else [path]
    if len(files) != 1:
        sys.exit(f"expected one event file in {path}, found {files}")
    (event_file,) = files
    print("file:", event_file)

    import tensorflow as tf

    events = list(tf.compat.v1.train.summary_iterator(event_file))
    assert events[0].file_version == "brain.Event:2", events[0]
    assert events[0].wall_time > 1.6e9, events[0].wall_time
    got = {}
    for e in events[1:]:
        for v in e.summary.value:
            assert v.WhichOneof("value") == "simple_value", v
            got[(v.tag, e.step)] = v.simple_value
    assert got.keys() == EXPECTED.keys(), (sorted(got), sorted(EXPECTED))
    for k, want in EXPECTED.items():
        assert close(got[k], want), (k, got[k], want)
    print(f"tf.compat.v1.train.summary_iterator: {len(events)} events, "
          f"file_version {events[0].file_version!r}, {len(got)} scalars OK")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(event_file)
    acc.Reload()
    tags = sorted(acc.Tags()["scalars"])
    assert tags == sorted({t for t, _ in EXPECTED}), tags
    n = 0
    for tag in tags:
        for s in acc.Scalars(tag):
            assert close(s.value, EXPECTED[(tag, s.step)]), (tag, s)
            n += 1
    assert n == len(EXPECTED), n
    print(f"tensorboard EventAccumulator: scalar tags {tags}, {n} values OK")
    print("PASS")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/tf-events")
