"""Curvature of the training loss: the Hessian w.r.t. a chosen parameter set and w.r.t. the MLP
blocks' hidden features (estimators after PyHessian, Hutch++ and XTrace, with standard errors that
cover both the random vectors and the data).

Data: the first ``batches`` batches of the run's measurement set (probes/measurement.py: a seeded
selection of the training set recorded in ``<run>/measurement_batches.json``, the same at every
step, online and post hoc), the model in eval mode (no dropout noise, so each H is one
well-defined matrix; docs/paper.md §1.3). H_b is the Hessian of batch b's mean loss; H the mean of
the H_b. Nothing is written into ``.grad``.

Parameter set (``params``), the same default for every arm so arms are compared on one space:
  mlp        K and V weights and biases of every MLP site; under LoRA the *effective* weights
             (base + adapter delta, differentiated as one matrix)
  trainable  every parameter with requires_grad (what a vanilla, sparsified or LoRA arm trains)
  all        every parameter of the model

Rows (split 'train'; model-wide values on layer 'avg', per-site values on the site's index). Every
trace-like metric X comes with six rows, from per-batch estimates X_b (b = 1..k), their standard
errors over the random vectors se_b and those errors' degrees of freedom (two levels: vectors within
a batch, batches within the training set; ``two_level``):
  X             mean over batches of X_b: the estimate of E_batch[tr ...], the batch-size-B
                curvature of the training set
  X_se          the error w.r.t. the training set (the population the measurement set is drawn
                from): the between-batch standard error std_b(X_b) / sqrt(k), never below
                X_se_vectors; nan at batches: 1 (one batch cannot tell the others' spread: the
                batch-to-batch spread of the trace is of the order of its vector error, 46.2 vs 50.8
                on two batches of the default LN-MLP, issue 19)
  X_df          X_se's degrees of freedom, k - 1: draw intervals as X +- t_{X_df}(0.975) X_se
  X_se_vectors  sqrt(sum_b se_b^2) / k: the random vectors' part, the error w.r.t. the
                measurement set's own trace (its k batches, fixed: probes/measurement.py)
  X_df_vectors  its Welch-Satterthwaite degrees of freedom (inf where every batch's value is exact)
  X_se_batches  sqrt(X_se^2 - X_se_vectors^2): the data's part; nan where it cannot be estimated
                (batches: 1, or the k values spread less than their vector errors: X_se is then
                widened to X_se_vectors; never a silent 0)
The measurement set is the same at every step and in every arm that shares a seed: X_se is the
error of one value against the training set's, not the error of a difference between steps or arms
(their batch parts are shared; the vector parts are independent between measurements).
The metrics:
  trace (avg)                tr H_b by ``trace_estimator`` with ``samples`` Hessian-vector
                             products per batch (probes/trace_estimators.py): hutchinson (mean of
                             v.Hv over Rademacher v; se_b its standard error), hutchpp (Hutch++,
                             Meyer et al. 2021: the top of the spectrum from a sketch, exactly, plus
                             Hutchinson on the rest; se_b the rest's standard error) or xtrace
                             (XTrace, Epperly et al. 2024: leave-one-out sketches; se_b the jackknife
                             over its vectors, calibrated by simulation, issue 27). Hutch++/XTrace keep ~samples/3 (samples/2) vectors of
                             the parameters' size in memory
  block_trace (site i)       tr of H_b's diagonal block of site i: Hutchinson with ``block_samples``
                             Rademacher vectors per site and batch, each zero off site i's
                             parameters (v_i.(H v_i)_i: no cross terms from the other sites, one
                             product per vector and site). With ``mlp`` the blocks partition the
                             set, so their sum estimates ``trace`` (independently of it).
                             ``site_vectors: shared``: one vector over all sites per product
                             instead, z_i = v_i.(H v)_i (cross terms v_i.H_ij v_j of mean 0 from
                             the other sites: unbiased, a larger SE per vector, but one product
                             serves every site: at equal products the cheaper choice where the
                             cross terms are small; see full.yaml)
  lambda_max                 the largest algebraic eigenvalue of H (the mean over the batches)
  top_abs_eigenvalue         the eigenvalue of largest magnitude (what power iteration finds;
                             negative where H's most curved direction is concave). Both by Lanczos
                             (scipy's ARPACK eigsh on a LinearOperator of Hessian-vector products,
                             ``iterations`` restarts of ``krylov`` vectors at most, relative
                             accuracy ``tol``)
  feature_input_trace, feature_preact_trace   (site i, and 'avg' = mean over sites)
                             curvature w.r.t. hidden features, ``features: true``: for the key's
                             input x (block input after its norm) and the key's output
                             (pre-activation) h of site i, with x_t the feature vector of token t
                             (one row of the feature tensor; a sample for the MLP, a position of a
                             sample for a transformer), the estimate of
                                 (1 / T) sum_t tr d^2(B L_b) / dx_t^2
                             over the T tokens of batch b, B being its number of samples (its
                             first dimension) and L_b its mean loss: exactly the one-site
                             quantity, the Hessian w.r.t. that one feature tensor with everything
                             else fixed. B L_b is the sum of per-sample losses, so for a model whose
                             samples do not interact (eval mode) the value does not depend on the
                             batch size: for the MLP it is the mean over samples of tr of the
                             Hessian of the sample's own loss w.r.t. its feature vector.
                             Estimator: a zero offset d is added to every feature tensor
                             (probes/feature_offsets.py; all sites at once, so each feature's
                             downstream path is the model's own, and at d = 0 the function is the
                             model's); ``feature_samples`` Rademacher vectors u per site, place and
                             batch over that one offset tensor only (zero on the others), z = B
                             u.(H u) / T: E z = sum of the diagonal / T = mean over tokens of tr of
                             token t's block, with the variance of a one-site estimate (no cross
                             terms from the other sites' vectors). One product per vector, site and
                             place: 2 x sites x feature_samples products per batch (``site_vectors:
                             shared``: u over all offset tensors at once, one product per vector,
                             cross terms of mean 0 in each site's z).

Speed: one forward and one create_graph backward per batch build the gradient graph; every
Hessian-vector product is a backward through that graph, the Hutchinson vectors in blocks of
``block`` at once (``is_grads_batched``; ``block: null`` sizes it on CUDA from ``memory_mb`` and
the graph's saved tensors, and takes one at a time on the CPU, where batching gains nothing). The vectors come from one local generator in a fixed order (sample by
sample, parameter by parameter), so the block size does not change any value. Vectors for the trace first
(batch by batch), then the per-site block vectors (site by site, batch by batch), the Lanczos start,
the feature vectors (batch by batch, site by site). A standalone measurement (``measure_every``,
``at_end``, post hoc), deterministic given the seed and step.
"""
from __future__ import annotations

