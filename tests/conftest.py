"""Shared fixtures: a tiny generated synthscapes dataset and Hydra config composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# Under pytest-xdist (`make test` runs `-n 2`), each worker gets an equal share of the cores for torch's
# intra-op threads, and the CLI/DDP subprocesses a test starts inherit the same share, so the workers do not
# oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    import torch as _torch

    _torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from semiseg_lit.__main__ import CONFIG_DIR  # noqa: E402  (registers the schemas)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"

TINY_SYNTH = dict(n_train=40, n_val=12, height=64, width=64, n_styles=4, seed=0, tail_scale=1.0, labeled_styles=None,
                  style_textures="shared")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthscapes tree (Cityscapes layout + split lists), generated once per session."""
    from semiseg_lit.data.datamodule import synthscapes_labeled_counts
    from semiseg_lit.data.synthscapes import ensure_synthscapes

    root = tmp_path_factory.mktemp("synthscapes") / "tiny"
    counts = synthscapes_labeled_counts(TINY_SYNTH["n_train"])
    return ensure_synthscapes(root, labeled_counts=counts, **TINY_SYNTH)


def tiny_overrides(synth_root: Path, out: Path) -> list[str]:
    """Overrides that shrink any synthscapes experiment to a few CPU seconds."""
    s = TINY_SYNTH
    return [
        f"data.root={synth_root}", f"data.synthscapes.n_train={s['n_train']}",
        f"data.synthscapes.n_val={s['n_val']}", f"data.synthscapes.height={s['height']}",
        f"data.synthscapes.width={s['width']}", f"data.synthscapes.n_styles={s['n_styles']}",
        f"data.synthscapes.tail_scale={s['tail_scale']}", "data.synthscapes.labeled_styles=null",
        f"data.synthscapes.style_textures={s['style_textures']}", "data.augment.labeled_strong=false",
        "data.n_labeled=8", "data.crop_size=64", "data.labeled_batch_size=4", "data.unlabeled_batch_size=4",
        "data.val_batch_size=6", "data.num_workers=0", "model.encoder=resnet18", "model.encoder_weights=null",
        "model.decoder_channels=32", "model.aux_channels=32", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger.wandb.enabled=false",
        f"paths.output_dir={out}", f"paths.log_dir={out / 'logs'}",
    ]


@pytest.fixture
def one_torch_thread():
    """Torch's intra-op threads set to 1 for the test (small CPU tensors run faster), restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def compose_cfg():
    """compose_cfg(overrides) -> DictConfig, like the command line would build it."""

    def _compose(overrides: list[str]):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name="config", overrides=overrides)

    yield _compose
    GlobalHydra.instance().clear()


# ----------------------------------------------------------------------------- device selection
def pytest_addoption(parser):
    parser.addoption(
        "--only-device", default=None, choices=["cpu", "cuda"],
        help="run only the device-parametrised tests (a `device` parameter) on this device, and tests/cuda/ "
             "(benchmarks/gpu_check.py runs the suite with --only-device=cuda on a GPU machine)")


def pytest_collection_modifyitems(config, items):
    device = config.getoption("--only-device")
    if device is None:
        return
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError("--only-device=cuda: no CUDA device is visible")
    cuda_dir = Path(__file__).resolve().parent / "cuda"
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_device = "device" in params and str(params["device"]).split(":")[0] == device
        (keep if on_device or cuda_dir in Path(str(item.fspath)).resolve().parents else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
