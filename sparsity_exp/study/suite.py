"""A study suite (conf/study/<suite>.yaml): named arms (Hydra override sets) and claims.

An arm is what one ``sparsity-exp run`` gets, per seed:

    arms:
      mlp:            {data: auto, overrides: [model=mlp, optim.lr=0.02]}
      mlp_noise:      {base: mlp, overrides: [protocol=weight_noise]}   # base's overrides, then its own
      mlp_reseeded:   {base: mlp, seed_offset: 100}                     # the same config, other seeds

``data: auto`` puts the overrides of the first entry of ``datasets`` that is available in front (the
full Fashion-MNIST when ``data.root`` holds it, else the embedded digits); the report says which.
``data.root=`` on the study's command line goes to those arms only (with ``needs: fashion_mnist`` or
``root: true``), since the embedded datasets have no root.

A claim compares arms in one of three ways (``compare``):
  * ``arms``:  a reference arm (first) and one or more treatment arms; one verdict per treatment;
  * ``step0``: one arm's window against its own step 0, seed by seed (emergence: "rises in training");
  * ``bound``: one arm's window against a constant (``bound``), e.g. "ratio80 stays below 100".
An entry of ``arms`` is an arm name or ``{arm: NAME, metric: {...}}`` to read another metric of the
same runs (claim 8 compares two metrics of one run). ``direction`` is the predicted sign of
(treatment - reference): ``increase`` or ``decrease``; ``sesoi`` the smallest effect of interest, in
``sesoi_unit``: ``difference``, ``relative`` (difference / reference) or ``nonzero_relative``
(relative change of 1 - metric: the paper's headline unit for sparsity, where fewer non-zeros is
the predicted direction of a sparsity increase).

A ``bound`` claim ("stays below/above B") has no SESOI of its own: B is the margin. Its window
``{every_from_step: S}`` judges every measured step from S on (intersection-union, stats.RULE).
``test: paired|welch`` (suite level or per claim; default: paired where the compared arms share seeds,
i.e. same seed_offset, so the same init and batch order, Welch otherwise). ``noninferiority: {margin: m}``
adds an accuracy non-inferiority check (claims "at equal accuracy") on the suite's ``accuracy`` metric;
``{margin: m, metric: {probe: eval, metric: loss, split: test}, direction: decrease}`` checks another
metric of the same runs, ``direction`` being the better side (decrease: lower is better, e.g. T5's eval
loss: the treatment may be worse by at most m). ``baseline: first_finite`` (step0 claims) compares with
the first measured step whose value is finite instead of step 0: for a ratio that is 0/0 at
initialisation (AS_K / coef_L0 on torchvision's ViT, whose classification head starts at zero, so no
gradient reaches the blocks at step 0). ``paper_claim: null`` marks an
exploratory claim (no numbered claim of docs/paper.md §2).

``why:`` (a string) is required on every claim with a SESOI > 0, a bound or an accuracy margin: why that size
matters, in units a reader can check (the paper's headline effect, the seed-to-seed SD, a measurement's
resolution); the report prints it beside the claim. ``predict: no_effect`` marks a claim whose theory
predicts |theta| < SESOI (its outcome is `no effect of interest`; default ``effect``: `supported`).
``planted: true`` marks a positive control: an arm with an intervention whose effect on the metric is
known in advance (``known_effect``, theta in the claim's unit), judged like any claim, which must come
out `supported` (and its interval should cover the known effect); like negative controls it stays out of
the multiplicity family. Every metric's probe must be a registered
probe (``sparsity_exp.probes.PROBES``) or a trainer row (train, eval, modules), and where the probe's
code names its metrics, the metric must be one of them: a typo is an error at load, not `no data`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from ..errors import ConfigError

COMPARES = ("arms", "step0", "bound")
BASELINES = ("step0", "first_finite")
DIRECTIONS = ("increase", "decrease")
UNITS = ("difference", "relative", "nonzero_relative")
PREDICTS = ("effect", "no_effect")
METRIC_KEYS = ("probe", "metric", "split", "layer", "divide_by")


@dataclass(frozen=True)
class Metric:
    """Rows of the metric table: probe, metric, split, layer ('avg' or an index); divide_by: another
    metric of the same probe, split and layer (the value is metric / divide_by, step by step)."""

    probe: str
    metric: str
    split: str = "test"
    layer: str = "avg"
    divide_by: str | None = None

    @property
    def label(self) -> str:
        name = f"{self.metric}/{self.divide_by}" if self.divide_by else self.metric
        return f"{self.probe}.{name} ({self.split}, layer {self.layer})"


@dataclass(frozen=True)
class Window:
    """Which evaluations of a run give its value: the last one (k = 1), the mean of the last k, or (bound
    claims) every measured step from ``from_step`` on, each judged on its own."""

    last: int = 1
    from_step: int | None = None

    @property
    def label(self) -> str:
        if self.from_step is not None:
            return f"every measured step from step {self.from_step}"
        return "last evaluation" if self.last == 1 else f"mean of the last {self.last} evaluations"


@dataclass
class Arm:
    name: str
    overrides: list[str]
    seed_offset: int = 0
    data: str | None = None  # `auto` (the study picks the dataset) or None, as the suite says
    dataset: str | None = None  # the dataset entry chosen for `data: auto` (execute.plan_jobs), for the report


@dataclass
class Side:
    """One side of a comparison: an arm and the metric read from its runs."""

    arm: str
    metric: Metric

    @property
    def label(self) -> str:
        return self.arm if not self._metric_differs else f"{self.arm}:{self.metric.metric}"

    _metric_differs: bool = False


@dataclass
class Claim:
    id: str
    paper_claim: int | None  # None: an exploratory claim
    statement: str
    compare: str
    sides: list[Side]
    metric: Metric
    window: Window
    direction: str
    sesoi: float
    sesoi_unit: str = "difference"
    bound: float | None = None
    control: bool = False
    note: str = ""
    test: str | None = None          # paired | welch | None (paired where the arms share seeds)
    ni_margin: float | None = None   # accuracy non-inferiority margin (claims "at equal accuracy")
    ni_metric: "Metric | None" = None  # the non-inferiority metric (None: the suite's accuracy)
    ni_direction: str = "increase"   # which way the non-inferiority metric is better
    baseline: str = "step0"          # step0 claims: step0 | first_finite (the first step with a finite value)
    why: str = ""                    # why the SESOI / bound / margin has its size, in units a reader can check
    predict: str = "effect"          # effect: `supported` is the theory's outcome; no_effect: `no effect of interest` is
    planted: bool = False            # a positive control: an arm whose effect is known in advance (must be `supported`)
    known_effect: float | None = None  # planted: the effect theta the intervention puts there by construction

    @property
    def margin_kind(self) -> str | None:
        """What `why` must justify: 'SESOI', 'bound', 'SESOI and accuracy margin' (None: nothing to justify)."""
        parts = (["bound"] if self.compare == "bound" else ["SESOI"] if self.sesoi > 0 else []) + \
            (["accuracy margin"] if self.ni_margin is not None else [])
        return " and ".join(parts) or None

    @property
    def family_member(self) -> bool:
        """In the multiplicity family: not a negative control, not a planted positive."""
        return not self.control and not self.planted

    @property
    def exploratory(self) -> bool:
        return self.paper_claim is None and not self.control and not self.planted

    def paired(self, treatment: "Side", reference: "Side | None", arms: dict) -> bool:
        """Whether this comparison is judged with the paired t: always for step0 and bound; for two arms
        when they share seeds (equal seed_offset: the same init and batch order), unless `test: welch`."""
        if self.compare != "arms" or reference is None:
            return True
        if self.test == "welch":
            return False
        return arms[treatment.arm].seed_offset == arms[reference.arm].seed_offset

    def comparisons(self) -> list[tuple[str, Side, Side | None]]:
        """(row id, treatment, reference) per verdict; reference None for step0 and bound claims."""
        if self.compare != "arms":
            return [(self.id, self.sides[0], None)]
        ref = self.sides[0]
        if len(self.sides) == 2:
            return [(self.id, self.sides[1], ref)]
        return [(f"{self.id}.{s.label}", s, ref) for s in self.sides[1:]]


@dataclass
class Dataset:
    name: str
    overrides: list[str]
    needs: str | None = None  # a dataset that must be found under data.root (fashion_mnist)
    root: bool = False        # data.root from the command line applies (a dataset read from disk)


@dataclass
class Suite:
    name: str
    path: Path
    seeds: list[int]
    arms: dict[str, Arm]
    claims: list[Claim]
    accuracy: Metric
    datasets: list[Dataset] = field(default_factory=list)
    header: str = ""
    alpha: float = 0.025  # one-sided level of every test (stats.ALPHA); the CI shown is (1 - 2 alpha)

    def used_arms(self) -> list[Arm]:
        names = []
        for claim in self.claims:
            for side in claim.sides:
                if side.arm not in names:
                    names.append(side.arm)
        return [self.arms[n] for n in names]


def suite_path(name: str, conf: Path) -> Path:
    """SUITE is a name under conf/study/ or a path to a YAML file."""
    given = Path(name)
    if given.suffix in (".yaml", ".yml") and given.is_file():
        return given
    path = conf / "study" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf / "study").glob("*.yaml"))
        raise ConfigError(f"no study suite {name!r}: choose one of {known} (conf/study/) or give a path to a suite YAML")
    return path


def _header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip() if line.startswith("# ") or line == "#" else line[1:])
    return "\n".join(lines)


def _metric(spec, where: str, base: dict | None = None) -> Metric:
    spec = {**(base or {}), **dict(spec or {})}
    unknown = set(spec) - set(METRIC_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown metric keys {sorted(unknown)}; use {list(METRIC_KEYS)}")
    for key in ("probe", "metric"):
        if not spec.get(key):
            raise ConfigError(f"{where}: the metric needs `{key}` (e.g. probe: sparsity, metric: activation_sparsity)")
    spec["layer"] = str(spec.get("layer", "avg"))
    return Metric(**spec)


def _window(spec, where: str, compare: str) -> Window:
    if spec in (None, "last"):
        return Window(1)
    if isinstance(spec, dict) and set(spec) == {"mean_last"} and int(spec["mean_last"]) >= 1:
        return Window(int(spec["mean_last"]))
    if isinstance(spec, dict) and set(spec) == {"every_from_step"} and int(spec["every_from_step"]) >= 0:
        if compare != "bound":
            raise ConfigError(f"{where}: window every_from_step is for bound claims (\"stays below/above\"); "
                              f"use `last` or {{mean_last: K}} for compare={compare}")
        return Window(1, int(spec["every_from_step"]))
    raise ConfigError(f"{where}: window is `last`, {{mean_last: K}} with K >= 1 or (bound claims) "
                      f"{{every_from_step: S}}, not {spec!r}")


# rows the trainer writes itself (train.py, modules/): probe -> metrics (None: not listed here)
TRAINER_ROWS = {"train": ("loss", "accuracy", "lr"), "eval": ("loss", "accuracy"), "modules": None}


def probe_metrics(probe: str):
    """(known, patterns): the metric names ``probe`` can emit as far as its code says, or None where that
    is not knowable (a metric name built at run time). Read from the probe class's declared
    ``metric_names`` if it has one, else from the literal names its code passes to ``layer_rows`` or
    writes as (split, metric, layer, value) rows (f-strings become patterns)."""
    import ast
    import inspect
    import re
    import textwrap

    from ..probes import PROBES, Probe

    if probe in TRAINER_ROWS:
        names = TRAINER_ROWS[probe]
        return None if names is None else (set(names), [])
    cls = PROBES[probe]
    declared = getattr(cls, "metric_names", None)
    if declared:
        return set(declared), []
    names, patterns = set(), []
    for klass in cls.__mro__:
        if klass is Probe or not issubclass(klass, Probe):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            return None
        for node in ast.walk(tree):
            arg = None
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "layer_rows":
                keyword = next((k.value for k in node.keywords if k.arg == "metric"), None)
                arg = node.args[1] if len(node.args) > 1 else keyword
            elif (isinstance(node, ast.Tuple) and len(node.elts) == 4
                  and isinstance(node.elts[1], (ast.Constant, ast.JoinedStr))
                  and isinstance(node.elts[2], ast.Constant) and node.elts[2].value == "avg"):
                arg = node.elts[1]
            else:
                continue
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value)
            elif isinstance(arg, ast.JoinedStr):
                patterns.append("".join(re.escape(v.value) if isinstance(v, ast.Constant) else ".+" for v in arg.values))
            else:
                return None  # a name computed at run time: not knowable from the code
    return (names, patterns) if names or patterns else None


def check_metric(metric: Metric, where: str) -> None:
    """A clear error for a probe or metric name no run can produce (with the nearest valid name)."""
    import difflib
    import re

    from ..probes import PROBES

    probes = sorted(PROBES) + sorted(TRAINER_ROWS)
    if metric.probe not in probes:
        near = difflib.get_close_matches(metric.probe, probes, n=1)
        raise ConfigError(f"{where}: probe {metric.probe!r} is not a registered probe"
                          + (f"; did you mean {near[0]!r}?" if near else "") + f" Known: {probes}")
    known = probe_metrics(metric.probe)
    if known is None:
        return
    names, patterns = known
    for name in filter(None, (metric.metric, metric.divide_by)):
        if name in names or any(re.fullmatch(p, name) for p in patterns):
            continue
        near = difflib.get_close_matches(name, sorted(names), n=1)
        raise ConfigError(f"{where}: probe {metric.probe!r} writes no metric {name!r}"
                          + (f"; did you mean {near[0]!r}?" if near else "")
                          + f" It writes {sorted(names) + patterns}")


def _resolve_arm(name: str, raw: dict, seen: tuple = ()) -> tuple[list[str], int, bool]:
    """(overrides, seed_offset, data auto?) of an arm, its bases' overrides first."""
    if name not in raw:
        raise ConfigError(f"arm {name!r} is not defined under `arms:`; defined: {sorted(raw)}")
    if name in seen:
        raise ConfigError(f"arms {' -> '.join(seen + (name,))} form a cycle of `base:`")
    spec = raw[name] or {}
    if isinstance(spec, list):
        spec = {"overrides": spec}
    unknown = set(spec) - {"base", "overrides", "seed_offset", "data"}
    if unknown:
        raise ConfigError(f"arm {name!r}: unknown keys {sorted(unknown)}; use base, overrides, seed_offset, data")
    overrides, offset, auto = [], 0, False
    if spec.get("base"):
        overrides, offset, auto = _resolve_arm(spec["base"], raw, seen + (name,))
    overrides = overrides + [str(o) for o in spec.get("overrides") or []]
    offset = int(spec.get("seed_offset", offset))
    auto = auto or spec.get("data") == "auto"
    return overrides, offset, auto


