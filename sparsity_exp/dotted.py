"""Nested configs as flat ``dotted.key -> value`` maps, written once: the start-up check
(validate.py), the comparison of a run's config with its continuation's (lifecycle/folders.py) and
the collected table's config columns (collect.py) all read configs this way. Ground floor: imports
nothing of the package."""
from __future__ import annotations


def flatten(cfg, encode=None) -> dict:
    """``{'a': {'b': 1}, 'hydra': {...}} -> {'a.b': 1}``: every leaf under its dotted key.

    ``cfg``: plain dicts, or an OmegaConf config (resolved first). A non-empty mapping is walked
    into; anything else (a list, an empty mapping, a scalar) is a leaf, passed through ``encode``
    when given (collect.py stores lists as JSON text). Hydra's own ``hydra.*`` node is left out: it
    says where and how a run was launched, not what it computes."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    out: dict = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, name + ".")
            else:
                out[name] = value if encode is None else encode(value)

    walk(cfg or {}, "")
    return {k: v for k, v in out.items() if k != "hydra" and not k.startswith("hydra.")}


# Settings that say where a run writes, how it shows progress and how it is resumed or placed, never
# what it computes: a run continues under other values of them (lifecycle/folders.py), and they never
# tell runs apart in a collected table or a figure's groups (collect.py, plots/common.py). A key under
# one of them (``trainer.resume.x``) counts too. One home, so the three cannot disagree.
RUN_SETTINGS = ("trainer.resume", "trainer.device", "trainer.progress", "trainer.num_workers", "trainer.threads",
                "trainer.checkpoint_every", "trainer.keep_checkpoints", "trainer.jobs_per_gpu",
                "trainer.tensorboard", "results_dir", "name", "data.root", "data.download")


def is_run_setting(key: str) -> bool:
    return any(key == s or key.startswith(s + ".") for s in RUN_SETTINGS)