import math
import warnings
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import ConfigError
from .base import Probe
from .feature_offsets import FeatureOffsets
from .measurement import measurement
from .standalone import fixed_objective, local_generator
from .trace_estimators import ESTIMATORS, estimate_trace

PARAM_SETS = ("mlp", "trainable", "all")
SITE_VECTORS = ("separate", "shared")


# --- the variables the Hessian is taken w.r.t. ---------------------------------------------------
def _lora_base(module):
    """The wrapped linear of a LoRA-adapted module (peft), None for a plain module."""
    if hasattr(module, "get_base_layer") and hasattr(module, "get_delta_weight"):
        return module.get_base_layer()
    return None


@contextmanager
def parameter_variables(model, sites, which: str):
    """Yields (variables, blocks): the leaf tensors to differentiate and, per site index, the
    positions in ``variables`` of that site's parameters. Plain parameters are their own leaves
    (requires_grad switched on for the measurement where needed); a LoRA-adapted K or V under
    ``mlp`` is replaced, by a forward hook, with a linear of leaf copies of its effective weight and
    bias, so the Hessian is w.r.t. the matrix the model applies."""
    if which not in PARAM_SETS:
        raise ConfigError(f"probes.hessian.params={which!r}; choose one of {list(PARAM_SETS)}")
    variables, blocks, hooks, flips = [], {}, [], []
    owner = {}  # id(parameter) -> site index, for the per-site blocks of 'all'/'trainable'
    if which == "mlp":
        from ..sites import effective_weight

        for site in sites:
            for part in site.linears():  # key, (up,) (value)
                module = site.part(part)
                if module is None:
                    continue
                base = _lora_base(module)
                if base is None:
                    params = [p for p in (module.weight, getattr(module, "bias", None)) if p is not None]
                else:
                    w = effective_weight(module).detach().clone().requires_grad_(True)
                    b = None if base.bias is None else base.bias.detach().clone().requires_grad_(True)
                    hooks.append(module.register_forward_hook(
                        lambda m, args, out, w=w, b=b: F.linear(args[0], w, b)))
                    params = [w] + ([b] if b is not None else [])
                for p in params:
                    blocks.setdefault(site.index, []).append(len(variables))
                    variables.append(p)
    else:
        for site in sites:
            for part in site.linears():  # key, (up,) (value)
                module = site.part(part)
                if module is not None:
                    for p in module.parameters():
                        owner.setdefault(id(p), site.index)
        for p in model.parameters():
            if which == "trainable" and not p.requires_grad:
                continue
            if id(p) in owner:
                blocks.setdefault(owner[id(p)], []).append(len(variables))
            variables.append(p)
    for p in variables:
        if not p.requires_grad:
            p.requires_grad_(True)
            flips.append(p)
    try:
        yield variables, blocks
    finally:
        for h in hooks:
            h.remove()
        for p in flips:
            p.requires_grad_(False)


