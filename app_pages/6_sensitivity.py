"""Sensitivity and mixed precision: how much each layer suffers when compressed alone,
and the smallest per-layer mix that stays within an accuracy budget."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from compress_lab.analysis.compressors import AGGRESSIVE, SEARCH_COMPRESSIONS
from compress_lab.plots import bar_data, bar_figure
from compress_lab_app import cached
from compress_lab_app.edge import error_edge
from compress_lab_app.fmt import human_bytes, human_seconds
from compress_lab_app.pages_index import page_setup
from compress_lab_app.session import current_data, current_model, store_folder
from compress_lab_app.sweeps import choose_sweep, open_lab_store

RESULT_KEY = "sensitivity.result"
# budget kind -> (Budget metric, default value, step); a size in bytes is entered in kB
BUDGET_KINDS = {"top-1 drop at most (points)": ("top1_drop", 1.0, 0.5),
                "agreement at least": ("agreement", 0.99, 0.005),
                "size on disk at most (kB)": ("bytes", 250.0, 10.0),
                "bits per weight at most": ("bits_per_weight", 4.0, 0.5)}


def budget_kinds(handle) -> dict[str, tuple[str, float, float]]:
    """The budgets this model's task can be held to: top-1 / agreement for classifiers, else each of
    the task's metrics (at most X worse, or X percent worse), and the two size budgets."""
    from compress_lab.tasks import task_for
    meta = handle.metadata
    task = task_for(meta)
    if task.name == "classification":
        return BUDGET_KINDS
    kinds = {}
    for m in task.metrics(meta) + task.fidelity_metrics(meta):
        word = "drop" if m.higher_is_better else "rise"
        kinds[f"{m.label}: {word} at most ({m.unit or 'absolute'})"] = (m.name, 0.01, 0.005)
        kinds[f"{m.label}: {word} at most (% of uncompressed)"] = (m.name + "%", 1.0, 0.5)
    sizes = {k: v for k, v in BUDGET_KINDS.items() if v[0] in ("bytes", "bits_per_weight")}
    return {**kinds, **sizes}


def progress_bar(label: str):
    bar = st.progress(0.0, text=label)

    def update(done: int, total: int, name: str = "") -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{label}: {done}/{total} {name}")
    return update


def sensitivity_section(handle, validation: str, max_images: int) -> None:
    st.subheader("Per-layer sensitivity")
    st.caption("Each compressible layer is compressed alone at an aggressive setting (all others stay uncompressed) "
               "and the model is measured on a fixed, evenly spaced subset of the validation folder.")
    left, right = st.columns(2)
    compression = left.selectbox("Compression", SEARCH_COMPRESSIONS, key="sensitivity.compression")
    setting = AGGRESSIVE[compression]
    right.markdown(f"Setting per layer  \n`{setting}`")
    if st.button("Measure sensitivity", type="primary", key="sensitivity.run"):
        from compress_lab.analysis.sensitivity import record_sensitivity
        from compress_lab.analysis.sensitivity import sensitivity_for_model
        result = sensitivity_for_model(handle, validation, compression, setting, workdir=store_folder() / "work",
                                       max_images=int(max_images), progress=progress_bar("Measuring"),
                                       preprocessing_overrides=current_data().preprocessing or None)
        record_sensitivity(store_folder(), handle, result)
        st.session_state[RESULT_KEY] = result
    result = st.session_state.get(RESULT_KEY)
    if result is None:
        return
    points = result.metric == "top1"   # top-1 drop in points; any other metric in its own unit
    worse = f"{result.metric_label} {'drop (points)' if points else ('drop' if result.higher_is_better else 'rise')}"
    values = {l.name: (l.drop or 0.0) * (100 if points else 1) for l in result.layers}
    st.plotly_chart(bar_figure(bar_data(values), "layer (most sensitive first)", worse), key="sensitivity.bars")
    frame = pd.DataFrame([{"layer": l.name, "elements": l.numel, worse: None if l.drop is None
                           else l.drop * (100 if points else 1), "agreement": l.agreement, "SNR (dB)": l.snr_db,
                           "bytes saved": int(l.bits_saved / 8)} for l in result.ranking()])
    st.dataframe(frame, hide_index=True, width="stretch")
    st.caption(f"{result.compression} {result.settings} · {result.images} images · {human_seconds(result.elapsed_s)} · "
               "stored in the results store as its own sweep")


