"""The device is named once, in our words: nnU-Net's own device remarks are dropped from standard output."""
from __future__ import annotations

import torch

from medseg_auto.device import describe_device, without_nnunet_device_remarks


def test_nnunets_device_remarks_are_dropped_and_everything_else_kept(capsys):
    with without_nnunet_device_remarks():
        print("Using device: cpu")
        print("perform_everything_on_device=True is only supported for cuda devices! Setting this to False")
        print("2026-12-02 17:00:00: predicting case_001")
        print("partial", end="")
        print(" line")
        print("no newline at the end", end="")
    print("after")
    assert capsys.readouterr().out == ("2026-12-02 17:00:00: predicting case_001\npartial line\n"
                                       "no newline at the endafter\n")


def test_a_trainer_built_on_a_cpu_does_not_print_nnunets_device_line(capsys, tmp_path, monkeypatch):
    """nnU-Net's trainer constructor prints 'Using device: cpu'; ours, a subclass, does not."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from medseg_auto.trainers.time_budget import nnUNetTrainerTimeBudget

    calls = []

    def fake_init(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        calls.append(device)
        print(f"Using device: {device}")  # what nnU-Net 2.8's constructor prints
        print("This is kept")

    monkeypatch.setattr(nnUNetTrainer, "__init__", fake_init)
    nnUNetTrainerTimeBudget({}, "3d_fullres", 0, {}, torch.device("cpu"))
    assert calls == [torch.device("cpu")] and capsys.readouterr().out == "This is kept\n"


def test_the_cpu_is_described_with_its_threads():
    assert describe_device(torch.device("cpu")) == f"CPU, {torch.get_num_threads()} torch thread(s)"


def test_cuda_gets_cudnn_benchmark_mode_as_in_nnunets_entry_points(monkeypatch):
    from medseg_auto.device import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert select_device("cuda").type == "cuda" and torch.backends.cudnn.benchmark is True