# --- Hessian-vector products from one gradient graph --------------------------------------------
class HessianProducts:
    """H V for the Hessian of ``losses`` w.r.t. ``variables``; the gradient graph of each loss (one
    per measurement batch) is built once (create_graph) and every product is one backward through
    it (retain_graph). ``vs`` is a list of tensors shaped [k, *variable.shape]: k products in one
    batched backward; ``part`` b: the Hessian of loss b, None: of the mean of the losses."""

    def __init__(self, losses, variables: list):
        self.variables = variables
        losses = [losses] if isinstance(losses, torch.Tensor) else list(losses)
        self.live, self.grads = [], []
        for loss in losses:
            grads = torch.autograd.grad(loss, variables, create_graph=True, allow_unused=True)
            # a gradient without graph (the loss is linear or constant in that variable) has zero Hessian rows
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            self.live.append(live)
            self.grads.append([grads[i] for i in live])
        self.batched = True

    @property
    def parts(self) -> int:
        return len(self.grads)

    def __call__(self, vs: list, part: int | None = None) -> list:
        if part is None and self.parts > 1:
            out = self(vs, 0)
            for b in range(1, self.parts):
                for o, h in zip(out, self(vs, b)):
                    o.add_(h)
            for o in out:
                o.div_(self.parts)
            return out
        part = 0 if part is None else part
        k = vs[0].shape[0]
        out = [torch.zeros((k, *v.shape), dtype=v.dtype, device=v.device) for v in self.variables]
        grads, live = self.grads[part], self.live[part]
        if not grads:
            return out
        cot = [vs[i] for i in live]
        hv = None
        if self.batched and k > 1:
            try:
                hv = torch.autograd.grad(grads, self.variables, grad_outputs=cot, retain_graph=True,
                                         allow_unused=True, is_grads_batched=True)
            except RuntimeError:  # an op without a batching rule: one product at a time
                self.batched = False
        if hv is None:
            per = [torch.autograd.grad(grads, self.variables, grad_outputs=[c[j] for c in cot],
                                       retain_graph=True, allow_unused=True) for j in range(k)]
            hv = [None if per[0][i] is None else torch.stack([p[i] for p in per]) for i in range(len(self.variables))]
        for o, h in zip(out, hv):
            if h is not None:
                o.copy_(h.detach())
        return out


