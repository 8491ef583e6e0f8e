"""Export: download a compressed model (zipped .mlpackage + config + metrics)
and the sweep's results as CSV."""

from __future__ import annotations

import streamlit as st

from compress_lab.analysis.table import runs_table
from compress_lab.export import export_run, results_csv, safe_name
from compress_lab.store.base import is_baseline
from compress_lab_app.edge import error_edge
from compress_lab_app.pages_index import page_setup
from compress_lab_app.fmt import family_name, human_bytes
from compress_lab_app.sweeps import choose_sweep, open_lab_store


def export_model(sweep, runs) -> None:
    st.subheader("A compressed model")
    done = [r for r in runs if r.state == "COMPLETE" and r.artifact_path]
    # compressed runs first, most accurate first; the baselines last
    done.sort(key=lambda r: (is_baseline(r), -((r.metrics or {}).get("top1") or 0.0)))
    if not done:
        st.info("No finished run with a model package in this sweep yet.")
        return
    by_id = {r.run_id: r for r in done}

    def describe(run_id: str) -> str:
        run = by_id[run_id]
        top1 = (run.metrics or {}).get("top1")
        family = family_name(run.family)
        return (f"{run.label} · {family} · top-1 {top1:.2%}" if top1 is not None else f"{run.label} · {family}") \
            + f" · {human_bytes((run.sizes or {}).get('bytes'))}"

    run_id = st.selectbox("Run", list(by_id), format_func=describe, key="export.run")
    run = by_id[run_id]
    with st.spinner("Zipping the package…"):
        bundle = export_run(open_lab_store().folder, run, model_name=sweep.name)
    st.download_button(f"Download {bundle.file_name} ({human_bytes(len(bundle.data))})", bundle.data,
                       file_name=bundle.file_name, mime="application/zip", type="primary", key="export.download_run")
    st.caption("The zip holds the compressed Core ML package (open it in Xcode or load it with "
               "`coremltools.models.MLModel`), the run's config.json (to reproduce it) and metrics.json (accuracy, sizes, timings).")
    with st.expander("What is in the zip"):
        st.code("\n".join(bundle.entries), language="text")


def export_table(sweep, runs) -> None:
    st.subheader("All results")
    text = results_csv(runs_table(runs))
    st.download_button(f"Download results CSV ({len(runs)} runs)", text.encode(),
                       file_name=f"{safe_name(sweep.name, 'sweep')}-results.csv", mime="text/csv", key="export.download_csv")
    from compress_lab.report import report_html, results_json
    left, right = st.columns(2)
    left.download_button("Download the report (self-contained HTML)", report_html(sweep, runs).encode(),
                         file_name=f"{safe_name(sweep.name, 'sweep')}-report.html", mime="text/html",
                         key="export.download_report")
    right.download_button("Download results JSON", results_json(sweep, runs).encode(),
                          file_name=f"{safe_name(sweep.name, 'sweep')}-results.json", mime="application/json",
                          key="export.download_json")


page_setup("Export")
with error_edge("Exporting"):
    sweep = choose_sweep("export.sweep")
    if sweep is not None:
        runs = open_lab_store().list_runs(sweep.sweep_id)
        export_model(sweep, runs)
        export_table(sweep, runs)
