"""The speed and memory goals (issues 6 and 14), each met / missed / not measured, with the
figures behind it."""

from __future__ import annotations

from typing import Any

from xcam.bench.config import PEERS
from xcam.bench.report import BenchReport, Row

Goal = dict[str, Any]


def _find(rows: list[Row], **want: Any) -> list[Row]:
    return [r for r in rows if all(getattr(r, k) == v for k, v in want.items())]


def verdict(
    goal: str, ratio: float | None, limit: float, detail: str, higher: bool = False
) -> Goal:
    """``ratio`` against ``limit`` (at most, or at least when ``higher``)."""
    if ratio is None:
        return {"goal": goal, "status": "not measured", "value": None, "detail": detail}
    ok = ratio >= limit if higher else ratio <= limit
    return {"goal": goal, "status": "met" if ok else "missed", "value": ratio, "detail": detail}


def _where(r: Row) -> str:
    return f"{r.model} {r.layer} {r.device} batch {r.batch}: {r.ratio_to_inference}x"


def eager_gradcam(rows: list[Row]) -> list[Goal]:
    """Eager Grad-CAM at most 1.15x plain eager inference (pytorch-grad-cam's for context)."""
    out = []
    for r in _find(rows, method="gradcam", library="xcam", backend="eager"):
        peer = _find(
            rows,
            method="gradcam",
            library="pytorch-grad-cam",
            model=r.model,
            device=r.device,
            batch=r.batch,
        )
        extra = f"; pytorch-grad-cam: {peer[0].ratio_to_inference}x" if peer else ""
        goal = "eager Grad-CAM <= 1.15x plain eager inference"
        out.append(verdict(goal, r.ratio_to_inference, 1.15, _where(r) + extra))
    return out


def onnx_activations(rows: list[Row]) -> list[Goal]:
    """The ONNX Runtime forward with activations at most 1.03x the plain one."""
    goal = "ONNX Runtime forward with activations <= 1.03x plain ONNX Runtime"
    return [
        verdict(goal, r.ratio_to_inference, 1.03, _where(r))
        for r in _find(rows, method="activations", backend="onnxruntime")
    ]


def ingraph_gradcam(rows: list[Row]) -> list[Goal]:
    """In-graph Grad-CAM (xcam and xcam.lite) at most 1.10x plain ONNX Runtime."""
    goal = "in-graph Grad-CAM <= 1.10x plain ONNX Runtime"
    return [
        verdict(goal, r.ratio_to_inference, 1.10, f"{r.library}, {_where(r)}")
        for r in _find(rows, method="gradcam", backend="ingraph")
    ]


def scorecam_speedup(rows: list[Row]) -> list[Goal]:
    """xcam's fastest Score-CAM at least 5x faster than pytorch-grad-cam's."""
    out = []
    for peer in _find(rows, method="scorecam", library="pytorch-grad-cam"):
        ours = _find(rows, method="scorecam", library="xcam", model=peer.model, batch=peer.batch)
        if not ours:
            continue
        best = min(ours, key=lambda r: r.median_ms)
        detail = (
            f"{peer.model} batch {peer.batch}: peer {peer.median_ms:.0f} ms, xcam "
            f"{best.backend} {best.median_ms:.0f} ms"
        )
        ratio = round(peer.median_ms / best.median_ms, 2)
        goal = "Score-CAM >= 5x faster than pytorch-grad-cam's"
        out.append(verdict(goal, ratio, 5.0, detail, higher=True))
    return out


def _peers_of(rows: list[Row], r: Row) -> list[Row]:
    """The peers' rows for ``r``'s method, model, device and batch."""
    same = _find(rows, method=r.method, model=r.model, device=r.device, batch=r.batch)
    return [p for p in same if p.library in PEERS]


def fastest_peer(rows: list[Row]) -> list[Goal]:
    """xcam's eager method faster than the fastest peer's, per model, device, batch, method."""
    out = []
    for r in _find(rows, library="xcam", backend="eager"):
        peers = _peers_of(rows, r)
        if not peers:
            continue
        best = min(peers, key=lambda p: p.median_ms)
        detail = (
            f"{r.method}, {r.model} {r.device} batch {r.batch}: xcam {r.median_ms:.1f} ms, "
            f"{best.library} {best.median_ms:.1f} ms"
        )
        ratio = round(best.median_ms / r.median_ms, 3)
        out.append(verdict("eager xcam faster than the fastest peer", ratio, 1.0, detail, True))
    return out


def eager_memory(rows: list[Row]) -> list[Goal]:
    """Eager Grad-CAM's peak memory at most 1.1x plain inference's, at the run's largest
    batch per model and device (the peers' for context)."""
    out = []
    for r in _find(rows, method="gradcam", library="xcam", backend="eager"):
        same = _find(rows, model=r.model, device=r.device, backend="eager")
        if r.batch != max(x.batch for x in same):
            continue
        floor = _find(rows, method="inference", model=r.model, device=r.device, batch=r.batch)
        goal = "peak memory of eager Grad-CAM <= 1.1x plain inference's"
        if r.peak_mb is None or not floor or not floor[0].peak_mb:
            out.append(verdict(goal, None, 1.1, f"{r.model} {r.device} batch {r.batch}"))
            continue
        peers = [f"{p.library} {p.peak_mb:.0f}" for p in _peers_of(rows, r) if p.peak_mb]
        detail = (
            f"{r.model} {r.device} batch {r.batch}: xcam {r.peak_mb:.0f} MB, inference "
            f"{floor[0].peak_mb:.0f} MB" + (f"; {', '.join(peers)} MB" if peers else "")
        )
        out.append(verdict(goal, round(r.peak_mb / floor[0].peak_mb, 3), 1.1, detail))
    return out


GOALS = (
    eager_gradcam,
    onnx_activations,
    ingraph_gradcam,
    scorecam_speedup,
    fastest_peer,
    eager_memory,
)


def goals(report: BenchReport) -> list[Goal]:
    """The issue's goals, each met / missed / not measured, with the figures behind it."""
    return [g for check in GOALS for g in check(report.rows)]