def _graph_bytes(build):
    """(result of ``build()``, bytes of the tensors autograd saved while building it): what one
    more vector in a batched product costs, to first order."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = build()
    return out, total[0]


def block_size(block, memory_mb, saved_bytes: int, samples: int, device) -> int:
    """Hutchinson vectors per batched product: ``block`` when given; else on CUDA as many as the
    memory budget holds at ~2x the graph's saved tensors per vector (``memory_mb``, default 1/4 of
    the free device memory), and one on the CPU unless ``memory_mb`` is set (one CPU thread is
    compute-bound: batching the products measured no faster there, larger blocks slower)."""
    if block:
        return max(1, min(int(block), samples))
    if memory_mb is None:
        if device.type != "cuda":
            return 1
        memory_mb = torch.cuda.mem_get_info(device)[0] / 4 / 2**20
    per_vector = max(1, 2 * saved_bytes)
    return max(1, min(samples, int(memory_mb * 2**20 // per_vector)))


def rademacher(shapes, gen: torch.Generator, like: list) -> list:
    """One Rademacher vector per shape, drawn in order from ``gen`` (CPU) then moved."""
    return [(torch.randint(0, 2, s, generator=gen) * 2 - 1).to(t.device, t.dtype) for s, t in zip(shapes, like)]


def hutchinson(products: HessianProducts, tensors: list, samples: int, block: int, gen,
               support: list | None = None, part: int | None = None) -> torch.Tensor:
    """z[s, i] = v_s,i . (H v_s)_i for sample s and variable i (float64, CPU): v_s Rademacher over
    the variables of ``support`` (positions in ``tensors``; all when None; zero on the others),
    drawn sample by sample, variable by variable. Sums of z over variables of the support estimate
    that diagonal block's trace. ``part``: which batch's Hessian (``HessianProducts``)."""
    support = list(range(len(tensors))) if support is None else list(support)
    shapes = [tensors[i].shape for i in support]
    like = [tensors[i] for i in support]
    rows = []
    for start in range(0, samples, block):
        draws = [rademacher(shapes, gen, like) for _ in range(start, min(samples, start + block))]
        k = len(draws)
        vs = [torch.zeros((k, *t.shape), dtype=t.dtype, device=t.device) for t in tensors]
        for j, i in enumerate(support):
            vs[i] = torch.stack([d[j] for d in draws])
        hv = products(vs, part)
        z = torch.zeros((k, len(tensors)), dtype=torch.float64)
        for i in support:
            z[:, i] = (vs[i] * hv[i]).flatten(1).double().sum(1).cpu()
        rows.append(z)
    return torch.cat(rows) if rows else torch.zeros((0, len(tensors)), dtype=torch.float64)


def mean_se(z: torch.Tensor) -> tuple[float, float, float]:
    """Mean of the per-vector estimates, its standard error and that error's degrees of freedom
    (n - 1; nan below two vectors)."""
    n = z.numel()
    mean = float(z.mean()) if n else float("nan")
    se = float(z.std(correction=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, se, float(n - 1) if n > 1 else float("nan")


def satterthwaite(ses, dfs) -> float:
    """Welch-Satterthwaite degrees of freedom of sqrt(sum se_i^2): (sum se_i^2)^2 / sum se_i^4 /
    df_i (inf where every part is exact, se_i = 0, or has infinitely many)."""
    if any(math.isnan(se) or (se > 0 and not df > 0) for se, df in zip(ses, dfs)):
        return float("nan")
    num = sum(se**2 for se in ses) ** 2
    den = sum(se**4 / df for se, df in zip(ses, dfs) if se > 0 and math.isfinite(df))
    return num / den if den > 0 else float("inf")


def two_level(estimates: list) -> tuple:
    """(value, se, df, se_vectors, df_vectors, se_batches) from per-batch (estimate, vector
    standard error, its df) triples of the k batches of the measurement set, a seeded draw of k
    batches from the training set:

    value       the mean of the k estimates
    se_vectors  sqrt(sum se_b^2) / k: the random vectors' part, the error w.r.t. the measurement
                set's own trace (the mean of its k batches' traces); df_vectors its
                Welch-Satterthwaite degrees of freedom
    se          the error w.r.t. the training set's trace (the expected trace of a batch drawn
                from the training set, the population the measurement set was drawn from): the
                between-batch standard error std(estimates) / sqrt(k), which covers both the
                batches and the vectors (each batch's estimate varies by its batch and by its
                vectors), df = k - 1; never below se_vectors (where the k estimates happen to
                spread less than their vector errors the total is widened to se_vectors, with
                the same df = k - 1). nan at k = 1: one batch says nothing about the others
    se_batches  the data's part sqrt(between^2 - se_vectors^2), nan where it cannot be estimated:
                k = 1, or the between-batch spread fell below the vector part (issue 27: never a
                silent 0)

    Intervals: value +- t_{df}(0.975) se (a t quantile, not 1.96). The measurement set is the same
    at every step and in every arm sharing a seed, so se is the error of one value against the
    training set's, not of a difference between steps or arms (the batches' part of the error is
    shared by them; the vectors' part is independent between measurements)."""
    estimates = [tuple(e) + (float("nan"),) * (3 - len(e)) for e in estimates]
    values = torch.tensor([e[0] for e in estimates], dtype=torch.float64)
    k = len(values)
    value = float(values.mean())
    ses, dfs = [e[1] for e in estimates], [e[2] for e in estimates]
    se_vectors = math.sqrt(sum(se**2 for se in ses)) / k
    df_vectors = satterthwaite(ses, dfs)
    nan = float("nan")
    if k < 2:
        return value, nan, nan, se_vectors, df_vectors, nan
    between = float(values.std(correction=1)) / math.sqrt(k)
    if between >= se_vectors:
        return value, between, float(k - 1), se_vectors, df_vectors, math.sqrt(between**2 - se_vectors**2)
    return value, se_vectors, float(k - 1), se_vectors, df_vectors, nan