def load_suite(path: Path, seeds: list[int] | None = None) -> Suite:
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    where = path.name
    unknown = set(raw) - {"seeds", "accuracy", "datasets", "arms", "claims", "test", "alpha"}
    if unknown:
        raise ConfigError(f"{where}: unknown top-level keys {sorted(unknown)}; use seeds, accuracy, datasets, arms, "
                          f"claims, test, alpha")
    suite_test = raw.get("test")
    if suite_test not in (None, "paired", "welch"):
        raise ConfigError(f"{where}: test={suite_test!r}; choose paired (the default where arms share seeds) or welch")
    alpha = float(raw.get("alpha", 0.025))
    if not 0 < alpha < 0.5:
        raise ConfigError(f"{where}: alpha={alpha} is the one-sided level of each test (0.025: 95% CIs); "
                          f"give 0 < alpha < 0.5")
    seeds = list(seeds if seeds is not None else raw.get("seeds", [0, 1, 2]))
    if len(seeds) < 2:
        raise ConfigError(f"{where}: a study needs at least 2 seeds (3 or more to judge); got {seeds}")
    datasets = [Dataset(name=d["name"], overrides=[str(o) for o in d.get("overrides", [])], needs=d.get("needs"),
                        root=bool(d.get("root", False)))
                for d in raw.get("datasets") or []]
    arms_raw = raw.get("arms") or {}
    arms = {}
    for name in arms_raw:
        overrides, offset, auto = _resolve_arm(name, arms_raw)
        arms[name] = Arm(name, overrides, offset, data="auto" if auto else None)
    if any(a.data == "auto" for a in arms.values()) and not datasets:
        raise ConfigError(f"{where}: an arm says `data: auto` but the suite lists no `datasets:`")
    accuracy = _metric(raw.get("accuracy") or {"probe": "eval", "metric": "accuracy", "split": "test"}, f"{where}: accuracy")
    check_metric(accuracy, f"{where}: accuracy")
    claims = [_claim(c, arms, f"{where}: claim {i + 1}", suite_test) for i, c in enumerate(raw.get("claims") or [])]
    if not claims:
        raise ConfigError(f"{where}: no claims")
    ids = [row for c in claims for row, _, _ in c.comparisons()]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: claim ids repeat: {sorted({i for i in ids if ids.count(i) > 1})}")
    if not any(c.control for c in claims):
        raise ConfigError(f"{where}: every suite needs a negative-control claim (control: true) whose arms differ "
                          f"in nothing that matters")
    return Suite(name=path.stem, path=path, seeds=seeds, arms=arms, claims=claims, accuracy=accuracy,
                 datasets=datasets, header=_header(path), alpha=alpha)