def mixed_section(handle, validation: str, max_images: int) -> None:
    st.subheader("Mixed precision under a budget")
    st.caption("Searches per-layer settings (or leaving a layer uncompressed): under an accuracy budget, the smallest "
               "model within it; under a size budget, the most accurate model within it (checked on the real "
               "package, in bytes on disk). The answer is compressed for real and added to a sweep as a 'mixed' "
               "point, measured like every other point, so it appears on the Results plot next to the uniform "
               "settings.")
    sweep = choose_sweep("sensitivity.sweep", label="Add the answer to sweep",
                         empty="Run a sweep first (Sweep page): the mixed point is added to it.")
    left, middle, right = st.columns(3)
    compression = left.selectbox("Compression", SEARCH_COMPRESSIONS, key="mixed.compression")
    kinds = budget_kinds(handle)
    kind = middle.selectbox("Budget", tuple(kinds), key="mixed.kind")
    metric, default, step = kinds[kind]
    value = right.number_input("value", value=default, step=step, key=f"mixed.value.{metric}")
    if sweep is None or not st.button("Search and add to the sweep", type="primary", key="mixed.run"):
        return
    from compress_lab.analysis.mixed import Budget
    from compress_lab.analysis.mixed_run import search_config
    from compress_lab.sweep.add_point import add_point
    from compress_lab.sweep.spec import SweepSpec

    budget = Budget(metric.rstrip("%"), float(value) * (1000 if metric == "bytes" else 1), relative=metric.endswith("%"))
    update = progress_bar("Searching")
    config, result = search_config(handle, validation, compression, budget, workdir=store_folder() / "work",
                                   max_images=max_images, preprocessing_overrides=current_data().preprocessing or None,
                                   progress=lambda stage, done, total: update(done, total, stage))
    with st.spinner("Compressing the answer for real and measuring it on the whole validation folder…"):
        spec = SweepSpec.from_dict({k: v for k, v in sweep.spec.items() if k in ("model", "data", "run", "grid")})
        run = add_point(spec, open_lab_store().folder, config,
                        family="mixed" if result.chosen == "mixed" else "post_training",
                        label=f"mixed {compression} ({budget.describe()})")
    if run.state == "COMPLETE":
        metrics, sizes = run.metrics or {}, run.sizes or {}
        st.success(f"Added **{run.label}**: {human_bytes(sizes.get('bytes'))}"
                   + (f", top-1 {metrics['top1']:.2%}" if metrics.get("top1") is not None else "")
                   + (f", agreement {metrics['agreement']:.2%}" if metrics.get("agreement") is not None else "")
                   + f". The search chose {result.chosen} "
                   f"after {result.evaluations} evaluations in {human_seconds(result.elapsed_s)}. "
                   "See it on the Results page.")
    else:
        st.error(f"The mixed point failed: {run.error}")


page_setup("Sensitivity")
with error_edge("Loading the model"):
    handle = cached.load_handle(current_model())
    validation = current_data().validation
    if not validation:
        st.info("Choose a validation folder on the Data page first.")
        st.stop()
    max_images = int(st.number_input("Validation images used by the measurements (evenly spaced; the mixed answer "
                                     "is then measured on the whole folder)", min_value=20, max_value=20000,
                                     value=1000, step=100, key="sensitivity.images"))
with error_edge("Measuring sensitivity"):
    sensitivity_section(handle, validation, max_images)
with error_edge("Searching mixed precision"):
    mixed_section(handle, validation, max_images)