SE_PARTS = ("", "_se", "_df", "_se_vectors", "_df_vectors", "_se_batches")


def se_rows(metric: str, layer, parts: tuple) -> list:
    return [("train", f"{metric}{suffix}", layer, v) for suffix, v in zip(SE_PARTS, parts)]


class FlatProducts:
    """The products of one batch's Hessian (``part``) on flat vectors: rows [m, n] -> rows [m, n],
    in blocks of ``block`` vectors; ``draw(m)`` gives m Rademacher rows from ``gen`` in the
    documented order (vector by vector, variable by variable)."""

    def __init__(self, products: HessianProducts, tensors: list, block: int, gen, part: int | None = None):
        self.products, self.tensors, self.block, self.gen, self.part = products, tensors, max(1, block), gen, part
        self.shapes = [t.shape for t in tensors]
        self.sizes = [t.numel() for t in tensors]
        self.n = sum(self.sizes)
        self.dtype, self.device = tensors[0].dtype, tensors[0].device

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, X.shape[0], self.block):
            chunk = X[start:start + self.block].to(self.dtype)
            k = chunk.shape[0]
            vs = [c.reshape(k, *s) for c, s in zip(chunk.split(self.sizes, dim=1), self.shapes)]
            out.append(torch.cat([h.reshape(k, -1) for h in self.products(vs, self.part)], 1))
        return torch.cat(out) if out else X.new_zeros((0, self.n))

    def draw(self, m: int) -> torch.Tensor:
        rows = [torch.cat([r.reshape(-1) for r in rademacher(self.shapes, self.gen, self.tensors)]) for _ in range(m)]
        return torch.stack(rows) if rows else torch.zeros((0, self.n), dtype=self.dtype, device=self.device)


def trace_estimate(method: str, products: HessianProducts, tensors: list, samples: int, block: int, gen,
                   part: int | None = None) -> tuple[float, float, float]:
    """(estimate, error, df) of the trace of batch ``part``'s Hessian with ``samples`` products by
    ``method`` (probes/trace_estimators.py); Hutchinson streams its vectors block by block."""
    if method == "hutchinson":
        return mean_se(hutchinson(products, tensors, samples, block, gen, part=part).sum(1))
    flat = FlatProducts(products, tensors, block, gen, part)
    return estimate_trace(method, flat, flat.draw, samples, flat.n, flat.block, flat.dtype, flat.device)


