"""Label names and values: parse ``-l`` and ``--regions``, map the data's values to nnU-Net's 0..N.

nnU-Net wants consecutive integer labels (0 background, 1..N). Our users' masks hold 0/255, floats,
or sparse values such as {0, 1, 2, 4}. The mapping chosen here is kept in the run record so that
predictions can be written back in the user's own values.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from medseg_auto.errors import InputError
from medseg_auto.ingest.problems import DATASET, WARNING, Problem


@dataclass
class LabelRequest:
    """What the user asked for: ``-l`` names (optionally ``name=value``), ``--regions``, ``--merge-labels``."""

    names: list[str] | None = None
    values: list[int] | None = None
    regions: list[tuple[str, list[int]]] | None = None
    merge: bool = False


@dataclass
class LabelPlan:
    """How label values are written for nnU-Net, and how to read predictions back."""

    mapping: dict[int, int]                 # original value -> nnU-Net value (0 -> 0)
    names: dict[int, str]                   # nnU-Net value -> name, foreground only
    regions: list[tuple[str, list[int]]] | None = None  # in nnU-Net values
    regions_class_order: list[int] | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def is_identity(self) -> bool:
        return all(k == v for k, v in self.mapping.items())

    @property
    def inverse(self) -> dict[int, int] | None:
        """nnU-Net value -> original value, or None when several values were merged into one."""
        inv = {v: k for k, v in self.mapping.items()}
        return inv if len(inv) == len(self.mapping) else None

    def dataset_json_labels(self) -> dict:
        labels: dict = {"background": 0}
        if self.regions:
            labels.update({name: values for name, values in self.regions})
        else:
            labels.update({name: value for value, name in sorted(self.names.items())})
        return labels

    def record(self) -> dict:
        """The JSON-ready form kept in the run record and later in the model bundle."""
        inverse = self.inverse
        return {
            "original_to_nnunet": {str(k): v for k, v in sorted(self.mapping.items())},
            "nnunet_to_original": {str(k): v for k, v in sorted(inverse.items())} if inverse else None,
            "names": {str(k): v for k, v in sorted(self.names.items())},
            "regions": [{"name": n, "labels": v} for n, v in self.regions] if self.regions else None,
            "regions_class_order": self.regions_class_order,
        }


def parse_label_arg(text: str | None) -> tuple[list[str] | None, list[int] | None]:
    """``-l``: ``TUMOR``, ``anterior,posterior``, or ``edema=2,enhancing=4`` (names with their values)."""
    if not text:
        return None, None
    names, values = [], []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            raise InputError(f"-l '{text}': empty label name. Write names separated by commas, e.g. -l a,b")
        name, _, value = item.partition("=")
        names.append(name.strip())
        if value:
            try:
                values.append(int(value))
            except ValueError:
                raise InputError(f"-l '{text}': '{value}' is not a whole number (write name=VALUE)") from None
    if values and len(values) != len(names):
        raise InputError(f"-l '{text}': give a value for every name or for none (e.g. -l a=1,b=2)")
    if len(set(names)) != len(names) or (values and len(set(values)) != len(values)):
        raise InputError(f"-l '{text}': each name and value may appear once")
    if "background" in (n.lower() for n in names) or 0 in values:
        raise InputError(f"-l '{text}': name the foreground labels only; 0 is always the background")
    return names, values or None


def parse_regions(text: str | None) -> list[tuple[str, list[int]]] | None:
    """``--regions "WT=1,2,3,4;TC=1,3,4;ET=4"``: region names with the original label values they hold."""
    if not text:
        return None
    regions = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        name, sep, values = part.partition("=")
        try:
            vals = sorted({int(v) for v in values.split(",") if v.strip()})
        except ValueError:
            vals = []
        if not sep or not name.strip() or not vals or 0 in vals:
            raise InputError(f"--regions: cannot read '{part}'. Write NAME=v1,v2;NAME2=v3 with foreground "
                             f"label values, e.g. --regions \"WT=1,2,3,4;TC=1,3,4;ET=4\"")
        regions.append((name.strip(), vals))
    return regions


def plan_labels(values: dict[str, set[int]], request: LabelRequest, declared: dict | None = None,
                files: dict[str, str] | None = None) -> LabelPlan:
    """Choose the value mapping and names for the data's label values (per case) and the user's request.

    Problems name the cases (and their label ``files``) whose values do not fit; nothing is raised for
    data problems.
    """
    found = sorted(set().union(*values.values())) if values else []
    foreground = [v for v in found if v != 0]
    if declared is not None:
        plan = _plan_declared(declared)
    elif request.regions:
        plan = _plan_regions(foreground, request.regions)
    elif request.merge:
        name = request.names[0] if request.names else "foreground"
        if request.names and len(request.names) > 1:
            raise InputError("--merge-labels merges all foreground into one label: give one name with -l")
        plan = LabelPlan({0: 0, **{v: 1 for v in (request.values or foreground)}}, {1: name})
    elif request.values:
        order = sorted(zip(request.values, request.names))
        plan = _consecutive([v for v, _ in order], [n for _, n in order])
    else:
        plan = _plan_by_order(foreground, request.names, values)
    _check_values(plan, values, files or {})
    return plan


def _consecutive(values: list[int], names: list[str]) -> LabelPlan:
    """``values`` (increasing) mapped to 1..N, the i-th named ``names[i]`` (unnamed where names run out)."""
    return LabelPlan({0: 0, **{v: i + 1 for i, v in enumerate(values)}}, dict(enumerate(names, start=1)))


def _plan_by_order(foreground: list[int], names: list[str] | None, values: dict[str, set[int]]) -> LabelPlan:
    """Names (or label_1..N) given to the foreground values in increasing order."""
    if names is None or len(names) == len(foreground):
        return _consecutive(foreground, names or [f"label_{i + 1}" for i in range(len(foreground))])
    cases_with = {v: sorted(c for c, vs in values.items() if v in vs) for v in foreground}
    rare = [v for v in foreground if len(cases_with[v]) <= max(1, len(values) // 10)]
    if len(foreground) - len(rare) == len(names) and rare:
        # The named labels fit the common values; the cases holding the rare ones are the odd ones out.
        return _consecutive([v for v in foreground if v not in rare], names)
    listing = "; ".join(f"{v} in {len(cases_with[v])} case(s)" for v in foreground)
    if len(names) == 1:
        fix = (f"name each value: -l {','.join(names[0] + '_' + str(v) for v in foreground)} (in value order), "
               f"or merge all foreground into '{names[0]}' with --merge-labels")
    else:
        fix = f"give {len(foreground)} names with -l (one per value, in value order), or name values as -l a=1,b=2"
    plan = _consecutive(foreground, [])
    plan.problems.append(Problem(DATASET, "", f"-l names {len(names)} label(s) ({', '.join(names)}) but the "
                                 f"labels hold {len(foreground)} foreground values: {listing}", fix))
    return plan


def _plan_regions(foreground: list[int], regions: list[tuple[str, list[int]]]) -> LabelPlan:
    in_regions = sorted(set().union(*(set(v) for _, v in regions)))
    values = sorted(set(foreground) | set(in_regions))
    mapping = {0: 0, **{v: i + 1 for i, v in enumerate(values)}}
    mapped = [(name, sorted(mapping[v] for v in vals)) for name, vals in regions]
    order = []
    for i, (name, vals) in enumerate(mapped):
        later = set().union(*(set(v) for _, v in mapped[i + 1:]))
        own = sorted(set(vals) - later)
        if not own:
            raise InputError(f"--regions: region {name} has no label value of its own after the regions listed "
                             f"after it. List regions from the largest to the smallest, nested, e.g. "
                             f"\"WT=1,2,3,4;TC=1,3,4;ET=4\"")
        order.append(own[0])
    plan = LabelPlan(mapping, {mapping[v]: f"label_{v}" for v in values}, mapped, order)
    for v in foreground:
        if v not in in_regions:
            plan.problems.append(Problem(DATASET, "", f"label value {v} belongs to no region of --regions",
                                         "add it to a region, e.g. the whole-tumour one"))
    return plan


def _plan_declared(declared: dict) -> LabelPlan:
    """The labels a dataset.json declares (already checked by :mod:`.dataset_json`, in nnU-Net's form
    name -> value): regions as they are, label values made consecutive where they are not (nnU-Net's rule;
    the Decathlon's and nnU-Net's own sets already are)."""
    names, regions = {}, []
    for name, value in declared.get("labels", {}).items():
        if isinstance(value, (list, tuple)):
            regions.append((name, sorted(int(v) for v in value)))
        elif int(value) != 0:
            names[int(value)] = name
    if regions:
        values = sorted(set().union(*(set(v) for _, v in regions)))
        return LabelPlan({0: 0, **{v: v for v in values}}, {v: f"label_{v}" for v in values},
                         regions, declared.get("regions_class_order"))
    return _consecutive(sorted(names), [names[v] for v in sorted(names)])


def _check_values(plan: LabelPlan, values: dict[str, set[int]], files: dict[str, str]) -> None:
    """Per case: values outside the plan (errors), no foreground at all (warning)."""
    if plan.problems and any(p.case == DATASET for p in plan.problems):
        return
    allowed = set(plan.mapping)
    named = ", ".join(f"{n}={v}" for v, n in _original_names(plan).items())
    for case, vs in sorted(values.items()):
        extra = sorted(vs - allowed)
        if extra:
            plan.problems.append(Problem(case, files.get(case, "label"), f"label value(s) {_fmt(extra)} not among the named "
                                         f"labels ({named})", "fix this case's label, name the value with -l, or "
                                         "leave the case out with --skip-invalid"))
        elif not (vs - {0}):
            plan.problems.append(Problem(case, files.get(case, "label"), "the label is empty (background only)",
                                         "fine if this case truly has no structure; otherwise fix the label",
                                         WARNING))
    counts = Counter(v for vs in values.values() for v in vs)
    if values and counts[0] == 0:
        plan.problems.append(Problem(DATASET, "", "no label holds the value 0: is 0 really the background?",
                                     "background must be 0", WARNING))


def _original_names(plan: LabelPlan) -> dict[int, str]:
    out = {}
    for orig, new in sorted(plan.mapping.items()):
        if new:
            out[orig] = plan.names.get(new, f"label_{new}")
    return out


def _fmt(values: list) -> str:
    return ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
