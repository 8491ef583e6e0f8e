"""compress lab: the Streamlit app. `streamlit run app.py` (or `bash run.sh`)."""

from __future__ import annotations

import streamlit as st

from compress_lab_app.pages_index import PAGES, home_page, sidebar_glance

st.set_page_config(page_title="compress lab", page_icon=":material/compress:", layout="wide")

navigation = st.navigation([st.Page(home_page, title="Home", icon=":material/home:", default=True),
                            *[st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url) for p in PAGES]])
sidebar_glance()
navigation.run()