def extreme_eigenvalues(products: HessianProducts, iterations: int, tol: float, gen,
                        krylov: int = 6) -> tuple[float, float]:
    """(lambda_max, top_abs_eigenvalue) of H by Lanczos (ARPACK eigsh on a LinearOperator), the
    start vector drawn from ``gen``. The largest-magnitude eigenvalue first ('LM'); when it is
    positive it is also the largest algebraic one, else a second run finds that ('LA'). Each run
    converges fast where its end of the spectrum is separated, unlike one run for both ends.
    ``krylov`` Lanczos vectors per restart (ARPACK's ncv; its default 20 spent 21 products where 6
    spent 7 for the same lambda_max to 3e-7 on the default LN-MLP)."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

    tensors = products.variables
    sizes = [t.numel() for t in tensors]
    n = sum(sizes)
    start = torch.cat([torch.randn(t.shape, generator=gen).reshape(-1) for t in tensors]).double().numpy()

    def matvec(x):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1))
        vs = [c.reshape(1, *t.shape).to(t.device, t.dtype) for c, t in zip(x.split(sizes), tensors)]
        return torch.cat([h.reshape(-1).double().cpu() for h in products(vs)]).numpy()

    if n <= 2:  # ARPACK needs k < n: the exact spectrum from the n columns of H
        eig = np.linalg.eigvalsh(np.stack([matvec(e) for e in np.eye(n)], 1))
        return float(eig[-1]), float(eig[np.argmax(np.abs(eig))])
    op = LinearOperator((n, n), matvec=matvec, dtype=np.float64)

    def one(which):
        try:
            return float(eigsh(op, k=1, which=which, v0=start, tol=tol, maxiter=max(1, int(iterations)),
                               ncv=min(n, max(2, int(krylov))), return_eigenvectors=False)[0])
        except ArpackNoConvergence as exc:
            warnings.warn(f"hessian: Lanczos ({which}) did not converge in {iterations} restarts; "
                          f"raise probes.hessian.iterations or tol")
            found = np.asarray(exc.eigenvalues)
            return float(found[0]) if len(found) else float("nan")
        except ArpackError as exc:
            # ARPACK -9: H v0 = 0 for the random start vector, so (almost surely) H = 0 on these
            # parameters, e.g. at step 0 of a model whose head is initialised to zero (torchvision's
            # ViT): nothing to find, and the rows say so with the exact eigenvalue 0
            if "error -9:" not in str(exc) or np.any(matvec(start)):  # scipy keeps the code only in the message
                raise
            warnings.warn("hessian: H v = 0 for a random v (the Hessian on these parameters is zero, e.g. a "
                          "zero-initialised head at step 0): lambda_max and top_abs_eigenvalue written as 0")
            return 0.0

    top = one("LM")
    return (top if top >= 0 else one("LA")), top


class HessianProbe(Probe):
    name = "hessian"
    # every trace X with X_se (total, w.r.t. the training set) and its X_df, X_se_vectors (random vectors, w.r.t.
    # the measurement set) and its X_df_vectors, X_se_batches (data)
    metrics = tuple(f"{m}{se}" for m in ("trace", "block_trace", "feature_input_trace", "feature_preact_trace")
                    for se in SE_PARTS) + ("lambda_max", "top_abs_eigenvalue")

    def __init__(self, sites, batches: int = 1, samples: int = 20, iterations: int = 50, tol: float = 1e-3,
                 krylov: int = 6, params: str = "mlp", trace_estimator: str = "hutchinson",
                 block_samples: int | None = None, site_vectors: str = "separate", features: bool = True,
                 feature_samples: int | None = None, block: int | None = None, memory_mb: float | None = None, **kw):
        super().__init__(sites, **kw)
        if params not in PARAM_SETS:
            raise ConfigError(f"probes.hessian.params={params!r}; choose one of {list(PARAM_SETS)}")
        if trace_estimator not in ESTIMATORS:
            raise ConfigError(f"probes.hessian.trace_estimator={trace_estimator!r}; choose one of {list(ESTIMATORS)}")
        least = {"hutchinson": 1, "hutchpp": 3, "xtrace": 4}[trace_estimator]
        if int(samples) < least or int(batches) < 1:
            raise ConfigError(f"probes.hessian: trace_estimator={trace_estimator} needs samples >= {least} products "
                              f"per batch (got {samples}) and batches >= 1 (got {batches})")
        self.batches, self.samples, self.iterations, self.tol = int(batches), int(samples), int(iterations), float(tol)
        self.krylov, self.params, self.features = int(krylov), params, bool(features)
        self.trace_estimator = trace_estimator
        if site_vectors not in SITE_VECTORS:
            raise ConfigError(f"probes.hessian.site_vectors={site_vectors!r}; choose one of {list(SITE_VECTORS)}")
        self.separate = site_vectors == "separate"
        self.block_samples = self.samples if block_samples is None else int(block_samples)
        self.feature_samples = self.samples if feature_samples is None else int(feature_samples)
        self.block, self.memory_mb = block, memory_mb

    def _losses(self, model, task, batches) -> list:
        # fused attention kernels have no double backward; the math kernel does (ViT, T5)
        with sdpa_kernel(SDPBackend.MATH):
            return [task(model, b, train=True)[0] for b in batches]

    def parameter_rows(self, model, task, batches, gen, device) -> list:
        k = len(batches)
        with parameter_variables(model, self.sites, self.params) as (variables, blocks):
            products, saved = _graph_bytes(lambda: HessianProducts(self._losses(model, task, batches), variables))
            saved //= k  # a product is a backward through one batch's graph
            block = block_size(self.block, self.memory_mb, saved, max(1, self.samples, self.block_samples), device)
            traces = [trace_estimate(self.trace_estimator, products, variables, self.samples, block, gen, part=b)
                      for b in range(k)]
            per_site = {}
            if self.block_samples > 0 and self.separate:  # each site its own vectors (zero off it): no cross terms
                for i, cols in sorted(blocks.items()):
                    per_site[i] = [mean_se(hutchinson(products, variables, self.block_samples, block, gen,
                                                      support=cols, part=b).sum(1)) for b in range(k)]
            elif self.block_samples > 0:  # one vector over every site per product, split by site afterwards
                z = [hutchinson(products, variables, self.block_samples, block, gen, part=b) for b in range(k)]
                per_site = {i: [mean_se(zb[:, cols].sum(1)) for zb in z] for i, cols in sorted(blocks.items())}
            lambda_max, top = extreme_eigenvalues(products, self.iterations, self.tol, gen, self.krylov)
        out = se_rows("trace", "avg", two_level(traces))
        for i, estimates in per_site.items():
            out += se_rows("block_trace", i, two_level(estimates))
        out += [("train", "lambda_max", "avg", lambda_max), ("train", "top_abs_eigenvalue", "avg", top)]
        return out

    def feature_rows(self, model, task, batches, gen, device) -> list:
        offsets = FeatureOffsets(self.sites, ("input", "preact"), leaves=True)
        keys = [(s.index, where) for where in ("input", "preact") for s in self.sites]
        per_batch = []  # per batch: key -> (estimate, standard error over its vectors)
        with ExitStack() as stack:
            offsets.attach(stack)
            for b in batches:
                offsets.offsets = {}
                rows = b[0].shape[0]
                with sdpa_kernel(SDPBackend.MATH):
                    loss = task(model, b, train=True)[0] * rows  # B L: the sum of per-sample losses
                found = [k for k in keys if k in offsets.offsets]
                tensors = [offsets.offsets[k] for k in found]
                products, saved = _graph_bytes(lambda: HessianProducts(loss, tensors))
                block = block_size(self.block, self.memory_mb, saved, max(1, self.feature_samples), device)
                got = {}
                shared = None if self.separate else hutchinson(products, tensors, self.feature_samples, block, gen)
                for j, key in enumerate(found):  # each site and place its own vectors (separate)
                    tokens = tensors[j].numel() / tensors[j].shape[-1]
                    z = shared[:, j] if shared is not None else \
                        hutchinson(products, tensors, self.feature_samples, block, gen, support=[j])[:, j]
                    got[key] = mean_se(z / tokens)
                    got[("z", *key)] = z / tokens
                per_batch.append(got)
                del products, loss
        out = []
        for where in ("input", "preact"):
            metric = f"feature_{where}_trace"
            sites = [s.index for s in self.sites if all((s.index, where) in pb for pb in per_batch)]
            for i in sites:
                out += se_rows(metric, i, two_level([pb[(i, where)] for pb in per_batch]))
            if sites and self.separate:  # the mean over sites per batch (independent vectors per site), then batches
                means = [(sum(pb[(i, where)][0] for i in sites) / len(sites),
                          math.sqrt(sum(pb[(i, where)][1] ** 2 for i in sites)) / len(sites),
                          satterthwaite([pb[(i, where)][1] for i in sites], [pb[(i, where)][2] for i in sites]))
                         for pb in per_batch]
                out += se_rows(metric, "avg", two_level(means))
            elif sites:  # shared vectors: the sites' estimates are correlated, the mean's SE from per-vector means
                means = [mean_se(torch.stack([pb[("z", i, where)] for i in sites]).mean(0)) for pb in per_batch]
                out += se_rows(metric, "avg", two_level(means))
        return out

    def measure(self, ctx):
        gen = local_generator(ctx.seed, ctx.step)
        with measurement(ctx, self.batches) as batches:
            ctx.model.eval()
            task = fixed_objective(ctx.task)
            out = self.parameter_rows(ctx.model, task, batches, gen, ctx.device)
            if self.features:
                out += self.feature_rows(ctx.model, task, batches, gen, ctx.device)
        return out
