"""The chapter's Table 1 as a function: its qualitative rows beside measured ones, every
verdict from a rule stated here and applied to a 95% interval, "n/a" where a measure does
not apply.

:func:`evaluate` runs everything on the lesion world (``lesion_cnn``, its clean and
shuffled-label twins, ``lesion_vit`` for rollout) with the model-free controls as
reference rows; :func:`table1` turns the result into the table.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import _checks as checks
from .controls import MIN_IMAGES, Estimate, bootstrap, verdict
from .faithfulness import deletion_curve, insertion_curve, relevance_mass
from .registry import CONTROLS, conservation_error, get_method, relative_cost
from .sanity import TESTS, sanity_checks

__all__ = ["CHAPTER_TABLE", "CNN_METHODS", "VIT_METHODS", "Evaluation", "evaluate", "Table1", "table1",
           "MEASURES", "RULES"]

CNN_METHODS = ("gradient", "saliency", "smoothgrad", "gradient_x_input", "deconvnet", "guided_backprop", "lrp")
VIT_METHODS = ("rollout",)

#: The chapter's Table 1, by method. The chapter has one column for saliency (vanilla and
#: SmoothGrad), one for the deconvnet that also holds guided backprop ("Fails (Guided
#: BP)"), and none for gradient x input; here each method has its own row.
_SALIENCY = dict(question="Sensitivity", scope="Example-specific", output="Unsigned pixel map",
                 architecture="Any differentiable", sanity="Passes", compute="One backprop", signed="No",
                 conservation="No")
_DECONV = dict(question="Reconstruction", scope="Example-specific", output="Pixel reconstruction",
               architecture="CNN only", compute="One deconv pass", signed="No", conservation="No")
CHAPTER_TABLE = {
    "gradient": {**_SALIENCY, "output": "(signed gradient; the chapter's map is |gradient|)"},
    "saliency": _SALIENCY,
    "smoothgrad": _SALIENCY,
    "gradient_x_input": dict(question="-", scope="-", output="-", architecture="-", sanity="-", compute="-",
                             signed="-", conservation="-"),
    "deconvnet": {**_DECONV, "sanity": "- (the chapter's 'Fails' names guided BP)"},
    "guided_backprop": {**_DECONV, "sanity": "Fails"},
    "lrp": dict(question="Attribution", scope="Example-specific", output="Signed, conserved pixel relevance",
                architecture="Any (with custom rules)", sanity="Passes", compute="One forward + layerwise backward",
                signed="Yes", conservation="Yes"),
    "rollout": dict(question="Focus", scope="Example-specific", output="Spatial attention heatmap",
                    architecture="Transformer only", sanity="Contested", compute="Near-zero (from forward pass)",
                    signed="Directionally (rollout)", conservation="No"),
}

#: The measured columns, in order, with their short titles.
MEASURES = {**{t: t.replace("_", "-") for t in TESTS}, "deletion": "deletion", "insertion": "insertion",
            "shortcut": "shortcut", "conservation": "conserv."}

#: The rule behind each measured verdict (the randomisation tests' from evaluation.TESTS).
RULES = {
    **{t: TESTS[t].rule for t in TESTS},
    "deletion": "pass if the 95% interval of (deletion AUC - the best control's), paired over images, lies < 0: "
                "a map counts as faithful only if it removes the evidence faster than every map that ignores "
                "the model",
    "insertion": "pass if the 95% interval of (insertion AUC - the best control's), paired over images, lies > 0",
    "shortcut": "pass if the 95% interval of (ruler mass on lesion_cnn - on lesion_cnn_clean), paired over images, "
                "lies > 0: the map shows the shortcut the model learned, not the ruler's pixels (n/a without a "
                "clean twin model)",
    "conservation": "pass if the 95% interval of |sum R - S_c| / |S_c| lies < 0.05 (n/a for unsigned maps)",
}
_CONSERVATION_TOLERANCE = 0.05


@dataclass
class Evaluation:
    """:func:`evaluate`'s results. ``sanity``: {model name: SanityReport}; ``model_of``:
    {method: model name}; ``estimates``/``verdicts``: {measure: {method: ...}} for the
    measures outside the randomisation tests; ``curves``: {method: (deletion, insertion)};
    ``cost``: {method: ratio to one forward + backward}; ``signed``: {method: whether its
    maps took both signs}; ``n_images``, ``seeds``: what every cell rests on."""

    methods: list
    controls: list
    labels: dict
    model_of: dict
    sanity: dict
    estimates: dict = field(default_factory=dict)
    verdicts: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    signed: dict = field(default_factory=dict)
    n_images: int = 0
    seeds: tuple = ()

    def estimate(self, measure: str, method: str) -> Estimate | None:
        """The :class:`Estimate` of ``measure`` for ``method`` (None: does not apply)."""
        if measure in TESTS:
            rep = self.sanity[self.model_of[method]]
            return rep.estimates.get(measure, {}).get(method)
        return self.estimates.get(measure, {}).get(method)

    def verdict(self, measure: str, method: str) -> str:
        """``"pass"``, ``"fail"``, ``"inconclusive"`` or ``"n/a"``."""
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; measures: {', '.join(MEASURES)}")
        if measure in TESTS:
            rep = self.sanity[self.model_of[method]]
            return rep.verdicts.get(measure, {}).get(method, "n/a")
        return self.verdicts.get(measure, {}).get(method, "n/a")

    def edge(self, method: str) -> Estimate:
        """ρ of the method's map on the fully random network with the input's edge map."""
        return self.sanity[self.model_of[method]].edge[method]


def _paired(a: torch.Tensor, b: torch.Tensor, n_boot: int) -> Estimate:
    return bootstrap((a - b).double(), n_boot=n_boot)


def evaluate(*, n_images: int = 32, seeds=(0, 1, 2), methods=None, controls=None, tests=None, curve: bool = False,
             curve_seeds: int | None = None, n_noise: int = 3, steps: int = 16, cost_images: int = 8, pool=None,
             device=None, n_boot: int = 1000) -> Evaluation:
    """Every measured column of Table 1 for ``methods`` (default: the seven CNN methods on
    ``lesion_cnn`` and rollout on ``lesion_vit``) and the ``controls`` (default: all).

    Parameters
    ----------
    n_images : int, default 32
        Malignant lesions with a ruler (at least 32) from ``pool`` (default: a
        biased-split set drawn with ``train.EVAL_SEED``), explained for "malignant".
    seeds, tests, curve, curve_seeds, n_noise
        As for :func:`sanity_checks`.
    steps : int, default 16
        Points of the deletion and insertion curves (blurred baseline).
    cost_images : int, default 8
        Images the cost is timed on (median of 7 interleaved repeats).
    """
    from .. import models, synthetic, train
    from ..data import normalize

    n_images = checks.integer(n_images, "n_images", low=MIN_IMAGES, hint="images every interval rests on")
    methods = list(CNN_METHODS + VIT_METHODS) if methods is None else list(methods)
    controls = list(CONTROLS) if controls is None else list(controls)
    for c in controls:
        if c not in CONTROLS:
            raise ValueError(f"unknown control {c!r}; controls: {', '.join(CONTROLS)}")
    for m in methods:
        get_method(m)  # an unknown name is refused by name before any work
    if device is None:
        from .. import device as pick

        device = pick()
    nets = {"lesion_cnn": models.load("lesion_cnn", device=device)}
    if any(get_method(m).architecture == "vit" for m in methods):
        nets["lesion_vit"] = models.load("lesion_vit", device=device)
    clean = models.load("lesion_cnn_clean", device=device)
    shuffled = models.load("lesion_cnn_shuffled", device=device)
    pool = synthetic.make_lesions(600, "biased", seed=train.EVAL_SEED) if pool is None else pool
    ruled = pool.select(label=1, ruler=True)
    if len(ruled) < n_images:
        raise ValueError(f"the pool has {len(ruled)} malignant lesions with a ruler; n_images={n_images} needs more")
    ruled = ruled[:n_images]
    x = normalize(ruled.images).to(device)
    model_of = {m: ("lesion_vit" if get_method(m).architecture == "vit" else "lesion_cnn") for m in methods}
    labels = {m: get_method(m).label or m for m in methods + controls}
    out = Evaluation(methods, controls, labels, model_of, {}, n_images=n_images, seeds=tuple(seeds))
    for name, net in nets.items():
        group = [m for m in methods if model_of[m] == name]
        if not group:
            continue
        own = tests if tests is None or name == "lesion_cnn" else [t for t in tests if t != "data"]  # no shuffled ViT
        out.sanity[name] = sanity_checks(net, group + controls, x, 1, seeds=seeds, tests=own, curve=curve,
                                         curve_seeds=curve_seeds, n_noise=n_noise, n_boot=n_boot,
                                         shuffled_model=shuffled if name == "lesion_cnn" else None)
    for c in controls:  # the reference rows are read on lesion_cnn
        out.model_of.setdefault(c, "lesion_cnn")
    for key in ("deletion", "insertion", "shortcut", "conservation", "ruler mass", "ruler mass (clean)"):
        out.estimates[key], out.verdicts[key] = {}, {}
    ruler = ruled.ruler_mask
    for name, net in nets.items():
        rep = out.sanity[name] if name in out.sanity else None
        if rep is None:
            continue
        group = rep.methods
        auc = {}
        for m in group:
            ranking = get_method(m).ranking(rep.trained[m])
            d = deletion_curve(net, x, 1, ranking, steps=steps)
            i = insertion_curve(net, x, 1, ranking, steps=steps)
            auc[m] = (d.auc.cpu(), i.auc.cpu())
            if m in methods or name == "lesion_cnn":
                out.curves[m] = (d, i)
        best_del = min(controls, key=lambda c: float(auc[c][0].mean()))
        best_ins = max(controls, key=lambda c: float(auc[c][1].mean()))
        for m in group:
            if name != "lesion_cnn" and m in controls:
                continue
            out.estimates["deletion"][m] = bootstrap(auc[m][0], n_boot=n_boot)
            out.estimates["insertion"][m] = bootstrap(auc[m][1], n_boot=n_boot)
            out.verdicts["deletion"][m] = verdict(_paired(auc[m][0], auc[best_del][0], n_boot), 0.0, "below")
            out.verdicts["insertion"][m] = verdict(_paired(auc[m][1], auc[best_ins][1], n_boot), 0.0, "above")
            method = get_method(m)
            evidence = method.evidence(rep.trained[m]).cpu()
            mass = relevance_mass(evidence, ruler)
            out.estimates["ruler mass"][m] = bootstrap(mass, n_boot=n_boot)
            if name == "lesion_cnn":
                clean_mass = relevance_mass(method.evidence(method(clean, x, 1)).cpu(), ruler)
                out.estimates["ruler mass (clean)"][m] = bootstrap(clean_mass, n_boot=n_boot)
                diff = _paired(mass, clean_mass, n_boot)
                out.estimates["shortcut"][m] = diff
                out.verdicts["shortcut"][m] = verdict(diff, 0.0, "above")
            out.signed[m] = bool((rep.trained[m] < 0).any()) and bool((rep.trained[m] > 0).any())
            if method.signed:
                err = conservation_error(net, m, x, 1).cpu()
                est = bootstrap(err, n_boot=n_boot)
                out.estimates["conservation"][m] = est
                out.verdicts["conservation"][m] = verdict(est, _CONSERVATION_TOLERANCE, "below")
            out.cost[m] = relative_cost(net, m, x[:cost_images], 1)
    return out


@dataclass
class Table1:
    """The table: ``chapter`` {method: the chapter's cells}, ``evaluation`` (the measured
    cells, :class:`Evaluation`). ``str()`` prints the verdict grid, the rules and every
    measured cell with its interval; the cost is a timing and varies between runs."""

    evaluation: Evaluation
    chapter: dict

    def rows(self) -> list[dict]:
        """One dict per method and control: the chapter's cells, then {measure: (Estimate
        or None, verdict)}, ``cost`` and ``signed (measured)``."""
        ev = self.evaluation
        out = []
        for m in ev.methods + ev.controls:
            row = {"method": m, "label": ev.labels[m], "model": ev.model_of[m],
                   **{f"chapter {k}": v for k, v in self.chapter.get(m, {}).items()}}
            for measure in MEASURES:
                row[measure] = (ev.estimate(measure, m), ev.verdict(measure, m))
            row["cost"] = ev.cost.get(m)
            row["signed (measured)"] = ev.signed.get(m)
            out.append(row)
        return out

    def grid(self) -> str:
        """The verdicts alone: the chapter's sanity verdict beside each measured one."""
        ev = self.evaluation
        head = f"{'method':<26}{'chapter':>10}" + "".join(f"{t:>12}" for t in MEASURES.values())
        lines = [head, "-" * len(head)]
        for m in ev.methods + ev.controls:
            chap = self.chapter.get(m, {}).get("sanity", "-").split(" ")[0]
            cells = "".join(f"{ev.verdict(k, m).replace('inconclusive', 'inconcl.'):>12}" for k in MEASURES)
            lines.append(f"{ev.labels[m][:25]:<26}{chap:>10}{cells}")
        return "\n".join(lines)

    def qualitative(self) -> str:
        """The chapter's qualitative columns, one method per row, beside what was measured
        of them (whether the maps take both signs)."""
        cols = ("question", "output", "architecture", "compute", "signed")
        head = f"{'method':<18}" + "".join(f"{c:<26}" for c in cols) + "signed (measured)"
        lines = [head, "-" * len(head)]
        for m in self.evaluation.methods:
            c = self.chapter.get(m, {})
            signed = self.evaluation.signed.get(m)
            lines.append(f"{self.evaluation.labels[m][:17]:<18}" + "".join(f"{c.get(k, '-')[:25]:<26}" for k in cols)
                         + ("n/a" if signed is None else "yes" if signed else "no"))
        return "\n".join(lines)

    def details(self, fmt: str = ".2f") -> str:
        """Every measured cell, ``value [95% interval] verdict``, one block per measure."""
        ev = self.evaluation
        lines = []
        extra = {"ruler mass": "ruler mass", "ruler mass (clean)": "ruler mass (clean)"}
        for measure, title in {**MEASURES, **extra}.items():
            lines.append(f"{title}: {RULES.get(measure, 'share of the evidence on the ruler (no verdict)')}")
            for m in ev.methods + ev.controls:
                e = ev.estimate(measure, m)
                cell = "n/a" if e is None else format(e, fmt)
                v = ev.verdict(measure, m) if measure in MEASURES else ""
                lines.append(f"  {ev.labels[m][:25]:<26}{cell:>24}  {v}")
        return "\n".join(lines)

    def __str__(self):
        ev = self.evaluation
        return (f"Table 1, measured: {ev.n_images} malignant lesions with a ruler, seeds {list(ev.seeds)}; "
                f"CNN methods on lesion_cnn, rollout on lesion_vit\n{self.grid()}")

    _repr_pretty_ = lambda self, p, cycle: p.text(str(self))  # noqa: E731  (IPython display)


def table1(evaluation: Evaluation | None = None, **options) -> Table1:
    """The chapter's Table 1 beside the measured one. ``evaluation``: an
    :class:`Evaluation` (``evaluate(...)``), or None to run ``evaluate(**options)``."""
    if evaluation is None:
        evaluation = evaluate(**options)
    elif options:
        raise TypeError(f"pass either an evaluation or evaluate()'s options, not both ({', '.join(options)})")
    checks.instance(evaluation, "evaluation", Evaluation, "an Evaluation (evaluation.evaluate())")
    return Table1(evaluation, {m: CHAPTER_TABLE[m] for m in evaluation.methods if m in CHAPTER_TABLE})

