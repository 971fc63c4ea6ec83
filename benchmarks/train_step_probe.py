"""One timed `lineside train` run, in its own process, for `lineside bench train-step`.

Run as a file (not as ``benchmarks.train_step_probe``) with PYTHONPATH set to the source tree
being timed: it imports only ``lineside``, ``train_host`` and torch from there, so the same probe
times today's code and an older checkout whose ``benchmarks`` package has no such module.

    python -c 'import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")' \
        train_step_probe.py OUT.json train FAMILY --data ... --out RUN ...

The real command runs (the tree's own parser, defaults, training, validation scoring, saving).
Two things are instrumented, without changing what runs:

- every batch a family's ``fit`` takes from ``TrainContext.loader``: the wait for the batch
  (decode, resize, collate, a worker's hand-over: *data*) and the family's own work on it
  until it asks for the next one (*use*: a feature pass, or a synthesis + training step);
- every ``torch.optim`` step inside ``fit`` (torch's global step hook), so families that train
  on tensors already in memory (rddpm, adtr's feature cache, dinov2-lora's tokens) are timed too.

Patching ``train_host.train``'s two names is the only way to time an older tree that has no
hook of its own; both wrappers call through to the originals. Timestamps are ``perf_counter``
seconds, with this process's CPU seconds (``process_time``: all its threads, not a data-loader worker's)
next to them, so that a machine shared with other work can still be compared; the parent turns them into
per-batch and per-step figures.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    out, train_argv = argv[0], argv[1:]
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import train_host.train as train
    from lineside.cli import main as cli

    events = {"fit": [], "batches": [], "steps": [], "steps_cpu": [], "loaders": []}
    inside_fit = [False]  # the CPU schedule probe (newer trees) steps an optimiser before fit: not counted

    class TimedContext(train.TrainContext):
        def loader(self, *args, **kwargs):
            call = len(events["loaders"])
            events["loaders"].append(kwargs.get("progress") or "")
            batches = super().loader(*args, **kwargs)
            while True:
                asked, asked_cpu = time.perf_counter(), time.process_time()
                try:
                    batch = next(batches)
                except StopIteration:
                    return
                got, got_cpu = time.perf_counter(), time.process_time()
                yield batch
                events["batches"].append({"loader": call, "fetch": [asked, got], "use": [got, time.perf_counter()],
                                          "fetch_cpu": [asked_cpu, got_cpu], "use_cpu": [got_cpu, time.process_time()],
                                          "images": _count(batch), "in_fit": inside_fit[0]})

    class TimedFamily:
        def __init__(self, module):
            self._module = module

        def __getattr__(self, name):
            return getattr(self._module, name)

        def fit(self, model, context):
            inside_fit[0] = True
            started = time.perf_counter()
            try:
                return self._module.fit(model, context)
            finally:
                events["fit"] = [started, time.perf_counter()]
                inside_fit[0] = False

    def on_step(optimizer, args, kwargs):
        if inside_fit[0]:
            events["steps"].append(time.perf_counter())
            events["steps_cpu"].append(time.process_time())

    load_family = train.load_family
    train.TrainContext = TimedContext
    train.load_family = lambda name: TimedFamily(load_family(name))
    register_optimizer_step_post_hook(on_step)
    code = cli(train_argv)
    events.update(exit_code=code, torch=torch.__version__, threads=torch.get_num_threads(),
                  train_host=train.__file__)
    with open(out, "w") as f:
        json.dump(events, f)
    return code


def _count(batch) -> int:
    image = batch.get("image") if isinstance(batch, dict) else None
    return int(len(image)) if image is not None else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
