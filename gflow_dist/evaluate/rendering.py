"""The evaluation report as text: the terminal table and ``report.md``.

Every ± is the *total* error of :mod:`gflow_dist.evaluate.repeats` (test particles or
draws, the star draw and the classifier's training), and every σ-gap divides by it. With
one repeat only the within-repeat error is known: the ± is then that error alone, marked
with ``†``, and no σ-gap is printed, since a σ from it would overstate the significance.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ONE_REPEAT_NOTE = ("† one repeat (evaluate.repeats = 1): the error covers the test particles "
                   "(or the truth draws) only; the spread from the star draw and the "
                   "classifier's training is not measured, so no σ is given. Set "
                   "evaluate.repeats ≥ 3 to measure it.")

_HEADER = ["upsampler", "LP(C)", "AUC vs particles", "KL(truth‖model) [nats]", "AUC vs truth"]


def _error(entry: Mapping[str, Any]) -> tuple[float, str]:
    """The error to print with an entry, and its mark: total, or within and † for R = 1."""
    if entry["total"] is not None:
        return entry["total"], ""
    return entry["within"], "†"


def _pm(entry: Mapping[str, Any], digits: int = 4) -> str:
    error, mark = _error(entry)
    return f"{entry['value']:.{digits}f} ± {error:.{digits}f}{mark}"


def _kl_text(entry: Mapping[str, Any], digits: int = 4) -> str:
    if entry["value"] is None:
        return (f"∞ (zero density at {entry['zero_density_count']:,} of "
                f"{entry['draw_count']:,} truth draws)")
    return _pm(entry, digits)


def _difference_text(pair: str, entry: Mapping[str, Any]) -> tuple[str, str, str]:
    """The difference's name, value ± error with its parts, and its σ-gap (or why none)."""
    name = f"LP({pair.replace(' - ', ') − LP(')})"
    if entry["total"] is None:
        return name, _pm(entry), "not measured†"
    parts = (f"{_pm(entry)} (within {entry['within']:.4f}, between-repeat spread "
             f"{entry['between']:.4f}; 95 %: ± {entry['interval95']:.4f})")
    return name, parts, f"{entry['value'] / entry['total']:+.1f}σ"


def _rows(report: Mapping[str, Any]) -> list[list[str]]:
    truth = report.get("truth", {})
    rows = []
    for name in report["upsamplers"]:
        kl = truth.get("kl_nats", {}).get(name)
        rows.append([
            name,
            _pm(report["log_posterior"][name]),
            _pm(report["two_sample_auc"][name]) if "two_sample_auc" in report else "–",
            _kl_text(kl) if kl else "–",
            _pm(truth["auc"][name]) if name in truth.get("auc", {}) else "–",
        ])
    return rows


def render_table(report: Mapping[str, Any]) -> str:
    """The scores as an aligned plain-text table, with the pairwise differences below."""
    lines = [f"repeats: {report['repeats']}"]
    lines += _aligned([_HEADER, *_rows(report)], rule=True)
    for pair, entry in report["differences"].items():
        name, value, sigma = _difference_text(pair, entry)
        lines.append(f"{name} = {value} ({sigma})")
    auc = ", ".join(f"{k} {_pm(v)}" for k, v in report["auc"].items())
    lines.append(f"multi-model classifier AUC: {auc}")
    components = report.get("truth", {}).get("components")
    if components:
        lines += ["", "per component: KL [nats] / share of its stars reproduced (1 = truth)"]
        lines += _aligned(_component_rows(report["upsamplers"], components))
    if report["repeats"] == 1:
        lines += ["", ONE_REPEAT_NOTE]
    return "\n".join(lines)


def _aligned(rows: list[list[str]], rule: bool = False) -> list[str]:
    """Rows of cells as lines whose columns line up; ``rule`` underlines the first row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
             for row in rows]
    return lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:] if rule else lines


def _component_rows(names: list[str], components: Mapping[str, Any]) -> list[list[str]]:
    """A header and one row per mock-galaxy component: weight, then KL and share per model."""
    rows = [["component", "weight"] + [f"{n} KL / share" for n in names]]
    for component, truth in components["components"].items():
        row = [component, f"{truth['weight']:.3f}"]
        for name in names:
            kl = components["kl_nats"].get(name, {}).get(component)
            share = components["reproduced_share"][name][component]
            kl_text = "–" if kl is None else ("∞" if kl["value"] is None else _pm(kl, 3))
            row.append(f"{kl_text} / {_pm(share, 2)}")
        rows.append(row)
    return rows


def render_markdown(report: Mapping[str, Any], figures: list[str]) -> str:
    """``report.md``: the paper-style tables and the figures."""
    repeats = report["repeats"]
    errors = (f"Each value is the mean of {repeats} independent repeats (each its own star "
              "draw, classifier initialisation and minibatch order); ± is its total 1σ error, "
              "from the test particles (or truth draws) and the spread between repeats, and "
              "every σ divides by it." if repeats > 1 else ONE_REPEAT_NOTE)
    lines = [
        "# Upsampler evaluation",
        "",
        f"Multi-model classifier test (arXiv:2211.11765 §5.3) of {', '.join(report['upsamplers'])}"
        f" on {report['n_test']:,} test particles; {report['samples_per_upsampler']:,} stars "
        f"per upsampler and repeat ({report['samples_per_particle']:g} per train particle). "
        f"Larger (less negative) LP(C) is better. {errors}",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
        *("| " + " | ".join(row) + " |" for row in _rows(report)),
        "",
        "| difference | value ± total error (parts; 95 % interval) | significance |",
        "|---|---|---|",
    ]
    for pair, entry in report["differences"].items():
        lines.append("| " + " | ".join(_difference_text(pair, entry)) + " |")
    auc = ", ".join(f"{k}: {_pm(v)}" for k, v in report["auc"].items())
    lines += ["", f"Multi-model classifier AUC (validation stars): {auc}.", ""]
    components = report.get("truth", {}).get("components")
    if components:
        rows = _component_rows(report["upsamplers"], components)
        lines += [
            "Fine structure of the mock galaxy: per labelled component, KL(truth ‖ model) "
            "over fresh draws of that component [nats], and the share of its stars that the "
            "model reproduces (its stars in the region where the component holds most of the "
            "density, over the truth's share there; 1 is perfect).", "",
            "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0]),
            *("| " + " | ".join(row) + " |" for row in rows[1:]), "",
        ]
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"
