"""The package's structure: no import circle (lazy imports inside functions count too), lifecycle/
draws no figures, the ground floor (atomic.py, dotted.py) imports nothing of the package, one config
flattener, and the probes' context is built whole once."""
import ast
from pathlib import Path

import torch

import sparsity_exp

PACKAGE = Path(sparsity_exp.__file__).parent


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if package else parts), package


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its text (top level or inside functions)."""
    names = {_module_name(p)[0] for p in PACKAGE.rglob("*.py")}
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name, package = _module_name(path)
        here = name.split(".") if package else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
                elif (node.module or "").split(".")[0] == "sparsity_exp":
                    base = node.module.split(".")
                else:
                    continue
                for alias in node.names:  # `from .x import y`: module x.y when there is one, else x
                    full = ".".join(base + [alias.name])
                    found.add(full if full in names else ".".join(base))
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "sparsity_exp"}
        graph[name] = {m for m in found if m in names and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_imports():
    """The check below would catch a circle closed by an import inside a function."""
    graph = import_graph()
    assert "sparsity_exp.run" in graph["sparsity_exp.cli"]  # imported inside cli._job only
    assert "sparsity_exp.config" in graph["sparsity_exp.validate"]  # inside validate.known_keys
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_circle():
    assert _cycles(import_graph()) == []


def test_lifecycle_imports_no_plots():
    graph = import_graph()
    for name, imports in graph.items():
        if name.startswith("sparsity_exp.lifecycle"):
            assert not {m for m in imports if m.startswith("sparsity_exp.plots")}, name


def test_ground_floor_imports_nothing_of_the_package():
    graph = import_graph()
    for name in ("sparsity_exp.atomic", "sparsity_exp.dotted"):
        assert graph[name] <= {"sparsity_exp.errors"}, (name, graph[name])
    assert not (PACKAGE / "lifecycle" / "atomic.py").exists()  # the writer has one home
    assert all(m != "sparsity_exp.lifecycle.atomic" for imports in graph.values() for m in imports)


def test_flatten_gives_dotted_leaves_and_leaves_hydra_out():
    from omegaconf import OmegaConf

    from sparsity_exp.dotted import flatten

    nested = {"a": {"b": 1, "c": {"d": [1, 2]}, "e": {}}, "f": None, "hydra": {"run": {"dir": "x"}}}
    assert flatten(nested) == {"a.b": 1, "a.c.d": [1, 2], "a.e": {}, "f": None}
    assert flatten(nested, encode=repr) == {"a.b": "1", "a.c.d": "[1, 2]", "a.e": "{}", "f": "None"}
    cfg = OmegaConf.create({"x": {"y": 2, "z": "${x.y}"}})  # a config is resolved first
    assert flatten(cfg) == {"x.y": 2, "x.z": 2}
    assert flatten({}) == {} and flatten(None) == {}


def test_one_flattener_for_validation_continuation_and_collect():
    import sparsity_exp.collect as collect
    import sparsity_exp.lifecycle.folders as folders
    import sparsity_exp.validate as validate
    from sparsity_exp.dotted import flatten

    assert collect.flatten is flatten and folders.flatten is flatten and validate.flatten is flatten
    assert not hasattr(folders, "flat") and not hasattr(validate, "_flatten")


def test_probe_context_is_built_whole_once(compose, tiny):
    """run.py's context comes whole from the assembly; the trainer takes it as it is (it only keeps
    the step current), and the epoch it reports is the context's."""
    from sparsity_exp.assemble import assemble
    from sparsity_exp.optim import build_optimizer, param_groups
    from sparsity_exp.probes import ProbeSet, build_probes
    from sparsity_exp.train import Trainer

    cfg = compose(*tiny, "probes=cheap")
    run = assemble(cfg)
    optimizer = build_optimizer(cfg.optim, param_groups(run.model, cfg.optim), run.device)
    ctx = run.probe_context(recorder=None, optimizer=optimizer, grad_accum=2)
    assert (ctx.model, ctx.task, ctx.sites, ctx.optimizer, ctx.grad_accum) == (
        run.model, run.task, run.sites, optimizer, 2)
    assert ctx.train_batches is run.train_batches and ctx.steps_per_epoch == run.steps_per_epoch
    assert not ctx.posthoc and run.probe_context(posthoc=True).posthoc
    before = dict(vars(ctx))
    probes = ProbeSet(build_probes(cfg.probes, run.sites, ctx), ctx)
    trainer = Trainer(model=run.model, task=run.task, optimizer=optimizer, schedule=None,
                      train_batches=run.train_batches, test_batches=run.test_batches, probes=probes, recorder=None,
                      total_steps=run.total_steps, steps_per_epoch=run.steps_per_epoch, log_every=10, eval_every=10,
                      device=run.device, step=7, grad_accum=2)
    assert trainer.probes.context is ctx and all(p.ctx is ctx for p in trainer.probes)
    assert {k: v for k, v in vars(ctx).items() if k != "step"} == {k: v for k, v in before.items() if k != "step"}
    assert ctx.step == 7 and trainer.epoch == ctx.epoch == 7 / run.steps_per_epoch


def test_a_plain_list_of_probes_gets_a_whole_context():
    from sparsity_exp.train import ClassificationTask, Trainer

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = Trainer(model=model, task=ClassificationTask(), optimizer=opt, schedule=None, train_batches=None,
                      test_batches=None, probes=[], recorder=None, total_steps=1, steps_per_epoch=4, log_every=1,
                      eval_every=1, device=torch.device("cpu"), step=2, seed=3)
    ctx = trainer.probes.context
    assert (ctx.model, ctx.optimizer, ctx.seed, ctx.step, ctx.lr) == (model, opt, 3, 2, 0.5)
    assert trainer.epoch == 0.5
