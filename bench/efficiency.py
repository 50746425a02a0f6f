#!/usr/bin/env python3
"""Efficiency of a bundle's network, for any trainer: parameters, training-step time and memory, inference
latency and memory on real scans.

For each bundle given, and side by side with nnU-Net's plain U-Net on the same plans where the bundle's
network is another one (a dual-branch bundle's configuration inherits nnU-Net's), each figure measured in
a fresh process:

- parameters;
- one training step (forward with deep supervision, a loss on every output, backward, SGD step) on
  a batch of the training's batch size x the planned patch: median seconds over ``--steps`` steps, and peak
  memory minus the memory of the loaded model and optimizer = the step's activation memory;
- inference with ``exe_predict.py``'s engine (nnU-Net's sliding window, ``--fast`` settings unless
  ``--tta``) on each scan of ``-i``: seconds per case and peak memory above the loaded model.

Memory: on CUDA ``torch.cuda.max_memory_allocated``; on a CPU the process's peak resident memory
(``ru_maxrss``), so a CPU figure includes allocator slack. ``--write-card`` adds the figures to each
bundle's ``model_card.json`` (``efficiency``).

    python3 bench/efficiency.py -m output_models/brats_dual output_models/brats -i scans/ --device cpu

Not a test: one run, printed as a table. Keep the machine otherwise idle.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import describe  # bench/ is on the path when a script runs

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024


def _rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Memory:
    """Peak memory above the moment of ``start()``: CUDA allocations, else the process's resident set."""

    def __init__(self, device):
        self.device = device

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _rss_now_bytes()

    def peak_above_start(self) -> int:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return max(0, _rss_peak_bytes() - self.base)


