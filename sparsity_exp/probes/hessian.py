"""Curvature of the training loss: the Hessian w.r.t. a chosen parameter set and w.r.t. the MLP
blocks' hidden features (estimators after PyHessian, with standard errors).

The objective is the mean training loss L over ``batches`` fixed training batches, the model in
eval mode (no dropout noise, so H is one well-defined matrix). Nothing is written into ``.grad``.

Parameter set (``params``), the same default for every arm so arms are compared on one space:
  mlp        K and V weights and biases of every MLP site; under LoRA the *effective* weights
             (base + adapter delta, differentiated as one matrix)
  trainable  every parameter with requires_grad (what a vanilla, sparsified or LoRA arm trains)
  all        every parameter of the model

Rows (split 'train'; model-wide values on layer 'avg', per-site values on the site's index):
  trace, trace_se            Hutchinson estimate of tr H over ``samples`` Rademacher vectors v:
                             mean of z = v.Hv, and its standard error std(z) / sqrt(samples)
  block_trace(_se)  (site i) the same vectors' v_i.(Hv)_i, v_i being the part of v on site i's
                             parameters: the trace of H's diagonal block of site i (``mlp``: the
                             blocks partition the set, so they sum to ``trace``)
  lambda_max                 the largest algebraic eigenvalue of H
  top_abs_eigenvalue         the eigenvalue of largest magnitude (what power iteration finds;
                             negative where H's most curved direction is concave). Both by Lanczos
                             (scipy's ARPACK eigsh on a LinearOperator of Hessian-vector products,
                             ``iterations`` restarts of ``krylov`` vectors at most, relative
                             accuracy ``tol``)
  feature_input_trace(_se), feature_preact_trace(_se)   (site i and layer 'avg' = mean over sites)
                             curvature w.r.t. hidden features, ``features: true``: for the key's
                             input x (block input after its norm) and the key's output
                             (pre-activation) h of site i, with x_t the feature vector of token t
                             (one row of the feature tensor; a sample for the MLP, a position of a
                             sample for a transformer), the estimate of
                                 (1 / T) sum_t tr d^2(B L) / dx_t^2
                             over the T tokens of a batch, B being the batch's number of samples
                             (its first dimension) and L the batch-mean objective. B L is the sum
                             of per-sample losses, so for a model where samples do not interact
                             (eval mode) the value does not depend on the batch size: for the
                             MLP it is the mean over samples of tr of the Hessian of the
                             sample's own loss w.r.t. its feature vector. Estimator: a zero
                             offset d is added to every feature tensor (all sites at once, so each
                             feature's downstream path is the model's own); Rademacher u over
                             the whole offset tensor of site i, z = B u.(H u) / T, Hessians at
                             d = 0; E[u.Hu] = sum of the diagonal = sum_t tr of token t's block.
                             ``feature_samples`` vectors (default ``samples``); with several
                             batches the per-vector estimates are averaged over batches.

Speed: one forward and one create_graph backward per batch build the gradient graph; every
Hessian-vector product is a backward through that graph, the Hutchinson vectors in blocks of
``block`` at once (``is_grads_batched``; ``block: null`` sizes it on CUDA from ``memory_mb`` and
the graph's saved tensors, and takes one at a time on the CPU, where batching gains nothing). The vectors come from one local generator in a fixed order (sample by
sample, parameter by parameter), so the block size does not change any value. A standalone
measurement (``measure_every``, ``at_end``, post hoc), deterministic given the seed and step.
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
from .standalone import fixed_objective, local_generator, preserved, take_batches

PARAM_SETS = ("mlp", "trainable", "all")


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
            for part in ("key", "value"):
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
            for part in ("key", "value"):
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
    """H V for the Hessian of ``loss`` w.r.t. ``variables``; the gradient graph is built once
    (create_graph) and every product is one backward through it (retain_graph). ``vs`` is a list
    of tensors shaped [k, *variable.shape]: k products in one batched backward."""

    def __init__(self, loss: torch.Tensor, variables: list):
        self.variables = variables
        grads = torch.autograd.grad(loss, variables, create_graph=True, allow_unused=True)
        # a gradient without graph (the loss is linear or constant in that variable) has zero Hessian rows
        self.live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        self.grads = [grads[i] for i in self.live]
        self.batched = True

    def __call__(self, vs: list) -> list:
        k = vs[0].shape[0]
        out = [torch.zeros((k, *v.shape), dtype=v.dtype, device=v.device) for v in self.variables]
        if not self.grads:
            return out
        cot = [vs[i] for i in self.live]
        hv = None
        if self.batched and k > 1:
            try:
                hv = torch.autograd.grad(self.grads, self.variables, grad_outputs=cot, retain_graph=True,
                                         allow_unused=True, is_grads_batched=True)
            except RuntimeError:  # an op without a batching rule: one product at a time
                self.batched = False
        if hv is None:
            per = [torch.autograd.grad(self.grads, self.variables, grad_outputs=[c[j] for c in cot],
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


def hutchinson(products: HessianProducts, tensors: list, samples: int, block: int, gen) -> torch.Tensor:
    """z[s, i] = v_s,i . (H v_s)_i for sample s and variable i (float64, CPU): v_s Rademacher over
    all variables at once; sums of z over any set of variables estimate that diagonal block's trace."""
    shapes = [t.shape for t in tensors]
    rows = []
    for start in range(0, samples, block):
        draws = [rademacher(shapes, gen, tensors) for _ in range(start, min(samples, start + block))]
        vs = [torch.stack([d[i] for d in draws]) for i in range(len(tensors))]
        hv = products(vs)
        rows.append(torch.stack([(v * h).flatten(1).double().sum(1) for v, h in zip(vs, hv)], 1).cpu())
    return torch.cat(rows) if rows else torch.zeros((0, len(tensors)), dtype=torch.float64)


