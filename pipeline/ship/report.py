"""A run's report: one self-contained HTML file (DIR/report/index.html, plots inline as SVG) with the funnel,
the drops by reason with example rows of each, the top and bottom rows of the selection, score histograms of the
pool and of the selected rows, and how the selection covers the pool's embedding clusters. People judge a
curation run by reading rows, not only bars."""
from __future__ import annotations

import html
import io
import json
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.rundir import read_shards, write_atomic

EXAMPLES = 3  # rows shown per drop reason
EXTREMES = 5  # rows shown at each end of the selection
PREVIEW_CHARS = 240
SCORES = ("deita_score", "complexity", "quality", "ifd", "instruct_reward", "base_reward", "judge_score",
          "min_neighbor_distance", "ref_similarity", "ref_string_similarity")


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()[buffer.getvalue().index("<svg"):]  # drop the XML prolog: it is inlined in HTML


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def funnel_plot(stages: dict) -> str:
    """Rows out per stage (bars) with rows dropped stacked on top."""
    plt = _pyplot()
    names = list(stages)
    kept = [s["rows_out"] for s in stages.values()]
    dropped = [s["rows_in"] - s["rows_out"] for s in stages.values()]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1))
    y = np.arange(len(names))[::-1]
    ax.barh(y, kept, color="#3b7dd8", label="kept")
    ax.barh(y, dropped, left=kept, color="#e8a33d", label="dropped")
    ax.set_yticks(y, names)
    ax.set_xlabel("rows")
    ax.legend(loc="lower right", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def score_plots(pool: pl.DataFrame, selected: pl.DataFrame) -> list[tuple[str, str]]:
    """(title, svg) per score present: a histogram of the pool with the selected rows on top, or of the exported rows
    alone for a score the last stage computed (e.g. an audit's similarities); a judge's aspects get one each."""
    in_pool, in_selected = _scores(pool), _scores(selected)
    plots = [(title, _histogram(title, values, in_selected.get(title, []))) for title, values in in_pool.items()]
    return plots + [(title, _histogram(title, values, [])) for title, values in in_selected.items() if title not in in_pool]


def _scores(df: pl.DataFrame) -> dict[str, np.ndarray]:
    """Each score with values in `df`, by title: the SCORES columns, then the judge's aspects ("judge: <aspect>")."""
    found = {column: _values(df, column) for column in SCORES}
    found |= {f"judge: {aspect}": values for aspect, values in _judge_aspects(df).items()}
    return {title: values for title, values in found.items() if len(values)}


def _histogram(title: str, values: np.ndarray, chosen) -> str:
    plt = _pyplot()
    bins = np.histogram_bin_edges(values, bins=min(30, max(5, len(values) // 4)))
    fig, ax = plt.subplots(figsize=(4.2, 2.6))  # counts drawn as steps: no artist per row, whatever the pool size
    ax.stairs(np.histogram(values, bins)[0], bins, fill=True, color="#b8c7dc", label=f"pool ({len(values)})")
    if len(chosen):
        ax.stairs(np.histogram(chosen, bins)[0], bins, fill=True, color="#3b7dd8", label=f"selected ({len(chosen)})")
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def _judge_aspects(df: pl.DataFrame) -> dict[str, np.ndarray]:
    """The `judge` stage's per-aspect scores (`judge_scores`: a list of {aspect, score} per row) by aspect."""
    if "judge_scores" not in df.columns or df["judge_scores"].drop_nulls().is_empty():
        return {}
    scores = df.select(pl.col("judge_scores").explode().struct.unnest()).drop_nulls()
    return {aspect: group["score"].cast(pl.Float64).to_numpy()
            for (aspect,), group in scores.group_by("aspect", maintain_order=True)}


def _values(df: pl.DataFrame, column: str) -> np.ndarray:
    """A score column's values as floats; per-turn list columns (deita's complexity, quality) are flattened."""
    if column not in df.columns:
        return np.array([])
    series = df[column].explode() if isinstance(df.schema[column], pl.List) else df[column]
    return series.drop_nulls().cast(pl.Float64).to_numpy()


PLOTTED = 20_000  # rows the clustering is fitted on and the scatter shows; every row is still counted


def coverage(pool: pl.DataFrame, selected_ids: set[str], *, clusters: int | None = None, seed: int = 0,
             plotted: int = PLOTTED) -> dict:
    """k-means clusters of the pool's embeddings and the selected rows per cluster, plus a 2-D PCA projection.

    k-means and PCA are fitted on at most `plotted` rows (a seeded sample, the selected rows first); every pool row
    is then assigned to its cluster in blocks, so the counts cover the whole pool while memory and the plot stay
    bounded. k defaults to round(sqrt(n / 2)) clamped to [2, 20]. Returns {"clusters": [(size, selected), ...],
    "xy", "label", "selected"} (the last three for the plotted rows) or {} when fewer than 4 rows are embedded.
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from pipeline.score.embed import matrix

    rows = pool.filter(pl.col("embedding").is_not_null()) if "embedding" in pool.columns else pool.clear()
    if rows.height < 4:
        return {}
    x = matrix(rows)
    chosen_all = rows["id"].is_in(list(selected_ids)).to_numpy()
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(chosen_all)), rng.permutation(np.flatnonzero(~chosen_all))])
    shown = np.sort(order[:plotted])
    k = clusters or int(np.clip(round(np.sqrt(rows.height / 2)), 2, 20))
    model = KMeans(n_clusters=min(k, len(shown)), n_init=4, random_state=seed).fit(x[shown])
    labels = np.concatenate([model.predict(x[i:i + 65536]) for i in range(0, len(x), 65536)])
    sizes = [(int((labels == c).sum()), int(((labels == c) & chosen_all).sum())) for c in range(model.n_clusters)]
    xy = PCA(n_components=2, random_state=seed).fit_transform(x[shown])
    return {"clusters": sizes, "xy": xy, "label": labels[shown], "selected": chosen_all[shown]}


def coverage_plot(cov: dict) -> str:
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    sizes = np.array(cov["clusters"])
    order = np.argsort(-sizes[:, 0], kind="stable")
    ids = np.arange(len(order))
    left.bar(ids, sizes[order, 0], color="#b8c7dc", label="pool")
    left.bar(ids, sizes[order, 1], color="#3b7dd8", label="selected")
    left.set_xticks(ids, [str(i) for i in order], fontsize=7)
    left.set_xlabel("embedding cluster (k-means)")
    left.set_ylabel("rows")
    left.legend(frameon=False, fontsize=8)
    xy, chosen = cov["xy"], cov["selected"]
    right.scatter(xy[~chosen, 0], xy[~chosen, 1], s=8, c=cov["label"][~chosen], cmap="tab20", alpha=0.35)
    right.scatter(xy[chosen, 0], xy[chosen, 1], s=22, c=cov["label"][chosen], cmap="tab20", edgecolors="black", linewidths=0.6)
    right.set_title("PCA of embeddings (outlined: selected)", fontsize=9)
    right.set_xticks([])
    right.set_yticks([])
    for ax in (left, right):
        ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def _pool(run_dir: Path, stages: list[str]) -> pl.DataFrame:
    """The input of the last stage: the rows the final selection (or filter) chose from (for a one-stage run, its output)."""
    for name in reversed(stages[:-1]):
        frame = read_shards(run_dir / name)
        if frame.height:
            return frame
    return read_shards(run_dir / stages[-1])


def write(run_dir: Path) -> Path:
    """Render DIR/report/index.html from the run's manifest, stages and export; returns its path."""
    from pipeline.core.rundir import summarize

    run_dir = Path(run_dir)
    funnel = {k: v for k, v in summarize(run_dir)["stages"].items() if (run_dir / k / "stage.json").exists()}
    if not funnel:
        raise FileNotFoundError(f"{run_dir} has no finished stages (no manifest.jsonl lines); is it a run directory?")
    export = run_dir / "export" / "data.parquet"
    selected = pl.read_parquet(export) if export.exists() else read_shards(run_dir / list(funnel)[-1])
    pool = _pool(run_dir, list(funnel))
    cov = coverage(pool, set(selected["id"].to_list()))
    parts = [f"<h1>aligndata run report: {html.escape(run_dir.name)}</h1>",
             f"<p>{selected.height} rows exported from a pool of {pool.height}; {len(funnel)} stages.</p>",
             "<h2>Funnel</h2>", funnel_plot(funnel), _drops_table(funnel), _usage_table(funnel)]
    examples = dropped_examples(run_dir, list(funnel))
    if examples:
        parts += ["<h2>What was dropped</h2>", f"<p>Up to {EXAMPLES} rows per stage and reason.</p>",
                  rows_table(examples, ["stage", "drop_reason", "id", "dup_of", "instruction", "response"])]
    score = next((c for c in ("deita_score", "instruct_reward", "ifd", "judge_score") if c in selected.columns
                  and selected[c].drop_nulls().len()), None)
    if score:
        ranked = selected.filter(pl.col(score).is_not_null()).sort(score, descending=True, maintain_order=True)
        for title, rows in ((f"Top {EXTREMES} selected rows by {score}", ranked.head(EXTREMES)),
                            (f"Bottom {EXTREMES} selected rows by {score}", ranked.tail(EXTREMES))):
            table = rows_table(previews(rows, **{score: score}), [score, "id", "instruction", "response"])
            parts += [f"<h2>{html.escape(title)}</h2>", table]
    parts.append(pass_rate_section(run_dir))
    scores = score_plots(pool, selected)
    parts += ["<h2>Scores</h2>", "<div class=grid>" + "".join(svg for _, svg in scores) + "</div>"] if scores else []
    if cov:
        covered = sum(1 for size, chosen in cov["clusters"] if chosen)
        parts += ["<h2>Selection coverage</h2>",
                  f"<p>The selection has rows from {covered} of {len(cov['clusters'])} embedding clusters of the pool.</p>",
                  coverage_plot(cov)]
    page = ("<!doctype html><meta charset=utf-8><title>aligndata report</title><style>body{font-family:sans-serif;"
            "max-width:1000px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
            ".grid{display:flex;flex-wrap:wrap;gap:8px}table.rows td{font-size:12px;vertical-align:top;max-width:380px}</style>" + "\n".join(parts))
    path = run_dir / "report" / "index.html"
    write_atomic(path, lambda tmp: Path(tmp).write_text(page))
    write_atomic(path.with_name("report.json"), lambda tmp: Path(tmp).write_text(json.dumps(
        {"funnel": funnel, "pool": pool.height, "selected": selected.height, "scores": [c for c, _ in scores],
         "clusters": cov.get("clusters", [])}, indent=1)))
    return path


def pass_rate_section(run_dir: Path) -> str:
    """Distillation runs: a histogram of the problems' pass rates per sample stage (empty for other runs)."""
    from pipeline.ship.reasoning_card import BIN_LABELS, histogram, pass_rates

    plots = []
    for name, rates in pass_rates(run_dir).items():
        counts = histogram(rates["pass_rate"])
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5, 2.6))
        ax.bar(range(len(counts)), counts, color="#3b7dd8")
        ax.set_xticks(range(len(counts)), BIN_LABELS, fontsize=8)
        ax.set_xlabel("pass rate (verified / answered samples)")
        ax.set_ylabel("problems")
        ax.set_title(name, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        plots.append(_svg(fig))
    return ("<h2>Pass rates</h2><p>Problems by the share of their sampled answers that were verified correct.</p>"
            + "".join(plots)) if plots else ""


def _short(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + " …"


def previews(df: pl.DataFrame, **extra: str) -> list[dict]:
    """Each row's id, dup_of, drop_reason, first instruction and first response, shortened; a quarantined import
    row (no messages) shows its raw text instead. `extra` maps names to more columns to show."""
    from pipeline.core.records import first_pairs

    pairs = first_pairs(df.with_columns(pl.col("messages").fill_null([])))
    out = []
    for row, (instruction, response) in zip(df.iter_rows(named=True), pairs):
        if not instruction and not response:
            instruction = json.loads(row.get("meta") or "{}").get("import", {}).get("raw", "")
        out.append({"id": row["id"], "dup_of": row.get("dup_of"), "drop_reason": row.get("drop_reason"),
                    "instruction": _short(instruction), "response": _short(response),
                    **{name: row.get(column) for name, column in extra.items()}})
    return out


def dropped_examples(run_dir: Path, stages: list[str]) -> list[dict]:
    """Up to EXAMPLES dropped rows per stage and drop reason (read lazily: only those rows are loaded)."""
    rows = []
    for stage in stages:
        files = sorted((Path(run_dir) / stage).glob("dropped-*.parquet"))
        if files:
            sample = (pl.scan_parquet(files).select("id", "drop_reason", "dup_of", "messages", "meta")
                      .group_by("drop_reason", maintain_order=True).head(EXAMPLES).collect())
            rows += [{"stage": stage, **row} for row in previews(sample)]
    return rows


def rows_table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table class=rows><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _usage_table(funnel: dict) -> str:
    """Requests, tokens and cost per stage and model (empty when no engine counted any)."""
    def row(stage: str, model: str, t: dict) -> str:
        cost = "-" if t.get("cost_usd") is None else f"{t['cost_usd']:.4f}"
        cells = [stage, model, t.get("requests", 0), t.get("prompt_tokens", 0) + t.get("batch_prompt_tokens", 0),
                 t.get("completion_tokens", 0) + t.get("batch_completion_tokens", 0), cost]
        return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

    rows = "".join(row(stage, model, t) for stage, s in funnel.items() for model, t in s.get("tokens", {}).items())
    if not rows:
        return ""
    return ("<h2>Tokens and cost</h2><table><tr><th>stage</th><th>model</th><th>requests</th><th>prompt tokens</th>"
            f"<th>completion tokens</th><th>cost (USD)</th></tr>{rows}</table>")


def _drops_table(funnel: dict) -> str:
    rows = "".join(f"<tr><td>{html.escape(stage)}</td><td>{s['rows_in']}</td><td>{s['rows_out']}</td>"
                   f"<td>{html.escape(', '.join(f'{k}: {v}' for k, v in s['drops'].items()) or '-')}</td>"
                   f"<td>{s['seconds']}</td></tr>" for stage, s in funnel.items())
    return ("<table><tr><th>stage</th><th>rows in</th><th>rows out</th><th>dropped (reason: rows)</th><th>seconds</th></tr>"
            f"{rows}</table>")