def _networks(bundle: Path) -> dict[str, tuple]:
    """``{"bundle": (plans_manager, configuration_manager, model_folder), "plain U-Net, same plans": ...}``;
    the second only when the bundle's configuration inherits one with another network."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manifest = json.loads((bundle / "medseg_auto.json").read_text())
    plans = PlansManager(json.loads((bundle / "plans.json").read_text()))  # the bundle is nnU-Net's model folder
    config = plans.get_configuration(manifest["configuration"])
    out = {"bundle": (plans, config, bundle)}
    parent = plans.plans["configurations"][manifest["configuration"]].get("inherits_from")
    if parent and plans.get_configuration(parent).network_arch_class_name != config.network_arch_class_name:
        out["plain U-Net, same plans"] = (plans, plans.get_configuration(parent), bundle)
    return out


def _build(plans, config, model: Path, deep_supervision: bool):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    dataset_json = json.loads((model / "dataset.json").read_text())
    channels = determine_num_input_channels(plans, config, dataset_json)
    heads = plans.get_label_manager(dataset_json).num_segmentation_heads
    return nnUNetTrainer.build_network_architecture(plans, config, channels, heads, deep_supervision), channels


def measure_training(bundle: Path, which: str, device_name: str, steps: int, batch: int | None) -> dict:
    sys.path.insert(0, str(REPO))
    from medseg_auto.device import select_device

    device = select_device(device_name)
    plans, config, model = _networks(bundle)[which]
    batch = batch or _training_batch(bundle)
    net, step = _training_step(plans, config, model, batch, device)
    step()  # warm-up (and the optimizer's momentum buffers, which belong to the model's memory)
    memory = _Memory(device)
    memory.start()
    times = [step() for _ in range(steps)]
    params = sum(p.numel() for p in net.parameters())
    return {"network": config.network_arch_class_name.rsplit(".", 1)[-1], "parameters": params,
            "batch": batch, "patch": list(config.patch_size), "step_seconds": statistics.median(times),
            "step_activation_mb": memory.peak_above_start() / MB}


def measure_interleaved(bundle: Path, device_name: str, rounds: int, steps: int, batch: int | None) -> dict:
    """The bundle's network against nnU-Net's plain U-Net on the same plans, in one process: ``rounds``
    rounds of ``steps`` steps of each, the order swapped every round, so both see the same machine state.
    Returns the median over rounds of the per-round ratio of median step times."""
    sys.path.insert(0, str(REPO))
    from medseg_auto.device import select_device

    device = select_device(device_name)
    networks = _networks(bundle)
    batch = batch or _training_batch(bundle)
    steps_of = {which: _training_step(*networks[which], batch, device)[1] for which in networks}
    for step in steps_of.values():
        step()  # warm-up
    ratios, medians = [], {which: [] for which in networks}
    for r in range(rounds):
        for which in (list(networks) if r % 2 == 0 else list(networks)[::-1]):
            medians[which].append(statistics.median(steps_of[which]() for _ in range(steps)))
        ratios.append(medians["bundle"][-1] / medians["plain U-Net, same plans"][-1])
    return {"ratio": statistics.median(ratios), "ratios": ratios,
            "step_seconds": {which: statistics.median(m) for which, m in medians.items()}}


def _training_batch(bundle: Path) -> int:
    card = json.loads((bundle / "model_card.json").read_text())
    return min(f["batch_size"] for f in card["folds"].values())


def _training_step(plans, config, model: Path, batch: int, device):
    """``(network, step)``: ``step()`` runs one training step (forward with deep supervision, a loss on every
    output, backward, SGD) on a random batch of ``batch`` x the planned patch and returns its seconds."""
    import torch

    net, channels = _build(plans, config, model, True)
    net = net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), 1e-3, momentum=0.99, nesterov=True)
    x = torch.randn(batch, channels, *config.patch_size, device=device)

    def step() -> float:
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = sum(o.float().square().mean() for o in net(x))  # touches every output; its own cost is tiny
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    return net, step


def measure_inference(bundle: Path, which: str, device_name: str, scans: Path, tta: bool) -> dict:
    sys.path.insert(0, str(REPO))
    from medseg_auto.device import select_device
    from medseg_auto.predict.bundle import open_bundle
    from medseg_auto.predict.engine import DEFAULT_STEP, FAST_STEP, Settings, case_predictor, read_scan
    from medseg_auto.predict.scans import find_scans

    device = select_device(device_name)
    b = open_bundle(bundle, None)
    predictor = case_predictor(b, Settings(tta, DEFAULT_STEP if tta else FAST_STEP, False), device)
    if which != "bundle":  # the plain U-Net of the same plans, untrained: the same work per case
        plans, config, model = _networks(bundle)[which]
        p = predictor.predictor
        p.network = _build(plans, config, model, False)[0].to(device).eval()
        p.list_of_parameters = [p.network.state_dict()]
        p.configuration_manager = config
    found = find_scans(scans, b, None)
    images = [read_scan(s, b) for s in found.scans]
    predictor.predict(images[0])  # warm-up
    memory = _Memory(device)
    memory.start()
    times = []
    for image in images:
        t = time.perf_counter()
        predictor.predict(image)
        times.append(time.perf_counter() - t)
    return {"cases": len(images), "case_seconds": statistics.mean(times),
            "inference_extra_mb": memory.peak_above_start() / MB}


def _child(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", dest="bundles", type=Path, nargs="+", default=[], help="bundle folders")
    p.add_argument("-i", dest="scans", type=Path, help="scans to time inference on (any layout exe_predict.py reads)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--steps", type=int, default=5, help="timed training steps")
    p.add_argument("--batch", type=int, help="training batch (default: the bundle's training batch)")
    p.add_argument("--tta", action="store_true", help="infer with mirroring and step 0.5 (default: --fast)")
    p.add_argument("--write-card", action="store_true", help="add the figures to each bundle's model_card.json")
    p.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                   help="also time a bundle's network against the plain U-Net of the same plans in one process, "
                   "alternating ROUNDS rounds of --steps steps each")
    p.add_argument("--child", nargs=3, metavar=("KIND", "BUNDLE", "WHICH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, bundle, which = args.child
        result = (measure_training(Path(bundle), which, args.device, args.steps, args.batch) if kind == "train"
                  else measure_interleaved(Path(bundle), args.device, args.interleave, args.steps, args.batch)
                  if kind == "interleave" else measure_inference(Path(bundle), which, args.device, args.scans,
                                                                args.tta))
        print(json.dumps(result))
        return 0
    if not args.bundles:
        p.error("give at least one bundle with -m")
    rows = []
    for bundle in args.bundles:
        for which in _networks(bundle):
            common = ["--device", args.device, "--steps", str(args.steps)] + \
                     (["--batch", str(args.batch)] if args.batch else [])
            label = f"{bundle.parent.name}/{bundle.name}"  # output_models/NAME: both parts, as bundles share NAMEs
            print(f"{label} ({which}): training step ...", file=sys.stderr, flush=True)
            row = {"bundle": label, "which": which} | _child(["--child", "train", str(bundle), which, *common])
            if args.scans:
                print(f"{label} ({which}): inference ...", file=sys.stderr, flush=True)
                row |= _child(["--child", "infer", str(bundle), which, "-i", str(args.scans), *common]
                              + (["--tta"] if args.tta else []))
            if args.interleave and which != "bundle":
                print(f"{label}: both networks interleaved ...", file=sys.stderr, flush=True)
                row["interleaved"] = _child(["--child", "interleave", str(bundle), which, *common,
                                             "--interleave", str(args.interleave)])
            rows.append(row)
            if args.write_card and which == "bundle":
                card_file = bundle / "model_card.json"
                card = json.loads(card_file.read_text())
                card["efficiency"] = {k: v for k, v in row.items() if k not in ("bundle", "which")} | {
                    "device": args.device, "inference_settings": "mirrored, step 0.5" if args.tta else "fast"}
                card_file.write_text(json.dumps(card, indent=1))
    print(f"\n{describe(args.device)}; "
          f"memory: {'CUDA allocations' if args.device == 'cuda' else 'peak resident set above the loaded model'}\n")
    print("| bundle | network | parameters | batch x patch | training step s | step activations MB "
          "| inference s / case | inference MB above model |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['bundle']} | {r['network']} ({r['which']}) | {r['parameters'] / 1e6:.2f} M | {r['batch']} x "
              f"{'x'.join(map(str, r['patch']))} | {r['step_seconds']:.2f} | {r['step_activation_mb']:.0f} | "
              + (f"{r['case_seconds']:.2f} | {r['inference_extra_mb']:.0f} |" if "case_seconds" in r else "- | - |"))
    for r in rows:
        if "interleaved" in r:
            i = r["interleaved"]
            print(f"\n{r['bundle']}: the bundle's step against the plain U-Net's, interleaved in one process "
                  f"({args.interleave} rounds of {args.steps} steps): {i['ratio']:.2f}x (median of the rounds; "
                  f"rounds {', '.join(f'{x:.2f}' for x in i['ratios'])}; medians "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in i["step_seconds"].items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
