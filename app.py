"""compress lab: the Streamlit app. `streamlit run app.py` (or `bash run.sh`)."""

from __future__ import annotations

import os

import streamlit as st

from compress_lab_app.pages_index import PAGES, home_page, sidebar_glance

LOOPBACK = ("127.0.0.1", "localhost", "::1")

st.set_page_config(page_title="compress lab", page_icon=":material/compress:", layout="wide")

# Safe by default: refuse to serve on other interfaces unless the user asked for it
# (run.sh sets COMPRESS_LAB_ADDRESS; started elsewhere without the repo's
# .streamlit/config.toml, Streamlit would listen on every interface).
address = st.get_option("server.address") or "0.0.0.0"
if address not in LOOPBACK and os.environ.get("COMPRESS_LAB_ADDRESS") != address:
    st.error(f"compress lab is being served on {address!r}, not only on this computer (127.0.0.1). It has no "
             "authentication and runs model code you load. Start it with `bash run.sh`, or pass "
             "`--server.address 127.0.0.1`; to serve on another address on purpose, set COMPRESS_LAB_ADDRESS to it.")
    st.stop()

navigation = st.navigation([st.Page(home_page, title="Home", icon=":material/home:", default=True),
                            *[st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url) for p in PAGES]])
sidebar_glance()
navigation.run()