def mean_se(z: torch.Tensor) -> tuple[float, float]:
    """Mean of the per-vector estimates and its standard error (nan below two vectors)."""
    n = z.numel()
    mean = float(z.mean()) if n else float("nan")
    se = float(z.std(correction=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, se


def extreme_eigenvalues(products: HessianProducts, iterations: int, tol: float, gen,
                        krylov: int = 6) -> tuple[float, float]:
    """(lambda_max, top_abs_eigenvalue) of H by Lanczos (ARPACK eigsh on a LinearOperator), the
    start vector drawn from ``gen``. The largest-magnitude eigenvalue first ('LM'); when it is
    positive it is also the largest algebraic one, else a second run finds that ('LA'). Each run
    converges fast where its end of the spectrum is separated, unlike one run for both ends.
    ``krylov`` Lanczos vectors per restart (ARPACK's ncv; its default 20 spent 21 products where 6
    spent 7 for the same lambda_max to 3e-7 on the default LN-MLP)."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

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

    top = one("LM")
    return (top if top >= 0 else one("LA")), top


# --- offsets on the hidden features -------------------------------------------------------------
class FeatureOffsets:
    """Adds a zero leaf offset to each site's key input ('input') and key output ('preact') during
    a forward, so the loss can be differentiated w.r.t. the features where they are."""

    def __init__(self, sites):
        self.sites = sites
        self.offsets: dict = {}  # (site index, where) -> leaf offset of this forward

    def _leaf(self, key, x):
        d = torch.zeros_like(x, requires_grad=True)
        self.offsets[key] = d
        return x + d

    def attach(self, stack: ExitStack):
        for s in self.sites:
            h = s.key.register_forward_pre_hook(lambda m, args, i=s.index: (self._leaf((i, "input"), args[0]), *args[1:]))
            stack.callback(h.remove)
            h = s.key.register_forward_hook(lambda m, args, out, i=s.index: self._leaf((i, "preact"), out))
            stack.callback(h.remove)


class HessianProbe(Probe):
    name = "hessian"
    metrics = ("trace", "trace_se", "block_trace", "block_trace_se", "lambda_max", "top_abs_eigenvalue",
               "feature_input_trace", "feature_input_trace_se", "feature_preact_trace", "feature_preact_trace_se")

    def __init__(self, sites, batches: int = 1, samples: int = 20, iterations: int = 50, tol: float = 1e-3,
                 krylov: int = 6, params: str = "mlp", features: bool = True, feature_samples: int | None = None,
                 block: int | None = None, memory_mb: float | None = None, **kw):
        super().__init__(sites, **kw)
        if params not in PARAM_SETS:
            raise ConfigError(f"probes.hessian.params={params!r}; choose one of {list(PARAM_SETS)}")
        self.batches, self.samples, self.iterations, self.tol = int(batches), int(samples), int(iterations), float(tol)
        self.krylov, self.params, self.features = int(krylov), params, bool(features)
        self.feature_samples = self.samples if feature_samples is None else int(feature_samples)
        self.block, self.memory_mb = block, memory_mb

    def _loss(self, model, task, batches):
        # fused attention kernels have no double backward; the math kernel does (ViT, T5)
        with sdpa_kernel(SDPBackend.MATH):
            return sum(task(model, b, train=True)[0] for b in batches) / len(batches)

    def parameter_rows(self, model, task, batches, gen, device) -> list:
        with parameter_variables(model, self.sites, self.params) as (variables, blocks):
            products, saved = _graph_bytes(lambda: HessianProducts(self._loss(model, task, batches), variables))
            block = block_size(self.block, self.memory_mb, saved, max(1, self.samples), device)
            z = hutchinson(products, variables, self.samples, block, gen)
            lambda_max, top = extreme_eigenvalues(products, self.iterations, self.tol, gen, self.krylov)
        trace, se = mean_se(z.sum(1))
        out = [("train", "trace", "avg", trace), ("train", "trace_se", "avg", se)]
        for i, cols in sorted(blocks.items()):
            value, err = mean_se(z[:, cols].sum(1))
            out += [("train", "block_trace", i, value), ("train", "block_trace_se", i, err)]
        out += [("train", "lambda_max", "avg", lambda_max), ("train", "top_abs_eigenvalue", "avg", top)]
        return out

    def feature_rows(self, model, task, batches, gen, device) -> list:
        offsets = FeatureOffsets(self.sites)
        keys = [(s.index, where) for where in ("input", "preact") for s in self.sites]
        per_batch = []
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
                z = hutchinson(products, tensors, self.feature_samples, block, gen)
                tokens = torch.tensor([t.numel() / t.shape[-1] for t in tensors], dtype=torch.float64)
                per_batch.append(dict(zip(found, (z / tokens).T)))
        out = []
        for where in ("input", "preact"):
            metric = f"feature_{where}_trace"
            cols = []
            for s in self.sites:
                z = [pb[(s.index, where)] for pb in per_batch if (s.index, where) in pb]
                if not z:
                    continue
                z = torch.stack(z).mean(0)  # per-vector estimate, averaged over batches
                cols.append(z)
                value, err = mean_se(z)
                out += [("train", metric, s.index, value), ("train", f"{metric}_se", s.index, err)]
            if cols:
                value, err = mean_se(torch.stack(cols).mean(0))
                out += [("train", metric, "avg", value), ("train", f"{metric}_se", "avg", err)]
        return out

    def measure(self, ctx):
        gen = local_generator(ctx.seed, ctx.step)
        with preserved(ctx.model, ctx.train_batches):
            batches = take_batches(ctx.train_batches, self.batches, ctx.device)
            ctx.model.eval()
            task = fixed_objective(ctx.task)
            out = self.parameter_rows(ctx.model, task, batches, gen, ctx.device)
            if self.features:
                out += self.feature_rows(ctx.model, task, batches, gen, ctx.device)
        return out
