"""The Runs tab's chart: duration and records of the last runs, as inline SVG coordinates."""

from typing import Any

WIDTH, HEIGHT, PAD = 720, 220, 40
RECORD_COUNTS = ("downloaded", "uploaded", "deleted")


def records_of(run: dict[str, Any]) -> int:
    """Records a run moved: downloaded, uploaded and deleted, over all entities."""
    counts = run.get("counts") or {}
    return sum(int(c.get(k, 0)) for c in counts.values() if isinstance(c, dict)
               for k in RECORD_COUNTS)


def run_chart(history: list[dict[str, Any]], last: int = 30) -> dict[str, Any] | None:
    """Points of the last ended runs (oldest left): bars of records, a line of seconds."""
    ended = [r for r in reversed(history) if r.get("duration_s") is not None][-last:]
    if not ended:
        return None
    most_seconds = max(r["duration_s"] for r in ended) or 1.0
    most_records = max(records_of(r) for r in ended) or 1
    inner_w, inner_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    step = inner_w / len(ended)
    points = []
    for i, run in enumerate(ended):
        records = records_of(run)
        x = PAD + step * i + step / 2
        bar_h = inner_h * records / most_records
        points.append({
            "id": run["id"], "kind": run["kind"], "status": run["status"],
            "started": run["started"], "seconds": run["duration_s"], "records": records,
            "x": round(x, 1), "bar_x": round(x - step * 0.35, 1), "bar_w": round(step * 0.7, 1),
            "bar_y": round(PAD + inner_h - bar_h, 1), "bar_h": round(bar_h, 1),
            "y": round(PAD + inner_h - inner_h * run["duration_s"] / most_seconds, 1)})
    return {"width": WIDTH, "height": HEIGHT, "pad": PAD, "bottom": PAD + inner_h,
            "right": PAD + inner_w, "points": points,
            "line": " ".join(f"{p['x']},{p['y']}" for p in points),
            "most_seconds": round(most_seconds, 1), "most_records": most_records}
