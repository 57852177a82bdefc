"""Structured pruning on the model's own dependency graph (shared by ``prune`` and ``distill``).

The coupled channels come from the model's traced autograd graph, as in DepGraph (Fang
et al., CVPR 2023), through the ``torch-pruning`` package: one forward pass on an
example batch finds every group of widths that must shrink together, so any
architecture works, not only an ``nn.Sequential`` chain:

* residual CNNs: the channels tied across skip connections (every conv and BatchNorm
  writing or reading the same residual stream) form one group and leave together;
* transformers: whole attention heads leave together from query, key and value (and the
  output projection's inputs), and the module's head count is updated (Hugging Face
  BERT-like attention: ``num_attention_heads``, ``all_head_size``); FFN intermediate
  neurons form their own groups; ``nn.MultiheadAttention`` shrinks its embedding width
  per head (``head_dim``) when that width does not reach the output;
* BatchNorm, LayerNorm, GroupNorm, embeddings, depthwise and grouped convolutions are
  rewired with the group they belong to.

A group whose pruning would change the model's output shape (the classifier's classes,
an embedding model's hidden size) is left alone and recorded as skipped. The output
shapes on the example batch are compared before and after. Groups that break the
forward pass are found one by one and reported in one error, with the fix (exclude
them).

``amount`` is the fraction of each group's channels (or heads) removed; importance is
the group's L1/L2 weight magnitude, or first-order Taylor (|w * dL/dw|, Molchanov et al.
2019) on a few training batches.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ci_compress.errors import ConfigError
from ci_compress.layers.batches import Inputs, batch_size, call_model, map_tensors, take
from ci_compress.layers.inference import no_cache
from ci_compress.layers.outputs import OutputSpec, select_output
from ci_compress.passes.base import conv1d_to_linear, select
from ci_compress.passes.training import missing

if TYPE_CHECKING:
    import torch
    from torch import nn

Batches = Callable[[], Iterable[tuple[Any, "torch.Tensor | None"]]]

EXAMPLE_SAMPLES = 4
"""Samples of the example batch the graph is traced on (shapes only; values do not matter)."""

TAYLOR_SAMPLES = 256
"""Training samples whose loss gradient scores channels for ``importance: taylor``."""


def _fused_qkv(model: nn.Module) -> set[str]:
    """Fused q/k/v projections split by ``split_size`` (GPT-2's ``c_attn``): names.

    torch-pruning cannot map their split outputs to heads, so their widths are kept;
    the FFN neurons and the residual width around them can still be pruned.
    """
    from torch import nn

    found = set()
    for name, m in model.named_modules():
        proj = getattr(m, "c_attn", None)
        if isinstance(proj, nn.Linear) and isinstance(getattr(m, "split_size", None), int):
            found.add(f"{name}.c_attn" if name else "c_attn")
    return found


def _shared_parameters(model: nn.Module) -> list[list[tuple[str, str]]]:
    """Parameters held by several modules (tied embeddings): [(module, attribute), ...]."""
    holders: dict[int, list[tuple[str, str]]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        for attr, p in m.named_parameters(recurse=False):
            where = (name, attr)
            if where not in holders.setdefault(id(p), []):
                holders[id(p)].append(where)
    return [h for h in holders.values() if len(h) > 1]


def _retie(model: nn.Module, shared: list[list[tuple[str, str]]]) -> None:
    """Tie again what was tied before pruning (torch-pruning replaces each holder's
    parameter by a pruned copy), when the copies still hold the same values."""
    import torch

    for holders in shared:
        (first, attr), *rest = holders
        kept = getattr(model.get_submodule(first), attr)
        for name, other in rest:
            module = model.get_submodule(name)
            p = getattr(module, other)
            if p is not kept and p.shape == kept.shape and torch.equal(p, kept):
                setattr(module, other, kept)


def _kinds() -> tuple[type[nn.Module], ...]:
    from torch import nn

    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)


EXAMPLE_FIELDS = "data.calibration or data.train"
"""Where the example batch comes from (``needs_data``: either section will do)."""


def example_batch(calibration: Batches | None, train: Batches | None, where: str) -> Inputs:
    """A few samples of the first batch of ``data.calibration`` (else ``data.train``)."""
    import torch

    data = calibration if calibration is not None else train
    if data is None:
        raise missing(EXAMPLE_FIELDS, where, "traces the model's graph on an example batch")
    for x, _ in data():
        x = map_tensors(x, lambda t: t.float() if torch.is_floating_point(t) else t)
        return take(x, 0, min(EXAMPLE_SAMPLES, batch_size(x)))
    field = "data.calibration" if calibration is not None else "data.train"
    raise ConfigError("the data is empty: no example batch to trace", path=field)


def _tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model output (tensor, tuple/list, mapping, ModelOutput), in order."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, tuple | list):
        return [t for v in out for t in _tensors(v)]
    return []


def _shapes(model: nn.Module, example: Inputs) -> list[tuple[int, ...]]:
    import torch

    with torch.no_grad():
        return [tuple(t.shape) for t in _tensors(call_model(model, example))]


def _attention_heads(model: nn.Module) -> dict[str, tuple[nn.Module, list[nn.Module], int]]:
    """Hugging Face BERT-like self-attention modules: name -> (module, [q, k, v], heads)."""
    from torch import nn

    found: dict[str, tuple[nn.Module, list[nn.Module], int]] = {}
    for name, m in model.named_modules():
        heads = getattr(m, "num_attention_heads", None)
        size = getattr(m, "attention_head_size", None)
        qkv = [getattr(m, a, None) for a in ("query", "key", "value")]
        linears = [p for p in qkv if isinstance(p, nn.Linear)]
        if (
            isinstance(heads, int)
            and isinstance(size, int)
            and len(linears) == 3
            and all(p.out_features == heads * size for p in linears)
        ):
            found[name] = (m, list(linears), heads)
    return found


def _update_heads(found: dict[str, tuple[nn.Module, list[nn.Module], int]]) -> dict[str, list[int]]:
    """Write the new head counts into the attention modules; name -> [before, after]."""
    changed = {}
    for name, (m, qkv, heads) in found.items():
        attrs: dict[str, Any] = vars(m)  # plain int attributes live in __dict__
        size = int(attrs["attention_head_size"])
        now = int(vars(qkv[0])["out_features"]) // size
        attrs["num_attention_heads"] = now
        attrs["all_head_size"] = now * size
        if now != heads:
            changed[name] = [heads, now]
    return changed


def _widths(model: nn.Module) -> dict[str, int]:
    from torch import nn

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
        elif isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.MultiheadAttention):
            out[name] = int(m.embed_dim)
    return out


def _taylor_gradients(model: nn.Module, train: Batches, output: OutputSpec, where: str) -> None:
    """Accumulate the cross-entropy gradient of up to TAYLOR_SAMPLES training samples."""
    import torch
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    seen = 0
    was = model.training
    model.eval()  # BatchNorm statistics stay as they are
    try:
        for x, y in train():
            if y is None:
                raise ConfigError(
                    "importance: taylor needs labels, and the training data has none",
                    path="data.train",
                    hint=f"set {where}.importance: magnitude, or name data.train.target",
                )
            x = map_tensors(x, lambda t: t.float() if torch.is_floating_point(t) else t)
            logits = select_output(call_model(model, x), output, role="trained")
            loss: Any = F.cross_entropy(logits, y.long(), reduction="sum") / TAYLOR_SAMPLES
            loss.backward()
            seen += len(y)
            if seen >= TAYLOR_SAMPLES:
                break
    finally:
        model.train(was)


def _trace(model: nn.Module, example: Inputs, **kwargs: Any) -> Any:
    """torch-pruning's pruner over ``model`` (the graph traced once on ``example``)."""
    import torch_pruning as tp
    from torch import nn

    def forward(m: nn.Module, x: Inputs) -> Any:
        return call_model(m, x)

    outputs: list[Any] = []

    def transform(out: Any) -> list[torch.Tensor]:
        tensors = [t for t in _tensors(out) if t.grad_fn is not None]
        outputs.extend(t.grad_fn for t in tensors)
        return tensors

    with warnings.catch_warnings(record=True) as caught, no_cache(model):
        warnings.simplefilter("always")
        pruner = tp.pruner.BasePruner(
            model,
            example,
            forward_fn=forward,
            output_transform=transform,
            root_module_types=[nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MultiheadAttention],
            **kwargs,
        )
    unknown = sorted(
        {
            str(w.message).split("Unknown operation ")[1].split(" encountered")[0]
            for w in caught
            if "Unknown operation" in str(w.message)
        }
    )
    sinks = [n for n in pruner.DG.module2node.values() if n.grad_fn in outputs]
    return pruner, unknown, sinks


def _output_groups(pruner: Any, sinks: list[Any], names: dict[Any, str]) -> dict[str, list[Any]]:
    """Groups whose widths are the model's outputs: root name -> the modules to leave alone.

    A group reaches the output when it shrinks the output side of a node that produced
    one of the model's output tensors (a classifier reading a pruned width does not).
    """
    graph = pruner.DG
    out: dict[str, list[Any]] = {}
    for group in graph.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        if any(
            dep.target in sinks and graph.is_out_channel_pruning_fn(dep.handler) for dep, _ in group
        ):
            members = [
                dep.target.module
                for dep, _ in group
                if dep.target.module in names and pruner.DG.is_out_channel_pruning_fn(dep.handler)
            ]
            root = names.get(group[0][0].target.module, "?")
            out[root] = members
    return out


def prune_structured(
    model: nn.Module,
    *,
    amount: float,
    norm: str = "l1",
    importance: str = "magnitude",
    include: Iterable[str] = ("*",),
    exclude: Iterable[str] = (),
    example: Inputs,
    where: str,
    train: Batches | None = None,
    output: OutputSpec = None,
    field: str = "include",
    steps: int = 1,
    between: Callable[[int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Remove ``amount`` of every prunable group's channels (heads) from ``model`` in place.

    With ``steps > 1`` the removal is gradual on one traced graph: after step ``t`` of
    ``steps`` each group has lost ``amount * (1 - (1 - t/steps)**3)`` of its original
    channels (Zhu & Gupta's cubic schedule, as unstructured pruning), importance is
    re-scored on the current weights at each step, and ``between(t)`` (fine-tuning) runs
    after each step; its results are the ``schedule`` of the details.

    Returns the record's details: ``layers`` (module -> [before, after] width),
    ``heads`` (attention module -> [before, after] heads), ``skipped`` (module -> why)
    and ``unknown_ops``. Raises one ConfigError naming every module it cannot handle,
    and one when nothing would change.
    """
    import torch_pruning as tp

    converted = conv1d_to_linear(model)
    shared = _shared_parameters(model)
    chosen = {n for n, _ in select(model, include, exclude, _kinds(), path=where)}
    fused = _fused_qkv(model)
    names = {m: n for n, m in model.named_modules()}
    ignored = [
        m
        for n, m in model.named_modules()
        if isinstance(m, _kinds()) and n and (n not in chosen or n in fused)
    ]
    try:
        before_shapes = _shapes(model, example)
    except Exception as e:
        raise ConfigError(
            f"the model cannot run on the example batch: {type(e).__name__}: {str(e)[:200]}",
            path=f"{where}.{field}",
            hint="check that the data's inputs are what the model's forward takes",
        ) from None
    before = _widths(model)
    heads = _attention_heads(model)
    num_heads = {p: h for _, qkv, h in heads.values() for p in qkv}
    if importance == "taylor":
        if train is None:
            raise ConfigError(
                f"{where} scores channels by importance: taylor on data.train, but the config has no data.train",
                path="data.train",
                hint=f"add data.train, or set {where}.importance: magnitude",
            )
        _taylor_gradients(model, train, output, where)
        scorer: Any = tp.importance.GroupTaylorImportance()
    else:
        scorer = tp.importance.GroupMagnitudeImportance(p=1 if norm == "l1" else 2)
    # floor(n * (1 - amount)) kept; the epsilon keeps 1 - 0.7 from flooring 7 to 6
    ratio = max(0.0, amount - 1e-9)
    try:
        pruner, unknown, sinks = _trace(
            model,
            example,
            importance=scorer,
            pruning_ratio=ratio,
            ignored_layers=ignored,
            num_heads=dict(num_heads),
            prune_num_heads=bool(num_heads),
            prune_head_dims=not num_heads,
            head_pruning_ratio=ratio if num_heads else 0.0,
            iterative_steps=steps,
            iterative_pruning_ratio_scheduler=_cubic,
        )
    except ConfigError:
        raise
    except Exception as e:  # the tracer's own assertion on a model it cannot trace
        raise ConfigError(
            f"structured pruning cannot trace the model's graph: {type(e).__name__}: {e}",
            path=f"{where}.structured",
            hint="use unstructured pruning (structured: false) for this model",
        ) from None
    if steps > 1 and num_heads:
        _gradual_heads(pruner, set(num_heads.values()), ratio, steps, where)
    skipped: dict[str, str] = {}
    for members in _output_groups(pruner, sinks, names).values():
        pruner.ignored_layers.extend(members)
        for m in members:
            if isinstance(m, _kinds()):
                skipped[names[m]] = (
                    "output layer: its outputs are the model's outputs"
                    if any(n.module is m for n in sinks)
                    else "its width is tied to the model's output (kept: the output shape must not change)"
                )
    for n in sorted(fused):
        skipped.setdefault(n, "fused q/k/v projection (GPT-2 style): its heads are kept")
    for n in sorted(before):
        if n and n not in chosen and n not in skipped:
            skipped[n] = "not selected (include/exclude)"
    history: list[dict[str, Any]] = []
    planned_total = 0
    for t in range(steps):
        if t and importance == "taylor":
            assert train is not None
            _taylor_gradients(model, train, output, where)  # on the fine-tuned weights
        backup = copy.deepcopy(model)
        planned: list[tuple[str, bool, list[int]]] = []
        for group in pruner.step(interactive=True):
            dep, idxs = group[0]
            planned.append(
                (
                    names[dep.target.module],
                    pruner.DG.is_out_channel_pruning_fn(dep.handler),
                    list(idxs),
                )
            )
            group.prune()
        planned_total += len(planned)
        model.zero_grad(set_to_none=True)
        heads_changed = _update_heads(heads)
        problem = _check(model, example, before_shapes)
        if problem is not None:
            broken = _diagnose(backup, example, before_shapes, planned, heads)
            listed = dict(sorted(broken.items())) or {"(the model)": problem}
            raise ConfigError(
                f"structured pruning cannot handle {len(listed)} module(s): "
                + "; ".join(f"{n!r} ({why})" for n, why in listed.items()),
                path=f"{where}.{field}",
                hint="exclude them: exclude: [" + ", ".join(repr(n) for n in listed) + "]",
            )
        del backup
        after = _widths(model)
        layers = {n: [before[n], after[n]] for n in before if n in after and after[n] != before[n]}
        if not layers and not heads_changed and t == steps - 1:
            reasons = "; ".join(f"{n!r}: {why}" for n, why in sorted(skipped.items())[:10])
            raise ConfigError(
                "structured pruning would change nothing: no selected group can shrink"
                + (f" ({reasons})" if reasons else ""),
                path=f"{where}.{field}",
                hint="include hidden layers (the output layer is always kept), or raise amount",
            )
        if steps > 1:
            step = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "groups_pruned": len(planned),
                "heads": sum(int(vars(m)["num_attention_heads"]) for m, _, _ in heads.values()),
            }
            history.append(step | (between(t) if between is not None else {}))
    _retie(model, shared)
    details = {
        "structured": True,
        "importance": importance if importance == "taylor" else norm,
        "layers": layers,
        "heads": heads_changed,
        "skipped": {n: why for n, why in skipped.items() if n not in layers},
        "unknown_ops": unknown,
        "groups_pruned": planned_total,
    }
    if converted:
        details["conv1d_to_linear"] = converted
    if history:
        details["schedule"] = history
    return details


def _gradual_heads(pruner: Any, heads: set[int], ratio: float, steps: int, where: str) -> None:
    """Make torch-pruning remove ``ceil(s_t * heads)`` heads in all after step ``t``.

    Its local head pruning removes ``ceil(r_t * current heads)`` at step ``t`` (relative
    to what is left, unlike widths, which it schedules against the original width), so
    the cumulative schedule is turned into each step's fraction of the heads left.
    """
    if len(heads) != 1:
        raise ConfigError(
            f"gradual structured pruning needs the same head count in every attention module (found {sorted(heads)})",
            path=f"{where}.steps",
            hint="use steps: 1 for this model",
        )
    (h,) = heads
    removed = [math.ceil(h * s - 1e-9) for s in _cubic(ratio, steps)]
    fractions = [0.0]
    for t in range(1, steps + 1):
        k, left = removed[t] - removed[t - 1], h - removed[t - 1]
        fractions.append((k - 0.5) / left if k > 0 else 0.0)  # ceil(fraction * left) == k
    pruner.per_step_head_pruning_ratio = fractions


def _cubic(ratio: float, steps: int) -> list[float]:
    """Zhu & Gupta's schedule: the fraction removed after step t of ``steps`` (t = 0..steps)."""
    return [ratio * (1 - (1 - t / steps) ** 3) for t in range(steps + 1)]


def _check(model: nn.Module, example: Inputs, before: list[tuple[int, ...]]) -> str | None:
    """None when the model runs on ``example`` with the output shapes it had; else why."""
    try:
        shapes = _shapes(model, example)
    except Exception as e:
        return f"the pruned model no longer runs: {type(e).__name__}: {str(e)[:200]}"
    if shapes != before:
        return f"the output shapes changed from {before} to {shapes}"
    return None


def _diagnose(
    original: nn.Module,
    example: Inputs,
    before: list[tuple[int, ...]],
    planned: list[tuple[str, bool, list[int]]],
    heads: dict[str, tuple[nn.Module, list[nn.Module], int]],
) -> dict[str, str]:
    """Prune each group alone on a fresh copy: the groups that break the model, by root."""
    import torch_pruning as tp

    broken = {}
    for root, is_out, idxs in planned:
        trial = copy.deepcopy(original)
        with warnings.catch_warnings(), no_cache(trial):
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(
                trial,
                example,
                forward_fn=lambda m, x: call_model(m, x),
                output_transform=lambda out: [t for t in _tensors(out) if t.grad_fn is not None],
                verbose=False,
            )
        module = trial.get_submodule(root)
        pruner = graph.get_pruner_of_module(module)
        fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
        try:
            graph.get_pruning_group(module, fn, idxs).prune()
        except Exception as e:
            broken[root] = f"{type(e).__name__}: {str(e)[:200]}"
            continue
        _update_heads(_attention_heads(trial))
        why = _check(trial, example, before)
        if why is not None:
            broken[root] = why
    return broken