def _claim(spec: dict, arms: dict[str, Arm], where: str, suite_test: str | None = None) -> Claim:
    spec = copy.deepcopy(spec)
    where = f"{where} ({spec.get('id', '?')})"
    if spec.get("compare") == "bound":
        spec.setdefault("sesoi", 0)
    for key in ("id", "paper_claim", "statement", "compare", "arms", "metric", "direction", "sesoi"):
        if key not in spec:
            hint = " (null for an exploratory claim)" if key == "paper_claim" else ""
            raise ConfigError(f"{where}: missing `{key}`{hint}")
    unknown = set(spec) - {"id", "paper_claim", "statement", "compare", "arms", "metric", "window", "direction",
                           "sesoi", "sesoi_unit", "bound", "control", "note", "test", "noninferiority", "baseline",
                           "why", "predict", "planted", "known_effect"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    compare = spec["compare"]
    if compare not in COMPARES:
        raise ConfigError(f"{where}: compare={compare!r}; choose one of {list(COMPARES)}")
    if spec["direction"] not in DIRECTIONS:
        raise ConfigError(f"{where}: direction={spec['direction']!r}; choose one of {list(DIRECTIONS)}")
    unit = spec.get("sesoi_unit", "difference")
    if unit not in UNITS:
        raise ConfigError(f"{where}: sesoi_unit={unit!r}; choose one of {list(UNITS)}")
    if float(spec["sesoi"]) < 0:
        raise ConfigError(f"{where}: sesoi must be >= 0 (its sign is the direction's)")
    if spec["compare"] == "bound" and float(spec["sesoi"]) != 0:
        raise ConfigError(f"{where}: a bound claim's margin is its bound (the SESOI is not added on top): set "
                          f"`bound:` to the smallest value that matters and drop `sesoi` (or sesoi: 0)")
    test = spec.get("test", suite_test)
    if test not in (None, "paired", "welch"):
        raise ConfigError(f"{where}: test={test!r}; choose paired or welch")
    ni = spec.get("noninferiority")
    ni_metric, ni_direction = None, "increase"
    if ni is not None:
        if (not isinstance(ni, dict) or "margin" not in ni or set(ni) - {"margin", "metric", "direction"}
                or float(ni["margin"]) < 0):
            raise ConfigError(f"{where}: noninferiority is {{margin: M}}, M >= 0 the accuracy a treatment may lose "
                              f"and still count as 'at equal accuracy' (e.g. 0.01); optionally with metric: "
                              f"{{probe, metric, split}} and direction: increase|decrease (the better side)")
        if compare != "arms":
            raise ConfigError(f"{where}: noninferiority compares the accuracy of two arms; it needs compare: arms")
        if ni.get("metric") is not None:
            ni_metric = _metric(ni["metric"], f"{where}: noninferiority")
            check_metric(ni_metric, f"{where}: noninferiority")
        ni_direction = ni.get("direction", "increase")
        if ni_direction not in DIRECTIONS:
            raise ConfigError(f"{where}: noninferiority direction={ni_direction!r} is the better side of its metric: "
                              f"increase (accuracy) or decrease (a loss)")
    baseline = spec.get("baseline", "step0")
    if baseline not in BASELINES:
        raise ConfigError(f"{where}: baseline={baseline!r}; choose step0 or first_finite (the first measured "
                          f"step with a finite value, for a ratio that is 0/0 at initialisation)")
    if baseline != "step0" and compare != "step0":
        raise ConfigError(f"{where}: baseline: {baseline} is for compare: step0 claims (emergence in training)")
    metric = _metric(spec["metric"], where)
    check_metric(metric, where)
    sides = []
    for entry in spec["arms"]:
        name, extra = (entry, None) if isinstance(entry, str) else (entry.get("arm"), entry.get("metric"))
        if name not in arms:
            raise ConfigError(f"{where}: arm {name!r} is not defined under `arms:`; defined: {sorted(arms)}")
        sides.append(Side(name, _metric(extra, where, base=vars(metric)) if extra else metric))
        if extra:
            check_metric(sides[-1].metric, where)
    repeated = len({s.arm for s in sides}) < len(sides)  # one arm, two metrics: name both sides by metric
    for side in sides:
        side._metric_differs = repeated or side.metric != metric
    want = "two or more" if compare == "arms" else "exactly one"
    if (compare == "arms" and len(sides) < 2) or (compare != "arms" and len(sides) != 1):
        raise ConfigError(f"{where}: compare={compare} takes {want} arms, got {len(sides)}")
    if compare == "bound" and spec.get("bound") is None:
        raise ConfigError(f"{where}: compare=bound needs `bound:` (the constant the window is compared with)")
    if test == "paired" and compare == "arms":
        offsets = {arms[s.arm].seed_offset for s in sides}
        if len(offsets) > 1:
            raise ConfigError(f"{where}: test: paired needs arms that share seeds; these have seed_offset "
                              f"{sorted(offsets)} (use test: welch)")
    predict = spec.get("predict", "effect")
    if predict not in PREDICTS:
        raise ConfigError(f"{where}: predict={predict!r}; choose effect (the theory predicts an effect beyond the SESOI: "
                          f"`supported` is its outcome) or no_effect (it predicts |effect| < SESOI: `no effect of "
                          f"interest` is its outcome)")
    if predict == "no_effect" and (compare == "bound" or float(spec["sesoi"]) <= 0):
        raise ConfigError(f"{where}: predict: no_effect needs a SESOI > 0 (equivalence within +-SESOI) and "
                          f"compare arms or step0")
    planted = bool(spec.get("planted", False))
    if planted and (compare != "arms" or spec.get("control")):
        raise ConfigError(f"{where}: planted: true marks a positive control (an arm whose effect is known in "
                          f"advance against its reference): it needs compare: arms and is not a negative control")
    known = spec.get("known_effect")
    if known is not None and not planted:
        raise ConfigError(f"{where}: known_effect is the effect a planted positive puts there by construction; "
                          f"set planted: true or drop it")
    why = str(spec.get("why") or "").strip()
    control = bool(spec.get("control", False))
    needs = ("bound" if compare == "bound" else "SESOI" if float(spec["sesoi"]) > 0 else None) or (
        "accuracy margin" if ni is not None else None)
    if needs and not why:
        raise ConfigError(f"{where}: missing `why:` for its {needs}: say why {_size_text(spec, compare)} is the "
                          f"size that matters, in units a reader can check (the paper's headline effect, the "
                          f"seed-to-seed SD, a measurement's resolution), e.g. why: \"10% = a third of the paper's "
                          f">= 36% headline\"")
    paper_claim = spec["paper_claim"]
    return Claim(id=str(spec["id"]), paper_claim=None if paper_claim is None else int(paper_claim),
                 statement=str(spec["statement"]),
                 compare=compare, sides=sides, metric=metric, window=_window(spec.get("window"), where, compare),
                 direction=spec["direction"], sesoi=float(spec["sesoi"]), sesoi_unit=unit,
                 bound=None if spec.get("bound") is None else float(spec["bound"]),
                 control=control, note=str(spec.get("note", "")), test=test,
                 ni_margin=None if ni is None else float(ni["margin"]), ni_metric=ni_metric,
                 ni_direction=ni_direction, baseline=baseline, why=why, predict=predict, planted=planted,
                 known_effect=None if known is None else float(known))


def _size_text(spec: dict, compare: str) -> str:
    if compare == "bound":
        return f"bound {spec.get('bound')}"
    if float(spec.get("sesoi", 0)) > 0:
        return f"sesoi {spec['sesoi']} ({spec.get('sesoi_unit', 'difference')})"
    return f"the accuracy margin {spec['noninferiority']['margin']}"
